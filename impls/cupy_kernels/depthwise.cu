// Depthwise stages of the flattened layer: V (k x 1), H (1 x k), fused V+H, their
// backward passes and the deterministic reduction of the weight-gradient partials.
//
// Compiled by CuPy/NVRTC (name expressions such as "dw_vh_fwd<float, 3, 32, 32>"), by
// nvcc in the tests (explicit instantiations at the end, outside NVRTC) and as plain C++
// by the CPU emulator in tests/ (cuda_emu.h). So: no includes, no std library.
//
// Layouts (all contiguous, NCHW):
//   t1 (B, N, H, W)   lateral output, V input
//   t2 (B, N, OH, W)  V output, H input       OH = H + 2p - K + 1
//   y  (B, N, OH, OW) H output                OW = W + 2p - K + 1
// Every kernel works on one (b, n) plane per blockIdx.x and on a TH x TW output tile
// (blockIdx.y rows, blockIdx.z columns). It stages its input tile plus halo in shared
// memory (zero-filled outside the image: that *is* the zero padding), then computes.
// Offsets of planes are 64-bit; offsets inside a plane are 64-bit where they multiply.

#define DW_THREADS 256

__device__ __forceinline__ int dw_imin(int a, int b) { return a < b ? a : b; }

__device__ __forceinline__ void dw_load4(const float* __restrict__ p, float* v)
{
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}

__device__ __forceinline__ void dw_load4(const double* __restrict__ p, double* v)
{
    const double2 a = __ldg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldg(reinterpret_cast<const double2*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}

// Stage rows [row0, row0 + nrows) x columns [col0, col0 + COLS) of a rows x cols plane
// into s (row stride COLS), zero outside the plane. With vec (cols % 4 == 0, col0 % 4 ==
// 0, plane 16-byte aligned) every 4-column chunk is entirely inside or outside the plane
// and is read with one 16-byte load.
template <typename T, int COLS>
__device__ __forceinline__ void dw_load_tile(T* __restrict__ s, const T* __restrict__ plane, int rows, int cols,
                                             int row0, int nrows, int col0, int vec)
{
    if (vec) {
        constexpr int CH = COLS / 4;
        const int total = nrows * CH;
        for (int idx = threadIdx.x; idx < total; idx += DW_THREADS) {
            const int r = idx / CH;
            const int ch = idx - r * CH;
            const int gr = row0 + r;
            const int gc = col0 + 4 * ch;
            T v[4] = {T(0), T(0), T(0), T(0)};
            if (gr >= 0 && gr < rows && gc >= 0 && gc < cols)
                dw_load4(plane + (long long)gr * cols + gc, v);
            T* d = s + r * COLS + 4 * ch;
            d[0] = v[0]; d[1] = v[1]; d[2] = v[2]; d[3] = v[3];
        }
    } else {
        const int total = nrows * COLS;
        for (int idx = threadIdx.x; idx < total; idx += DW_THREADS) {
            const int r = idx / COLS;
            const int c = idx - r * COLS;
            const int gr = row0 + r;
            const int gc = col0 + c;
            T v = T(0);
            if (gr >= 0 && gr < rows && gc >= 0 && gc < cols)
                v = __ldg(plane + (long long)gr * cols + gc);
            s[idx] = v;
        }
    }
}

// Sum each of NV per-thread values over the block (fixed order: deterministic) and let
// thread f write the total of value f to out[f]. Every thread of the block must call it.
template <typename T, int NV>
__device__ __forceinline__ void dw_block_sum(T (&vals)[NV], T* __restrict__ out)
{
    __shared__ T red[DW_THREADS / 32][NV];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int f = 0; f < NV; ++f) {
        T v = vals[f];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) red[warp][f] = v;
    }
    __syncthreads();
    if (threadIdx.x < NV) {
        T s = T(0);
#pragma unroll
        for (int w = 0; w < DW_THREADS / 32; ++w) s += red[w][threadIdx.x];
        out[threadIdx.x] = s;
    }
}

