"""Launch plans of the hand-written kernels: grids, arguments, intermediate buffers.

Everything here is backend-agnostic torch + integer arithmetic. A backend provides
`launch(family, dtype, k, name, grid, block, args)`, `empty(shape, like)` and
`sm_count(device)`; `_cupy_backend.CupyBackend` launches through CuPy on the GPU, and the
tests drive the very same plans through a CPU emulator of the .cu files
(`emu/`), so index arithmetic and buffer shapes are checked without a GPU.

Kernel arguments are tuples: ("p", tensor or None, element offset), ("i", int32 value),
("l", int64 value).
"""

from __future__ import annotations

import torch

THREADS = 256
MAX_KERNEL_SIZE = 32
STATIC_SMEM_LIMIT = 48 * 1024
INT32_MAX = 2**31 - 1
GRID_YZ_MAX = 65535

CTYPES = {torch.float32: "float", torch.float64: "double"}
GEMM_TM = {torch.float32: 8, torch.float64: 4}  # register tile; block tile is 16 * TM
DW_TILES = (16, 32)  # square output tiles TW x TW of the depthwise kernels
DW_KERNELS = ("dw_v_fwd", "dw_h_fwd", "dw_vh_fwd", "dw_h_bwd", "dw_v_bwd")


def _r4(k: int) -> int:
    return (k - 1 + 3) // 4 * 4


