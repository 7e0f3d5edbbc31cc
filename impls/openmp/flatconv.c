/* flatconv.c: the OpenMP kernels of impls/openmp, compiled for three instruction sets
 * and dispatched at run time.
 *
 * kernels.h is a template; it is included here once per (float, double) x (baseline,
 * AVX2+FMA, AVX-512) under `#pragma GCC target`, so the build needs no -march flag and
 * runs on any x86-64, while the running CPU's widest vectors are used. Other compilers
 * and architectures get the baseline (generic 16-byte vectors) only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flatconv_api.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#ifndef FC_SOURCE_HASH
#define FC_SOURCE_HASH "unknown"
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define FC_X86 1
#else
#define FC_X86 0
#endif

enum { ISA_BASE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

/* ---- baseline: 16-byte vectors (SSE2 on x86-64) ---------------------------------- */
#define VBYTES 16
#define MR 4
#define NV 2
#define REAL float
#define IREAL int32_t
#define SFX f32_base
#include "kernels.h"
#undef REAL
#undef IREAL
#undef SFX
#define REAL double
#define IREAL int64_t
#define SFX f64_base
#include "kernels.h"
#undef REAL
#undef IREAL
#undef SFX
#undef MR
#undef NV
#undef VBYTES

#if FC_X86
/* ---- AVX2 + FMA: 32-byte vectors, 16 registers: 6 x 2 accumulators ---------------- */
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define VBYTES 32
#define MR 6
#define NV 2
#define REAL float
#define IREAL int32_t
#define SFX f32_avx2
#include "kernels.h"
#undef REAL
#undef IREAL
#undef SFX
#define REAL double
#define IREAL int64_t
#define SFX f64_avx2
#include "kernels.h"
#undef REAL
#undef IREAL
#undef SFX
#undef MR
#undef NV
#undef VBYTES
#pragma GCC pop_options

/* ---- AVX-512: 64-byte vectors, 32 registers: 8 x 2 accumulators ------------------- */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define VBYTES 64
#define MR 8
#define NV 2
#define REAL float
#define IREAL int32_t
#define SFX f32_avx512
#include "kernels.h"
#undef REAL
#undef IREAL
#undef SFX
#define REAL double
#define IREAL int64_t
#define SFX f64_avx512
#include "kernels.h"
#undef REAL
#undef IREAL
#undef SFX
#undef MR
#undef NV
#undef VBYTES
#pragma GCC pop_options
#endif

/* ---- run-time dispatch -------------------------------------------------------------- */
static int g_isa = -1;