// Index of this block's row in the partial-sum buffer: rows are ordered (n, b, tile) so
// that one channel's partials are contiguous. blockIdx.x = b * N + n.
__device__ __forceinline__ long long dw_partial_row(int N)
{
    const long long plane = blockIdx.x;
    const long long b = plane / N;
    const long long n = plane - b * N;
    const long long B = gridDim.x / N;
    const long long tiles = (long long)gridDim.y * gridDim.z;
    const long long tile = (long long)blockIdx.y * gridDim.z + blockIdx.z;
    return (n * B + b) * tiles + tile;
}

#define DW_R4(K) ((((K) - 1) + 3) / 4 * 4)  // column halo rounded up to 4 (aligned loads)

// ---------------------------------------------------------------------------------------
// V forward: t2[o][w] = vb + sum_i v[i] * t1[o + i - p][w]   (tile over OH x W)
template <typename T, int K, int TW, int TH>
__global__ void __launch_bounds__(DW_THREADS)
dw_v_fwd(const T* __restrict__ t1, const T* __restrict__ wv, const T* __restrict__ bv, T* __restrict__ t2,
         int N, int H, int W, int OH, int pad, int vec)
{
    constexpr int SH = TH + K - 1;
    __shared__ __align__(16) T s[SH * TW];
    const long long plane = blockIdx.x;
    const int n = (int)(plane % N);
    const int o0 = blockIdx.y * TH;
    const int w0 = blockIdx.z * TW;
    dw_load_tile<T, TW>(s, t1 + plane * H * (long long)W, H, W, o0 - pad, SH, w0, vec);
    T v[K];
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = wv[n * K + i];
    const T b = bv[n];
    __syncthreads();
    T* __restrict__ dst = t2 + plane * OH * (long long)W;
    for (int idx = threadIdx.x; idx < TH * TW; idx += DW_THREADS) {
        const int r = idx / TW;
        const int c = idx - r * TW;
        const int go = o0 + r;
        const int gw = w0 + c;
        if (go < OH && gw < W) {
            T acc = b;
#pragma unroll
            for (int i = 0; i < K; ++i) acc += v[i] * s[(r + i) * TW + c];
            dst[(long long)go * W + gw] = acc;
        }
    }
}

// H forward: y[o][q] = hb + sum_j h[j] * t2[o][q + j - p]   (tile over OH x OW)
template <typename T, int K, int TW, int TH>
__global__ void __launch_bounds__(DW_THREADS)
dw_h_fwd(const T* __restrict__ t2, const T* __restrict__ wh, const T* __restrict__ bh, T* __restrict__ y,
         int N, int OH, int W, int OW, int pad, int vec)
{
    constexpr int R4 = DW_R4(K);
    constexpr int SW = R4 + TW + R4;
    __shared__ __align__(16) T s[TH * SW];
    const long long plane = blockIdx.x;
    const int n = (int)(plane % N);
    const int o0 = blockIdx.y * TH;
    const int q0 = blockIdx.z * TW;
    // smem column j holds t2 column q0 - R4 + j
    dw_load_tile<T, SW>(s, t2 + plane * OH * (long long)W, OH, W, o0, TH, q0 - R4, vec);
    T h[K];
#pragma unroll
    for (int j = 0; j < K; ++j) h[j] = wh[n * K + j];
    const T b = bh[n];
    __syncthreads();
    T* __restrict__ dst = y + plane * OH * (long long)OW;
    for (int idx = threadIdx.x; idx < TH * TW; idx += DW_THREADS) {
        const int r = idx / TW;
        const int c = idx - r * TW;
        const int go = o0 + r;
        const int gq = q0 + c;
        if (go < OH && gq < OW) {
            T acc = b;
            const T* __restrict__ row = s + r * SW + (c + R4 - pad);
#pragma unroll
            for (int j = 0; j < K; ++j) acc += h[j] * row[j];
            dst[(long long)go * OW + gq] = acc;
        }
    }
}

