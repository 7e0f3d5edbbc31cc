"""`openmp` and `openmp_fused`: the layer in hand-written C with OpenMP, bound with cffi.

`openmp` runs one parallel loop nest per stage, like a careful textbook: a blocked,
register-tiled GEMM for L, then V, then H, each writing a full-size tensor; its backward
is H, V and L backward one after another.

`openmp_fused` runs the lateral GEMM a tile of rows at a time into a small buffer
(keeping the k-1 halo rows of the previous tile) and applies V and H to the tile before
moving on, so inference writes no full-size intermediate. Training saves only t1; the
backward recomputes t2 a row at a time and runs V and H backward in one pass.

The C side (flatconv.c, kernels.h) never sees an unchecked input: the base class
validates everything, and this wrapper only hands it `data_ptr()` of contiguous tensors
it checked or allocated. The kernels run with the GIL released (cffi's default).
Building: see README.md beside this file.
"""

from __future__ import annotations

import os

import torch

from ..base import Implementation, Prepared, Saved, thread_count
from ..params import FlatGrads
from . import _ext

_SUFFIX = {torch.float32: ("f32", "float *"), torch.float64: ("f64", "double *")}


class _OpenMPBase(Implementation):
    devices = ("cpu",)
    role = "handwritten"
    dtypes = {"cpu": (torch.float32, torch.float64)}

    # ---- availability and runtime ----------------------------------------------------
    def _dependency_reason(self, device_type):
        return _ext.load().reason

    def runtime_info(self):
        ext = _ext.load()
        if ext.reason is not None:
            return {"available": False, "reason": ext.reason}
        lib, ffi = ext.lib, ext.ffi
        isa = lib.fc_isa()
        runtime = ffi.string(lib.fc_openmp_library()).decode()
        sizes = ffi.new("int[5]")
        lib.fc_block_sizes(isa, 4, sizes)
        return {
            "available": True,
            "isa": ffi.string(lib.fc_isa_name(isa)).decode(),
            "isa_supported": [ffi.string(lib.fc_isa_name(i)).decode() for i in range(3) if lib.fc_cpu_supports(i)],
            "openmp_runtime": runtime,
            # True when the extension bound to the libgomp torch itself loaded (same soname):
            # then torch and this extension share one OpenMP runtime and thread setting
            "openmp_shared_with_torch": os.path.realpath(runtime).startswith(os.path.realpath(os.path.dirname(torch.__file__))),
            "openmp_version": int(lib.fc_openmp_version()),
            "threads": int(lib.fc_get_max_threads()),
            "compiler": ffi.string(lib.fc_compiler()).decode(),
            "gemm_tile_f32": {"mr": sizes[0], "nr": sizes[1], "kc": sizes[2], "nc": sizes[3]},
            "extension": ext.origin,
        }

    def set_num_threads(self, threads):
        threads = thread_count(threads)
        ext = _ext.load()
        if ext.reason is None:
            ext.lib.fc_set_num_threads(threads)

    # ---- helpers ----------------------------------------------------------------------
    @staticmethod
    def _binding(dtype):
        ext = _ext.load()
        suffix, ctype = _SUFFIX[dtype]
        cast = ext.ffi.cast

        def ptr(t: torch.Tensor):
            return cast(ctype, t.data_ptr())

        def fn(name):
            return getattr(ext.lib, f"fc_{name}_{suffix}")

        return fn, ptr

    @staticmethod
    def _call(fn, *args):
        if fn(*args) != 0:
            raise MemoryError(f"{fn.__name__}: could not allocate its workspace")

    @staticmethod
    def _dims(x, prm, padding):
        b, c, h, w = x.shape
        n, k = prm.out_channels, prm.kernel_size
        return b, c, n, h, w, k, padding, h + 2 * padding - k + 1, w + 2 * padding - k + 1

    def _lateral(self, x, prm, t1):
        fn, ptr = self._binding(x.dtype)
        b, c, n, h, w, *_ = self._dims(x, prm, 0)
        self._call(fn("lateral"), ptr(x), ptr(prm.lateral), ptr(prm.lateral_bias), ptr(t1), b, c, n, h * w)
        return t1

    def _lateral_backward(self, g_t1, x, prm):
        fn, ptr = self._binding(x.dtype)
        b, c, n, h, w, *_ = self._dims(x, prm, 0)
        g_x, g_l, g_lb = torch.empty_like(x), torch.empty_like(prm.lateral), torch.empty_like(prm.lateral_bias)
        self._call(fn("lateral_backward"), ptr(g_t1), ptr(x), ptr(prm.lateral), ptr(g_x), ptr(g_l), ptr(g_lb), b, c, n, h * w)
        return g_x, g_l, g_lb

    def stages(self, x, prepared, padding):
        """Zero-argument callables that each run one kernel alone on precomputed inputs
        into a preallocated output, which they return; for timing the stages separately."""
        x, padding = self._check_input(x, prepared, padding)
        return self._stages(x, prepared.params, padding)