int fc_cpu_supports(int isa)
{
    if (isa == ISA_BASE) return 1;
#if FC_X86
    __builtin_cpu_init();
    if (isa == ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

int fc_isa(void)
{
    int isa = __atomic_load_n(&g_isa, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = fc_cpu_supports(ISA_AVX512) ? ISA_AVX512 : fc_cpu_supports(ISA_AVX2) ? ISA_AVX2 : ISA_BASE;
        __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

int fc_set_isa(int isa)
{
    if (isa < ISA_BASE || isa > ISA_AVX512 || !fc_cpu_supports(isa)) return -1;
    __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    return 0;
}

const char *fc_isa_name(int isa)
{
    switch (isa) {
    case ISA_AVX512: return "avx512";
    case ISA_AVX2: return "avx2+fma";
    case ISA_BASE:
#if defined(__x86_64__)
        return "sse2 (x86-64 baseline)";
#else
        return "baseline (generic 16-byte vectors)";
#endif
    default: return "unknown";
    }
}

void fc_set_num_threads(int threads)
{
    if (threads >= 1) omp_set_num_threads(threads);
}

int fc_get_max_threads(void) { return omp_get_max_threads(); }

int fc_openmp_version(void)
{
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

const char *fc_openmp_library(void)
{
    Dl_info info;
    if (dladdr((void *)&omp_get_max_threads, &info) && info.dli_fname) return info.dli_fname;
    return "unknown";
}

const char *fc_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown";
#endif
}

const char *fc_source_hash(void) { return FC_SOURCE_HASH; }

int fc_block_sizes(int isa, int dtype_bytes, int *out)
{
    if (isa == ISA_BASE) {
        if (dtype_bytes == 4) block_sizes_f32_base(out); else block_sizes_f64_base(out);
        return 0;
    }
#if FC_X86
    if (isa == ISA_AVX2) {
        if (dtype_bytes == 4) block_sizes_f32_avx2(out); else block_sizes_f64_avx2(out);
        return 0;
    }
    if (isa == ISA_AVX512) {
        if (dtype_bytes == 4) block_sizes_f32_avx512(out); else block_sizes_f64_avx512(out);
        return 0;
    }
#endif
    return -1;
}

#if FC_X86
#define DISPATCH(fn, T, ...)                                                                                     \
    do {                                                                                                         \
        switch (fc_isa()) {                                                                                      \
        case ISA_AVX512: return fn##_##T##_avx512(__VA_ARGS__);                                                  \
        case ISA_AVX2: return fn##_##T##_avx2(__VA_ARGS__);                                                      \
        default: return fn##_##T##_base(__VA_ARGS__);                                                            \
        }                                                                                                        \
    } while (0)
#else
#define DISPATCH(fn, T, ...) return fn##_##T##_base(__VA_ARGS__)
#endif

#define DEFINE_API(T, R)                                                                                         \
    int fc_lateral_##T(const R *x, const R *L, const R *lb, R *t1, int64_t B, int64_t C, int64_t N, int64_t P)   \
    {                                                                                                            \
        DISPATCH(lateral, T, x, L, lb, t1, B, C, N, P);                                                          \
    }                                                                                                            \
    int fc_vertical_##T(const R *t1, const R *V, const R *vb, R *t2, int64_t B, int64_t N, int64_t H, int64_t W, \
                        int64_t k, int64_t p)                                                                    \
    {                                                                                                            \
        DISPATCH(vertical, T, t1, V, vb, t2, B, N, H, W, k, p);                                                  \
    }                                                                                                            \
    int fc_horizontal_##T(const R *t2, const R *Hw, const R *hb, R *y, int64_t B, int64_t N, int64_t OH,        \
                          int64_t W, int64_t k, int64_t p)                                                       \
    {                                                                                                            \
        DISPATCH(horizontal, T, t2, Hw, hb, y, B, N, OH, W, k, p);                                               \
    }                                                                                                            \
    int fc_vh_##T(const R *t1, const R *V, const R *vb, const R *Hw, const R *hb, R *y, int64_t B, int64_t N,    \
                  int64_t H, int64_t W, int64_t k, int64_t p)                                                    \
    {                                                                                                            \
        DISPATCH(vh, T, t1, V, vb, Hw, hb, y, B, N, H, W, k, p);                                                 \
    }                                                                                                            \
    int fc_pack_lateral_##T(const R *L, int64_t N, int64_t C, R *out) { DISPATCH(pack_lateral, T, L, N, C, out); } \
    int fc_fused_forward_##T(const R *x, const R *L, const R *L_packed, int packed_mr, const R *lb, const R *V,  \
                             const R *vb, const R *Hw, const R *hb, R *y, R *t1_out, int64_t B, int64_t C,       \
                             int64_t N, int64_t H, int64_t W, int64_t k, int64_t p)                              \
    {                                                                                                            \
        DISPATCH(fused_forward, T, x, L, L_packed, packed_mr, lb, V, vb, Hw, hb, y, t1_out, B, C, N, H, W, k, p); \
    }                                                                                                            \
    int fc_horizontal_backward_##T(const R *gy, const R *t2, const R *Hw, R *g_t2, R *g_hw, R *g_hb, int64_t B,  \
                                   int64_t N, int64_t OH, int64_t W, int64_t k, int64_t p)                       \
    {                                                                                                            \
        DISPATCH(horizontal_backward, T, gy, t2, Hw, g_t2, g_hw, g_hb, B, N, OH, W, k, p);                       \
    }                                                                                                            \
    int fc_vertical_backward_##T(const R *g_t2, const R *t1, const R *V, R *g_t1, R *g_v, R *g_vb, int64_t B,    \
                                 int64_t N, int64_t H, int64_t W, int64_t k, int64_t p)                          \
    {                                                                                                            \
        DISPATCH(vertical_backward, T, g_t2, t1, V, g_t1, g_v, g_vb, B, N, H, W, k, p);                          \
    }                                                                                                            \
    int fc_vh_backward_##T(const R *gy, const R *t1, const R *V, const R *vb, const R *Hw, R *g_t1, R *g_v,      \
                           R *g_vb, R *g_hw, R *g_hb, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k,     \
                           int64_t p)                                                                            \
    {                                                                                                            \
        DISPATCH(vh_backward, T, gy, t1, V, vb, Hw, g_t1, g_v, g_vb, g_hw, g_hb, B, N, H, W, k, p);              \
    }                                                                                                            \
    int fc_lateral_backward_##T(const R *g_t1, const R *x, const R *L, R *g_x, R *g_l, R *g_lb, int64_t B,       \
                                int64_t C, int64_t N, int64_t P)                                                 \
    {                                                                                                            \
        DISPATCH(lateral_backward, T, g_t1, x, L, g_x, g_l, g_lb, B, C, N, P);                                   \
    }

DEFINE_API(f32, float)
DEFINE_API(f64, double)
