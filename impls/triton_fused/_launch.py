"""Launches of the Triton kernels: tile choice, grids, buffers, the lateral GEMMs.

Nothing here imports triton at module level: `kernels(interpret)` imports the kernel
module on first use. With interpret=False it is the ordinary module
(`impls.triton_fused._kernels`, compiled for the GPU by triton.jit); with interpret=True
it is a second, private copy of the same file executed while TRITON_INTERPRET=1, so its
kernels run in Triton's interpreter on CPU tensors. The two copies have separate globals,
so which one a process imported first does not matter (the tests rely on that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import pathlib
import threading
from typing import Any

import torch

MAX_K = 8  # the kernels' register window has 8 slots (_kernels.MAX_K)
MAX_BW = 128  # widest column tile
GRID_MAX = 2**31 - 1

_LOCK = threading.Lock()
_MODULES: dict[bool, Any] = {}
_INTERPRETED_NAME = "impls.triton_fused._kernels_interpreted"


def kernels(interpret: bool = False):
    """The kernel module: compiled (interpret=False) or run by Triton's interpreter."""
    interpret = bool(interpret)
    with _LOCK:
        if interpret not in _MODULES:
            if not interpret:
                _MODULES[False] = importlib.import_module("impls.triton_fused._kernels")
            else:
                # triton itself is imported normally first, so that its own library
                # (tl.standard...) stays compiled-mode; only this copy's kernels are
                # interpreted.
                import triton  # noqa: F401
                import triton.language  # noqa: F401

                path = pathlib.Path(__file__).with_name("_kernels.py")
                spec = importlib.util.spec_from_file_location(_INTERPRETED_NAME, path)
                module = importlib.util.module_from_spec(spec)
                old = os.environ.get("TRITON_INTERPRET")
                os.environ["TRITON_INTERPRET"] = "1"  # read by triton.jit as it decorates
                try:
                    spec.loader.exec_module(module)
                finally:
                    if old is None:
                        del os.environ["TRITON_INTERPRET"]
                    else:
                        os.environ["TRITON_INTERPRET"] = old
                _fast_device_calls(module)
                _MODULES[True] = module
        return _MODULES[interpret]


def _fast_device_calls(module) -> None:
    """Let the interpreted kernels call their @triton.jit helpers directly. The
    interpreter's InterpretedFunction.__call__ re-patches all of triton.language on
    every helper call, which the kernel launch has already done for the whole kernel
    (and undoes at its end); skipping the redundant re-patch makes the interpreted tests
    about a third faster and changes nothing they compute. Kernels (launched with [grid])
    and triton's own functions (tl.standard._sum_combine, which the interpreter
    recognises by identity) are left alone; anything unexpected leaves the module as it is."""
    try:
        own = vars(module)
        helpers = {name: f for name, f in own.items()
                   if type(f).__name__ == "InterpretedFunction" and not name.endswith("_kernel")
                   and getattr(f, "fn", None) is not None and f.fn.__globals__ is own}
        direct = {name: f.rewrite() for name, f in helpers.items()}
    except Exception:  # pragma: no cover - another interpreter version: keep its own path
        return
    for name, fn in direct.items():
        setattr(module, name, fn)


def is_interpreted(module) -> bool:
    """True when the module's kernels are Triton interpreter functions (interpret=True,
    or TRITON_INTERPRET=1 in the environment when the compiled module was imported)."""
    return type(module.vh_forward_kernel).__name__ == "InterpretedFunction"


# ---- tiles -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tile:
    """One program: NB planes x BW columns x RS rows (a loop of RS + k - 1 row steps),
    with num_warps warps."""

    nb: int
    bw: int
    rs: int
    num_warps: int
    ahead: int = 1  # forward only: rows read ahead (1..4)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


# Resident 1-warp programs per SM the heuristic assumes (the forward kernel uses 70-145
# registers per thread at 4 values per thread, the backward 127-225; see README.md).
_WARPS_PER_SM = {"forward": 24, "backward": 12}