// Fused V+H forward: reads a t1 tile with both halos once, builds the t2 tile (with its
// horizontal halo, zero outside [0, W): the H stage's padding) in shared memory and
// writes y once. With t2_out != nullptr it also writes the t2 positions this tile owns
// (forward_train keeps t2 for the H backward). Tile over OH x OW.
template <typename T, int K, int TW, int TH>
__global__ void __launch_bounds__(DW_THREADS)
dw_vh_fwd(const T* __restrict__ t1, const T* __restrict__ wv, const T* __restrict__ bv,
          const T* __restrict__ wh, const T* __restrict__ bh, T* __restrict__ y, T* __restrict__ t2_out,
          int N, int H, int W, int OH, int OW, int pad, int vec)
{
    constexpr int R4 = DW_R4(K);
    constexpr int S1W = R4 + TW + R4;
    constexpr int S1H = TH + K - 1;
    constexpr int S2W = TW + K - 1;
    __shared__ __align__(16) T s1[S1H * S1W];
    __shared__ T s2[TH * S2W];
    const long long plane = blockIdx.x;
    const int n = (int)(plane % N);
    const int o0 = blockIdx.y * TH;
    const int q0 = blockIdx.z * TW;
    // s1[r][j] = t1[o0 - pad + r][q0 - R4 + j]
    dw_load_tile<T, S1W>(s1, t1 + plane * H * (long long)W, H, W, o0 - pad, S1H, q0 - R4, vec);
    T v[K], h[K];
#pragma unroll
    for (int i = 0; i < K; ++i) { v[i] = wv[n * K + i]; h[i] = wh[n * K + i]; }
    const T vb = bv[n];
    const T hb = bh[n];
    __syncthreads();
    // s2[r][c] = t2[o0 + r][q0 - pad + c], zero where that column is outside [0, W)
    for (int idx = threadIdx.x; idx < TH * S2W; idx += DW_THREADS) {
        const int r = idx / S2W;
        const int c = idx - r * S2W;
        const int gw = q0 - pad + c;
        T acc = T(0);
        if (gw >= 0 && gw < W) {
            acc = vb;
            const T* __restrict__ col = s1 + r * S1W + (c + R4 - pad);
#pragma unroll
            for (int i = 0; i < K; ++i) acc += v[i] * col[i * S1W];
        }
        s2[idx] = acc;
    }
    __syncthreads();
    T* __restrict__ dst = y + plane * OH * (long long)OW;
    for (int idx = threadIdx.x; idx < TH * TW; idx += DW_THREADS) {
        const int r = idx / TW;
        const int c = idx - r * TW;
        const int go = o0 + r;
        const int gq = q0 + c;
        if (go < OH && gq < OW) {
            T acc = hb;
            const T* __restrict__ row = s2 + r * S2W + c;
#pragma unroll
            for (int j = 0; j < K; ++j) acc += h[j] * row[j];
            dst[(long long)go * OW + gq] = acc;
        }
    }
    if (t2_out != nullptr) {
        // Owned t2 columns: [q0, q0 + TW) clipped to W, and the last column tile owns
        // up to W (W can exceed OW when 2p < K - 1). s2 column of t2 column w: w - q0 + pad.
        const int wend = (q0 + TW >= OW) ? W : dw_imin(q0 + TW, W);
        const int ncols = wend - q0;
        T* __restrict__ d2 = t2_out + plane * OH * (long long)W;
        for (int idx = threadIdx.x; idx < TH * S2W; idx += DW_THREADS) {
            const int r = idx / S2W;
            const int c = idx - r * S2W;
            const int go = o0 + r;
            if (go < OH && c < ncols) d2[(long long)go * W + (q0 + c)] = s2[r * S2W + c + pad];
        }
    }
}

