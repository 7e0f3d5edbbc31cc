"""Setting a case up: its seeded inputs, the correctness gate, and the callable to time.

Before anything is timed, the implementation's output (and for backward and train every
gradient) is compared with the float64 oracle (`impls.reference`) on the same inputs. A
case that disagrees raises `GateFailed` and is recorded as failed, never timed; one that
cannot run here raises `Unavailable` and is recorded as skipped with the reason. The
model table (bench/models) uses the same `require`, `cuda_flags` and `check`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable

import torch

import impls
from impls import reference, verify

from . import memory, tables, threads as thread_control, timing


# The dtypes a case may ask for (each has its tolerance in impls.verify).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Unavailable(Exception):
    """The case cannot run here (missing implementation, device, dtype, direction, dependency)."""


class GateFailed(Exception):
    """The implementation's result disagrees with the float64 oracle: never timed."""


@dataclasses.dataclass
class Bench:
    """A case ready to time: `call` runs it once (synchronising on a GPU)."""

    case: object
    call: Callable[[], object]
    raw_call: Callable[[], object]  # without the synchronisation, for CUDA events and graphs
    errors: dict[str, float]
    impl: object
    warmup_calls: int = 0
    threads: int | None = None
    graphable: bool = True  # False where a CUDA graph cannot hold a call (an optimizer step)


def require(impl_name: str, device: str, dtype: torch.dtype, direction: str):
    """The implementation, when it exists in this version and can run `direction` on
    `device` in `dtype`; else Unavailable with its own reason."""
    if impl_name not in impls.names():
        raise Unavailable(f"implementation {impl_name!r} does not exist in this version")
    impl = impls.get(impl_name)
    try:
        reason = impl.unavailable_reason(device, direction)
    except TypeError:  # an old commit's contract (under asv) had no direction argument
        reason = impl.unavailable_reason(device)
    if reason is not None:
        raise Unavailable(reason)
    if not impl.supports_dtype(device, dtype):
        raise Unavailable(f"{impl_name} on {device} does not support {str(dtype).removeprefix('torch.')}")
    return impl


def cuda_flags(device: str) -> None:
    """Float32 means float32 on a GPU: the gate's tolerance has no room for TF32. cuDNN
    autotuning is on, and runs during the gate and warm-up, never while timed."""
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True


def check(errors: dict[str, float], tol: float, against: str = "the float64 oracle") -> None:
    """GateFailed naming the worst field when any relative error exceeds `tol` (NaN fails)."""
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        worst = max(bad, key=bad.get)
        raise GateFailed(f"{worst} differs from {against}: relative error {bad[worst]:.3g} > {tol:g}"
                         f" (all failing: {', '.join(sorted(bad))})")


def _seed(row: tables.Row) -> int:
    return sum(map(ord, row.name)) % 10_000


@functools.lru_cache(maxsize=2)
def _inputs(row: tables.Row, table: str, device: str):
    """Seeded float64 input, output gradient and parameters of a layer, on `device`."""
    seed = _seed(row)
    shape = row.shape(tables.batch(table, device))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.input_shape, generator=gen, dtype=torch.float64).to(device)
    gy = torch.randn(shape.output_shape, generator=gen, dtype=torch.float64).to(device)
    params = impls.FlatParams.random(row.in_channels, row.out_channels, row.kernel_size, seed=seed,
                                     dtype=torch.float64, device=device)
    return x, gy, params


# A folder where processes of one sweep share the oracle's results (bench/sweep.py sets it
# for its workers): every worker gates its implementation on every layer, and computing
# the float64 oracle in each of them cost the sweep's first round about a tenth of its time.
ORACLE_DIR_ENV = "BENCH_ORACLE_DIR"


@functools.lru_cache(maxsize=4)
def _oracle(row: tables.Row, table: str, device: str, gated_by: str | None):
    """The float64 oracle's output and gradients, shared by every implementation of a
    layer; `gated_by` names the implementation whose `gate` changed the parameters."""
    shared = os.environ.get(ORACLE_DIR_ENV)
    path = Path(shared) / f"{table}-{row.name}-{device}-{gated_by or 'plain'}.pt" if shared else None
    if path is not None and path.exists():
        with contextlib.suppress(Exception):  # a torn or foreign file: computed again
            return torch.load(path, map_location=device, weights_only=False)
    x, gy, params = _inputs(row, table, device)
    if gated_by is not None:
        params = impls.get(gated_by).gate(params, row.padding)[0]
    out = params, reference.forward(x, params, row.padding), reference.backward(x, params, row.padding, gy).tensors()
    if path is not None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            torch.save(out, tmp)
            os.replace(tmp, path)  # whole or not at all, for the worker that reads it next
    return out


def synchronised(device: str, raw: Callable[[], object]) -> Callable[[], object]:
    """The callable a wall-clock timer may time: on a GPU it waits for the work it queued."""
    if device != "cuda":
        return raw

    def call():
        raw()
        torch.cuda.synchronize()

    return call


def setup_layer_case(case, threads: int | None = None, warmup: bool | dict = True, gate: bool = True) -> Bench:
    """Build the case's inputs, run the correctness gate, and warm the callable up.
    Raises Unavailable (skip) or GateFailed (record as failed, never time). `warmup` is
    False, True (timing.warm_up's rule) or timing.warm_up's keyword arguments; without
    `gate` the oracle is not consulted (a sweep's later rounds set up, in fresh worker
    processes, a case its first round gated on the same inputs)."""
    dtype = dtype_of(case.dtype)
    impl = require(case.impl, case.device, dtype, case.direction)
    memory.fix_allocator()
    threads = thread_control.set_threads(threads)
    cuda_flags(case.device)

    p = case.row.padding
    x64, gy64, base = _inputs(case.row, case.table, case.device)
    gated, fields = impl.gate(base, p)
    if gate:
        params64, ref_y, ref_grads = _oracle(case.row, case.table, case.device, None if gated is base else case.impl)
    else:
        params64 = gated
    x, gy, params = x64.to(dtype), gy64.to(dtype), params64.to(dtype=dtype)
    prepared = impl.prepare(params)

    errors = {}
    if gate:
        errors["output"] = verify.relative_error(impl.forward(x, prepared, padding=p), ref_y)
        if case.direction in ("backward", "train"):
            y, saved = impl.forward_train(x, prepared, padding=p)
            grads = impl.backward(saved, gy).tensors()
            errors["train_output"] = verify.relative_error(y, ref_y)
            errors.update({f: verify.relative_error(grads[f], ref_grads[f]) for f in fields})
        check(errors, verify.tolerance(dtype))
    elif case.direction == "backward":  # what backward starts from
        saved = impl.forward_train(x, prepared, padding=p)[1]

    if case.direction == "forward":
        def raw():
            return impl.forward(x, prepared, padding=p)
    elif case.direction == "backward":
        def raw():
            return impl.backward(saved, gy)
    elif case.direction == "train":
        def raw():
            return impl.backward(impl.forward_train(x, prepared, padding=p)[1], gy)
    else:  # stage:<name>
        stages = impl.stages(x, prepared, p)
        name = case.direction.split(":", 1)[1]
        if name not in stages:
            raise Unavailable(f"{case.impl} has no stage {name!r} (it has {sorted(stages)})")
        raw = stages[name]

    bench = Bench(case, synchronised(case.device, raw), raw, errors, impl, threads=threads)
    if warmup:
        bench.warmup_calls = timing.warm_up(bench.call, **(warmup if isinstance(warmup, dict) else {}))
    return bench


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise Unavailable(f"dtype {name!r} is not one the suite knows ({', '.join(DTYPES)})")
    return DTYPES[name]
