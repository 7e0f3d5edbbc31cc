"""`triton_fused`: the layer as a user would write it in Triton instead of CUDA.

- forward: the lateral 1x1 stage as one batched GEMM (torch.matmul, i.e. cuBLAS), without
  its bias; then one Triton kernel for V and H fused, which reads t1 once, adds the
  lateral bias, applies V and H with their biases and padding and writes y once (t2
  never goes to memory).
- backward: one Triton kernel for V and H backward (grad t1 from grad y, with t2
  recomputed from t1, plus per-program partial sums of the vertical, horizontal and
  lateral-bias gradients, summed in a fixed order: deterministic), then grad x and
  grad lateral as GEMMs (torch.matmul / bmm).

Triton is imported on first use (prepare), never by `import impls`; see README.md beside
this file for the kernels, the tiles and how they are tested without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import torch

from ..base import Implementation
from ..params import FlatGrads

_DTYPES = (torch.float32, torch.float64)


def triton_missing_reason() -> str | None:
    """None when triton can be imported, else why not (without importing it)."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        spec = None
    return "triton is not installed (pip install flatconv[triton])" if spec is None else None


def _ops():
    from . import _launch

    return _launch


class TritonFused(Implementation):
    """The registered instance runs compiled kernels on CUDA tensors. `interpret=True`
    makes an unregistered twin for the tests: the very same kernels and launch code run
    by Triton's interpreter on CPU tensors (devices ("cpu",))."""

    name = "triton_fused"
    role = "peer"
    devices = ("cuda",)
    dtypes = {"cuda": _DTYPES}
    description = ("Triton: lateral GEMM by torch.matmul (cuBLAS), then one fused V+H kernel (t1 read once, "
                   "y written once); backward one fused V+H kernel with deterministic weight-gradient partials")
    summary = ("Triton: cuBLAS lateral GEMM + one fused V+H kernel, fused V+H backward "
               "([README](impls/triton_fused/README.md))")
    extras = ("triton",)
    compiles = "kernels"
    fused = True

    def __init__(self, *, interpret: bool = False, tiles: dict[str, Any] | None = None):
        self.interpret = bool(interpret)
        if self.interpret:
            self.devices = ("cpu",)
            self.dtypes = {"cpu": _DTYPES}
        # Tile overrides ({"forward": Tile, "backward": Tile}) for the tests; else the
        # default tile per shape, or the tuned one (IMPLS_TRITON_TUNE=1, GPU only).
        self._tiles = dict(tiles or {})
        self._tuned: dict[tuple, Any] = {}  # the tile chosen per (kernel, dtype, shape)
        self._timings: dict[tuple, dict[str, float]] = {}  # microseconds per candidate, when tuned

    # ---- availability and runtime ----------------------------------------------------
    def _dependency_reason(self, device_type):
        return triton_missing_reason()

    def _platform_reason(self, device_type):
        missing = triton_missing_reason()
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)" + ("; " + missing if missing else "")
        return missing

    def runtime_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "lateral": "torch.matmul (cuBLAS on CUDA), bias folded into the V+H kernel",
            "kernels": ["vh_forward_kernel", "vh_backward_kernel"],
            "weight_grad_reduction": "deterministic: per-program partials, then torch.sum over batch and tiles",
            "tile": "NB planes x BW columns x RS rows per program, 8-slot register row window (k <= 8)",
            "tuning": "on (IMPLS_TRITON_TUNE=1)" if _tuning_enabled() else "off (default tiles; IMPLS_TRITON_TUNE=1 to tune)",
        }
        missing = triton_missing_reason()
        if missing:
            info["triton"] = None
            return info
        try:
            from importlib.metadata import version

            info["triton"] = version("triton")
        except Exception:  # pragma: no cover - importable but without metadata
            info["triton"] = "unknown"
        info["interpreted"] = self.interpret or os.environ.get("TRITON_INTERPRET") == "1"
        names = ("kind", "dtype", "B", "N", "H", "W", "k", "p")
        info["tiles"] = {" ".join(f"{k}={v}" for k, v in zip(names, key)):
                         dict(tile.as_dict(), **({"tuned_us": self._timings[key]} if key in self._timings else {}))
                         for key, tile in self._tuned.items()}
        return info

    # ---- helpers ---------------------------------------------------------------------
    def _km(self):
        return _ops().kernels(self.interpret)

    def _tile(self, kind, x_shape, params, padding, run_candidate):
        """The tile for one kernel and shape: an override, else (tuning on, GPU) the
        fastest candidate that matches the default's output, else the default."""
        ops = _ops()
        if kind in self._tiles:
            return self._tiles[kind]
        b, _, h, w = x_shape
        n, k = params.out_channels, params.kernel_size
        oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
        rows, cols = (oh, ow) if kind == "forward" else (max(h, oh), max(w, ow))
        key = (kind, str(params.dtype).replace("torch.", ""), b, n, h, w, k, padding)
        tile = self._tuned.get(key)
        if tile is None:
            candidates = ops.tile_candidates(b * n, rows, cols, kind=kind, sms=_sm_count(params.device))
            if _tuning_enabled() and not self.interpret and params.device.type == "cuda" and len(candidates) > 1:
                tile, times = _tune(candidates, run_candidate)
                self._timings[key] = {str(t.as_dict()): round(v * 1e6, 2) for t, v in times.items()}
            else:
                tile = candidates[0]
            self._tuned[key] = tile
        return tile

    # ---- hooks -----------------------------------------------------------------------
    def _prepare(self, params):
        k = params.kernel_size
        ops = _ops()
        if k > ops.MAX_K:
            raise ValueError(f"params: {self.name} supports kernel_size <= {ops.MAX_K}, got {k}")
        self._km()  # import triton (and the kernels) now, not in a timed call
        return {}

    def _vh_forward(self, t1, prm, padding, out=None):
        ops, km = _ops(), self._km()

        def run(tile, out=None):
            return ops.vh_forward(km, t1, prm.lateral_bias, prm.vertical, prm.vertical_bias, prm.horizontal,
                                  prm.horizontal_bias, padding, tile, out=out)

        tile = self._tile("forward", t1.shape, prm, padding, run)
        return run(tile, out)

    def _forward_train(self, x, prepared, padding):
        prm = prepared.params
        t1 = _ops().lateral_forward(x, prm.lateral)
        y = self._vh_forward(t1, prm, padding)
        return y, {"t1": t1}

    def _backward(self, saved, grad_y):
        ops, km = _ops(), self._km()
        prm, p, x = saved.prepared.params, saved.padding, saved.x
        t1 = saved.tensors["t1"]

        def run(tile):
            return ops.vh_backward(km, grad_y, t1, prm.lateral_bias, prm.vertical, prm.vertical_bias,
                                   prm.horizontal, p, tile)

        tile = self._tile("backward", x.shape, prm, p, run)
        g_t1, g_v, g_vb, g_h, g_hb, g_lb = run(tile)
        g_x, g_lat = ops.lateral_backward(x, prm.lateral, g_t1)
        return FlatGrads(g_x, g_lat, g_lb, g_v, g_vb, g_h, g_hb)

    # ---- per-kernel benchmarks -------------------------------------------------------
    def stages(self, x, prepared, padding=0) -> dict[str, Callable[[], Any]]:
        """"lateral" (the GEMM, without the bias, which the V+H kernel adds) and
        "vertical+horizontal" (the fused kernel alone, on a t1 computed here once)."""
        x, padding = self._check_input(x, prepared, padding)
        prm, ops = prepared.params, _ops()
        with torch.no_grad():
            t1 = ops.lateral_forward(x, prm.lateral)
            y = self._vh_forward(t1, prm, padding)  # picks (and caches) the tile first
        y_out = torch.empty_like(y)
        return {
            "lateral": lambda: ops.lateral_forward(x, prm.lateral),
            "vertical+horizontal": lambda: self._vh_forward(t1, prm, padding, out=y_out),
        }