def dw_smem_bytes(kernel: str, k: int, tw: int, itemsize: int) -> int:
    """Static shared memory of one depthwise kernel, as the .cu declares it."""
    r4, th = _r4(k), tw
    elems = {
        "dw_v_fwd": (th + k - 1) * tw,
        "dw_h_fwd": th * (2 * r4 + tw),
        "dw_vh_fwd": (th + k - 1) * (2 * r4 + tw) + th * (tw + k - 1),
        "dw_h_bwd": 2 * th * (2 * r4 + tw) + (THREADS // 32) * (k + 1),
        "dw_v_bwd": 2 * (th + k - 1) * tw + (THREADS // 32) * (k + 2),
    }[kernel]
    return elems * itemsize


def dw_tiles(k: int, dtype: torch.dtype) -> tuple[int, ...]:
    """Tile widths whose every depthwise kernel fits the 48 KiB of static shared memory."""
    size = torch.empty((), dtype=dtype).element_size()
    return tuple(tw for tw in DW_TILES if all(dw_smem_bytes(n, k, tw, size) <= STATIC_SMEM_LIMIT for n in DW_KERNELS))


def dw_tile_for(width: int, k: int, dtype: torch.dtype) -> int:
    tiles = dw_tiles(k, dtype)
    return 32 if width > 16 and 32 in tiles else 16


def module_names(family: str, dtype: torch.dtype, k: int | None = None) -> list[str]:
    """Name expressions of one NVRTC module: ("gemm", dtype) or ("depthwise", dtype, k)."""
    t = CTYPES[dtype]
    if family == "gemm":
        return [f"gemm_tiled<{t}, {a}, {b}>" for a, b in (("true", "false"), ("false", "false"), ("true", "true"))] + [
            f"gemm_sum_splits<{t}>"
        ]
    if family == "depthwise":
        return [f"{n}<{t}, {k}, {tw}, {tw}>" for tw in dw_tiles(k, dtype) for n in DW_KERNELS] + [
            f"dw_reduce_partials<{t}>"
        ]
    raise ValueError(f"family: unknown kernel family {family!r}")


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_grid(kernel: str, grid) -> None:
    gx, gy, gz = grid
    if gx > INT32_MAX or gy > GRID_YZ_MAX or gz > GRID_YZ_MAX:
        raise ValueError(f"{kernel}: grid {grid} exceeds CUDA's limits (x < 2^31, y and z <= 65535)")


# ---- the lateral GEMM --------------------------------------------------------------
def gemm(be, dtype, *, a, a_off=0, a_kc, lda, sab, b, b_off=0, b_kc, ldb, sbb, c, c_off=0, ldc, scz,
         m, nc, kd, nbatch, bpz=1, bias=None):
    """C_z[m][n] = sum_{b in split z} sum_k A_b[m][k] B_b[k][n] (+ bias[m]); see lateral_gemm.cu."""
    tm = GEMM_TM[dtype]
    bm, ht = 16 * tm, tm // 2
    name = f"gemm_tiled<{CTYPES[dtype]}, {'true' if a_kc else 'false'}, {'true' if b_kc else 'false'}>"
    nz = _cdiv(nbatch, bpz)
    # More than 65535 splits/batches: launch in chunks, offsetting the operands.
    chunk = GRID_YZ_MAX
    for z0 in range(0, nz, chunk):
        zc = min(chunk, nz - z0)
        b0 = z0 * bpz
        nb = min(nbatch - b0, zc * bpz)
        a_o, b_o, c_o = a_off + b0 * sab, b_off + b0 * sbb, c_off + z0 * scz
        grid = (_cdiv(nc, bm), _cdiv(m, bm), zc)
        _check_grid(name, grid)
        itemsize = c.element_size()
        vec = int(ldc % ht == 0 and scz % ht == 0 and (c.data_ptr() + c_o * itemsize) % 16 == 0)
        be.launch("gemm", dtype, None, name, grid, (THREADS, 1, 1), [
            ("p", a, a_o), ("p", b, b_o), ("p", bias, 0), ("p", c, c_o),
            ("i", m), ("i", nc), ("i", kd), ("l", lda), ("l", sab), ("l", ldb), ("l", sbb),
            ("l", ldc), ("l", scz), ("i", nb), ("i", bpz), ("i", vec),
        ])


def lateral_forward(be, x, lateral, lateral_bias, t1):
    bsz, c, h, w = x.shape
    n, hw = lateral.shape[0], h * w
    gemm(be, x.dtype, a=lateral, a_kc=True, lda=c, sab=0, b=x, b_kc=False, ldb=hw, sbb=c * hw,
         c=t1, ldc=hw, scz=n * hw, m=n, nc=hw, kd=c, nbatch=bsz, bias=lateral_bias)


def lateral_grad_input(be, g_t1, lateral, g_x):
    bsz, c, h, w = g_x.shape
    n, hw = lateral.shape[0], h * w
    # A[m = c][k = n] = lateral[n][c]: m contiguous, lda = C
    gemm(be, g_x.dtype, a=lateral, a_kc=False, lda=c, sab=0, b=g_t1, b_kc=False, ldb=hw, sbb=n * hw,
         c=g_x, ldc=hw, scz=c * hw, m=c, nc=hw, kd=n, nbatch=bsz)


def lateral_grad_weight(be, g_t1, x, g_lat):
    """g_lat (N, C) = sum_b g_t1[b] @ x[b]^T, split over the batch for parallelism and
    summed in a fixed order (deterministic)."""
    bsz, c, h, w = x.shape
    n, hw = g_lat.shape[0], h * w
    dtype = x.dtype
    bm = 16 * GEMM_TM[dtype]
    tiles = _cdiv(c, bm) * _cdiv(n, bm)
    target = 4 * be.sm_count(x.device)  # two resident blocks per SM, two waves
    nz = max(1, min(bsz, _cdiv(target, tiles)))
    bpz = _cdiv(bsz, nz)
    nz = _cdiv(bsz, bpz)
    common = dict(a=g_t1, a_kc=True, lda=hw, sab=n * hw, b=x, b_kc=True, ldb=hw, sbb=c * hw,
                  ldc=c, m=n, nc=c, kd=hw, nbatch=bsz, bpz=bpz)
    if nz == 1:
        gemm(be, dtype, c=g_lat, scz=0, **common)
        return
    ws = be.empty((nz, n, c), g_lat)
    gemm(be, dtype, c=ws, scz=n * c, **common)
    count = n * c
    be.launch("gemm", dtype, None, f"gemm_sum_splits<{CTYPES[dtype]}>", (_cdiv(count, THREADS), 1, 1),
              (THREADS, 1, 1), [("p", ws, 0), ("i", nz), ("l", count), ("p", g_lat, 0)])


# ---- depthwise stages --------------------------------------------------------------
def _dw_name(kernel, dtype, k, tw):
    return f"{kernel}<{CTYPES[dtype]}, {k}, {tw}, {tw}>"


def _dw_launch(be, kernel, dtype, k, tw, grid, args):
    name = _dw_name(kernel, dtype, k, tw)
    _check_grid(name, grid)
    be.launch("depthwise", dtype, k, name, grid, (THREADS, 1, 1), args)


def vertical_forward(be, t1, wv, bv, pad, t2):
    bsz, n, h, w = t1.shape
    k, oh = wv.shape[1], t2.shape[2]
    tw = dw_tile_for(w, k, t1.dtype)
    vec = int(w % 4 == 0 and _aligned(t1))
    _dw_launch(be, "dw_v_fwd", t1.dtype, k, tw, (bsz * n, _cdiv(oh, tw), _cdiv(w, tw)), [
        ("p", t1, 0), ("p", wv, 0), ("p", bv, 0), ("p", t2, 0),
        ("i", n), ("i", h), ("i", w), ("i", oh), ("i", pad), ("i", vec)])


def horizontal_forward(be, t2, wh, bh, pad, y):
    bsz, n, oh, w = t2.shape
    k, ow = wh.shape[1], y.shape[3]
    tw = dw_tile_for(ow, k, t2.dtype)
    vec = int(w % 4 == 0 and _aligned(t2))
    _dw_launch(be, "dw_h_fwd", t2.dtype, k, tw, (bsz * n, _cdiv(oh, tw), _cdiv(ow, tw)), [
        ("p", t2, 0), ("p", wh, 0), ("p", bh, 0), ("p", y, 0),
        ("i", n), ("i", oh), ("i", w), ("i", ow), ("i", pad), ("i", vec)])


def vh_forward(be, t1, wv, bv, wh, bh, pad, y, t2_out=None):
    bsz, n, h, w = t1.shape
    k, oh, ow = wv.shape[1], y.shape[2], y.shape[3]
    tw = dw_tile_for(ow, k, t1.dtype)
    vec = int(w % 4 == 0 and _aligned(t1))
    _dw_launch(be, "dw_vh_fwd", t1.dtype, k, tw, (bsz * n, _cdiv(oh, tw), _cdiv(ow, tw)), [
        ("p", t1, 0), ("p", wv, 0), ("p", bv, 0), ("p", wh, 0), ("p", bh, 0), ("p", y, 0), ("p", t2_out, 0),
        ("i", n), ("i", h), ("i", w), ("i", oh), ("i", ow), ("i", pad), ("i", vec)])


def _reduce_partials(be, dtype, k, partial, rows, n, np_, gw, gb1, gb2):
    be.launch("depthwise", dtype, k, f"dw_reduce_partials<{CTYPES[dtype]}>", (_cdiv(n * np_, THREADS), 1, 1),
              (THREADS, 1, 1), [("p", partial, 0), ("l", rows), ("i", n), ("i", k), ("i", np_),
                                ("p", gw, 0), ("p", gb1, 0), ("p", gb2, 0)])


def horizontal_backward(be, gy, t2, wh, pad, g_t2, g_h, g_hb):
    bsz, n, oh, ow = gy.shape
    w, k = t2.shape[3], wh.shape[1]
    tw = dw_tile_for(w, k, gy.dtype)
    grid = (bsz * n, _cdiv(oh, tw), _cdiv(w, tw))
    rows = bsz * grid[1] * grid[2]
    partial = be.empty((n, rows, k + 1), gy)
    _dw_launch(be, "dw_h_bwd", gy.dtype, k, tw, grid, [
        ("p", gy, 0), ("p", t2, 0), ("p", wh, 0), ("p", g_t2, 0), ("p", partial, 0),
        ("i", n), ("i", oh), ("i", w), ("i", ow), ("i", pad),
        ("i", int(ow % 4 == 0 and _aligned(gy))), ("i", int(w % 4 == 0 and _aligned(t2)))])
    _reduce_partials(be, gy.dtype, k, partial, rows, n, k + 1, g_h, g_hb, None)


def vertical_backward(be, g_t2, t1, wv, pad, g_t1, g_v, g_vb, g_lb):
    bsz, n, h, w = t1.shape
    k, oh = wv.shape[1], g_t2.shape[2]
    tw = dw_tile_for(w, k, t1.dtype)
    grid = (bsz * n, _cdiv(h, tw), _cdiv(w, tw))
    rows = bsz * grid[1] * grid[2]
    partial = be.empty((n, rows, k + 2), t1)
    _dw_launch(be, "dw_v_bwd", t1.dtype, k, tw, grid, [
        ("p", g_t2, 0), ("p", t1, 0), ("p", wv, 0), ("p", g_t1, 0), ("p", partial, 0),
        ("i", n), ("i", h), ("i", w), ("i", oh), ("i", pad),
        ("i", int(w % 4 == 0 and _aligned(g_t2) and _aligned(t1)))])
    _reduce_partials(be, t1.dtype, k, partial, rows, n, k + 2, g_v, g_vb, g_lb)


# ---- whole layer -------------------------------------------------------------------
def out_shape(x, params, pad):
    bsz, _, h, w = x.shape
    k = params.kernel_size
    return bsz, params.out_channels, h + 2 * pad - k + 1, w + 2 * pad - k + 1


def forward(be, x, params, pad, *, fused: bool, keep: bool):
    """y, and with keep=True the (t1, t2) that backward needs."""
    bsz, n, oh, ow = out_shape(x, params, pad)
    h, w = x.shape[2], x.shape[3]
    t1 = be.empty((bsz, n, h, w), x)
    lateral_forward(be, x, params.lateral, params.lateral_bias, t1)
    y = be.empty((bsz, n, oh, ow), x)
    if fused:
        t2 = be.empty((bsz, n, oh, w), x) if keep else None
        vh_forward(be, t1, params.vertical, params.vertical_bias, params.horizontal, params.horizontal_bias,
                   pad, y, t2)
    else:
        t2 = be.empty((bsz, n, oh, w), x)
        vertical_forward(be, t1, params.vertical, params.vertical_bias, pad, t2)
        horizontal_forward(be, t2, params.horizontal, params.horizontal_bias, pad, y)
    return y, ({"t1": t1, "t2": t2} if keep else {})


def backward(be, x, params, pad, t1, t2, gy):
    """(g_x, g_lat, g_lb, g_v, g_vb, g_h, g_hb); never writes x, t1, t2 or gy."""
    bsz, c, h, w = x.shape
    n, k = params.out_channels, params.kernel_size
    oh = gy.shape[2]
    g_h, g_hb = be.empty((n, k), x), be.empty((n,), x)
    g_v, g_vb, g_lb = be.empty((n, k), x), be.empty((n,), x), be.empty((n,), x)
    g_t2 = be.empty((bsz, n, oh, w), x)
    horizontal_backward(be, gy, t2, params.horizontal, pad, g_t2, g_h, g_hb)
    g_t1 = be.empty((bsz, n, h, w), x)
    vertical_backward(be, g_t2, t1, params.vertical, pad, g_t1, g_v, g_vb, g_lb)
    del g_t2
    g_x = be.empty((bsz, c, h, w), x)
    lateral_grad_input(be, g_t1, params.lateral, g_x)
    g_lat = be.empty((n, c), x)
    lateral_grad_weight(be, g_t1, x, g_lat)
    return g_x, g_lat, g_lb, g_v, g_vb, g_h, g_hb


def expected_bytes(shape, itemsize: int = 4) -> dict[str, int]:
    """Bytes each forward kernel must move at least (inputs read once, outputs written
    once), for the README's table and the per-kernel bandwidth figures."""
    b, c, n, h, w, k, p = (shape.batch, shape.in_channels, shape.out_channels, shape.height, shape.width,
                           shape.kernel_size, shape.padding)
    oh, ow = h + 2 * p - k + 1, w + 2 * p - k + 1
    x, t1, t2, y = b * c * h * w, b * n * h * w, b * n * oh * w, b * n * oh * ow
    return {name: v * itemsize for name, v in {
        "lateral": x + t1 + n * c + n,
        "vertical": t1 + t2,
        "horizontal": t2 + y,
        "vertical+horizontal": t1 + y,
    }.items()}

