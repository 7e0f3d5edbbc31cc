// The lateral (1x1, C -> N) stage as a hand-written tiled GEMM, used three ways:
//   forward   t1[b] (N x HW) = lateral (N x C) @ x[b] (C x HW) + lateral_bias
//   grad x    gx[b] (C x HW) = lateral^T (C x N) @ g_t1[b] (N x HW)
//   grad L    ws[z] (N x C)  = sum over the batches b of split z of g_t1[b] (N x HW) @ x[b]^T
//             then g_lateral = sum_z ws[z] (gemm_sum_splits, fixed order: deterministic)
//
// Block tile BM x BN x BK = 128 x 128 x 8 (float; 64 x 64 x 8 for double), 256 threads,
// each thread a TM x TM = 8 x 8 (4 x 4) register tile split in two halves at BM/2 (so the
// shared-memory reads are 16-byte vectors and broadcast-friendly), double-buffered shared
// memory with register prefetch of the next k-slice, one __syncthreads per slice.
//
// Operand addressing (64-bit):
//   A_b[m][k] = A[b * sAb + m * lda + k]  if A_KC (k contiguous), else A[b * sAb + k * lda + m]
//   B_b[k][n] = B[b * sBb + n * ldb + k]  if B_KC,                 else B[b * sBb + k * ldb + n]
//   C_z[m][n] = C[z * sCz + m * ldc + n]
// Block z of the grid sums batches [z * bpz, min(nbatch, (z + 1) * bpz)) (bpz = 1: one
// batched GEMM per z). Compiled by NVRTC, nvcc and the CPU emulator: no includes.

#define GEMM_THREADS 256
#define GEMM_BK 8

template <typename T> struct GemmTraits;
template <> struct GemmTraits<float> {
    static constexpr int TM = 8;
    typedef float4 Vec;  // TM / 2 elements
};
template <> struct GemmTraits<double> {
    static constexpr int TM = 4;
    typedef double2 Vec;
};

