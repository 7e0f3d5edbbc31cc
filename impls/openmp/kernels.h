/* kernels.h: every kernel of the OpenMP implementations, written once as a template.
 *
 * flatconv.c includes this file once per (element type, instruction set) with these
 * macros defined:
 *   REAL    float or double
 *   SFX     name suffix, e.g. f32_avx512 (every function here is FN(name) = name_SFX)
 *   VBYTES  bytes of one vector register of the target (64 AVX-512, 32 AVX2, 16 SSE2)
 *   MR, NV  register tile of the GEMM micro-kernel: MR rows x NV vectors of columns
 * and with `#pragma GCC target(...)` in force, so the compiler vectorises every loop
 * here for that instruction set. The explicit vectors use GCC's vector extension, which
 * maps onto the target's registers.
 *
 * No function here calls back into Python. Inputs were validated by the caller.
 */

#define FN(name) CAT(CAT(name, _), SFX)
#define LANES ((int)(VBYTES / sizeof(REAL)))
#define NR (NV * LANES)
/* Cache blocking of the GEMM: a KC x NC block of packed B stays in L2, a KC x NR
 * micro-panel of it in L1, MR x KC of packed A streams through. */
#define KC 256
#define NC 512
/* Fused forward: pixels per row tile, and elements of the per-thread t1 tile buffer. */
#define FUSED_PIX 512
#define FUSED_BUF (96 * 1024)

typedef REAL FN(vec_t) __attribute__((vector_size(VBYTES)));
typedef IREAL FN(ivec_t) __attribute__((vector_size(VBYTES)));
#define VEC FN(vec_t)
#define IVEC FN(ivec_t)

static inline VEC FN(vload)(const REAL *p)
{
    VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(vstore)(REAL *p, VEC v) { memcpy(p, &v, sizeof v); }

/* ------------------------------------------------------------------------------------
 * GEMM: C[M x Nn] (=|+=) A[M x K] * B[K x Nn] (+ bias[m]), A and B given by strides,
 * packed into MR-row / NR-column panels (zero padded) so the micro-kernel only ever
 * sees full register tiles.
 * ---------------------------------------------------------------------------------- */

/* Pack rows [0, M) of A (all K columns) into ceil(M/MR) panels of K x MR. */
static void FN(pack_a)(ptrdiff_t M, ptrdiff_t K, const REAL *A, ptrdiff_t rsa, ptrdiff_t csa, REAL *out)
{
    for (ptrdiff_t i0 = 0; i0 < M; i0 += MR) {
        REAL *o = out + i0 * K;
        ptrdiff_t mv = M - i0 < MR ? M - i0 : MR;
        if (csa == 1) {
            for (ptrdiff_t i = 0; i < MR; ++i) {
                if (i < mv) {
                    const REAL *a = A + (i0 + i) * rsa;
                    for (ptrdiff_t q = 0; q < K; ++q) o[q * MR + i] = a[q];
                } else {
                    for (ptrdiff_t q = 0; q < K; ++q) o[q * MR + i] = 0;
                }
            }
        } else {
            for (ptrdiff_t q = 0; q < K; ++q) {
                const REAL *a = A + i0 * rsa + q * csa;
                for (ptrdiff_t i = 0; i < MR; ++i) o[q * MR + i] = i < mv ? a[i * rsa] : 0;
            }
        }
    }
}

/* Pack a kl x nc block of B into ceil(nc/NR) panels of kl x NR. */
static void FN(pack_b)(ptrdiff_t kl, ptrdiff_t nc, const REAL *B, ptrdiff_t rsb, ptrdiff_t csb, REAL *out)
{
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += NR) {
        REAL *o = out + j0 * kl;
        ptrdiff_t nv = nc - j0 < NR ? nc - j0 : NR;
        if (csb == 1) {
            if (nv == NR) {
                for (ptrdiff_t q = 0; q < kl; ++q) {
                    const REAL *b = B + q * rsb + j0;
                    for (int v = 0; v < NV; ++v) *(VEC *)(o + q * NR + v * LANES) = FN(vload)(b + v * LANES);
                }
            } else {
                for (ptrdiff_t q = 0; q < kl; ++q) {
                    const REAL *b = B + q * rsb + j0;
                    ptrdiff_t j = 0;
                    for (; j < nv; ++j) o[q * NR + j] = b[j];
                    for (; j < NR; ++j) o[q * NR + j] = 0;
                }
            }
        } else {
            for (ptrdiff_t j = 0; j < NR; ++j) {
                if (j < nv) {
                    const REAL *b = B + (j0 + j) * csb;
                    for (ptrdiff_t q = 0; q < kl; ++q) o[q * NR + j] = b[q * rsb];
                } else {
                    for (ptrdiff_t q = 0; q < kl; ++q) o[q * NR + j] = 0;
                }
            }
        }
    }
}

/* MR x NR register tile: acc = A (kl x MR, element (q, i) at a[q * aq + i * ai]) ^T *
 * b_panel (kl x NR), then stored into the mv x nv valid corner of C: C = acc + bias
 * (accumulate == 0) or C += acc. A is a packed panel (aq = MR, ai = 1, zero padded past
 * mv) or MR rows of a matrix read in place (aq = 1, ai = its row stride; rows past mv
 * repeat the last one, so nothing past the matrix is read, and are not stored). */
static inline __attribute__((always_inline)) void FN(ukernel)(ptrdiff_t kl, const REAL *a, ptrdiff_t aq, ptrdiff_t ai,
                                                              const REAL *restrict b, REAL *restrict c,
                                                              ptrdiff_t ldc, ptrdiff_t mv, ptrdiff_t nv,
                                                              int accumulate, const REAL *restrict bias)
{
    const REAL *ar[MR];
    for (int i = 0; i < MR; ++i) ar[i] = a + (aq == 1 ? (i < mv ? i : mv - 1) : i) * ai;
    VEC acc[MR][NV];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NV; ++j) acc[i][j] = (VEC){0};
    for (ptrdiff_t q = 0; q < kl; ++q) {
        VEC bv[NV];
        for (int j = 0; j < NV; ++j) bv[j] = *(const VEC *)(b + q * NR + j * LANES);
        for (int i = 0; i < MR; ++i) {
            REAL av = ar[i][q * aq];
            for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
        }
    }
    if (mv == MR && nv == NR) {
        for (int i = 0; i < MR; ++i) {
            REAL bi = (!accumulate && bias) ? bias[i] : (REAL)0;
            for (int j = 0; j < NV; ++j) {
                REAL *cp = c + i * ldc + j * LANES;
                VEC r = acc[i][j];
                if (accumulate)
                    r += FN(vload)(cp);
                else
                    r += bi;
                FN(vstore)(cp, r);
            }
        }
    } else {
        REAL tmp[MR * NR] __attribute__((aligned(64)));
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NV; ++j) *(VEC *)(tmp + i * NR + j * LANES) = acc[i][j];
        for (ptrdiff_t i = 0; i < mv; ++i) {
            REAL bi = (!accumulate && bias) ? bias[i] : (REAL)0;
            REAL *cp = c + i * ldc;
            if (accumulate)
                for (ptrdiff_t j = 0; j < nv; ++j) cp[j] += tmp[i * NR + j];
            else
                for (ptrdiff_t j = 0; j < nv; ++j) cp[j] = tmp[i * NR + j] + bi;
        }
    }
}

/* One thread's GEMM. `ap` holds A packed by pack_a for all K; `bpack` is a workspace of
 * KC * NC elements, aligned to 64 bytes. B is packed one NR-column panel at a time, right
 * before the micro-kernels that use it, and while they run the rows of the next panel
 * are prefetched (a slice per micro-kernel call): B is an activation that is usually
 * not in cache (x of (128,128,32,3) is 4 MB), and packing a whole block up front stalled
 * on memory with nothing to overlap it. */