class OpenMP(_OpenMPBase):
    name = "openmp"
    description = "C + OpenMP via cffi: blocked register-tiled GEMM for L, then V, then H, one parallel loop nest each"
    summary = "C + OpenMP through cffi, stage by stage ([README](impls/openmp/README.md))"

    def _stage_tensors(self, x, prm, p):
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, p)
        return (x.new_empty(b, n, h, w), x.new_empty(b, n, oh, w), x.new_empty(b, n, oh, ow))

    def _run_v(self, prm, t1, t2, p):
        fn, ptr = self._binding(t1.dtype)
        b, n, h, w = t1.shape
        k = prm.kernel_size
        self._call(fn("vertical"), ptr(t1), ptr(prm.vertical), ptr(prm.vertical_bias), ptr(t2), b, n, h, w, k, p)
        return t2

    def _run_h(self, prm, t2, y, p):
        fn, ptr = self._binding(t2.dtype)
        b, n, oh, w = t2.shape
        k = prm.kernel_size
        self._call(fn("horizontal"), ptr(t2), ptr(prm.horizontal), ptr(prm.horizontal_bias), ptr(y), b, n, oh, w, k, p)
        return y

    def _forward_train(self, x, prepared, padding):
        prm = prepared.params
        t1, t2, y = self._stage_tensors(x, prm, padding)
        self._lateral(x, prm, t1)
        self._run_v(prm, t1, t2, padding)
        self._run_h(prm, t2, y, padding)
        return y, {"t1": t1, "t2": t2}

    def _backward(self, saved: Saved, gy):
        prm, x, p = saved.prepared.params, saved.x, saved.padding
        t1, t2 = saved.tensors["t1"], saved.tensors["t2"]
        fn, ptr = self._binding(x.dtype)
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, p)
        g_t2, g_t1 = torch.empty_like(t2), torch.empty_like(t1)
        g_h, g_hb = torch.empty_like(prm.horizontal), torch.empty_like(prm.horizontal_bias)
        g_v, g_vb = torch.empty_like(prm.vertical), torch.empty_like(prm.vertical_bias)
        self._call(fn("horizontal_backward"), ptr(gy), ptr(t2), ptr(prm.horizontal), ptr(g_t2), ptr(g_h), ptr(g_hb),
                   b, n, oh, w, k, p)
        self._call(fn("vertical_backward"), ptr(g_t2), ptr(t1), ptr(prm.vertical), ptr(g_t1), ptr(g_v), ptr(g_vb),
                   b, n, h, w, k, p)
        g_x, g_l, g_lb = self._lateral_backward(g_t1, x, prm)
        return FlatGrads(g_x, g_l, g_lb, g_v, g_vb, g_h, g_hb)

    def _stages(self, x, prm, p):
        t1, t2, y = self._stage_tensors(x, prm, p)
        self._lateral(x, prm, t1)
        self._run_v(prm, t1, t2, p)
        return {
            "lateral": lambda: self._lateral(x, prm, t1),
            "vertical": lambda: self._run_v(prm, t1, t2, p),
            "horizontal": lambda: self._run_h(prm, t2, y, p),
        }


