/* abtest.c: two builds of flatconv.c timed against each other in one process.
 *
 *   abtest LIB_A.so LIB_B.so OP C N S k [batch [seconds]]
 *
 * OP is one of lateral, forward, forward_train, vh, vh_backward, lateral_backward, train
 * (forward_train + vh_backward + lateral_backward), or OP_A:OP_B to time two operations
 * of one build against each other. Both libraries are dlopen'ed privately; each pass
 * times A then B for 20 ms each; the result is the median over passes of B's pass median
 * over A's, so a slow stretch of a shared machine slows both sides of a ratio alike.
 * float32, "same" padding k/2, inputs uniform in [-0.5, 0.5). abtest.sh builds the
 * libraries from two git revisions. FLATCONV_OPENMP_ISA=avx512|avx2|baseline forces one
 * instruction set in both builds, as it does for the extension.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flatconv_api.h" /* the signatures, from the one place that declares them */

struct build {
    __typeof__(&fc_lateral_f32) lateral;
    __typeof__(&fc_fused_forward_f32) fused;
    __typeof__(&fc_vh_f32) vh;
    __typeof__(&fc_vh_backward_f32) vh_backward;
    __typeof__(&fc_lateral_backward_f32) lateral_backward;
    float *packed;
    int mr;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *filled(size_t n)
{
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) exit(3);
    for (size_t i = 0; i < n; ++i) p[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    return p;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *symbol(void *lib, const char *name)
{
    void *s = dlsym(lib, name);
    if (!s) {
        fprintf(stderr, "abtest: %s\n", dlerror());
        exit(2);
    }
    return s;
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: abtest LIB_A.so LIB_B.so OP C N S k [batch [seconds]]\n");
        return 2;
    }
    char ops[2][32];
    const char *colon = strchr(argv[3], ':');
    snprintf(ops[0], sizeof ops[0], "%.*s", colon ? (int)(colon - argv[3]) : (int)strlen(argv[3]), argv[3]);
    snprintf(ops[1], sizeof ops[1], "%s", colon ? colon + 1 : argv[3]);
    int64_t C = atoll(argv[4]), N = atoll(argv[5]), S = atoll(argv[6]), k = atoll(argv[7]);
    int64_t B = argc > 8 ? atoll(argv[8]) : 8;
    double seconds = argc > 9 ? atof(argv[9]) : 5;
    if (C < 1 || N < 1 || S < k || k < 1 || B < 1 || seconds <= 0) {
        fprintf(stderr, "abtest: need C, N, batch >= 1 and S >= k >= 1\n");
        return 2;
    }
    int64_t p = k / 2, P = S * S;
    float *x = filled((size_t)(B * C * P)), *L = filled((size_t)(N * C)), *lb = filled((size_t)N);
    float *V = filled((size_t)(N * k)), *vb = filled((size_t)N), *Hw = filled((size_t)(N * k)), *hb = filled((size_t)N);
    float *t1 = filled((size_t)(B * N * P)), *y = filled((size_t)(B * N * P)), *gy = filled((size_t)(B * N * P));
    float *g_t1 = filled((size_t)(B * N * P)), *g_x = filled((size_t)(B * C * P)), *g_l = filled((size_t)(N * C));
    float *g_lb = filled((size_t)N), *g_v = filled((size_t)(N * k)), *g_vb = filled((size_t)N);
    float *g_h = filled((size_t)(N * k)), *g_hb = filled((size_t)N);
    const char *isa_name = getenv("FLATCONV_OPENMP_ISA");
    int isa = -1; /* the numbering of flatconv.c's ISA_* */
    if (isa_name && *isa_name) {
        isa = !strcmp(isa_name, "baseline") ? 0 : !strcmp(isa_name, "avx2") ? 1 : !strcmp(isa_name, "avx512") ? 2 : -2;
        if (isa == -2) {
            fprintf(stderr, "abtest: FLATCONV_OPENMP_ISA=%s is not avx512, avx2 or baseline\n", isa_name);
            return 2;
        }
    }
    struct build lib[2];
    const char *running = NULL; /* the instruction set both builds run */
    for (int i = 0; i < 2; ++i) {
        void *h = dlopen(argv[1 + i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "abtest: %s\n", dlerror());
            return 2;
        }
        if (isa >= 0 && ((__typeof__(&fc_set_isa))symbol(h, "fc_set_isa"))(isa)) {
            fprintf(stderr, "abtest: this CPU does not support FLATCONV_OPENMP_ISA=%s\n", isa_name);
            return 2;
        }
        running = ((__typeof__(&fc_isa_name))symbol(h, "fc_isa_name"))(((__typeof__(&fc_isa))symbol(h, "fc_isa"))());
        lib[i].lateral = (__typeof__(&fc_lateral_f32))symbol(h, "fc_lateral_f32");
        lib[i].fused = (__typeof__(&fc_fused_forward_f32))symbol(h, "fc_fused_forward_f32");
        lib[i].vh = (__typeof__(&fc_vh_f32))symbol(h, "fc_vh_f32");
        lib[i].vh_backward = (__typeof__(&fc_vh_backward_f32))symbol(h, "fc_vh_backward_f32");
        lib[i].lateral_backward = (__typeof__(&fc_lateral_backward_f32))symbol(h, "fc_lateral_backward_f32");
        lib[i].packed = filled((size_t)((N + 32) * C));
        lib[i].mr = ((__typeof__(&fc_pack_lateral_f32))symbol(h, "fc_pack_lateral_f32"))(L, N, C, lib[i].packed);
    }
    size_t cap = 1 << 20;
    double *calls = malloc(cap * sizeof(double)), *ratios = malloc(cap * sizeof(double));
    double *medians[2] = {malloc(cap * sizeof(double)), malloc(cap * sizeof(double))}; /* per pass */
    if (!calls || !ratios || !medians[0] || !medians[1]) exit(3);
    size_t nr = 0;
    double end = now() + seconds;
    while (now() < end && nr < cap) {
        for (int i = 0; i < 2; ++i) {
            struct build *b = &lib[i];
            const char *op = ops[i];
            size_t n = 0;
            double stop = now() + 0.02;
            do {
                double t0 = now();
                int rc = 0;
                if (!strcmp(op, "lateral"))
                    rc = b->lateral(x, L, lb, t1, B, C, N, P);
                else if (!strcmp(op, "forward") || !strcmp(op, "forward_train") || !strcmp(op, "train"))
                    rc = b->fused(x, L, b->packed, b->mr, lb, V, vb, Hw, hb, y, strcmp(op, "forward") ? t1 : NULL, B, C,
                                  N, S, S, k, p);
                else if (!strcmp(op, "vh"))
                    rc = b->vh(t1, V, vb, Hw, hb, y, B, N, S, S, k, p);
                else if (strcmp(op, "vh_backward") && strcmp(op, "lateral_backward")) {
                    fprintf(stderr, "abtest: unknown operation %s\n", op);
                    return 2;
                }
                if (!strcmp(op, "vh_backward") || !strcmp(op, "train"))
                    rc |= b->vh_backward(gy, t1, V, vb, Hw, g_t1, g_v, g_vb, g_h, g_hb, B, N, S, S, k, p);
                if (!strcmp(op, "lateral_backward") || !strcmp(op, "train"))
                    rc |= b->lateral_backward(g_t1, x, L, g_x, g_l, g_lb, B, C, N, P);
                if (rc) {
                    fprintf(stderr, "abtest: %s could not allocate its workspace\n", op);
                    return 1;
                }
                calls[n++] = now() - t0;
            } while (now() < stop && n < cap);
            qsort(calls, n, sizeof(double), by_value);
            medians[i][nr] = calls[n / 2];
        }
        ratios[nr] = medians[1][nr] / medians[0][nr];
        ++nr;
    }
    qsort(ratios, nr, sizeof(double), by_value);
    for (int i = 0; i < 2; ++i) qsort(medians[i], nr, sizeof(double), by_value);
    /* the times move with the machine between passes; the ratio is what to trust */
    printf("%s %lld,%lld,%lld,%lld batch %lld %s: B/A %.3f (passes %zu, 10th-90th percentile %.3f-%.3f; "
           "median of pass medians A %.1f us, B %.1f us)\n",
           argv[3], (long long)C, (long long)N, (long long)S, (long long)k, (long long)B, running, ratios[nr / 2], nr,
           ratios[nr / 10], ratios[nr * 9 / 10], 1e6 * medians[0][nr / 2], 1e6 * medians[1][nr / 2]);
    return 0;
}