// ---------------------------------------------------------------------------------------
// H backward (tile over g_t2's OH x W):
//   g_t2[o][w] = sum_j h[j] * gy[o][w - j + p]
//   partial (K + 1 values per block): g_h[j] = sum gy[o][q] * t2[o][q + j - p], g_hb = sum gy,
//   over the (o, q) this tile owns: o in the tile's rows, q in [w0, w0 + TW) clipped to
//   OW, and the last column tile owns up to OW.
template <typename T, int K, int TW, int TH>
__global__ void __launch_bounds__(DW_THREADS)
dw_h_bwd(const T* __restrict__ gy, const T* __restrict__ t2, const T* __restrict__ wh, T* __restrict__ g_t2,
         T* __restrict__ partial, int N, int OH, int W, int OW, int pad, int vec_gy, int vec_t2)
{
    constexpr int R4 = DW_R4(K);
    constexpr int SW = R4 + TW + R4;
    constexpr int SPAN = TW + K - 1;  // most owned q columns of one tile
    __shared__ __align__(16) T sg[TH * SW];  // sg[r][j] = gy[o0 + r][w0 - R4 + j]
    __shared__ __align__(16) T st[TH * SW];  // st[r][j] = t2[o0 + r][w0 - R4 + j]
    const long long plane = blockIdx.x;
    const int n = (int)(plane % N);
    const int o0 = blockIdx.y * TH;
    const int w0 = blockIdx.z * TW;
    dw_load_tile<T, SW>(sg, gy + plane * OH * (long long)OW, OH, OW, o0, TH, w0 - R4, vec_gy);
    dw_load_tile<T, SW>(st, t2 + plane * OH * (long long)W, OH, W, o0, TH, w0 - R4, vec_t2);
    T h[K];
#pragma unroll
    for (int j = 0; j < K; ++j) h[j] = wh[n * K + j];
    __syncthreads();
    T* __restrict__ dst = g_t2 + plane * OH * (long long)W;
    for (int idx = threadIdx.x; idx < TH * TW; idx += DW_THREADS) {
        const int r = idx / TW;
        const int c = idx - r * TW;
        const int go = o0 + r;
        const int gw = w0 + c;
        if (go < OH && gw < W) {
            T acc = T(0);
            const T* __restrict__ row = sg + r * SW + (c + pad + R4);
#pragma unroll
            for (int j = 0; j < K; ++j) acc += h[j] * row[-j];
            dst[(long long)go * W + gw] = acc;
        }
    }
    T part[K + 1];
#pragma unroll
    for (int f = 0; f <= K; ++f) part[f] = T(0);
    const int qend = (w0 + TW >= W) ? OW : dw_imin(w0 + TW, OW);
    const int nq = qend - w0;
    const int nrow = dw_imin(TH, OH - o0);
    for (int idx = threadIdx.x; idx < TH * SPAN; idx += DW_THREADS) {
        const int r = idx / SPAN;
        const int c = idx - r * SPAN;
        if (r < nrow && c < nq) {
            const T g = sg[r * SW + c + R4];
            part[K] += g;
            const T* __restrict__ trow = st + r * SW + (c + R4 - pad);
#pragma unroll
            for (int j = 0; j < K; ++j) part[j] += g * trow[j];
        }
    }
    dw_block_sum<T, K + 1>(part, partial + dw_partial_row(N) * (K + 1));
}

// V backward (tile over g_t1's H x W):
//   g_t1[h][w] = sum_i v[i] * g_t2[h - i + p][w]
//   partial (K + 2 values per block): g_v[i] = sum g_t2[o][w] * t1[o + i - p][w],
//   g_vb = sum g_t2, g_lb = sum g_t1 (the lateral bias gradient, for free here).
//   Owned o: the tile's rows [h0, h0 + TH) clipped to OH; the last row tile owns up to OH.
template <typename T, int K, int TW, int TH>
__global__ void __launch_bounds__(DW_THREADS)
dw_v_bwd(const T* __restrict__ g_t2, const T* __restrict__ t1, const T* __restrict__ wv, T* __restrict__ g_t1,
         T* __restrict__ partial, int N, int H, int W, int OH, int pad, int vec)
{
    constexpr int SH = TH + K - 1;
    __shared__ __align__(16) T sg[SH * TW];  // sg[r][c] = g_t2[h0 - (K - 1) + pad + r][w0 + c]
    __shared__ __align__(16) T st[SH * TW];  // st[r][c] = t1[h0 - pad + r][w0 + c]
    const long long plane = blockIdx.x;
    const int n = (int)(plane % N);
    const int h0 = blockIdx.y * TH;
    const int w0 = blockIdx.z * TW;
    dw_load_tile<T, TW>(sg, g_t2 + plane * OH * (long long)W, OH, W, h0 - (K - 1) + pad, SH, w0, vec);
    dw_load_tile<T, TW>(st, t1 + plane * H * (long long)W, H, W, h0 - pad, SH, w0, vec);
    T v[K];
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = wv[n * K + i];
    __syncthreads();
    T part[K + 2];
#pragma unroll
    for (int f = 0; f < K + 2; ++f) part[f] = T(0);
    T* __restrict__ dst = g_t1 + plane * H * (long long)W;
    for (int idx = threadIdx.x; idx < TH * TW; idx += DW_THREADS) {
        const int r = idx / TW;
        const int c = idx - r * TW;
        const int gh = h0 + r;
        const int gw = w0 + c;
        if (gh < H && gw < W) {
            T acc = T(0);
#pragma unroll
            for (int i = 0; i < K; ++i) acc += v[i] * sg[(r + K - 1 - i) * TW + c];
            dst[(long long)gh * W + gw] = acc;
            part[K + 1] += acc;
        }
    }
    // Owned rows o = h0 + rr, rr < nro (at most TH + pad <= SH rows: see README). Their
    // g_t2 row in sg is rr + K - 1 - pad; the t1 row o + i - pad is st row rr + i, and
    // rows of st past SH lie below the image (zero) by construction.
    const int oend = (h0 + TH >= H) ? OH : dw_imin(h0 + TH, OH);
    const int nro = oend - h0;
    const int ncol = dw_imin(TW, W - w0);
    for (int idx = threadIdx.x; idx < SH * TW; idx += DW_THREADS) {
        const int rr = idx / TW;
        const int c = idx - rr * TW;
        if (rr < nro && c < ncol) {
            const T g = sg[(rr + K - 1 - pad) * TW + c];
            part[K] += g;
#pragma unroll
            for (int i = 0; i < K; ++i) {
                const int sr = rr + i;
                if (sr < SH) part[i] += g * st[sr * TW + c];
            }
        }
    }
    dw_block_sum<T, K + 2>(part, partial + dw_partial_row(N) * (K + 2));
}