def default_tile(nq: int, rows: int, cols: int, *, kind: str = "forward", sms: int = 132) -> Tile:
    """The default tile for `nq` planes of rows x cols (the kernel's row and column
    range), on a GPU with `sms` multiprocessors.

    BW is the row width rounded up to a power of two (at most MAX_BW; wider rows are
    several column tiles) and NB planes sit side by side so that a program row is 128
    values: one warp, 4 per thread (a 16-byte vector when the width allows). Rows are cut
    into strips of at most 32 (bounded program length) and, while the grid is smaller than
    one wave of resident programs, into more strips of at least 8 rows (the k - 1 halo
    rows are re-read). The forward reads rows ahead: more when the grid fills fewer of
    the resident slots (bytes in flight per SM are what a memory-bound kernel needs)."""
    bw = min(max(_pow2_at_least(cols), 4), MAX_BW)
    nb = max(1, min(128 // bw, _pow2_at_least(nq)))
    blocks = -(-nq // nb) * -(-cols // bw)
    slots = max(1, sms * _WARPS_PER_SM[kind])
    strips = max(1, -(-rows // 32))
    while blocks * (strips + 1) <= slots and rows // (strips + 1) >= 8:
        strips += 1
    rs = -(-rows // strips)
    programs = blocks * -(-rows // rs)
    fill = programs / slots
    ahead = 3 if fill < 0.75 else 2 if fill < 1.5 else 1
    return Tile(nb, bw, rs, 1, ahead if kind == "forward" else 1)


def tile_candidates(nq: int, rows: int, cols: int, *, kind: str = "forward", sms: int = 132) -> list[Tile]:
    """The default and a few neighbours, for the optional per-shape tuning."""
    base = default_tile(nq, rows, cols, kind=kind, sms=sms)
    out = [base]

    def add(**changes):
        t = dataclasses.replace(base, **changes)
        if t.nb * t.bw <= 1024 and t not in out:
            out.append(t)

    add(nb=base.nb * 2)  # 8 values per thread
    add(rs=max(1, -(-base.rs // 2)))  # twice the strips
    add(rs=min(rows, base.rs * 2))  # half the strips
    if kind == "forward":
        add(ahead=1 if base.ahead > 1 else 3)
    return out


def _check_tile(tile: Tile) -> None:
    for v in (tile.nb, tile.bw, tile.num_warps):
        if v < 1 or v & (v - 1):
            raise ValueError(f"tile: nb, bw and num_warps must be powers of two, got {tile}")
    if tile.rs < 1 or not 1 <= tile.ahead <= 4:
        raise ValueError(f"tile: rs >= 1 and 1 <= ahead <= 4 expected, got {tile}")


def _grid(nq: int, rows: int, cols: int, tile: Tile) -> tuple[int, int, int]:
    """(programs, tiles per plane block, column tiles): a 1-D grid, plane block major, so
    the strips of a plane (which share halo rows) run next to each other."""
    col_tiles = -(-cols // tile.bw)
    tiles = -(-rows // tile.rs) * col_tiles
    programs = -(-nq // tile.nb) * tiles
    if programs > GRID_MAX:
        raise ValueError(f"triton_fused: {programs} programs exceed the grid limit {GRID_MAX}")
    return programs, tiles, col_tiles


def _on(device: torch.device):
    """Launch on the tensors' GPU (triton launches on torch's current device and stream)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


# ---- the V+H kernels -----------------------------------------------------------------
def vh_forward(km, t1, lb, wv, bv, wh, bh, padding, tile: Tile | None = None, out=None):
    """y from raw t1 (the GEMM output without lateral bias; lb is added here, None for
    none)."""
    b, n, h, w = t1.shape
    k = wv.shape[1]
    oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    nq = b * n
    tile = tile or default_tile(nq, oh, ow)
    _check_tile(tile)
    y = out if out is not None else torch.empty((b, n, oh, ow), dtype=t1.dtype, device=t1.device)
    programs, tiles, col_tiles = _grid(nq, oh, ow, tile)
    with _on(t1.device):
        km.vh_forward_kernel[(programs,)](
            t1, lb if lb is not None else bv, wv, bv, wh, bh, y,
            nq, n, h, w, oh, ow, tile.rs, tiles, col_tiles,
            K=k, P=padding, HAS_LB=lb is not None, NB=tile.nb, BW=tile.bw, AHEAD=tile.ahead, num_warps=tile.num_warps,
        )
    return y


def vh_backward(km, gy, t1, lb, wv, bv, wh, padding, tile: Tile | None = None):
    """(grad t1, grad wv, grad vb, grad wh, grad hb, grad lb) from grad y and raw t1."""
    b, n, oh, ow = gy.shape
    h, w = t1.shape[2], t1.shape[3]
    k = wv.shape[1]
    nq = b * n
    rows, cols = max(h, oh), max(w, ow)
    tile = tile or default_tile(nq, rows, cols, kind="backward")
    _check_tile(tile)
    programs, tiles, col_tiles = _grid(nq, rows, cols, tile)
    g_t1 = torch.empty_like(t1)
    s = 2 * k + 3
    part = torch.empty((b, n, tiles, s), dtype=t1.dtype, device=t1.device)
    with _on(t1.device):
        km.vh_backward_kernel[(programs,)](
            gy, t1, lb if lb is not None else bv, wv, bv, wh, g_t1, part,
            nq, n, h, w, oh, ow, tile.rs, tiles, col_tiles,
            K=k, P=padding, HAS_LB=lb is not None, NB=tile.nb, BW=tile.bw, num_warps=tile.num_warps,
        )
    # Second level of the reduction: a fixed-order sum over batch and tiles (torch's sum
    # has no atomics, so two backward runs are bitwise equal).
    sums = part.sum(dim=(0, 2))  # (N, 2K + 3)
    g_wv = sums[:, :k].contiguous()
    g_wh = sums[:, k:2 * k].contiguous()
    g_vb, g_hb, g_lb = sums[:, 2 * k].contiguous(), sums[:, 2 * k + 1].contiguous(), sums[:, 2 * k + 2].contiguous()
    return g_t1, g_wv, g_vb, g_wh, g_hb, g_lb


# ---- the lateral stage (torch.matmul: cuBLAS on the GPU) -----------------------------
def lateral_forward(x, lateral):
    """t1 without its bias: (B, N, H*W) = lateral @ x[b] per image, one batched GEMM."""
    b, c, h, w = x.shape
    return torch.matmul(lateral, x.view(b, c, h * w)).view(b, lateral.shape[0], h, w)


def lateral_backward(x, lateral, g_t1):
    """(grad x, grad lateral): lateral^T @ g_t1[b], and sum_b g_t1[b] @ x[b]^T (a batched
    GEMM then a fixed-order sum over the batch: deterministic)."""
    b, c, h, w = x.shape
    n = lateral.shape[0]
    g3 = g_t1.view(b, n, h * w)
    g_x = torch.matmul(lateral.t(), g3).view(b, c, h, w)
    g_lat = torch.bmm(g3, x.view(b, c, h * w).transpose(1, 2)).sum(0)
    return g_x, g_lat


# ---- ahead-of-time compile (no GPU needed) -------------------------------------------
_KERNEL_NAMES = ("vh_forward_kernel", "vh_backward_kernel")
_TT_DTYPES = {torch.float32: "fp32", torch.float64: "fp64"}


def compile_kernel(name: str, dtype: torch.dtype, k: int, padding: int, tile: Tile, *, has_lb: bool = True,
                   arch: int = 90, divisible: bool = True):
    """Compile one kernel specialisation for an NVIDIA GPU of compute capability `arch`
    without a GPU (triton.compile with an explicit GPUTarget; triton's own ptxas). The
    integer and pointer arguments are specialised as a launch on tensors whose sizes are
    multiples of 16 would be (divisible=True). Returns the CompiledKernel (asm: ttir,
    ttgir, llir, ptx, cubin). For the tests and the README's resource table."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if name not in _KERNEL_NAMES:
        raise ValueError(f"name: expected one of {_KERNEL_NAMES}, got {name!r}")
    fn = getattr(kernels(False), name)
    consts = {"K": k, "P": padding, "HAS_LB": has_lb, "NB": tile.nb, "BW": tile.bw}
    if name == "vh_forward_kernel":
        consts["AHEAD"] = tile.ahead
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = "*" + _TT_DTYPES[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
            if divisible and arg in ("H", "W", "OH", "OW"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": tile.num_warps})
