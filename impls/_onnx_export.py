"""The ONNX export the ONNX-reading peers run (`onnxruntime`, `openvino`).

The three `F.conv2d` stages of `torch` (impls.composed.ComposedLayer) are exported once
per parameter set and input shape with `torch.onnx.export(..., dynamo=False)` (the
TorchScript exporter: 0.2 s and quiet, where the dynamo exporter takes about 4 s and
logs), the weights as initializers and every dimension static, so a runtime can optimize
for the shape, as a deployment would. The model is three Conv nodes.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from .composed import ComposedLayer

OPSET = 17
DESCRIPTION = f"torch.onnx.export(dynamo=False), opset {OPSET}, static shapes, weights as initializers"


def export(params, shape, padding) -> bytes:
    """The ONNX model (serialized) of the layer with these parameters, for inputs of
    exactly `shape`."""
    module = ComposedLayer(params.to(device="cpu"), padding).eval()
    buf = io.BytesIO()
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(shape, dtype=params.dtype),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=OPSET, do_constant_folding=True)
    return buf.getvalue()