// Sum the partials of each channel in a fixed order: partial is (N, rows, np); value f of
// channel n goes to gw[n * K + f] for f < K, gb1[n] for f == K, gb2[n] for f == K + 1.
template <typename T>
__global__ void __launch_bounds__(DW_THREADS)
dw_reduce_partials(const T* __restrict__ partial, long long rows, int N, int K, int np,
                   T* __restrict__ gw, T* __restrict__ gb1, T* __restrict__ gb2)
{
    const long long t = (long long)blockIdx.x * DW_THREADS + threadIdx.x;
    if (t >= (long long)N * np) return;
    const int n = (int)(t / np);
    const int f = (int)(t - (long long)n * np);
    const T* __restrict__ p = partial + (long long)n * rows * np + f;
    T s = T(0);
    for (long long r = 0; r < rows; ++r) s += p[r * np];
    if (f < K) gw[n * K + f] = s;
    else if (f == K) gb1[n] = s;
    else gb2[n] = s;
}

#if !defined(__CUDACC_RTC__) && !defined(CUDA_EMU)
// Explicit instantiations so that nvcc compiles real code (tests/test_cuda_sources.py).
#define DW_INSTANTIATE(T, K, TW)                                                                    \
    template __global__ void dw_v_fwd<T, K, TW, TW>(const T*, const T*, const T*, T*, int, int, int, int, int, int); \
    template __global__ void dw_h_fwd<T, K, TW, TW>(const T*, const T*, const T*, T*, int, int, int, int, int, int); \
    template __global__ void dw_vh_fwd<T, K, TW, TW>(const T*, const T*, const T*, const T*, const T*, T*, T*,      \
                                                     int, int, int, int, int, int, int);                          \
    template __global__ void dw_h_bwd<T, K, TW, TW>(const T*, const T*, const T*, T*, T*, int, int, int, int, int, \
                                                    int, int);                                                   \
    template __global__ void dw_v_bwd<T, K, TW, TW>(const T*, const T*, const T*, T*, T*, int, int, int, int, int, int);
DW_INSTANTIATE(float, 3, 32)
DW_INSTANTIATE(float, 3, 16)
DW_INSTANTIATE(float, 5, 32)
DW_INSTANTIATE(float, 7, 32)
DW_INSTANTIATE(double, 3, 32)
DW_INSTANTIATE(double, 5, 16)
template __global__ void dw_reduce_partials<float>(const float*, long long, int, int, int, float*, float*, float*);
template __global__ void dw_reduce_partials<double>(const double*, long long, int, int, int, double*, double*, double*);
#endif