_SMS: dict[Any, int] = {}


def _sm_count(device) -> int:
    """Multiprocessors of a CUDA device (cached); a nominal 4 elsewhere (the interpreter)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def _tuning_enabled() -> bool:
    return os.environ.get("IMPLS_TRITON_TUNE", "0") == "1"


def _cuda_seconds(fn, reps: int) -> float:
    """Seconds per call of fn, by CUDA events around `reps` calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def _tune(candidates, run_candidate, *, seconds=_cuda_seconds, reps: int = 20):
    """Run each candidate tile once (compiling it), drop those whose outputs differ from
    the first (default) candidate's by more than 1e-5 relative (or that fail to compile
    or launch), time the others (`seconds(fn, reps)`) and return (fastest tile,
    {tile: seconds}). Runs once per shape, at its first call."""
    from ..verify import relative_error

    ref, times = None, {}
    for tile in candidates:
        try:
            out = run_candidate(tile)
            out = out if isinstance(out, tuple) else (out,)
            if out[0].is_cuda:
                torch.cuda.synchronize()
        except Exception:  # a neighbour that does not compile or launch is skipped
            if ref is None:
                raise
            continue
        if ref is None:
            ref = out
        elif max(relative_error(a, r) for a, r in zip(out, ref)) > 1e-5:
            continue
        times[tile] = seconds(lambda: run_candidate(tile), reps)
    best = min(times, key=times.get)
    return best, times


IMPLEMENTATIONS = [TritonFused()]
