"""The Triton kernels of `triton_fused` (this module imports triton; `import impls` never
imports it, see __init__.py and _launch.py).

Both kernels stream a row strip of NB planes x BW columns through registers, one row per
iteration of a loop, and keep the last k rows in an 8-slot window of register tensors
(z0..z7, the newest in z7; sliding it is a renaming, loop-carried). Weights live in the
same 8 slots: slot m holds tap m - 8 + K, so slot 7 is always the last tap and the slots
below 8 - K are never read (every use is under a compile-time `if K > ...`). So k <= 8
(MAX_K).

Shifts along W are loads at column offsets (the row is in L1 after the first); shifts
along H are the register window, so every t1 (or grad-y) row is read from memory once per
strip plus the k - 1 halo rows.

Layouts: t1 (B, N, H, W), y (B, N, OH, OW), all contiguous; a "plane" q = b * N + n.
Everything is 2-D from the start ([NB, 1] per plane, [1, BW] per column) so the compiler
has one layout to track. Conditions on scalars (is this row inside the image?) become
integer column bounds (`c < where(row ok, W, 0)`): Triton's interpreter mishandles a
scalar boolean broadcast into a tensor mask, and on the GPU it is the same code.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_K = 8

# The combine function of tl.sum, used through tl.reduce: tl.sum itself is a @jit helper
# of triton.language, which an interpreted kernel cannot call when triton was imported
# without TRITON_INTERPRET (see _launch.kernels); the interpreter recognises this combine
# function and reduces with numpy.
_SUM = tl.standard._sum_combine


@triton.jit
def _rowsum(x):
    return tl.reduce(x, 1, _SUM)


@triton.jit
def _slot_weight(w_ptr, n2, qm2, zero, K: tl.constexpr, TAP: tl.constexpr):
    """Tap TAP of each plane's channel ([NB, 1]); zero outside [0, K)."""
    if TAP < 0:
        return zero
    elif TAP >= K:
        return zero
    else:
        return tl.load(w_ptr + n2 * K + TAP, mask=qm2, other=0.0)


@triton.jit
def _col_ok(c2, D: tl.constexpr, BOUND):
    """[1, BW]: is column c + D inside [0, BOUND)?"""
    return (c2 + D >= 0) & (c2 + D < BOUND)


@triton.jit
def _rows_ok(r, qz, qm2, BOUND):
    """[NB, 1]: the plane exists and row r is inside [0, BOUND) (qz: [NB, 1] int zeros,
    so that the row test is a tensor comparison, not a scalar boolean)."""
    rq = qz + r
    return qm2 & (rq >= 0) & (rq < BOUND)


@triton.jit
def _push(z0, z1, z2, z3, z4, z5, z6, z7, new, K: tl.constexpr):
    """Slide the window one row (only the K used slots move)."""
    if K > 7:
        z0 = z1
    if K > 6:
        z1 = z2
    if K > 5:
        z2 = z3
    if K > 4:
        z3 = z4
    if K > 3:
        z4 = z5
    if K > 2:
        z5 = z6
    if K > 1:
        z6 = z7
    z7 = new
    return z0, z1, z2, z3, z4, z5, z6, z7


@triton.jit
def _vconv(z0, z1, z2, z3, z4, z5, z6, z7, w0, w1, w2, w3, w4, w5, w6, w7, K: tl.constexpr):
    """sum over the used slots (m >= 8 - K) of w_m * z_m."""
    acc = w7 * z7
    if K > 1:
        acc += w6 * z6
    if K > 2:
        acc += w5 * z5
    if K > 3:
        acc += w4 * z4
    if K > 4:
        acc += w3 * z3
    if K > 5:
        acc += w2 * z2
    if K > 6:
        acc += w1 * z1
    if K > 7:
        acc += w0 * z0
    return acc


