"""CuPy side: NVRTC compilation cache, torch's allocator and stream, kernel launches.

Imported only once an implementation is actually used on a CUDA device (never by
`import impls`). Tensors cross over zero-copy: every kernel argument is the tensor's
device pointer (what `__cuda_array_interface__` / DLPack would hand CuPy), so no CuPy
array and no DLPack capsule is built per call, and torch keeps owning every buffer.
Kernels run on torch's current stream; nothing here synchronises the host, except the
debug mode `IMPLS_CUPY_SYNC=1`, which synchronises after each launch so that an
asynchronous fault is reported with the name of the kernel that caused it.
"""

from __future__ import annotations

import os
import pathlib
import threading
import warnings

import numpy as np
import torch

import cupy

from . import _plan

_HERE = pathlib.Path(__file__).resolve().parent
SOURCES = {"gemm": _HERE / "lateral_gemm.cu", "depthwise": _HERE / "depthwise.cu"}
NVRTC_OPTIONS = ("--std=c++17",)


class KernelError(RuntimeError):
    """A kernel failed to compile, launch or run; the message names it."""


def _torch_malloc(size: int, device_id: int) -> int:
    stream = torch.cuda.current_stream(device_id).cuda_stream
    return torch.cuda.caching_allocator_alloc(size, device_id, stream)


def _torch_free(ptr: int, device_id: int) -> None:
    torch.cuda.caching_allocator_delete(ptr)


class CupyBackend:
    """One per process (see `get()`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._modules: dict[tuple, cupy.RawModule] = {}
        self._kernels: dict[tuple, object] = {}
        self._streams: dict[tuple[int, int], object] = {}
        self._sm: dict[int, int] = {}
        self.debug_sync = os.environ.get("IMPLS_CUPY_SYNC", "") not in ("", "0")
        # Route CuPy's own allocations through torch's caching allocator, so that
        # torch.cuda's peak-memory counters see them too.
        self._allocator = cupy.cuda.memory.PythonFunctionAllocator(_torch_malloc, _torch_free)
        cupy.cuda.set_allocator(self._allocator.malloc)

    # ---- compilation -----------------------------------------------------------------
    def module(self, family: str, dtype: torch.dtype, k: int | None, device_index: int):
        """The compiled module of (family, dtype, k), built once per process and device."""
        key = (family, dtype, k if family == "depthwise" else None, device_index)
        mod = self._modules.get(key)
        if mod is not None:
            return mod
        with self._lock:
            mod = self._modules.get(key)
            if mod is None:
                names = _plan.module_names(family, dtype, k)
                src = SOURCES[family].read_text()
                try:
                    with cupy.cuda.Device(device_index):
                        mod = cupy.RawModule(code=src, options=NVRTC_OPTIONS, name_expressions=names)
                        for name in names:  # compile and load now, not inside a timed call
                            self._kernels[key + (name,)] = mod.get_function(name)
                except Exception as exc:  # CompileException, CUDADriverError
                    raise KernelError(f"compiling {SOURCES[family].name} ({', '.join(names)}) failed: {exc}") from exc
                self._modules[key] = mod
        return mod

    def compiled(self) -> list[str]:
        return sorted({key[-1] for key in self._kernels})

    # ---- runtime ---------------------------------------------------------------------
    def _stream(self, device: torch.device):
        ts = torch.cuda.current_stream(device)
        key = (ts.cuda_stream, ts.device_index)
        s = self._streams.get(key)
        if s is None:
            if hasattr(ts, "__cuda_stream__") and hasattr(cupy.cuda.Stream, "from_external"):
                s = cupy.cuda.Stream.from_external(ts)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    s = cupy.cuda.ExternalStream(ts.cuda_stream, ts.device_index)
            self._streams[key] = (s, ts)  # keep torch's stream object alive with it
            s = self._streams[key]
        return s[0]

    def sm_count(self, device: torch.device) -> int:
        idx = torch.device(device).index or 0
        if idx not in self._sm:
            self._sm[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        return self._sm[idx]

    def empty(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def _arg(a):
        kind = a[0]
        if kind == "p":
            t, off = a[1], a[2]
            return np.uint64(0 if t is None else t.data_ptr() + off * t.element_size())
        if kind == "i":
            return np.int32(a[1])
        if kind == "l":
            return np.int64(a[1])
        raise ValueError(f"unknown kernel argument kind {kind!r}")

    def launch(self, family, dtype, k, name, grid, block, args):
        device = next(a[1].device for a in args if a[0] == "p" and a[1] is not None)
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = (family, dtype, k if family == "depthwise" else None, index, name)
        kernel = self._kernels.get(key)
        if kernel is None:
            self.module(family, dtype, k, index)
            kernel = self._kernels.get(key)
            if kernel is None:
                raise KernelError(f"kernel {name} is not in the compiled module of {SOURCES[family].name}")
        values = tuple(self._arg(a) for a in args)
        stream = self._stream(device)
        try:
            with cupy.cuda.Device(index), stream:
                kernel(grid, block, values)
                if self.debug_sync:
                    stream.synchronize()
        except Exception as exc:
            raise KernelError(f"CUDA kernel {name} (grid {grid}, block {block}) failed: {exc}") from exc


_BACKEND: CupyBackend | None = None


def get() -> CupyBackend:
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = CupyBackend()
    return _BACKEND