static void FN(gemm)(ptrdiff_t M, ptrdiff_t Nn, ptrdiff_t K, const REAL *ap, const REAL *B, ptrdiff_t rsb,
                     ptrdiff_t csb, REAL *C, ptrdiff_t ldc, const REAL *bias, int accumulate, REAL *bpack)
{
    ptrdiff_t ni = (M + MR - 1) / MR;
    for (ptrdiff_t jc = 0; jc < Nn; jc += NC) {
        ptrdiff_t nc = Nn - jc < NC ? Nn - jc : NC;
        for (ptrdiff_t kc = 0; kc < K; kc += KC) {
            ptrdiff_t kl = K - kc < KC ? K - kc : KC;
            int acc = accumulate || kc > 0;
            const REAL *bk = B + kc * rsb + jc * csb;
            ptrdiff_t per = (kl + ni - 1) / ni; /* rows of the next panel prefetched per call */
            for (ptrdiff_t j0 = 0; j0 < nc; j0 += NR) {
                ptrdiff_t nv = nc - j0 < NR ? nc - j0 : NR;
                REAL *bp = bpack + j0 * kl;
                FN(pack_b)(kl, nv, bk + j0 * csb, rsb, csb, bp);
                int prefetch = csb == 1 && j0 + NR < nc;
                for (ptrdiff_t i0 = 0, ii = 0; i0 < M; i0 += MR, ++ii) {
                    if (prefetch)
                        for (ptrdiff_t q = ii * per; q < (ii + 1) * per && q < kl; ++q) {
                            const char *r = (const char *)(bk + q * rsb + j0 + NR);
                            for (ptrdiff_t o = 0; o < (ptrdiff_t)(NR * sizeof(REAL)); o += 64) __builtin_prefetch(r + o);
                        }
                    ptrdiff_t mv = M - i0 < MR ? M - i0 : MR;
                    FN(ukernel)(kl, ap + i0 * K + kc * MR, MR, 1, bp, C + i0 * ldc + jc + j0, ldc, mv, nv, acc,
                                bias ? bias + i0 : NULL);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------
 * 1-D taps: out[w] = bias + sum_{r<k} wt[r] * in[r * stride + w] for w < n. Every
 * depthwise stage, forward and backward, is this with the right pointers: V walks rows
 * (stride W), H walks columns (stride 1), their transposes use the reversed taps.
 * Constant k (1..7) is unrolled so the loop over w vectorises.
 * ---------------------------------------------------------------------------------- */
static inline __attribute__((always_inline)) void FN(taps_k)(REAL *restrict out, const REAL *restrict in,
                                                             ptrdiff_t stride, ptrdiff_t n,
                                                             const REAL *restrict wt, int k, REAL bias)
{
    REAL w_[16];
    for (int r = 0; r < k; ++r) w_[r] = wt[r];
    for (ptrdiff_t w = 0; w < n; ++w) {
        REAL s = bias;
        for (int r = 0; r < k; ++r) s += w_[r] * in[r * stride + w];
        out[w] = s;
    }
}

static void FN(taps)(REAL *restrict out, const REAL *restrict in, ptrdiff_t stride, ptrdiff_t n,
                     const REAL *restrict wt, ptrdiff_t k, REAL bias)
{
    switch (k) {
    case 1: FN(taps_k)(out, in, stride, n, wt, 1, bias); return;
    case 2: FN(taps_k)(out, in, stride, n, wt, 2, bias); return;
    case 3: FN(taps_k)(out, in, stride, n, wt, 3, bias); return;
    case 4: FN(taps_k)(out, in, stride, n, wt, 4, bias); return;
    case 5: FN(taps_k)(out, in, stride, n, wt, 5, bias); return;
    case 6: FN(taps_k)(out, in, stride, n, wt, 6, bias); return;
    case 7: FN(taps_k)(out, in, stride, n, wt, 7, bias); return;
    default:
        for (ptrdiff_t w = 0; w < n; ++w) out[w] = bias;
        for (ptrdiff_t r = 0; r < k; ++r) {
            const REAL *src = in + r * stride;
            REAL c = wt[r];
            for (ptrdiff_t w = 0; w < n; ++w) out[w] += c * src[w];
        }
    }
}

static inline REAL FN(sum)(const REAL *restrict a, ptrdiff_t n)
{
    REAL s = 0;
#pragma omp simd reduction(+ : s)
    for (ptrdiff_t i = 0; i < n; ++i) s += a[i];
    return s;
}

static inline REAL FN(dot)(const REAL *restrict a, const REAL *restrict b, ptrdiff_t n)
{
    REAL s = 0;
#pragma omp simd reduction(+ : s)
    for (ptrdiff_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

/* Vertical output row o of one channel: out[w] = vb + sum_r V[r] * t1[o + r - p][w] over
 * the image rows that exist; image row i lives at rows + (i - row0) * W. */
static inline void FN(vrow)(REAL *restrict out, const REAL *rows, ptrdiff_t row0, ptrdiff_t H, ptrdiff_t W,
                            ptrdiff_t o, const REAL *V, ptrdiff_t k, ptrdiff_t p, REAL vb)
{
    ptrdiff_t r_lo = p - o > 0 ? p - o : 0;
    ptrdiff_t r_hi = H + p - o < k ? H + p - o : k;
    FN(taps)(out, rows + (o - p + r_lo - row0) * W, W, W, V + r_lo, r_hi - r_lo, vb);
}

/* One horizontal output column j of an unpadded input row of W: hb + sum_s Hw[s] *
 * in[j + s - p] over the columns that exist (the scalar border path of H). */
static inline REAL FN(hcol)(const REAL *restrict in, ptrdiff_t W, ptrdiff_t j, const REAL *Hw, ptrdiff_t k,
                            ptrdiff_t p, REAL hb)
{
    REAL s = hb;
    for (ptrdiff_t q = 0; q < k; ++q) {
        ptrdiff_t i = j + q - p;
        if (i >= 0 && i < W) s += Hw[q] * in[i];
    }
    return s;
}

/* Horizontal row from an unpadded input row of W: y[j] = hcol(j); the interior runs
 * through taps, the borders are scalar. */
static inline void FN(hrow)(REAL *restrict y, const REAL *restrict in, ptrdiff_t W, ptrdiff_t OW,
                            const REAL *Hw, ptrdiff_t k, ptrdiff_t p, REAL hb)
{
    ptrdiff_t j_lo = p < OW ? p : OW;
    ptrdiff_t j_hi = W + p - k + 1 < OW ? W + p - k + 1 : OW;
    if (j_hi < j_lo) j_hi = j_lo;
    for (ptrdiff_t j = 0; j < OW; ++j) {
        if (j == j_lo && j_hi > j_lo) {
            FN(taps)(y + j_lo, in + j_lo - p, 1, j_hi - j_lo, Hw, k, hb);
            j = j_hi - 1;
            continue;
        }
        y[j] = FN(hcol)(in, W, j, Hw, k, p, hb);
    }
}

/* H for "same" padding (OW == W) over n = rows * W contiguous values of whole rows, as
 * one flat vector loop: the taps of the first and last vector of each row that would
 * reach into the neighbouring row are masked to zero (bitwise, so nothing leaks). Needs
 * in[-p, 0) and in[n, n + k) readable and masks from hsame_masks. */
typedef struct {
    int ok;
    IVEC m[3][8]; /* [first vector of a row, last, both (W <= LANES)][tap] */
} FN(hmask_t);

static void FN(hsame_masks)(FN(hmask_t) *hm, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    hm->ok = (W % LANES == 0 || LANES % W == 0) && p <= LANES && k - 1 - p <= LANES && k <= 7 && (k & 1);
    if (!hm->ok) return;
    for (ptrdiff_t s = 0; s < k; ++s)
        for (int kind = 0; kind < 3; ++kind) {
            IREAL m[LANES];
            for (int l = 0; l < LANES; ++l) {
                ptrdiff_t col = kind == 0 ? l : kind == 1 ? W - LANES + l : l % W;
                ptrdiff_t i = col + s - p;
                m[l] = (i >= 0 && i < W) ? (IREAL)-1 : 0;
            }
            memcpy(&hm->m[kind][s], m, sizeof m);
        }
}

static inline __attribute__((always_inline)) void FN(hsame_k)(REAL *restrict y, const REAL *restrict in,
                                                              ptrdiff_t n, ptrdiff_t W, const REAL *restrict Hw,
                                                              int k, ptrdiff_t p, REAL hb,
                                                              const FN(hmask_t) *restrict hm)
{
    VEC h[8];
    for (int s = 0; s < k; ++s) h[s] = (VEC){0} + Hw[s];
    ptrdiff_t phases = W >= LANES ? W / LANES : 1;
    ptrdiff_t nfull = n / LANES * LANES, ph = 0;
    for (ptrdiff_t q = 0; q < nfull; q += LANES) {
        VEC acc = (VEC){0} + hb;
        int kind = phases == 1 ? 2 : ph == 0 ? 0 : ph == phases - 1 ? 1 : 3;
        if (kind == 3) {
            for (int s = 0; s < k; ++s) acc += h[s] * FN(vload)(in + q + s - p);
        } else {
            for (int s = 0; s < k; ++s) acc += h[s] * (VEC)((IVEC)FN(vload)(in + q + s - p) & hm->m[kind][s]);
        }
        FN(vstore)(y + q, acc);
        if (++ph == phases) ph = 0;
    }
    for (ptrdiff_t q = nfull, col = nfull % W; q < n; ++q, col = col + 1 == W ? 0 : col + 1) {
        REAL acc = hb;
        for (int s = 0; s < k; ++s)
            if (col + s - p >= 0 && col + s - p < W) acc += Hw[s] * in[q + s - p];
        y[q] = acc;
    }
}

static int FN(hsame)(REAL *restrict y, const REAL *restrict in, ptrdiff_t n, ptrdiff_t W, const REAL *restrict Hw,
                     ptrdiff_t k, ptrdiff_t p, REAL hb, const FN(hmask_t) *hm)
{
    if (!hm || !hm->ok) return 0;
    switch (k) {
    case 1: FN(hsame_k)(y, in, n, W, Hw, 1, p, hb, hm); return 1;
    case 3: FN(hsame_k)(y, in, n, W, Hw, 3, p, hb, hm); return 1;
    case 5: FN(hsame_k)(y, in, n, W, Hw, 5, p, hb, hm); return 1;
    case 7: FN(hsame_k)(y, in, n, W, Hw, 7, p, hb, hm); return 1;
    default: return 0;
    }
}

/* For "same" padding, over n = rows * W values of whole rows: acc[s] += sum gy[q] *
 * t2[q + s - p] (taps within the row) and acc[k] += sum gy[q]. t2 needs readable margins
 * as for hsame; masks from hsame_masks. */
static inline __attribute__((always_inline)) void FN(hgrad_same_k)(double *acc, const REAL *restrict gy,
                                                                   const REAL *restrict t2, ptrdiff_t n, ptrdiff_t W,
                                                                   int k, ptrdiff_t p,
                                                                   const FN(hmask_t) *restrict hm)
{
    VEC a[8], ab = (VEC){0};
    for (int s = 0; s < k; ++s) a[s] = (VEC){0};
    ptrdiff_t phases = W >= LANES ? W / LANES : 1;
    ptrdiff_t nfull = n / LANES * LANES, ph = 0;
    for (ptrdiff_t q = 0; q < nfull; q += LANES) {
        VEC g = FN(vload)(gy + q);
        ab += g;
        int kind = phases == 1 ? 2 : ph == 0 ? 0 : ph == phases - 1 ? 1 : 3;
        if (kind == 3) {
            for (int s = 0; s < k; ++s) a[s] += g * FN(vload)(t2 + q + s - p);
        } else {
            for (int s = 0; s < k; ++s) a[s] += g * (VEC)((IVEC)FN(vload)(t2 + q + s - p) & hm->m[kind][s]);
        }
        if (++ph == phases) ph = 0;
    }
    REAL lanes[LANES];
    for (int s = 0; s < k; ++s) {
        memcpy(lanes, &a[s], sizeof lanes);
        for (int l = 0; l < LANES; ++l) acc[s] += lanes[l];
    }
    memcpy(lanes, &ab, sizeof lanes);
    for (int l = 0; l < LANES; ++l) acc[k] += lanes[l];
    for (ptrdiff_t q = nfull, col = nfull % W; q < n; ++q, col = col + 1 == W ? 0 : col + 1) {
        acc[k] += gy[q];
        for (int s = 0; s < k; ++s)
            if (col + s - p >= 0 && col + s - p < W) acc[s] += (double)gy[q] * t2[q + s - p];
    }
}

static int FN(hgrad_same)(double *acc, const REAL *gy, const REAL *t2, ptrdiff_t n, ptrdiff_t W, ptrdiff_t k,
                          ptrdiff_t p, const FN(hmask_t) *hm)
{
    if (!hm || !hm->ok) return 0;
    switch (k) {
    case 1: FN(hgrad_same_k)(acc, gy, t2, n, W, 1, p, hm); return 1;
    case 3: FN(hgrad_same_k)(acc, gy, t2, n, W, 3, p, hm); return 1;
    case 5: FN(hgrad_same_k)(acc, gy, t2, n, W, 5, p, hm); return 1;
    case 7: FN(hgrad_same_k)(acc, gy, t2, n, W, 7, p, hm); return 1;
    default: return 0;
    }
}

/* Output rows [oa, ob) of one channel, V then H, from t1 rows (image row i at
 * rows + (i - row0) * W) into y (output row o at y + o * OW). V runs as one flat vector
 * loop over all rows whose taps are all inside the image; H, when the output is as wide
 * as the input (2p = k - 1, "same"), runs as one flat loop too (hsame, masked at the row
 * borders; or unmasked with the border columns recomputed). `scratch` holds
 * (ob - oa) * W + 2 * round_up(k, 16) + 32 elements. */
static void FN(vh_rows_2pass)(REAL *restrict y, const REAL *rows, ptrdiff_t row0, ptrdiff_t oa, ptrdiff_t ob, ptrdiff_t H,
                        ptrdiff_t W, ptrdiff_t k, ptrdiff_t p, const REAL *V, REAL vb, const REAL *Hw, REAL hb,
                        REAL *scratch, const FN(hmask_t) *hm)
{
    ptrdiff_t OW = W + 2 * p - k + 1, margin = (k + 15) / 16 * 16, n = (ob - oa) * W;
    REAL *t2 = scratch + margin;
    ptrdiff_t ia = oa > p ? oa : p, ib = ob < H - k + p + 1 ? ob : H - k + p + 1;
    if (ib < ia) ib = ia = ob;
    for (ptrdiff_t o = oa; o < ia; ++o) FN(vrow)(t2 + (o - oa) * W, rows, row0, H, W, o, V, k, p, vb);
    if (ib > ia) FN(taps)(t2 + (ia - oa) * W, rows + (ia - p - row0) * W, W, (ib - ia) * W, V, k, vb);
    for (ptrdiff_t o = ib; o < ob; ++o) FN(vrow)(t2 + (o - oa) * W, rows, row0, H, W, o, V, k, p, vb);
    if (OW != W) {
        for (ptrdiff_t o = oa; o < ob; ++o) FN(hrow)(y + o * OW, t2 + (o - oa) * W, W, OW, Hw, k, p, hb);
        return;
    }
    for (ptrdiff_t i = 1; i <= p; ++i) t2[-i] = 0;
    for (ptrdiff_t i = 0; i < margin; ++i) t2[n + i] = 0;
    if (FN(hsame)(y + oa * OW, t2, n, W, Hw, k, p, hb, hm)) return;
    FN(taps)(y + oa * OW, t2 - p, 1, n, Hw, k, hb);
    ptrdiff_t right = OW - (k - 1 - p); /* columns [p, right) had all their taps in the row */
    for (ptrdiff_t o = oa; o < ob; ++o) {
        const REAL *in = t2 + (o - oa) * W;
        REAL *yr = y + o * OW;
        for (ptrdiff_t j = 0; j < OW; ++j) {
            if (j == p && right > p) j = right;
            if (j >= OW) break;
            yr[j] = FN(hcol)(in, W, j, Hw, k, p, hb);
        }
    }
}

/* The lane permutes of the register pass (vh_reg_k) for one layer, set up once per
 * thread: R rows per vector (0: the pass does not apply; it needs "same" padding, k <= 7,
 * and W a multiple or (AVX-512 only) a divisor of LANES) and, per H tap s (d = s - p):
 *  - R == 1: lanes of prev (index < LANES) and cur, or of cur and next;
 *  - R > 1: lanes of the same row, else lane 0 of the zero vector (index LANES). */
typedef struct {
    ptrdiff_t R;
    IVEC idx[8];
} FN(vhreg_t);

static void FN(vh_reg_init)(FN(vhreg_t) *st, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    st->R = 0;
#if VBYTES == 64
    if (2 * p == k - 1 && k <= 7 && (W % LANES == 0 || LANES % W == 0)) st->R = W < LANES ? LANES / W : 1;
#elif VBYTES == 32
    if (2 * p == k - 1 && k <= 7 && W % LANES == 0) st->R = 1;
#endif
    if (!st->R) return;
    for (ptrdiff_t s = 0; s < k; ++s) {
        IREAL m[LANES];
        ptrdiff_t d = s - p;
        for (int l = 0; l < LANES; ++l) {
            if (st->R == 1)
                m[l] = (IREAL)(d < 0 ? LANES + d + l : d + l);
            else
                m[l] = (IREAL)(l % W + d >= 0 && l % W + d < W ? l + d : LANES);
        }
        memcpy(&st->idx[s], m, sizeof m);
    }
}

#if VBYTES >= 32
/* V at one vector: vb + sum_r v[r] * rowp[r][off .. off + LANES). */
static inline __attribute__((always_inline)) VEC FN(vtap_k)(const REAL *const *rowp, ptrdiff_t off, const VEC *v,
                                                            int k, VEC vbv)
{
    VEC t = vbv;
    for (int r = 0; r < k; ++r) t += v[r] * FN(vload)(rowp[r] + off);
    return t;
}

/* Pointers to the k t1 rows i0 .. i0 + k - 1 that V reads for one output row: image row i
 * at rows + (i - row0) * W, or `zrow` (a row of zeros) for rows outside the image. */
static inline __attribute__((always_inline)) void FN(tap_rows)(const REAL **rowp, const REAL *rows, ptrdiff_t row0,
                                                               ptrdiff_t i0, ptrdiff_t H, ptrdiff_t W, int k,
                                                               const REAL *zrow)
{
    for (int r = 0; r < k; ++r) rowp[r] = i0 + r >= 0 && i0 + r < H ? rows + (i0 + r - row0) * W : zrow;
}

/* One output row of V then H for W a multiple of LANES, "same" padding: t2 vector c is
 * vb + sum_r v[r] * rowp[r][c] (rowp[r]: t1 row o - p + r, or a row of zeros outside the
 * image), kept in a register; H's windows are permutes of the previous, current and next
 * t2 vectors (idx from vh_reg_init, R == 1). */
static inline __attribute__((always_inline)) void FN(vh_row_k)(REAL *restrict yr, const REAL *const *rowp, ptrdiff_t W,
                                                               int k, const VEC *v, const VEC *h, const IVEC *idx,
                                                               VEC vbv, VEC hbv)
{
    const int p = (k - 1) / 2;
    const VEC zero = (VEC){0};
    ptrdiff_t nv = W / LANES;
    VEC prev = zero, cur = FN(vtap_k)(rowp, 0, v, k, vbv), next = zero;
    for (ptrdiff_t c = 0; c < nv; ++c) {
        if (nv > 1) /* a row of one vector (8 x 8 on AVX2) has no next: the test lets the compiler see it */
            next = c + 1 < nv ? FN(vtap_k)(rowp, (c + 1) * LANES, v, k, vbv) : zero;
        VEC acc = hbv;
        for (int s = 0; s < k; ++s) {
            int d = s - p;
#if VBYTES == 64
            IVEC ix = idx[s]; /* one vpermt2ps whatever the indices */
#else
            IVEC ix; /* constant indices (k is), which AVX2 does in two shuffles */
            for (int l = 0; l < LANES; ++l) ix[l] = (IREAL)(d < 0 ? LANES + d + l : d + l);
            (void)idx;
#endif
            VEC win = d < 0 ? __builtin_shuffle(prev, cur, ix) : d > 0 ? __builtin_shuffle(cur, next, ix) : cur;
            acc += h[s] * win;
        }
        FN(vstore)(yr + c * LANES, acc);
        prev = cur;
        cur = next;
    }
}

/* One register pass of V then H over output rows [oa, ob) of one channel, for "same"
 * padding (k odd, p = (k - 1) / 2, so OH = H and OW = W): each t2 vector is computed
 * once and kept in a register, and H's shifted windows are lane permutes (vpermt2ps),
 * so t2 never goes through memory and H does no unaligned reloads of values just
 * stored (which stall on store forwarding, by a varying amount). AVX-512 and AVX2 (there
 * only W a multiple of LANES, with the permutes' indices known at compile time: AVX2 has
 * no two-source permute, and runtime indices cost more than the pass saves).
 *  - W a multiple of LANES (vh_row_k): a row is W / LANES vectors; a window takes lanes
 *    from the previous, current and next vector of the row (zero past the row ends).
 *    t1 rows outside the image are read as a row of zeros put in `t2s`.
 *  - LANES a multiple of W: a vector holds LANES / W whole rows; a window takes lanes
 *    of its own row, or of the zero vector past the row ends. A vector whose V taps all
 *    lie inside the image and inside [oa, ob) loads t1 straight from `rows`; the others
 *    (image border, a last partial group of rows) get t2 from vrow through `t2s`.
 * `rows` holds image row i at rows + (i - row0) * W; when `padded`, it also holds zero
 * rows for the padding (image rows -p .. H + p) and R - 1 rows of slack past the last
 * one needed, so every vector loads t1 straight from it. `t2s`: max(W, LANES) elements,
 * aligned. */
static inline __attribute__((always_inline)) void FN(vh_reg_k)(REAL *restrict y, const REAL *rows, ptrdiff_t row0,
                                                               ptrdiff_t oa, ptrdiff_t ob, ptrdiff_t H, ptrdiff_t W,
                                                               int k, const REAL *restrict V, REAL vb,
                                                               const REAL *restrict Hw, REAL hb, REAL *restrict t2s,
                                                               int padded, const FN(vhreg_t) *restrict st)
{
    const int p = (k - 1) / 2;
    const ptrdiff_t R = st->R;
    VEC v[8], h[8];
    IVEC idx[8];
    for (int s = 0; s < k; ++s) {
        v[s] = (VEC){0} + V[s];
        h[s] = (VEC){0} + Hw[s];
        idx[s] = st->idx[s];
    }
    const VEC zero = (VEC){0}, vbv = (VEC){0} + vb, hbv = (VEC){0} + hb;
    if (R == 1) {
        /* rows [lo, hi) have every tap row in the buffer; the others (image border, when
         * not padded) read a row of zeros for the rows outside the image */
        ptrdiff_t lo = oa, hi = ob;
        if (!padded) {
            lo = p < oa ? oa : p < ob ? p : ob;
            hi = H + p - k + 1 < ob ? H + p - k + 1 : ob;
            if (hi < lo) hi = lo;
        }
        if (lo > oa || hi < ob) memset(t2s, 0, (size_t)W * sizeof(REAL));
        const REAL *rowp[8];
        ptrdiff_t o = oa;
        for (; o < lo; ++o) { /* top border */
            FN(tap_rows)(rowp, rows, row0, o - p, H, W, k, t2s);
            FN(vh_row_k)(y + o * W, rowp, W, k, v, h, idx, vbv, hbv);
        }
        for (const REAL *base = rows + (o - p - row0) * W; o < hi; ++o, base += W) {
            for (int r = 0; r < k; ++r) rowp[r] = base + r * W;
            FN(vh_row_k)(y + o * W, rowp, W, k, v, h, idx, vbv, hbv);
        }
        for (; o < ob; ++o) { /* bottom border */
            FN(tap_rows)(rowp, rows, row0, o - p, H, W, k, t2s);
            FN(vh_row_k)(y + o * W, rowp, W, k, v, h, idx, vbv, hbv);
        }
        return;
    }
    for (ptrdiff_t o = oa; o < ob; o += R) {
        ptrdiff_t nrow = ob - o < R ? ob - o : R;
        VEC t2;
        if (padded || (nrow == R && o >= p && o + R - 1 - p + k <= H)) {
            const REAL *rowp[8];
            for (int r = 0; r < k; ++r) rowp[r] = rows + (o - p + r - row0) * W;
            t2 = FN(vtap_k)(rowp, 0, v, k, vbv);
        } else {
            *(VEC *)t2s = zero;
            for (ptrdiff_t j = 0; j < nrow; ++j) FN(vrow)(t2s + j * W, rows, row0, H, W, o + j, V, k, p, vb);
            t2 = *(const VEC *)t2s;
        }
        VEC acc = hbv;
        for (int s = 0; s < k; ++s) acc += h[s] * (s == p ? t2 : __builtin_shuffle(t2, zero, idx[s]));
        if (nrow == R) {
            FN(vstore)(y + o * W, acc);
        } else {
            *(VEC *)t2s = acc;
            memcpy(y + o * W, t2s, (size_t)(nrow * W) * sizeof(REAL));
        }
    }
}

#endif

/* Output rows [oa, ob) of one channel, V then H: by the register pass where it applies
 * (st->R > 0), else by vh_rows_2pass. `padded`: see vh_reg_k. */
static inline __attribute__((always_inline)) void FN(vh_rows)(REAL *restrict y, const REAL *rows, ptrdiff_t row0,
                                                              ptrdiff_t oa, ptrdiff_t ob, ptrdiff_t H, ptrdiff_t W,
                                                              ptrdiff_t k, ptrdiff_t p, const REAL *V, REAL vb,
                                                              const REAL *Hw, REAL hb, REAL *scratch,
                                                              const FN(hmask_t) *hm, const FN(vhreg_t) *st, int padded)
{
#if VBYTES >= 32
    if (st->R) {
        switch (k) {
        case 1: FN(vh_reg_k)(y, rows, row0, oa, ob, H, W, 1, V, vb, Hw, hb, scratch, padded, st); return;
        case 3: FN(vh_reg_k)(y, rows, row0, oa, ob, H, W, 3, V, vb, Hw, hb, scratch, padded, st); return;
        case 5: FN(vh_reg_k)(y, rows, row0, oa, ob, H, W, 5, V, vb, Hw, hb, scratch, padded, st); return;
        default: FN(vh_reg_k)(y, rows, row0, oa, ob, H, W, 7, V, vb, Hw, hb, scratch, padded, st); return;
        }
    }
#endif
    (void)padded;
    (void)st;
    FN(vh_rows_2pass)(y, rows, row0, oa, ob, H, W, k, p, V, vb, Hw, hb, scratch, hm);
}

/* Aligned per-thread workspace: `per` elements for each of `nt` threads. */
static REAL *FN(alloc_ws)(ptrdiff_t per, int nt, ptrdiff_t *stride)
{
    ptrdiff_t s = (per + 15) / 16 * 16 + 16;
    void *p = NULL;
    if (posix_memalign(&p, 64, (size_t)s * (size_t)nt * sizeof(REAL)) != 0) return NULL;
    *stride = s;
    return (REAL *)p;
}

static inline ptrdiff_t FN(round_up)(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b * b; }

/* ------------------------------------------------------------------------------------
 * openmp: one parallel loop nest per stage.
 * ---------------------------------------------------------------------------------- */

/* t1[b] = L @ x[b] + lb, in pixel blocks of NC, threads over (b, block). */
static int FN(lateral)(const REAL *x, const REAL *L, const REAL *lb, REAL *t1, ptrdiff_t B, ptrdiff_t C,
                       ptrdiff_t N, ptrdiff_t P)
{
    int nt = omp_get_max_threads();
    ptrdiff_t asz = FN(round_up)(N, MR) * C, stride;
    REAL *ws = FN(alloc_ws)(asz + (ptrdiff_t)KC * NC, nt, &stride);
    if (!ws) return 1;
    ptrdiff_t nblk = (P + NC - 1) / NC;
#pragma omp parallel num_threads(nt)
    {
        REAL *ap = ws + omp_get_thread_num() * stride, *bp = ap + FN(round_up)(asz, 16);
        FN(pack_a)(N, C, L, C, 1, ap);
#pragma omp for collapse(2) schedule(static)
        for (ptrdiff_t b = 0; b < B; ++b)
            for (ptrdiff_t jb = 0; jb < nblk; ++jb) {
                ptrdiff_t j0 = jb * NC, nc = P - j0 < NC ? P - j0 : NC;
                FN(gemm)(N, nc, C, ap, x + b * C * P + j0, P, 1, t1 + b * N * P + j0, P, lb, 0, bp);
            }
    }
    free(ws);
    return 0;
}

static int FN(vertical)(const REAL *t1, const REAL *V, const REAL *vb, REAL *t2, ptrdiff_t B, ptrdiff_t N,
                        ptrdiff_t H, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    ptrdiff_t OH = H + 2 * p - k + 1;
#pragma omp parallel for collapse(2) schedule(static)
    for (ptrdiff_t b = 0; b < B; ++b)
        for (ptrdiff_t n = 0; n < N; ++n) {
            const REAL *src = t1 + (b * N + n) * H * W;
            REAL *dst = t2 + (b * N + n) * OH * W;
            for (ptrdiff_t o = 0; o < OH; ++o) FN(vrow)(dst + o * W, src, 0, H, W, o, V + n * k, k, p, vb[n]);
        }
    return 0;
}

static int FN(horizontal)(const REAL *t2, const REAL *Hw, const REAL *hb, REAL *y, ptrdiff_t B, ptrdiff_t N,
                          ptrdiff_t OH, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    ptrdiff_t OW = W + 2 * p - k + 1;
#pragma omp parallel for collapse(2) schedule(static)
    for (ptrdiff_t b = 0; b < B; ++b)
        for (ptrdiff_t n = 0; n < N; ++n) {
            const REAL *src = t2 + (b * N + n) * OH * W;
            REAL *dst = y + (b * N + n) * OH * OW;
            for (ptrdiff_t o = 0; o < OH; ++o) FN(hrow)(dst + o * OW, src + o * W, W, OW, Hw + n * k, k, p, hb[n]);
        }
    return 0;
}

/* g_t2 = H^T gy, g_hw, g_hb; threads over channels so every weight gradient is summed
 * by one thread in a fixed order. */
static int FN(horizontal_backward)(const REAL *gy, const REAL *t2, const REAL *Hw, REAL *g_t2, REAL *g_hw,
                                   REAL *g_hb, ptrdiff_t B, ptrdiff_t N, ptrdiff_t OH, ptrdiff_t W, ptrdiff_t k,
                                   ptrdiff_t p)
{
    ptrdiff_t OW = W + 2 * p - k + 1, stride;
    int nt = omp_get_max_threads();
    /* per thread: padded t2 row (W + 2p), padded gy row (W + k - 1), reversed taps (k), sums (k + 1 doubles) */
    ptrdiff_t l1 = FN(round_up)(W + 2 * p, 16), l2 = FN(round_up)(W + k - 1, 16), l3 = FN(round_up)(k, 16);
    REAL *ws = FN(alloc_ws)(l1 + l2 + l3 + 2 * (k + 1) * (ptrdiff_t)(sizeof(double) / sizeof(REAL)) + 16, nt, &stride);
    if (!ws) return 1;
#pragma omp parallel num_threads(nt)
    {
        REAL *t2p = ws + omp_get_thread_num() * stride, *gyp = t2p + l1, *hrev = gyp + l2;
        double *acc = (double *)(hrev + l3);
        for (ptrdiff_t i = 0; i < l1; ++i) t2p[i] = 0;
        for (ptrdiff_t i = 0; i < l2; ++i) gyp[i] = 0;
#pragma omp for schedule(static)
        for (ptrdiff_t n = 0; n < N; ++n) {
            const REAL *hw = Hw + n * k;
            for (ptrdiff_t s = 0; s < k; ++s) hrev[s] = hw[k - 1 - s];
            for (ptrdiff_t s = 0; s <= k; ++s) acc[s] = 0;
            for (ptrdiff_t b = 0; b < B; ++b) {
                const REAL *g = gy + (b * N + n) * OH * OW, *t = t2 + (b * N + n) * OH * W;
                REAL *gt = g_t2 + (b * N + n) * OH * W;
                for (ptrdiff_t o = 0; o < OH; ++o) {
                    const REAL *grow = g + o * OW;
                    memcpy(t2p + p, t + o * W, (size_t)W * sizeof(REAL));
                    memcpy(gyp + (k - 1 - p), grow, (size_t)OW * sizeof(REAL));
                    for (ptrdiff_t s = 0; s < k; ++s) acc[s] += FN(dot)(grow, t2p + s, OW);
                    acc[k] += FN(sum)(grow, OW);
                    FN(taps)(gt + o * W, gyp, 1, W, hrev, k, 0);
                }
            }
            for (ptrdiff_t s = 0; s < k; ++s) g_hw[n * k + s] = (REAL)acc[s];
            g_hb[n] = (REAL)acc[k];
        }
    }
    free(ws);
    return 0;
}

/* The gradient of V's input for one channel plane: g_t1[i] = sum_r V[r] g_t2[i - r + p]
 * over the output rows that exist (vrev holds V reversed). */
static inline void FN(vrow_t)(REAL *restrict gt1_row, const REAL *g_t2, ptrdiff_t OH, ptrdiff_t W, ptrdiff_t i,
                              const REAL *vrev, ptrdiff_t k, ptrdiff_t p)
{
    /* o = i + p - (k - 1) + s for reversed tap s; keep 0 <= o < OH */
    ptrdiff_t base = i + p - (k - 1);
    ptrdiff_t s_lo = -base > 0 ? -base : 0;
    ptrdiff_t s_hi = OH - base < k ? OH - base : k;
    FN(taps)(gt1_row, g_t2 + (base + s_lo) * W, W, W, vrev + s_lo, s_hi - s_lo, 0);
}

/* Accumulate into acc[r] (r < k) the products of g_t2 row o with t1 row o + r - p, and
 * into acc[k] the sum of the g_t2 row. */
static inline void FN(vgrad_row)(double *acc, const REAL *g2row, const REAL *t1plane, ptrdiff_t H, ptrdiff_t W,
                                 ptrdiff_t o, ptrdiff_t k, ptrdiff_t p)
{
    for (ptrdiff_t r = 0; r < k; ++r) {
        ptrdiff_t i = o + r - p;
        if (i >= 0 && i < H) acc[r] += FN(dot)(g2row, t1plane + i * W, W);
    }
    acc[k] += FN(sum)(g2row, W);
}

static int FN(vertical_backward)(const REAL *g_t2, const REAL *t1, const REAL *V, REAL *g_t1, REAL *g_v,
                                 REAL *g_vb, ptrdiff_t B, ptrdiff_t N, ptrdiff_t H, ptrdiff_t W, ptrdiff_t k,
                                 ptrdiff_t p)
{
    ptrdiff_t OH = H + 2 * p - k + 1, stride;
    int nt = omp_get_max_threads();
    ptrdiff_t l3 = FN(round_up)(k, 16);
    REAL *ws = FN(alloc_ws)(l3 + 2 * (k + 1) * (ptrdiff_t)(sizeof(double) / sizeof(REAL)) + 16, nt, &stride);
    if (!ws) return 1;
#pragma omp parallel num_threads(nt)
    {
        REAL *vrev = ws + omp_get_thread_num() * stride;
        double *acc = (double *)(vrev + l3);
#pragma omp for schedule(static)
        for (ptrdiff_t n = 0; n < N; ++n) {
            const REAL *v = V + n * k;
            for (ptrdiff_t r = 0; r < k; ++r) vrev[r] = v[k - 1 - r];
            for (ptrdiff_t r = 0; r <= k; ++r) acc[r] = 0;
            for (ptrdiff_t b = 0; b < B; ++b) {
                const REAL *g2 = g_t2 + (b * N + n) * OH * W, *t = t1 + (b * N + n) * H * W;
                REAL *g1 = g_t1 + (b * N + n) * H * W;
                for (ptrdiff_t o = 0; o < OH; ++o) FN(vgrad_row)(acc, g2 + o * W, t, H, W, o, k, p);
                for (ptrdiff_t i = 0; i < H; ++i) FN(vrow_t)(g1 + i * W, g2, OH, W, i, vrev, k, p);
            }
            for (ptrdiff_t r = 0; r < k; ++r) g_v[n * k + r] = (REAL)acc[r];
            g_vb[n] = (REAL)acc[k];
        }
    }
    free(ws);
    return 0;
}

/* C[i][j] = sum_b sum_q A_b[i][q] * B_b[j][q] for one DR x DC block of C (rows i0.., cols
 * j0..), with the reduction along the contiguous axis of both operands: vectors along q,
 * DR * DC vector accumulators, one horizontal sum at the end. No packing. Rows past the
 * matrix edge reuse the last row and are not stored. */
#if VBYTES >= 64
#define DR 4
#define DC 4
#elif VBYTES >= 32
#define DR 2
#define DC 4
#else
#define DR 2
#define DC 2
#endif
static void FN(dot_block)(ptrdiff_t i0, ptrdiff_t j0, ptrdiff_t M, ptrdiff_t Nn, ptrdiff_t K, ptrdiff_t nb,
                          const REAL *A, ptrdiff_t lda, ptrdiff_t bsa, const REAL *Bm, ptrdiff_t ldb, ptrdiff_t bsb,
                          REAL *C, ptrdiff_t ldc, int accumulate)
{
    VEC acc[DR][DC];
    double tail[DR][DC];
    for (int r = 0; r < DR; ++r)
        for (int c = 0; c < DC; ++c) {
            acc[r][c] = (VEC){0};
            tail[r][c] = 0;
        }
    ptrdiff_t kfull = K / LANES * LANES;
    for (ptrdiff_t b = 0; b < nb; ++b) {
        const REAL *ar[DR], *br[DC];
        for (int r = 0; r < DR; ++r) ar[r] = A + b * bsa + (i0 + r < M ? i0 + r : M - 1) * lda;
        for (int c = 0; c < DC; ++c) br[c] = Bm + b * bsb + (j0 + c < Nn ? j0 + c : Nn - 1) * ldb;
        for (ptrdiff_t q = 0; q < kfull; q += LANES) {
            VEC av[DR], bv[DC];
            for (int r = 0; r < DR; ++r) av[r] = FN(vload)(ar[r] + q);
            for (int c = 0; c < DC; ++c) bv[c] = FN(vload)(br[c] + q);
            for (int r = 0; r < DR; ++r)
                for (int c = 0; c < DC; ++c) acc[r][c] += av[r] * bv[c];
        }
        for (ptrdiff_t q = kfull; q < K; ++q)
            for (int r = 0; r < DR; ++r)
                for (int c = 0; c < DC; ++c) tail[r][c] += (double)ar[r][q] * br[c][q];
    }
    for (int r = 0; r < DR && i0 + r < M; ++r)
        for (int c = 0; c < DC && j0 + c < Nn; ++c) {
            REAL lanes[LANES];
            memcpy(lanes, &acc[r][c], sizeof lanes);
            double s = tail[r][c];
            for (int l = 0; l < LANES; ++l) s += lanes[l];
            if (accumulate) s += C[(i0 + r) * ldc + j0 + c];
            C[(i0 + r) * ldc + j0 + c] = (REAL)s;
        }
}

/* C[M x Nn] = sum_b A_b[M x P] * Bt_b[Nn x P]^T: a GEMM whose reduction runs along the
 * contiguous axis of both operands and across nb images (A_b = A + b * bsa, rows lda
 * apart; Bt_b likewise). Chunk by chunk (an image's KC pixels at most), Bt is packed into
 * NR-column panels (the transposition this needs is the only packing) and the micro-kernel,
 * broadcasting A straight from its rows, accumulates into C. The chunks, so the order of
 * every sum, do not depend on how the caller splits C between threads. */
static void FN(gemm_nt)(ptrdiff_t M, ptrdiff_t Nn, ptrdiff_t P, ptrdiff_t nb, const REAL *A, ptrdiff_t lda,
                        ptrdiff_t bsa, const REAL *Bt, ptrdiff_t ldb, ptrdiff_t bsb, REAL *C, ptrdiff_t ldc,
                        REAL *bpack)
{
    for (ptrdiff_t jc = 0; jc < Nn; jc += NC) {
        ptrdiff_t nc = Nn - jc < NC ? Nn - jc : NC;
        for (ptrdiff_t b = 0; b < nb; ++b)
            for (ptrdiff_t q0 = 0; q0 < P; q0 += KC) {
                ptrdiff_t kl = P - q0 < KC ? P - q0 : KC;
                FN(pack_b)(kl, nc, Bt + b * bsb + jc * ldb + q0, 1, ldb, bpack);
                const REAL *ab = A + b * bsa + q0;
                int acc = b > 0 || q0 > 0;
                for (ptrdiff_t j0 = 0; j0 < nc; j0 += NR) {
                    ptrdiff_t nv = nc - j0 < NR ? nc - j0 : NR;
                    for (ptrdiff_t i0 = 0; i0 < M; i0 += MR) {
                        ptrdiff_t mv = M - i0 < MR ? M - i0 : MR;
                        FN(ukernel)(kl, ab + i0 * lda, 1, lda, bpack + j0 * kl, C + i0 * ldc + jc + j0, ldc, mv, nv,
                                    acc, NULL);
                    }
                }
            }
    }
}

/* Gradients of the lateral stage: g_lb = sum g_t1; g_l = sum_b g_t1[b] x[b]^T, threads
 * over blocks of g_l (no cross-thread partial sums, so the result does not depend on the
 * thread count); g_x[b] = L^T g_t1[b] by the packed GEMM (threads over (b, pixel block)).
 * g_l is a gemm_nt where both channel counts are at least GEMM_NT_MIN; below that its
 * transposing pack costs more than it saves and dot_block, which packs nothing, is used
 * (lateral backward, A/B in one process, Zen 4, 2 threads, batch 8: (256,256,8) 0.79x,
 * (128,128,32) 0.94x, (128,128,16) 0.91x, (64,64,32) 1.02x, (32,32,64) 1.55x of
 * dot_block's time). The choice depends on the shape only, never on the thread count. */
#define GEMM_NT_MIN 128
static int FN(lateral_backward)(const REAL *g_t1, const REAL *x, const REAL *L, REAL *g_x, REAL *g_l,
                                REAL *g_lb, ptrdiff_t B, ptrdiff_t C, ptrdiff_t N, ptrdiff_t P)
{
    int nt = omp_get_max_threads();
    ptrdiff_t a1 = FN(round_up)(FN(round_up)(C, MR) * N, 16); /* L^T packed */
    ptrdiff_t stride;
    REAL *ws = FN(alloc_ws)(a1 + (ptrdiff_t)KC * NC, nt, &stride);
    if (!ws) return 1;
    ptrdiff_t nblk = (P + NC - 1) / NC;
#pragma omp parallel num_threads(nt)
    {
        REAL *ap = ws + omp_get_thread_num() * stride, *bp = ap + a1;
        /* g_lb */
#pragma omp for schedule(static) nowait
        for (ptrdiff_t n = 0; n < N; ++n) {
            double s = 0;
            for (ptrdiff_t b = 0; b < B; ++b) s += FN(sum)(g_t1 + (b * N + n) * P, P);
            g_lb[n] = (REAL)s;
        }
        /* g_l[n][c] = sum_b sum_q g_t1[b][n][q] x[b][c][q] */
        if (N < GEMM_NT_MIN || C < GEMM_NT_MIN) {
            ptrdiff_t ni = (N + DR - 1) / DR, nj = (C + DC - 1) / DC;
            if (P >= 512) { /* image by image, so both operands stay in L2; the static schedule
                             * gives every block the same thread for all images */
                for (ptrdiff_t b = 0; b < B; ++b) {
#pragma omp for collapse(2) schedule(static) nowait
                    for (ptrdiff_t ib = 0; ib < ni; ++ib)
                        for (ptrdiff_t jb = 0; jb < nj; ++jb)
                            FN(dot_block)(ib * DR, jb * DC, N, C, P, 1, g_t1 + b * N * P, P, 0, x + b * C * P, P, 0,
                                          g_l, C, b > 0);
                }
            } else { /* short rows: reduce over all images at once, one horizontal sum per block */
#pragma omp for collapse(2) schedule(static) nowait
                for (ptrdiff_t ib = 0; ib < ni; ++ib)
                    for (ptrdiff_t jb = 0; jb < nj; ++jb)
                        FN(dot_block)(ib * DR, jb * DC, N, C, P, B, g_t1, P, N * P, x, P, C * P, g_l, C, 0);
            }
        } else {
            /* column blocks (each thread packs only its own columns of x), and row blocks
             * too when there are fewer column panels than threads */
            ptrdiff_t rpan = (N + MR - 1) / MR, cpan = (C + NR - 1) / NR;
            ptrdiff_t ncb = cpan < nt ? cpan : nt, nrb = (nt + ncb - 1) / ncb;
            if (nrb > rpan) nrb = rpan;
            ptrdiff_t mb = (rpan + nrb - 1) / nrb * MR, cb = (cpan + ncb - 1) / ncb * NR;
#pragma omp for collapse(2) schedule(static) nowait
            for (ptrdiff_t ib = 0; ib < nrb; ++ib)
                for (ptrdiff_t jb = 0; jb < ncb; ++jb) {
                    ptrdiff_t i0 = ib * mb, j0 = jb * cb;
                    if (i0 >= N || j0 >= C) continue;
                    ptrdiff_t mv = N - i0 < mb ? N - i0 : mb, cv = C - j0 < cb ? C - j0 : cb;
                    FN(gemm_nt)(mv, cv, P, B, g_t1 + i0 * P, P, N * P, x + j0 * P, P, C * P, g_l + i0 * C + j0, C,
                                bp);
                }
        }
        /* g_x = L^T g_t1: A = L^T is C x N with rsa = 1, csa = C */
        FN(pack_a)(C, N, L, 1, C, ap);
#pragma omp for collapse(2) schedule(static)
        for (ptrdiff_t b = 0; b < B; ++b)
            for (ptrdiff_t jb = 0; jb < nblk; ++jb) {
                ptrdiff_t j0 = jb * NC, nc = P - j0 < NC ? P - j0 : NC;
                FN(gemm)(C, nc, N, ap, g_t1 + b * N * P + j0, P, 1, g_x + b * C * P + j0, P, NULL, 0, bp);
            }
    }
    free(ws);
    return 0;
}

/* ------------------------------------------------------------------------------------
 * openmp_fused
 * ---------------------------------------------------------------------------------- */

/* V then H on whole precomputed t1 planes: one output row at a time, V into a padded row
 * buffer that stays in L1, H from it straight into y. No full-size intermediate. */
static int FN(vh)(const REAL *t1, const REAL *V, const REAL *vb, const REAL *Hw, const REAL *hb, REAL *y,
                  ptrdiff_t B, ptrdiff_t N, ptrdiff_t H, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    ptrdiff_t OH = H + 2 * p - k + 1, OW = W + 2 * p - k + 1, stride;
    ptrdiff_t TH = FUSED_PIX / W > 1 ? FUSED_PIX / W : 1;
    if (TH > OH) TH = OH;
    int nt = omp_get_max_threads();
    REAL *ws = FN(alloc_ws)(TH * W + 2 * FN(round_up)(k, 16) + 32, nt, &stride);
    if (!ws) return 1;
#pragma omp parallel num_threads(nt)
    {
        REAL *scratch = ws + omp_get_thread_num() * stride;
        FN(hmask_t) hm;
        FN(hsame_masks)(&hm, W, k, p);
        FN(vhreg_t) st;
        FN(vh_reg_init)(&st, W, k, p);
#pragma omp for collapse(2) schedule(static)
        for (ptrdiff_t b = 0; b < B; ++b)
            for (ptrdiff_t n = 0; n < N; ++n) {
                const REAL *src = t1 + (b * N + n) * H * W;
                REAL *dst = y + (b * N + n) * OH * OW;
                for (ptrdiff_t o0 = 0; o0 < OH; o0 += TH)
                    FN(vh_rows)(dst, src, 0, o0, o0 + TH < OH ? o0 + TH : OH, H, W, k, p, V + n * k, vb[n],
                                Hw + n * k, hb[n], scratch, &hm, &st, 0);
            }
    }
    free(ws);
    return 0;
}

/* L (N x C) packed for the GEMM as the fused forward uses it: ceil(N / MR) panels of
 * C x MR, panel i0 at out + i0 * C. Returns MR, which the layout depends on. */
static int FN(pack_lateral)(const REAL *L, ptrdiff_t N, ptrdiff_t C, REAL *out)
{
#pragma omp parallel for schedule(static)
    for (ptrdiff_t i0 = 0; i0 < N; i0 += MR) FN(pack_a)(N - i0 < MR ? N - i0 : MR, C, L + i0 * C, C, 1, out + i0 * C);
    return MR;
}

/* The fused forward. A task is (image b, block of NB output channels); it walks the
 * image in tiles of TH output rows. For each tile the lateral GEMM computes only the
 * t1 rows not yet computed into a small buffer (t1_out instead, when training), keeping
 * the k - 1 halo rows of the previous tile, then V and H run on the tile and write y.
 * Where the register pass applies, the buffer also holds V's zero padding rows (t1 is
 * padded after its bias), so every vector of the pass loads t1 directly.
 * `L_packed` is L as pack_lateral left it with panels of `packed_mr` rows (done once,
 * when the weights are prepared); if it is NULL or packed for another register tile, L
 * is packed here. */
static int FN(fused_forward)(const REAL *x, const REAL *L, const REAL *L_packed, int packed_mr, const REAL *lb,
                             const REAL *V, const REAL *vb, const REAL *Hw, const REAL *hb, REAL *y, REAL *t1_out,
                             ptrdiff_t B, ptrdiff_t C, ptrdiff_t N, ptrdiff_t H, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    ptrdiff_t OH = H + 2 * p - k + 1, OW = W + 2 * p - k + 1, P = H * W, stride;
    int nt = omp_get_max_threads();
    FN(vhreg_t) st0;
    FN(vh_reg_init)(&st0, W, k, p);
    ptrdiff_t R = st0.R;
    int padded = !t1_out && R > 0; /* the buffer holds zero rows for the padding, plus R - 1 of slack */
    /* Tiles of FUSED_PIX pixels, or up to 4 times taller while the buffer still holds
     * every channel (fewer halo slides and GEMM calls, never a split of the channels). */
    ptrdiff_t TH = FUSED_PIX / W > 1 ? FUSED_PIX / W : 1;
#define FC_CS(th) FN(round_up)(((th) + k - 1 + (padded ? R : 0)) * W, 16) /* buffer stride between channels */
    for (ptrdiff_t t = 4 * TH; t > TH; t /= 2)
        if (FN(round_up)(N, MR) * FC_CS(t < OH ? t : OH) <= FUSED_BUF) {
            TH = t;
            break;
        }
    if (TH > OH) TH = OH;
    ptrdiff_t cs = FC_CS(TH);
#undef FC_CS
    /* Channels per task: all of them if the tile buffer stays within FUSED_BUF elements,
     * fewer when there would be too few tasks for the threads. */
    ptrdiff_t NB = FN(round_up)(N, MR), cap = FUSED_BUF / cs / MR * MR;
    if (!t1_out && NB > cap) NB = cap > MR ? cap : MR;
    if (B * ((N + NB - 1) / NB) < 2 * nt) {
        ptrdiff_t want = (2 * nt + B - 1) / B;
        ptrdiff_t nb = FN(round_up)((N + want - 1) / want, MR);
        if (nb < NB) NB = nb;
    }
    ptrdiff_t nblk = (N + NB - 1) / NB;
    ptrdiff_t lbuf = t1_out ? 0 : NB * cs;
    ptrdiff_t lrow = FN(round_up)(TH * W + 2 * FN(round_up)(k, 16) + 32, 16);
    int prepacked = L_packed && packed_mr == MR;
    void *apv = NULL;
    if (!prepacked && posix_memalign(&apv, 64, (size_t)(FN(round_up)(N, MR) * C) * sizeof(REAL)) != 0) return 1;
    const REAL *ap_all = prepacked ? L_packed : (const REAL *)apv;
    REAL *ws = FN(alloc_ws)((ptrdiff_t)KC * NC + lbuf + lrow, nt, &stride);
    if (!ws) {
        free(apv);
        return 1;
    }
#pragma omp parallel num_threads(nt)
    {
        REAL *bp = ws + omp_get_thread_num() * stride, *buf = bp + (ptrdiff_t)KC * NC, *row = buf + lbuf;
        FN(hmask_t) hm;
        FN(hsame_masks)(&hm, W, k, p);
        FN(vhreg_t) st = st0; /* a copy per thread, on its own stack */
        if (!prepacked) { /* L packed once per call, shared by every task */
#pragma omp for schedule(static)
            for (ptrdiff_t i0 = 0; i0 < N; i0 += MR)
                FN(pack_a)(N - i0 < MR ? N - i0 : MR, C, L + i0 * C, C, 1, (REAL *)apv + i0 * C);
        }
#pragma omp for schedule(static)
        for (ptrdiff_t task = 0; task < B * nblk; ++task) {
            ptrdiff_t b = task / nblk, n0 = (task % nblk) * NB;
            ptrdiff_t nbv = N - n0 < NB ? N - n0 : NB;
            const REAL *ap = ap_all + n0 * C;
            const REAL *xb = x + b * C * P;
            REAL *dst = t1_out ? t1_out + (b * N + n0) * P : buf;
            ptrdiff_t dcs = t1_out ? P : cs;
            /* dst row 0 holds image row row0; rows < have are filled (rows outside the
             * image, only when padded, with zeros) */
            ptrdiff_t row0 = padded ? -p : 0, have = row0;
            for (ptrdiff_t o0 = 0; o0 < OH; o0 += TH) {
                ptrdiff_t nro = OH - o0 < TH ? OH - o0 : TH;
                ptrdiff_t lo = o0 - p, hi = o0 + nro - 1 - p + k; /* image rows this tile reads */
                if (!padded) {
                    lo = lo > 0 ? lo : 0;
                    hi = hi < H ? hi : H;
                }
                if (!t1_out && lo > row0) { /* slide the halo rows to the front of the buffer */
                    if (have > lo)
                        for (ptrdiff_t n = 0; n < nbv; ++n)
                            memmove(dst + n * dcs, dst + n * dcs + (lo - row0) * W, (size_t)((have - lo) * W) * sizeof(REAL));
                    else
                        have = lo;
                    row0 = lo;
                }
                ptrdiff_t start = lo > have ? lo : have;
                ptrdiff_t ga = start > 0 ? start : 0, gb = hi < H ? hi : H; /* rows inside the image */
                if (gb > ga)
                    FN(gemm)(nbv, (gb - ga) * W, C, ap, xb + ga * W, P, 1, dst + (ga - row0) * W, dcs, lb + n0, 0,
                             bp);
                for (ptrdiff_t n = 0; n < nbv && padded; ++n) { /* padding rows above and below the image */
                    REAL *d = dst + n * dcs - row0 * W;
                    if (start < 0) memset(d + start * W, 0, (size_t)((0 < hi ? -start : hi - start) * W) * sizeof(REAL));
                    if (hi > H) {
                        ptrdiff_t z = start > H ? start : H;
                        memset(d + z * W, 0, (size_t)((hi - z) * W) * sizeof(REAL));
                    }
                }
                if (hi > have) have = hi;
                for (ptrdiff_t n = 0; n < nbv; ++n) {
                    ptrdiff_t c = n0 + n;
                    FN(vh_rows)(y + (b * N + c) * OH * OW, dst + n * dcs, row0, o0, o0 + nro, H, W, k, p, V + c * k,
                                vb[c], Hw + c * k, hb[c], row, &hm, &st, padded);
                }
            }
        }
    }
    free(ws);
    free(apv);
    return 0;
}

/* Fused backward of V and H for one channel at a time (all images), from the saved t1:
 * t2 is recomputed a row at a time, g_t2 lives in a per-thread plane, g_t1 is written. */
static int FN(vh_backward)(const REAL *gy, const REAL *t1, const REAL *V, const REAL *vb, const REAL *Hw,
                           REAL *g_t1, REAL *g_v, REAL *g_vb, REAL *g_hw, REAL *g_hb, ptrdiff_t B, ptrdiff_t N,
                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t k, ptrdiff_t p)
{
    ptrdiff_t OH = H + 2 * p - k + 1, OW = W + 2 * p - k + 1, stride;
    int nt = omp_get_max_threads();
    ptrdiff_t margin = FN(round_up)(k, 16) + 16;
    ptrdiff_t l1 = FN(round_up)(W + 2 * p, 16), l2 = FN(round_up)(W + k - 1, 16), l3 = FN(round_up)(k, 16);
    ptrdiff_t lg = FN(round_up)(OH * W, 16), lacc = FN(round_up)((2 * k + 2) * (ptrdiff_t)(sizeof(double) / sizeof(REAL)), 16);
    ptrdiff_t lp = FN(round_up)(OH * W + 2 * margin, 16); /* a plane with margins, for the flat path */
    REAL *ws = FN(alloc_ws)(l1 + l2 + 2 * l3 + lg + lacc + 2 * lp, nt, &stride);
    if (!ws) return 1;
#pragma omp parallel num_threads(nt)
    {
        REAL *t2p = ws + omp_get_thread_num() * stride, *gyp = t2p + l1, *hrev = gyp + l2, *vrev = hrev + l3,
             *g2 = vrev + l3;
        double *accv = (double *)(g2 + lg), *acch = accv + (k + 1);
        REAL *pl_a = g2 + lg + lacc, *pl_b = pl_a + lp;
        REAL *t2f = pl_a + margin, *gyf = pl_b + margin; /* flat planes, zero margins */
        FN(hmask_t) hm;
        FN(hsame_masks)(&hm, W, k, p);
        int flat = hm.ok && OW == W;
        for (ptrdiff_t i = 0; i < l1; ++i) t2p[i] = 0;
        for (ptrdiff_t i = 0; i < l2; ++i) gyp[i] = 0;
        for (ptrdiff_t i = 0; i < 2 * lp; ++i) pl_a[i] = 0;
#pragma omp for schedule(static)
        for (ptrdiff_t n = 0; n < N; ++n) {
            const REAL *v = V + n * k, *hw = Hw + n * k;
            for (ptrdiff_t s = 0; s < k; ++s) {
                hrev[s] = hw[k - 1 - s];
                vrev[s] = v[k - 1 - s];
            }
            for (ptrdiff_t s = 0; s <= k; ++s) accv[s] = acch[s] = 0;
            for (ptrdiff_t b = 0; b < B; ++b) {
                const REAL *g = gy + (b * N + n) * OH * OW, *t = t1 + (b * N + n) * H * W;
                REAL *g1 = g_t1 + (b * N + n) * H * W;
                if (flat) {
                    /* t2 = V t1 + vb over the plane */
                    ptrdiff_t ia = p, ib = H - k + p + 1;
                    if (ib < ia) ib = ia = OH;
                    for (ptrdiff_t o = 0; o < ia; ++o) FN(vrow)(t2f + o * W, t, 0, H, W, o, v, k, p, vb[n]);
                    if (ib > ia) FN(taps)(t2f + ia * W, t + (ia - p) * W, W, (ib - ia) * W, v, k, vb[n]);
                    for (ptrdiff_t o = ib; o < OH; ++o) FN(vrow)(t2f + o * W, t, 0, H, W, o, v, k, p, vb[n]);
                    /* g_hw, g_hb */
                    FN(hgrad_same)(acch, g, t2f, OH * W, W, k, p, &hm);
                    /* g_t2 = H^T gy: "same" H with the taps reversed (and so the same masks) */
                    memcpy(gyf, g, (size_t)(OH * W) * sizeof(REAL));
                    FN(hsame)(g2, gyf, OH * W, W, hrev, k, k - 1 - p, 0, &hm);
                    /* g_vb, g_v: flat dots of g_t2 with shifted t1 */
                    accv[k] += FN(sum)(g2, OH * W);
                    for (ptrdiff_t r = 0; r < k; ++r) {
                        ptrdiff_t o_lo = p - r > 0 ? p - r : 0, o_hi = H + p - r < OH ? H + p - r : OH;
                        if (o_hi > o_lo) accv[r] += FN(dot)(g2 + o_lo * W, t + (o_lo + r - p) * W, (o_hi - o_lo) * W);
                    }
                    /* g_t1 = V^T g_t2: interior rows flat, border rows one by one */
                    ptrdiff_t i_lo = k - 1 - p, i_hi = OH - p; /* rows whose k taps all exist */
                    if (i_hi < i_lo) i_hi = i_lo = H;
                    if (i_lo > H) i_lo = H;
                    if (i_hi > H) i_hi = H;
                    for (ptrdiff_t i = 0; i < i_lo; ++i) FN(vrow_t)(g1 + i * W, g2, OH, W, i, vrev, k, p);
                    if (i_hi > i_lo) FN(taps)(g1 + i_lo * W, g2 + (i_lo + p - (k - 1)) * W, W, (i_hi - i_lo) * W, vrev, k, 0);
                    for (ptrdiff_t i = i_hi; i < H; ++i) FN(vrow_t)(g1 + i * W, g2, OH, W, i, vrev, k, p);
                    continue;
                }
                for (ptrdiff_t o = 0; o < OH; ++o) {
                    const REAL *grow = g + o * OW;
                    FN(vrow)(t2p + p, t, 0, H, W, o, v, k, p, vb[n]);
                    for (ptrdiff_t s = 0; s < k; ++s) acch[s] += FN(dot)(grow, t2p + s, OW);
                    acch[k] += FN(sum)(grow, OW);
                    memcpy(gyp + (k - 1 - p), grow, (size_t)OW * sizeof(REAL));
                    FN(taps)(g2 + o * W, gyp, 1, W, hrev, k, 0);
                    FN(vgrad_row)(accv, g2 + o * W, t, H, W, o, k, p);
                }
                for (ptrdiff_t i = 0; i < H; ++i) FN(vrow_t)(g1 + i * W, g2, OH, W, i, vrev, k, p);
            }
            for (ptrdiff_t s = 0; s < k; ++s) {
                g_hw[n * k + s] = (REAL)acch[s];
                g_v[n * k + s] = (REAL)accv[s];
            }
            g_hb[n] = (REAL)acch[k];
            g_vb[n] = (REAL)accv[k];
        }
    }
    free(ws);
    return 0;
}

static void FN(block_sizes)(int *out)
{
    out[0] = MR;
    out[1] = NR;
    out[2] = KC;
    out[3] = NC;
    out[4] = VBYTES;
}

#undef FN
#undef LANES
#undef NR
#undef KC
#undef NC
#undef FUSED_BUF
#undef FUSED_PIX
#undef DR
#undef DC
#undef GEMM_NT_MIN
#undef VEC
#undef IVEC
