"""Correctness against the float64 oracle: the one check the tests and the benchmark
gate share, with its per-dtype tolerances.

The error of a tensor is max|out - ref| / max|ref|: relative to the tensor's scale, so a
gradient that sums over millions of terms is judged like a small one.
"""

from __future__ import annotations

import torch

from . import reference
from .base import Implementation
from .params import FlatParams

TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| in float64; inf if shapes differ or out has NaN/inf."""
    if tuple(out.shape) != tuple(ref.shape):
        return float("inf")
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    diff = (out64 - ref64).abs().max().item() if ref64.numel() else 0.0
    return diff / max(scale, 1e-300)


def check(impl: Implementation, x: torch.Tensor, params: FlatParams, padding: int,
          grad_y: torch.Tensor | None = None) -> dict[str, float]:
    """Run `impl` on (x, params, padding) and return the relative error of its output
    ("output") and, when grad_y is given, of each gradient field that the
    implementation's `gate` says must match. Uses `impl.gate` to choose parameters on
    which it must agree with the oracle."""
    params, fields = impl.gate(params, padding)
    prepared = impl.prepare(params)
    ref_y = reference.forward(x, params, padding)
    errors = {"output": relative_error(impl.forward(x, prepared, padding=padding), ref_y)}
    if grad_y is not None:
        y, saved = impl.forward_train(x, prepared, padding=padding)
        errors["train_output"] = relative_error(y, ref_y)
        grads = impl.backward(saved, grad_y).tensors()
        ref = reference.backward(x, params, padding, grad_y).tensors()
        for field in fields:
            errors[field] = relative_error(grads[field], ref[field])
    return errors


def tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE[dtype]