class OpenMPFused(_OpenMPBase):
    name = "openmp_fused"
    description = ("C + OpenMP via cffi: lateral GEMM a row tile at a time into a cache-resident buffer, "
                   "V and H applied on the tile; no full-size intermediate in inference")
    summary = "C + OpenMP through cffi, fused: lateral, V and H a row tile at a time ([README](impls/openmp/README.md))"
    fused = True

    def _prepare(self, params):
        # L packed into the GEMM's register-tile panels once, as inference engines reorder
        # weights once; the C side repacks per call if the instruction set (so the tile
        # height) changed since
        ext = _ext.load()
        if ext.reason is not None:
            return {}
        fn, ptr = self._binding(params.dtype)
        sizes = ext.ffi.new("int[5]")
        ext.lib.fc_block_sizes(ext.lib.fc_isa(), params.dtype.itemsize, sizes)
        mr, n, c = sizes[0], params.out_channels, params.in_channels
        packed = params.lateral.new_empty(-(-n // mr) * mr * c)
        if fn("pack_lateral")(ptr(params.lateral), n, c, ptr(packed)) != mr:  # the ISA changed meanwhile
            return {}
        return {"lateral_packed": packed, "lateral_packed_mr": mr}

    def _fused(self, x, prepared, p, y, t1_out):
        fn, ptr = self._binding(x.dtype)
        prm, extra, null = prepared.params, prepared.extra, _ext.load().ffi.NULL
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, p)
        packed = extra.get("lateral_packed")
        self._call(fn("fused_forward"), ptr(x), ptr(prm.lateral), ptr(packed) if packed is not None else null,
                   extra.get("lateral_packed_mr", 0), ptr(prm.lateral_bias), ptr(prm.vertical),
                   ptr(prm.vertical_bias), ptr(prm.horizontal), ptr(prm.horizontal_bias), ptr(y),
                   ptr(t1_out) if t1_out is not None else null, b, c, n, h, w, k, p)

    def _vh(self, prm, t1, y, p):
        fn, ptr = self._binding(t1.dtype)
        b, n, h, w = t1.shape
        k = prm.kernel_size
        self._call(fn("vh"), ptr(t1), ptr(prm.vertical), ptr(prm.vertical_bias), ptr(prm.horizontal),
                   ptr(prm.horizontal_bias), ptr(y), b, n, h, w, k, p)
        return y

    def _forward(self, x, prepared, padding):
        prm = prepared.params
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, padding)
        y = x.new_empty(b, n, oh, ow)
        self._fused(x, prepared, padding, y, None)
        return y

    def _forward_train(self, x, prepared, padding):
        prm = prepared.params
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, padding)
        y, t1 = x.new_empty(b, n, oh, ow), x.new_empty(b, n, h, w)
        self._fused(x, prepared, padding, y, t1)
        return y, {"t1": t1}

    def _backward(self, saved: Saved, gy):
        prm, x, p = saved.prepared.params, saved.x, saved.padding
        t1 = saved.tensors["t1"]
        fn, ptr = self._binding(x.dtype)
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, p)
        g_t1 = torch.empty_like(t1)
        g_h, g_hb = torch.empty_like(prm.horizontal), torch.empty_like(prm.horizontal_bias)
        g_v, g_vb = torch.empty_like(prm.vertical), torch.empty_like(prm.vertical_bias)
        self._call(fn("vh_backward"), ptr(gy), ptr(t1), ptr(prm.vertical), ptr(prm.vertical_bias),
                   ptr(prm.horizontal), ptr(g_t1), ptr(g_v), ptr(g_vb), ptr(g_h), ptr(g_hb), b, n, h, w, k, p)
        g_x, g_l, g_lb = self._lateral_backward(g_t1, x, prm)
        return FlatGrads(g_x, g_l, g_lb, g_v, g_vb, g_h, g_hb)

    def _stages(self, x, prm, p):
        b, c, n, h, w, k, p, oh, ow = self._dims(x, prm, p)
        t1, y = x.new_empty(b, n, h, w), x.new_empty(b, n, oh, ow)
        self._lateral(x, prm, t1)
        return {
            "lateral": lambda: self._lateral(x, prm, t1),
            "vertical+horizontal": lambda: self._vh(prm, t1, y, p),
        }


IMPLEMENTATIONS = [OpenMP(), OpenMPFused()]

__all__ = ["OpenMP", "OpenMPFused", "IMPLEMENTATIONS", "Prepared"]
