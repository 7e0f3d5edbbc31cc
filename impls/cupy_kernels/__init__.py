"""`cupy` and `cupy_fused`: hand-written CUDA kernels (the .cu files here) launched
through CuPy, on torch tensors, on torch's current stream.

- `cupy`: one kernel per stage: tiled lateral GEMM, depthwise V, depthwise H; backward
  H, V (each with its weight-gradient partials), two GEMMs for the lateral gradients.
- `cupy_fused`: the lateral GEMM, then V and H in one kernel that reads t1 once and
  writes y once (t2 stays in shared memory); its forward_train also writes t2 for the
  backward, which it shares with `cupy`.

CuPy is imported lazily (on `prepare`), so `import impls` never needs it; see README.md
for the kernel design and what has been verified where.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch

from ..base import Implementation
from ..params import FlatGrads
from . import _plan

_DTYPES = (torch.float32, torch.float64)


def cupy_missing_reason() -> str | None:
    """None when CuPy can be imported, else why not (without importing it)."""
    try:
        spec = importlib.util.find_spec("cupy")
    except (ImportError, ValueError):
        spec = None
    return "CuPy is not installed" if spec is None else None


_DEVICE_REASON: dict[str, str | None] = {}


def _device_reason() -> str | None:
    """Imports CuPy (only reached when torch sees a GPU) and asks it for a device."""
    if "r" not in _DEVICE_REASON:
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
            _DEVICE_REASON["r"] = None if count > 0 else "no CUDA device visible to CuPy"
        except ImportError as exc:
            _DEVICE_REASON["r"] = f"CuPy is not installed properly ({exc})"
        except Exception as exc:  # CUDARuntimeError: driver too old, no device...
            _DEVICE_REASON["r"] = f"no CUDA device usable by CuPy ({type(exc).__name__}: {exc})"
    return _DEVICE_REASON["r"]


def _backend():
    from . import _cupy_backend

    return _cupy_backend.get()


class _CupyBase(Implementation):
    devices = ("cuda",)
    dtypes = {"cuda": _DTYPES}
    fused = False
    role = "handwritten"
    extras = ("gpu",)

    def _platform_reason(self, device_type: str) -> str | None:
        missing = cupy_missing_reason()
        if not torch.cuda.is_available():
            reason = "no CUDA device (torch.cuda.is_available() is False)"
            return reason + ("; " + missing if missing else "")
        if missing:
            return missing
        return _device_reason()

    def runtime_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "block_threads": _plan.THREADS,
            "gemm_tile": "128x128x8, 8x8 per thread (float); 64x64x8, 4x4 (double); double-buffered smem",
            "depthwise_tiles": f"TW x TW output tiles, TW in {_plan.DW_TILES} (32 when the width exceeds 16)",
            "weight_grad_reduction": "deterministic: per-tile partials, then fixed-order sums (no atomics)",
            "kernels": (["gemm_tiled", "dw_vh_fwd"] if self.fused else ["gemm_tiled", "dw_v_fwd", "dw_h_fwd"])
            + ["dw_h_bwd", "dw_v_bwd", "dw_reduce_partials", "gemm_sum_splits"],
        }
        if cupy_missing_reason() is None:
            try:
                import cupy

                info["cupy"] = cupy.__version__
                from . import _cupy_backend

                if _cupy_backend._BACKEND is not None:
                    info["compiled"] = _cupy_backend._BACKEND.compiled()
            except Exception as exc:  # pragma: no cover - broken install
                info["cupy"] = f"unusable: {exc}"
        else:
            info["cupy"] = None
        return info

    # ---- hooks -----------------------------------------------------------------------
    def _prepare(self, params):
        k = params.kernel_size
        if k > _plan.MAX_KERNEL_SIZE:
            raise ValueError(f"params: {self.name} supports kernel_size <= {_plan.MAX_KERNEL_SIZE}, got {k}")
        be = _backend()
        index = params.device.index if params.device.index is not None else torch.cuda.current_device()
        # Compile (NVRTC) and load now, so that no timed call ever compiles.
        be.module("gemm", params.dtype, None, index)
        be.module("depthwise", params.dtype, k, index)
        return {}

    def _forward(self, x, prepared, padding):
        y, _ = _plan.forward(_backend(), x, prepared.params, padding, fused=self.fused, keep=False)
        return y

    def _forward_train(self, x, prepared, padding):
        return _plan.forward(_backend(), x, prepared.params, padding, fused=self.fused, keep=True)

    def _backward(self, saved, grad_y):
        t = saved.tensors
        return FlatGrads(*_plan.backward(_backend(), saved.x, saved.prepared.params, saved.padding,
                                         t["t1"], t["t2"], grad_y))

    # ---- per-kernel benchmarks -------------------------------------------------------
    def stages(self, x, prepared, padding) -> dict[str, Callable[[], None]]:
        """Zero-argument callables that each launch one forward kernel alone, on inputs
        computed here once (validated like forward). For per-kernel timing."""
        x, padding = self._check_input(x, prepared, padding)
        be, prm = _backend(), prepared.params
        with torch.no_grad():
            y, kept = _plan.forward(be, x, prm, padding, fused=False, keep=True)
        t1, t2 = kept["t1"], kept["t2"]
        t1_out, t2_out, y_out = torch.empty_like(t1), torch.empty_like(t2), torch.empty_like(y)
        out = {"lateral": lambda: _plan.lateral_forward(be, x, prm.lateral, prm.lateral_bias, t1_out)}
        if self.fused:
            out["vertical+horizontal"] = lambda: _plan.vh_forward(
                be, t1, prm.vertical, prm.vertical_bias, prm.horizontal, prm.horizontal_bias, padding, y_out)
        else:
            out["vertical"] = lambda: _plan.vertical_forward(be, t1, prm.vertical, prm.vertical_bias, padding, t2_out)
            out["horizontal"] = lambda: _plan.horizontal_forward(
                be, t2, prm.horizontal, prm.horizontal_bias, padding, y_out)
        return out


class CupyStaged(_CupyBase):
    name = "cupy"
    fused = False
    description = "hand-written CUDA via CuPy: tiled lateral GEMM, depthwise V, depthwise H, one kernel each"
    summary = "CUDA kernels through CuPy, stage by stage ([README](impls/cupy_kernels/README.md))"


class CupyFused(_CupyBase):
    name = "cupy_fused"
    fused = True
    description = "hand-written CUDA via CuPy: tiled lateral GEMM + one fused V+H kernel (t2 kept on chip)"
    summary = "CUDA kernels through CuPy, lateral GEMM + one fused V+H kernel ([README](impls/cupy_kernels/README.md))"


IMPLEMENTATIONS = [CupyStaged(), CupyFused()]