@triton.jit
def _hsum(m0, m1, m2, m3, m4, m5, m6, m7, w0, w1, w2, w3, w4, w5, w6, w7, K: tl.constexpr):
    """sum of the taps whose column mask holds ([NB, BW])."""
    acc = tl.where(m7, w7, 0.0)
    if K > 1:
        acc += tl.where(m6, w6, 0.0)
    if K > 2:
        acc += tl.where(m5, w5, 0.0)
    if K > 3:
        acc += tl.where(m4, w4, 0.0)
    if K > 4:
        acc += tl.where(m3, w3, 0.0)
    if K > 5:
        acc += tl.where(m2, w2, 0.0)
    if K > 6:
        acc += tl.where(m1, w1, 0.0)
    if K > 7:
        acc += tl.where(m0, w0, 0.0)
    return acc


@triton.jit
def _tap_load(ptr, D: tl.constexpr, mask, aligned):
    """row[c + D]; the unshifted read (D == 0) is the prefetched `aligned`."""
    if D == 0:
        return aligned
    else:
        return tl.load(ptr + D, mask=mask, other=0.0)


@triton.jit
def _hload(ptr, rmask, aligned, zero, m0, m1, m2, m3, m4, m5, m6, m7, K: tl.constexpr, P: tl.constexpr):
    """The K reads of one row for the horizontal taps: slot m holds row[c + s - P] for
    tap s = m - 8 + K (ptr: [NB, BW] pointers at column c; rmask [NB, 1]: row and plane
    valid; m_m [1, BW]: column c + s - P inside the row). The unshifted one (s = P) was
    read rows ahead (`aligned`, which brought the row's lines into L1); the K - 1
    shifted ones hit L1. Unused slots are `zero`."""
    x0 = zero
    x1 = zero
    x2 = zero
    x3 = zero
    x4 = zero
    x5 = zero
    x6 = zero
    x7 = _tap_load(ptr, K - 1 - P, rmask & m7, aligned)
    if K > 1:
        x6 = _tap_load(ptr, K - 2 - P, rmask & m6, aligned)
    if K > 2:
        x5 = _tap_load(ptr, K - 3 - P, rmask & m5, aligned)
    if K > 3:
        x4 = _tap_load(ptr, K - 4 - P, rmask & m4, aligned)
    if K > 4:
        x3 = _tap_load(ptr, K - 5 - P, rmask & m3, aligned)
    if K > 5:
        x2 = _tap_load(ptr, K - 6 - P, rmask & m2, aligned)
    if K > 6:
        x1 = _tap_load(ptr, K - 7 - P, rmask & m1, aligned)
    if K > 7:
        x0 = _tap_load(ptr, K - 8 - P, rmask & m0, aligned)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def vh_forward_kernel(
    t1_ptr, lb_ptr, wv_ptr, bv_ptr, wh_ptr, bh_ptr, y_ptr,
    NQ, N, H, W, OH, OW, ROWS, TILES, COL_TILES,
    K: tl.constexpr, P: tl.constexpr, HAS_LB: tl.constexpr,
    NB: tl.constexpr, BW: tl.constexpr, AHEAD: tl.constexpr,
):
    """y = H(pad_W(V(pad_H(t1 + lb)) + vb)) + hb for NB planes x BW output columns x ROWS
    output rows per program (1-D grid: plane block major, then strip, then column tile).

    Computed as y[o] = hb + vb * hsum(c) + sum_i wv[i] * z[o + i - P] with
    z[r] = sum_s wh[s] * t1pad[r, c + s - P] (+ lb * hsum(c) on rows inside the image):
    H is applied to each t1 row as it is loaded and V over the window of z rows. That is
    the layer's linear map exactly: V's padding pads t1 rows with zeros, H's padding
    zeroes t2 outside [0, W) (vb included, hence hsum), and hsum(c) is the sum of the
    taps whose column c + s - P lies inside the image.
    """
    pid = tl.program_id(0)
    qb = pid // TILES
    t = pid % TILES
    strip = t // COL_TILES
    ct = t % COL_TILES
    q = qb * NB + tl.arange(0, NB)[:, None]  # [NB, 1]
    qm2 = q < NQ
    n2 = q % N
    qz = q * 0
    c2 = ct * BW + tl.arange(0, BW)[None, :]  # [1, BW]
    o0 = strip * ROWS
    dt = y_ptr.dtype.element_ty
    zq = tl.full((NB, 1), 0.0, dt)

    wv0 = _slot_weight(wv_ptr, n2, qm2, zq, K, 0 - 8 + K)
    wv1 = _slot_weight(wv_ptr, n2, qm2, zq, K, 1 - 8 + K)
    wv2 = _slot_weight(wv_ptr, n2, qm2, zq, K, 2 - 8 + K)
    wv3 = _slot_weight(wv_ptr, n2, qm2, zq, K, 3 - 8 + K)
    wv4 = _slot_weight(wv_ptr, n2, qm2, zq, K, 4 - 8 + K)
    wv5 = _slot_weight(wv_ptr, n2, qm2, zq, K, 5 - 8 + K)
    wv6 = _slot_weight(wv_ptr, n2, qm2, zq, K, 6 - 8 + K)
    wv7 = _slot_weight(wv_ptr, n2, qm2, zq, K, 7 - 8 + K)
    wh0 = _slot_weight(wh_ptr, n2, qm2, zq, K, 0 - 8 + K)
    wh1 = _slot_weight(wh_ptr, n2, qm2, zq, K, 1 - 8 + K)
    wh2 = _slot_weight(wh_ptr, n2, qm2, zq, K, 2 - 8 + K)
    wh3 = _slot_weight(wh_ptr, n2, qm2, zq, K, 3 - 8 + K)
    wh4 = _slot_weight(wh_ptr, n2, qm2, zq, K, 4 - 8 + K)
    wh5 = _slot_weight(wh_ptr, n2, qm2, zq, K, 5 - 8 + K)
    wh6 = _slot_weight(wh_ptr, n2, qm2, zq, K, 6 - 8 + K)
    wh7 = _slot_weight(wh_ptr, n2, qm2, zq, K, 7 - 8 + K)
    vb = tl.load(bv_ptr + n2, mask=qm2, other=0.0)
    hb = tl.load(bh_ptr + n2, mask=qm2, other=0.0)
    # column masks of the K shifted reads (slot m: offset m - 8 + K - P)
    m0 = _col_ok(c2, 0 - 8 + K - P, W)
    m1 = _col_ok(c2, 1 - 8 + K - P, W)
    m2 = _col_ok(c2, 2 - 8 + K - P, W)
    m3 = _col_ok(c2, 3 - 8 + K - P, W)
    m4 = _col_ok(c2, 4 - 8 + K - P, W)
    m5 = _col_ok(c2, 5 - 8 + K - P, W)
    m6 = _col_ok(c2, 6 - 8 + K - P, W)
    m7 = _col_ok(c2, 7 - 8 + K - P, W)

    hs = _hsum(m0, m1, m2, m3, m4, m5, m6, m7, wh0, wh1, wh2, wh3, wh4, wh5, wh6, wh7, K)
    bias = hb + vb * hs
    if HAS_LB:
        lb = tl.load(lb_ptr + n2, mask=qm2, other=0.0)
        lbh = lb * hs
    q64 = q.to(tl.int64)
    src = t1_ptr + q64 * H * W + c2  # [NB, BW]
    dst = y_ptr + q64 * OH * OW + c2

    zero = tl.full((NB, BW), 0.0, dt)
    z0 = zero
    z1 = zero
    z2 = zero
    z3 = zero
    z4 = zero
    z5 = zero
    z6 = zero
    z7 = zero
    # Row step j reads t1 row r = o0 - P + j and, from j = K - 1 on, writes y row
    # o = o0 + j - (K - 1); rows outside [0, H) read as zeros (V's padding). The reads
    # of row j + 1 are issued before row j is combined (one row prefetched: two rows in
    # flight per warp).
    steps = ROWS + K - 1
    # The unshifted read of row j + AHEAD is issued at step j (AHEAD rows in flight
    # per warp besides the current one); a0 is the current row's.
    cin = c2 < W
    a0 = tl.load(src + (o0 - P) * W, mask=_rows_ok(o0 - P, qz, qm2, H) & cin, other=0.0)
    a1 = zero
    a2 = zero
    a3 = zero
    if AHEAD > 1:
        a1 = tl.load(src + (o0 - P + 1) * W, mask=_rows_ok(o0 - P + 1, qz, qm2, H) & cin & (qz + 1 < steps), other=0.0)
    if AHEAD > 2:
        a2 = tl.load(src + (o0 - P + 2) * W, mask=_rows_ok(o0 - P + 2, qz, qm2, H) & cin & (qz + 2 < steps), other=0.0)
    if AHEAD > 3:
        a3 = tl.load(src + (o0 - P + 3) * W, mask=_rows_ok(o0 - P + 3, qz, qm2, H) & cin & (qz + 3 < steps), other=0.0)
    for j in range(0, steps):
        r = o0 - P + j
        ra = r + AHEAD
        an = tl.load(src + ra * W, mask=_rows_ok(ra, qz, qm2, H) & cin & (qz + j + AHEAD < steps), other=0.0)
        rmask = _rows_ok(r, qz, qm2, H)
        x0, x1, x2, x3, x4, x5, x6, x7 = _hload(src + r * W, rmask, a0, zero,
                                                m0, m1, m2, m3, m4, m5, m6, m7, K, P)
        znew = _vconv(x0, x1, x2, x3, x4, x5, x6, x7, wh0, wh1, wh2, wh3, wh4, wh5, wh6, wh7, K)
        if HAS_LB:
            znew += tl.where(rmask, lbh, 0.0)
        z0, z1, z2, z3, z4, z5, z6, z7 = _push(z0, z1, z2, z3, z4, z5, z6, z7, znew, K)
        o = o0 + j - (K - 1)
        yv = bias + _vconv(z0, z1, z2, z3, z4, z5, z6, z7, wv0, wv1, wv2, wv3, wv4, wv5, wv6, wv7, K)
        # rows o < o0 (the first K - 1 steps) and o >= OH are not stored
        omask = _rows_ok(o, qz, qm2, OH) & (qz + j >= K - 1)
        tl.store(dst + o * OW, yv, mask=omask & (c2 < OW))
        if AHEAD == 1:
            a0 = an
        elif AHEAD == 2:
            a0 = a1
            a1 = an
        elif AHEAD == 3:
            a0 = a1
            a1 = a2
            a2 = an
        else:
            a0 = a1
            a1 = a2
            a2 = a3
            a3 = an


