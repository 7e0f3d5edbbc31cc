/* Public API of the OpenMP flattened-convolution kernels (impls/openmp).
 *
 * This file is read both by the C compiler and by cffi's cdef, so it holds plain
 * declarations only: no preprocessor lines, no comments inside declarations.
 *
 * Every pointer is a contiguous row-major (NCHW) array; every size has been checked by
 * the Python wrapper before a call. Functions return 0, or 1 when a workspace
 * allocation failed; fc_pack_lateral_* returns the register-tile height MR it packed
 * for, which fc_fused_forward_* takes as packed_mr. Shapes: x (B,C,H,W); t1 (B,N,H,W);
 * t2 (B,N,OH,W); y (B,N,OH,OW) with OH = H + 2p - k + 1, OW = W + 2p - k + 1; L (N,C);
 * V, Hw (N,k); biases (N).
 */

int fc_isa(void);
const char *fc_isa_name(int isa);
int fc_cpu_supports(int isa);
int fc_set_isa(int isa);
void fc_set_num_threads(int threads);
int fc_get_max_threads(void);
int fc_openmp_version(void);
const char *fc_openmp_library(void);
const char *fc_compiler(void);
const char *fc_source_hash(void);
int fc_block_sizes(int isa, int dtype_bytes, int *out);

int fc_lateral_f32(const float *x, const float *L, const float *lb, float *t1, int64_t B, int64_t C, int64_t N, int64_t P);
int fc_vertical_f32(const float *t1, const float *V, const float *vb, float *t2, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_horizontal_f32(const float *t2, const float *Hw, const float *hb, float *y, int64_t B, int64_t N, int64_t OH, int64_t W, int64_t k, int64_t p);
int fc_vh_f32(const float *t1, const float *V, const float *vb, const float *Hw, const float *hb, float *y, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_pack_lateral_f32(const float *L, int64_t N, int64_t C, float *out);
int fc_fused_forward_f32(const float *x, const float *L, const float *L_packed, int packed_mr, const float *lb, const float *V, const float *vb, const float *Hw, const float *hb, float *y, float *t1_out, int64_t B, int64_t C, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_horizontal_backward_f32(const float *gy, const float *t2, const float *Hw, float *g_t2, float *g_hw, float *g_hb, int64_t B, int64_t N, int64_t OH, int64_t W, int64_t k, int64_t p);
int fc_vertical_backward_f32(const float *g_t2, const float *t1, const float *V, float *g_t1, float *g_v, float *g_vb, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_vh_backward_f32(const float *gy, const float *t1, const float *V, const float *vb, const float *Hw, float *g_t1, float *g_v, float *g_vb, float *g_hw, float *g_hb, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_lateral_backward_f32(const float *g_t1, const float *x, const float *L, float *g_x, float *g_l, float *g_lb, int64_t B, int64_t C, int64_t N, int64_t P);

int fc_lateral_f64(const double *x, const double *L, const double *lb, double *t1, int64_t B, int64_t C, int64_t N, int64_t P);
int fc_vertical_f64(const double *t1, const double *V, const double *vb, double *t2, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_horizontal_f64(const double *t2, const double *Hw, const double *hb, double *y, int64_t B, int64_t N, int64_t OH, int64_t W, int64_t k, int64_t p);
int fc_vh_f64(const double *t1, const double *V, const double *vb, const double *Hw, const double *hb, double *y, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_pack_lateral_f64(const double *L, int64_t N, int64_t C, double *out);
int fc_fused_forward_f64(const double *x, const double *L, const double *L_packed, int packed_mr, const double *lb, const double *V, const double *vb, const double *Hw, const double *hb, double *y, double *t1_out, int64_t B, int64_t C, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_horizontal_backward_f64(const double *gy, const double *t2, const double *Hw, double *g_t2, double *g_hw, double *g_hb, int64_t B, int64_t N, int64_t OH, int64_t W, int64_t k, int64_t p);
int fc_vertical_backward_f64(const double *g_t2, const double *t1, const double *V, double *g_t1, double *g_v, double *g_vb, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_vh_backward_f64(const double *gy, const double *t1, const double *V, const double *vb, const double *Hw, double *g_t1, double *g_v, double *g_vb, double *g_hw, double *g_hb, int64_t B, int64_t N, int64_t H, int64_t W, int64_t k, int64_t p);
int fc_lateral_backward_f64(const double *g_t1, const double *x, const double *L, double *g_x, double *g_l, double *g_lb, int64_t B, int64_t C, int64_t N, int64_t P);