template <typename T, bool A_KC, bool B_KC>
__global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_tiled(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias, T* __restrict__ C,
           int M, int Nc, int Kd, long long lda, long long sAb, long long ldb, long long sBb,
           long long ldc, long long sCz, int nbatch, int bpz, int vec_store)
{
    constexpr int TM = GemmTraits<T>::TM;
    constexpr int HT = TM / 2;          // half tile
    constexpr int BM = 16 * TM;         // = BN
    constexpr int BK = GEMM_BK;
    constexpr int LD = BM + 4;          // padded row: conflict-free transposed stores
    constexpr int LPT = BM * BK / GEMM_THREADS;  // elements of each operand a thread loads
    typedef typename GemmTraits<T>::Vec Vec;

    __shared__ __align__(16) T As[2][BK][LD];
    __shared__ __align__(16) T Bs[2][BK][LD];

    const int tid = threadIdx.x;
    const int tx = tid & 15;
    const int ty = tid >> 4;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BM;
    const int z = blockIdx.z;
    const int b_begin = z * bpz;
    const int b_end = (b_begin + bpz < nbatch) ? b_begin + bpz : nbatch;

    T ra[LPT], rb[LPT];

    // (kk, mm) of element i of this thread's share of a BK x BM slice
#define GEMM_A_IDX(i, kk, mm)                                  \
    const int e_##i = tid + GEMM_THREADS * (i);                \
    const int kk = A_KC ? (e_##i % BK) : (e_##i / BM);         \
    const int mm = A_KC ? (e_##i / BK) : (e_##i % BM);
#define GEMM_B_IDX(i, kk, nn)                                  \
    const int f_##i = tid + GEMM_THREADS * (i);                \
    const int kk = B_KC ? (f_##i % BK) : (f_##i / BM);         \
    const int nn = B_KC ? (f_##i / BK) : (f_##i % BM);

    auto load_regs = [&](int b, int k0) {
        const T* __restrict__ Ab = A + (long long)b * sAb;
        const T* __restrict__ Bb = B + (long long)b * sBb;
#pragma unroll
        for (int i = 0; i < LPT; ++i) {
            GEMM_A_IDX(i, kk, mm)
            const int m = m0 + mm;
            const int k = k0 + kk;
            ra[i] = (m < M && k < Kd) ? Ab[A_KC ? (long long)m * lda + k : (long long)k * lda + m] : T(0);
        }
#pragma unroll
        for (int i = 0; i < LPT; ++i) {
            GEMM_B_IDX(i, kk, nn)
            const int n = n0 + nn;
            const int k = k0 + kk;
            rb[i] = (n < Nc && k < Kd) ? Bb[B_KC ? (long long)n * ldb + k : (long long)k * ldb + n] : T(0);
        }
    };
    auto store_smem = [&](int buf) {
#pragma unroll
        for (int i = 0; i < LPT; ++i) {
            GEMM_A_IDX(i, kk, mm)
            As[buf][kk][mm] = ra[i];
        }
#pragma unroll
        for (int i = 0; i < LPT; ++i) {
            GEMM_B_IDX(i, kk, nn)
            Bs[buf][kk][nn] = rb[i];
        }
    };

    T acc[TM][TM];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TM; ++j) acc[i][j] = T(0);

    int b = b_begin;
    int k0 = 0;
    if (b < b_end) {
        load_regs(b, k0);
        store_smem(0);
    }
    __syncthreads();
    int cur = 0;
    while (b < b_end) {
        int nk0 = k0 + BK;
        int nb = b;
        if (nk0 >= Kd) { nk0 = 0; ++nb; }
        const bool has_next = nb < b_end;
        if (has_next) load_regs(nb, nk0);
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], bv[TM];
            const Vec a0 = *reinterpret_cast<const Vec*>(&As[cur][kk][ty * HT]);
            const Vec a1 = *reinterpret_cast<const Vec*>(&As[cur][kk][BM / 2 + ty * HT]);
            const Vec b0 = *reinterpret_cast<const Vec*>(&Bs[cur][kk][tx * HT]);
            const Vec b1 = *reinterpret_cast<const Vec*>(&Bs[cur][kk][BM / 2 + tx * HT]);
            const T* pa0 = reinterpret_cast<const T*>(&a0);
            const T* pa1 = reinterpret_cast<const T*>(&a1);
            const T* pb0 = reinterpret_cast<const T*>(&b0);
            const T* pb1 = reinterpret_cast<const T*>(&b1);
#pragma unroll
            for (int i = 0; i < HT; ++i) {
                a[i] = pa0[i]; a[HT + i] = pa1[i];
                bv[i] = pb0[i]; bv[HT + i] = pb1[i];
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TM; ++j) acc[i][j] += a[i] * bv[j];
        }
        if (has_next) store_smem(cur ^ 1);
        __syncthreads();
        cur ^= 1;
        b = nb;
        k0 = nk0;
    }
#undef GEMM_A_IDX
#undef GEMM_B_IDX

    T* __restrict__ Cz = C + (long long)z * sCz;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + (i < HT ? ty * HT + i : BM / 2 + ty * HT + (i - HT));
        if (m >= M) continue;
        const T bm = bias != nullptr ? bias[m] : T(0);
        T* __restrict__ crow = Cz + (long long)m * ldc;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int n = n0 + half * (BM / 2) + tx * HT;
            if (vec_store && n + HT <= Nc) {
                Vec out;
                T* po = reinterpret_cast<T*>(&out);
#pragma unroll
                for (int j = 0; j < HT; ++j) po[j] = acc[i][half * HT + j] + bm;
                *reinterpret_cast<Vec*>(crow + n) = out;
            } else {
#pragma unroll
                for (int j = 0; j < HT; ++j)
                    if (n + j < Nc) crow[n + j] = acc[i][half * HT + j] + bm;
            }
        }
    }
}

// out[i] = sum_{z < nz} ws[z * count + i]  (fixed order)
template <typename T>
__global__ void __launch_bounds__(GEMM_THREADS)
gemm_sum_splits(const T* __restrict__ ws, int nz, long long count, T* __restrict__ out)
{
    const long long i = (long long)blockIdx.x * GEMM_THREADS + threadIdx.x;
    if (i >= count) return;
    T s = T(0);
    for (int z = 0; z < nz; ++z) s += ws[(long long)z * count + i];
    out[i] = s;
}

#if !defined(__CUDACC_RTC__) && !defined(CUDA_EMU)
// Explicit instantiations so that nvcc compiles real code (tests/test_cuda_sources.py).
#define GEMM_INSTANTIATE(T, AK, BK_)                                                                  \
    template __global__ void gemm_tiled<T, AK, BK_>(const T*, const T*, const T*, T*, int, int, int,   \
                                                    long long, long long, long long, long long,       \
                                                    long long, long long, int, int, int);
GEMM_INSTANTIATE(float, true, false)   // forward: lateral @ x
GEMM_INSTANTIATE(float, false, false)  // grad x: lateral^T @ g_t1
GEMM_INSTANTIATE(float, true, true)    // grad lateral: g_t1 @ x^T
GEMM_INSTANTIATE(double, true, false)
GEMM_INSTANTIATE(double, false, false)
GEMM_INSTANTIATE(double, true, true)
template __global__ void gemm_sum_splits<float>(const float*, int, long long, float*);
template __global__ void gemm_sum_splits<double>(const double*, int, long long, double*);
#endif