@triton.jit
def _t1_row(ptr, ok, lb, HAS_LB: tl.constexpr):
    """t1 + lb where ok ([NB, BW]), zero elsewhere (outside the image: V's padding)."""
    v = tl.load(ptr, mask=ok, other=0.0)
    if HAS_LB:
        v = tl.where(ok, v + lb, 0.0)
    return v


@triton.jit
def vh_backward_kernel(
    gy_ptr, t1_ptr, lb_ptr, wv_ptr, bv_ptr, wh_ptr, gt1_ptr, part_ptr,
    NQ, N, H, W, OH, OW, ROWS, TILES, COL_TILES,
    K: tl.constexpr, P: tl.constexpr, HAS_LB: tl.constexpr,
    NB: tl.constexpr, BW: tl.constexpr,
):
    """grad t1 from grad y through H^T then V^T, plus this program's partial sums of the
    weight and bias gradients, for NB planes x BW columns x ROWS rows.

    Tiles cover rows [0, max(H, OH)) and columns [0, max(W, OW)); a program owns the
    grad-t1 rows r and the grad-t2 / grad-y rows o of its strip and the columns of its
    tile, so every term of every reduction is counted by exactly one program. Its
    partials go to part[q, tile, :] = (grad wv[0..K-1], grad wh[0..K-1], grad vb,
    grad hb, grad lb) and the caller sums them over batch and tiles (no atomics:
    deterministic).

    Row step j streams grad-t2 row o = r0 - (K-1-P) + j (j < ROWS + K - 1):
      g_t2[o, c] = sum_s wh[s] * gy[o, c - s + P]   (c < W; gy zero outside [0, OW))
    and from j = K - 1 on writes grad-t1 row r = r0 + j - (K - 1) from the window:
      g_t1[r, c] = sum_i wv[i] * g_t2[r - i + P, c]
    On owned rows (j in [K-1-P, K-1-P + ROWS)), with t2 recomputed from t1
    (t2[o] = vb + sum_i wv[i] t1pad[o + i - P]):
      grad wh[s] += t2[o, c] * gy[o, c - s + P],  grad hb += gy[o, c]
      grad wv[i] += g_t2[o, c] * t1pad[o + i - P, c], grad vb += g_t2[o, c]
    and grad lb += g_t1[r, c] on every written row.
    """
    pid = tl.program_id(0)
    qb = pid // TILES
    t = pid % TILES
    strip = t // COL_TILES
    ct = t % COL_TILES
    q = qb * NB + tl.arange(0, NB)[:, None]  # [NB, 1]
    qm2 = q < NQ
    n2 = q % N
    qz = q * 0
    c2 = ct * BW + tl.arange(0, BW)[None, :]  # [1, BW]
    r0 = strip * ROWS
    dt = gt1_ptr.dtype.element_ty
    zq = tl.full((NB, 1), 0.0, dt)

    # forward V taps (slot m <-> tap m - 8 + K), for t2
    wv0 = _slot_weight(wv_ptr, n2, qm2, zq, K, 0 - 8 + K)
    wv1 = _slot_weight(wv_ptr, n2, qm2, zq, K, 1 - 8 + K)
    wv2 = _slot_weight(wv_ptr, n2, qm2, zq, K, 2 - 8 + K)
    wv3 = _slot_weight(wv_ptr, n2, qm2, zq, K, 3 - 8 + K)
    wv4 = _slot_weight(wv_ptr, n2, qm2, zq, K, 4 - 8 + K)
    wv5 = _slot_weight(wv_ptr, n2, qm2, zq, K, 5 - 8 + K)
    wv6 = _slot_weight(wv_ptr, n2, qm2, zq, K, 6 - 8 + K)
    wv7 = _slot_weight(wv_ptr, n2, qm2, zq, K, 7 - 8 + K)
    # flipped taps (slot m <-> tap 7 - m), for the transposed convolutions
    fv0 = _slot_weight(wv_ptr, n2, qm2, zq, K, 7)
    fv1 = _slot_weight(wv_ptr, n2, qm2, zq, K, 6)
    fv2 = _slot_weight(wv_ptr, n2, qm2, zq, K, 5)
    fv3 = _slot_weight(wv_ptr, n2, qm2, zq, K, 4)
    fv4 = _slot_weight(wv_ptr, n2, qm2, zq, K, 3)
    fv5 = _slot_weight(wv_ptr, n2, qm2, zq, K, 2)
    fv6 = _slot_weight(wv_ptr, n2, qm2, zq, K, 1)
    fv7 = _slot_weight(wv_ptr, n2, qm2, zq, K, 0)
    fh0 = _slot_weight(wh_ptr, n2, qm2, zq, K, 7)
    fh1 = _slot_weight(wh_ptr, n2, qm2, zq, K, 6)
    fh2 = _slot_weight(wh_ptr, n2, qm2, zq, K, 5)
    fh3 = _slot_weight(wh_ptr, n2, qm2, zq, K, 4)
    fh4 = _slot_weight(wh_ptr, n2, qm2, zq, K, 3)
    fh5 = _slot_weight(wh_ptr, n2, qm2, zq, K, 2)
    fh6 = _slot_weight(wh_ptr, n2, qm2, zq, K, 1)
    fh7 = _slot_weight(wh_ptr, n2, qm2, zq, K, 0)
    vb = tl.load(bv_ptr + n2, mask=qm2, other=0.0)
    if HAS_LB:
        lb = tl.load(lb_ptr + n2, mask=qm2, other=0.0)
    else:
        lb = zq
    # column masks of the shifted grad-y reads (slot m <-> tap s = 7 - m, offset P - s)
    g0 = _col_ok(c2, P - 7, OW)
    g1 = _col_ok(c2, P - 6, OW)
    g2 = _col_ok(c2, P - 5, OW)
    g3 = _col_ok(c2, P - 4, OW)
    g4 = _col_ok(c2, P - 3, OW)
    g5 = _col_ok(c2, P - 2, OW)
    g6 = _col_ok(c2, P - 1, OW)
    g7 = _col_ok(c2, P - 0, OW)
    cw = c2 < W

    q64 = q.to(tl.int64)
    gsrc = gy_ptr + q64 * OH * OW + c2  # [NB, BW]
    tsrc = t1_ptr + q64 * H * W + c2
    gdst = gt1_ptr + q64 * H * W + c2

    zero = tl.full((NB, BW), 0.0, dt)
    # window of grad-t2 rows (newest in z7)
    z0 = zero
    z1 = zero
    z2 = zero
    z3 = zero
    z4 = zero
    z5 = zero
    z6 = zero
    z7 = zero
    # partial sums: a_wv slot m <-> tap m - 8 + K; a_wh slot m <-> tap 7 - m
    a_wv0 = zero
    a_wv1 = zero
    a_wv2 = zero
    a_wv3 = zero
    a_wv4 = zero
    a_wv5 = zero
    a_wv6 = zero
    a_wv7 = zero
    a_wh0 = zero
    a_wh1 = zero
    a_wh2 = zero
    a_wh3 = zero
    a_wh4 = zero
    a_wh5 = zero
    a_wh6 = zero
    a_wh7 = zero
    a_vb = zero
    a_hb = zero
    a_lb = zero
    # One row read ahead: the unshifted grad-y read of row o + 1 and the newest t1 row
    # of row o + 1 are issued at step j (the other reads of a row hit L1).
    steps = ROWS + K - 1
    gcols = c2 < OW
    o_first = r0 - (K - 1 - P)
    g_ahead = tl.load(gsrc + o_first * OW, mask=_rows_ok(o_first, qz, qm2, OH) & gcols, other=0.0)
    t_ahead = tl.load(tsrc + (o_first + K - 1 - P) * W, mask=_rows_ok(o_first + K - 1 - P, qz, qm2, H) & cw,
                      other=0.0)
    for j in range(0, steps):
        o = r0 - (K - 1 - P) + j
        more = qz + j + 1 < steps
        g_next = tl.load(gsrc + (o + 1) * OW, mask=_rows_ok(o + 1, qz, qm2, OH) & gcols & more, other=0.0)
        t_next = tl.load(tsrc + (o + K - P) * W, mask=_rows_ok(o + K - P, qz, qm2, H) & cw & more, other=0.0)
        own = (qz + j >= K - 1 - P) & (qz + j < K - 1 - P + ROWS)  # [NB, 1]: row o is this program's
        gmask = _rows_ok(o, qz, qm2, OH)
        tmask = qm2 & own
        # the K rows of t1 under t2 row o (slot m <-> tap i = m - 8 + K, row o + i - P),
        # read on owned rows only, and t2 itself (zero outside [0, W) and [0, OH))
        t1v0 = zero
        t1v1 = zero
        t1v2 = zero
        t1v3 = zero
        t1v4 = zero
        t1v5 = zero
        t1v6 = zero
        ok7 = _rows_ok(o + K - 1 - P, qz, tmask, H) & cw
        t1v7 = tl.where(ok7, t_ahead + lb, 0.0)  # lb is zero without HAS_LB
        if K > 1:
            t1v6 = _t1_row(tsrc + (o + K - 2 - P) * W, _rows_ok(o + K - 2 - P, qz, tmask, H) & cw, lb, HAS_LB)
        if K > 2:
            t1v5 = _t1_row(tsrc + (o + K - 3 - P) * W, _rows_ok(o + K - 3 - P, qz, tmask, H) & cw, lb, HAS_LB)
        if K > 3:
            t1v4 = _t1_row(tsrc + (o + K - 4 - P) * W, _rows_ok(o + K - 4 - P, qz, tmask, H) & cw, lb, HAS_LB)
        if K > 4:
            t1v3 = _t1_row(tsrc + (o + K - 5 - P) * W, _rows_ok(o + K - 5 - P, qz, tmask, H) & cw, lb, HAS_LB)
        if K > 5:
            t1v2 = _t1_row(tsrc + (o + K - 6 - P) * W, _rows_ok(o + K - 6 - P, qz, tmask, H) & cw, lb, HAS_LB)
        if K > 6:
            t1v1 = _t1_row(tsrc + (o + K - 7 - P) * W, _rows_ok(o + K - 7 - P, qz, tmask, H) & cw, lb, HAS_LB)
        if K > 7:
            t1v0 = _t1_row(tsrc + (o + K - 8 - P) * W, _rows_ok(o + K - 8 - P, qz, tmask, H) & cw, lb, HAS_LB)
        t2v = vb + _vconv(t1v0, t1v1, t1v2, t1v3, t1v4, t1v5, t1v6, t1v7, wv0, wv1, wv2, wv3, wv4, wv5, wv6, wv7, K)
        t2row = tl.where(gmask & own & cw, t2v, 0.0)

        # grad t2 row o: slot m is tap s = 7 - m, read at column c - s + P
        grow = gsrc + o * OW
        v7 = _tap_load(grow, P - 0, gmask & g7, g_ahead)
        gnew = fh7 * v7
        a_wh7 += t2row * v7
        if K > 1:
            v6 = _tap_load(grow, P - 1, gmask & g6, g_ahead)
            gnew += fh6 * v6
            a_wh6 += t2row * v6
        if K > 2:
            v5 = _tap_load(grow, P - 2, gmask & g5, g_ahead)
            gnew += fh5 * v5
            a_wh5 += t2row * v5
        if K > 3:
            v4 = _tap_load(grow, P - 3, gmask & g4, g_ahead)
            gnew += fh4 * v4
            a_wh4 += t2row * v4
        if K > 4:
            v3 = _tap_load(grow, P - 4, gmask & g3, g_ahead)
            gnew += fh3 * v3
            a_wh3 += t2row * v3
        if K > 5:
            v2 = _tap_load(grow, P - 5, gmask & g2, g_ahead)
            gnew += fh2 * v2
            a_wh2 += t2row * v2
        if K > 6:
            v1 = _tap_load(grow, P - 6, gmask & g1, g_ahead)
            gnew += fh1 * v1
            a_wh1 += t2row * v1
        if K > 7:
            v0 = _tap_load(grow, P - 7, gmask & g0, g_ahead)
            gnew += fh0 * v0
            a_wh0 += t2row * v0
        # grad hb: the unshifted read (tap s = P, slot 7 - P)
        if P == 0:
            a_hb += tl.where(own, v7, 0.0)
        elif P == 1:
            a_hb += tl.where(own, v6, 0.0)
        elif P == 2:
            a_hb += tl.where(own, v5, 0.0)
        elif P == 3:
            a_hb += tl.where(own, v4, 0.0)
        elif P == 4:
            a_hb += tl.where(own, v3, 0.0)
        elif P == 5:
            a_hb += tl.where(own, v2, 0.0)
        elif P == 6:
            a_hb += tl.where(own, v1, 0.0)
        else:
            a_hb += tl.where(own, v0, 0.0)
        gnew = tl.where(cw, gnew, 0.0)  # grad t2 exists for c < W only

        gown = tl.where(own, gnew, 0.0)
        a_vb += gown
        a_wv7 += gown * t1v7
        if K > 1:
            a_wv6 += gown * t1v6
        if K > 2:
            a_wv5 += gown * t1v5
        if K > 3:
            a_wv4 += gown * t1v4
        if K > 4:
            a_wv3 += gown * t1v3
        if K > 5:
            a_wv2 += gown * t1v2
        if K > 6:
            a_wv1 += gown * t1v1
        if K > 7:
            a_wv0 += gown * t1v0

        z0, z1, z2, z3, z4, z5, z6, z7 = _push(z0, z1, z2, z3, z4, z5, z6, z7, gnew, K)
        # grad t1 row r: window slot m holds grad-t2 row r + P - 7 + m, weight wv[7 - m]
        r = r0 + j - (K - 1)
        gt1 = _vconv(z0, z1, z2, z3, z4, z5, z6, z7, fv0, fv1, fv2, fv3, fv4, fv5, fv6, fv7, K)
        ok = _rows_ok(r, qz, qm2, H) & (qz + j >= K - 1) & cw
        tl.store(gdst + r * W, gt1, mask=ok)
        a_lb += tl.where(ok, gt1, 0.0)
        g_ahead = g_next
        t_ahead = t_next

    # this program's partials: part[q, t, :] (2K + 3 values per plane)
    pdst = part_ptr + (q64 * TILES + t) * (2 * K + 3)
    tl.store(pdst + 2 * K, _rowsum(a_vb)[:, None], mask=qm2)
    tl.store(pdst + 2 * K + 1, _rowsum(a_hb)[:, None], mask=qm2)
    tl.store(pdst + 2 * K + 2, _rowsum(a_lb)[:, None], mask=qm2)
    # grad wv tap i is slot i + 8 - K; grad wh tap s is slot 7 - s
    tl.store(pdst + K - 1, _rowsum(a_wv7)[:, None], mask=qm2)
    tl.store(pdst + K + 0, _rowsum(a_wh7)[:, None], mask=qm2)
    if K > 1:
        tl.store(pdst + K - 2, _rowsum(a_wv6)[:, None], mask=qm2)
        tl.store(pdst + K + 1, _rowsum(a_wh6)[:, None], mask=qm2)
    if K > 2:
        tl.store(pdst + K - 3, _rowsum(a_wv5)[:, None], mask=qm2)
        tl.store(pdst + K + 2, _rowsum(a_wh5)[:, None], mask=qm2)
    if K > 3:
        tl.store(pdst + K - 4, _rowsum(a_wv4)[:, None], mask=qm2)
        tl.store(pdst + K + 3, _rowsum(a_wh4)[:, None], mask=qm2)
    if K > 4:
        tl.store(pdst + K - 5, _rowsum(a_wv3)[:, None], mask=qm2)
        tl.store(pdst + K + 4, _rowsum(a_wh3)[:, None], mask=qm2)
    if K > 5:
        tl.store(pdst + K - 6, _rowsum(a_wv2)[:, None], mask=qm2)
        tl.store(pdst + K + 5, _rowsum(a_wh2)[:, None], mask=qm2)
    if K > 6:
        tl.store(pdst + K - 7, _rowsum(a_wv1)[:, None], mask=qm2)
        tl.store(pdst + K + 6, _rowsum(a_wh1)[:, None], mask=qm2)
    if K > 7:
        tl.store(pdst + K - 8, _rowsum(a_wv0)[:, None], mask=qm2)
        tl.store(pdst + K + 7, _rowsum(a_wh0)[:, None], mask=qm2)
