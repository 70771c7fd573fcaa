/* fastconv's C kernels: the one contract between Python (cffi) and C.
 *
 * build_ffi.py hands this file to cffi's cdef, so it holds only declarations cdef can parse:
 * no macros beyond the include guard (which build_ffi.py strips) and no inline code.
 *
 * Conventions every function follows:
 * - Arrays are C-contiguous, native byte order, of the function's dtype (f32 = float,
 *   f64 = double); tensors are NCHW.  Python (api.py) has validated every size and option, and
 *   computed the output size; C trusts that and only indexes with int64_t / size_t.
 * - `nthreads` is fastconv.get_num_threads(): each call opens its OpenMP team with exactly that
 *   many threads, so fastconv.set_num_threads governs C as it does every other backend.
 * - The return value is FC_OK, or an FC_E* code that Python turns into an exception.
 * - No global mutable state: concurrent calls from several Python threads are safe (cffi
 *   releases the GIL around every call).
 */
#ifndef FASTCONV_H
#define FASTCONV_H

#include <stdint.h>

enum fc_status {
    FC_OK = 0,
    FC_ENOMEM = 1,   /* a scratch buffer could not be allocated */
    FC_EINVAL = 2,   /* descriptor inconsistent (a bug on the Python side, caught defensively) */
    FC_EUNSUPPORTED = 3 /* a valid problem this kernel cannot run (Python should have refused it) */
};

/* Convolution algorithms (Python's Conv2dProblem.algorithm). */
enum fc_conv_algorithm { FC_ALGO_AUTO = 0, FC_ALGO_DIRECT = 1, FC_ALGO_GEMM = 2 };

/* The epilogue's activations (Python's problem.ACTIVATION_PARAMS), torch.nn.functional's
 * formulas; act_a / act_b carry leaky_relu's slope (a) and hardtanh's bounds (a, b). */
enum fc_activation {
    FC_ACT_NONE = 0, FC_ACT_RELU = 1, FC_ACT_RELU6 = 2, FC_ACT_LEAKY_RELU = 3, FC_ACT_HARDTANH = 4,
    FC_ACT_SIGMOID = 5, FC_ACT_SILU = 6, FC_ACT_HARDSWISH = 7
};

/* One convolution.  weight is (k, c / groups, r, s); output (n, k, oh, ow).  Padding is zeros;
 * pad_top / pad_left place the first window, bottom and right padding follow from oh and ow. */
typedef struct fc_conv2d_desc {
    int64_t n, c, h, w;
    int64_t k, r, s;
    int64_t oh, ow;
    int64_t stride_h, stride_w;
    int64_t pad_top, pad_left;
    int64_t dil_h, dil_w;
    int64_t groups;
    int32_t relu;              /* 1: y = max(y, 0) after bias and residual (NaN stays NaN) */
    int32_t act;               /* FC_ACT_*, after bias and residual; 0: `relu` decides */
    double act_a, act_b;       /* the activation's parameters */
} fc_conv2d_desc;

/* y = act(conv(x, weight) + bias + residual); bias (k,) and residual (like y) may be NULL. */
int fc_f32_conv2d(const fc_conv2d_desc *d, const float *x, const float *weight, const float *bias,
                  const float *residual, float *y, int nthreads);
int fc_f64_conv2d(const fc_conv2d_desc *d, const double *x, const double *weight, const double *bias,
                  const double *residual, double *y, int nthreads);

/* The same with a chosen algorithm (FC_ALGO_*); *kernel (when not NULL) receives the name of the
 * kernel that ran, e.g. "conv2d f32 gemm 6x16 avx2" (a static string). */
int fc_f32_conv2d_algo(const fc_conv2d_desc *d, int algorithm, const float *x, const float *weight,
                       const float *bias, const float *residual, float *y, int nthreads, const char **kernel);
int fc_f64_conv2d_algo(const fc_conv2d_desc *d, int algorithm, const double *x, const double *weight,
                       const double *bias, const double *residual, double *y, int nthreads,
                       const char **kernel);

/* Whether FC_ALGO_GEMM can run the valid float32 descriptor d (1) or would return FC_EUNSUPPORTED
 * (0): the GEMM reads its input through stride phases, at most 64 a side and within a size bound,
 * and only the direct loops take larger strides.  Python refuses algorithm "gemm" by this. */
int fc_f32_gemm_supports(const fc_conv2d_desc *d);

/* The GEMM with its weights pre-packed once (compiled plans): fc_f32_gemm_weights_size floats
 * (0: "auto" would not run the GEMM for d, or this instruction set has no kernel for packed
 * weights; -1: an invalid descriptor or a size too large), filled by fc_f32_gemm_weights, then
 * passed to every fc_f32_conv2d_prepacked call with that descriptor (FC_EINVAL when wpack_len
 * does not match).  Same results, bit for bit, as fc_f32_conv2d_algo's "auto". */
int64_t fc_f32_gemm_weights_size(const fc_conv2d_desc *d);
int fc_f32_gemm_weights(const fc_conv2d_desc *d, const float *weight, float *wpack, int nthreads);
int fc_f32_conv2d_prepacked(const fc_conv2d_desc *d, const float *x, const float *weight, const float *wpack,
                            int64_t wpack_len, const float *bias, const float *residual, float *y, int nthreads,
                            const char **kernel);

/* Channel-blocked float32 activations, which compiled plans keep from one convolution to the
 * next: a (n, c, h, w) tensor is stored as (n, c / L, h + 2 * b, w + 2 * b, L), L =
 * fc_f32_blocked_lanes() (16 with AVX-512, 8 otherwise), c a multiple of L, with a border of b
 * zero pixels around every plane: the padding of the convolutions that read it, which so read
 * no bounds.  to_blocked / from_blocked convert (to_blocked writes the border too). */
int fc_f32_blocked_lanes(void);
int fc_f32_to_blocked(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t border, float *y,
                      int nthreads);
int fc_f32_from_blocked(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t border, float *y,
                        int nthreads);
/* y[i * c + ch] = the mean of plane (i, ch) of the blocked (n, c, h, w) x with border xb. */
int fc_f32_blocked_global_avg_pool(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t xb,
                                   float *y, int nthreads);
/* y = act(conv(x, weight) + bias + residual) on blocked activations: x with border xb (at least
 * the padding), residual (NULL, or blocked like y) with border rb, y with border yb (written with
 * zeros).  residual may be y itself (rb == yb; FC_EINVAL otherwise): the output then overwrites
 * the residual in place, which the sums start from.  Otherwise the three do not overlap.
 * Ungrouped, c and k multiples of L, activation none or relu (FC_EUNSUPPORTED otherwise).
 * The weights are pre-packed once, fc_f32_blocked_weights_size(d) floats. */
int64_t fc_f32_blocked_weights_size(const fc_conv2d_desc *d);
int fc_f32_blocked_weights(const fc_conv2d_desc *d, const float *weight, float *wpack);
int fc_f32_conv2d_blocked(const fc_conv2d_desc *d, const float *x, int64_t xb, const float *wpack,
                          const float *bias, const float *residual, int64_t rb, float *y, int64_t yb, int nthreads,
                          const char **kernel);

/* An eager NCHW call on the blocked kernel: x converted to the blocked layout, the kernel with
 * the (k, c, r, s) weights packed as it goes, y converted back (residual NCHW, like y), in the
 * caller's scratch of at least fc_f32_eager_blocked_scratch(d, nthreads) bytes (-1: too large or
 * not for this kernel; FC_EINVAL when scratch_bytes is less).  fc_f32_eager_blocked_wanted:
 * whether "auto" runs d this way on this instruction set (0 or 1). */
int fc_f32_eager_blocked_wanted(const fc_conv2d_desc *d);
int64_t fc_f32_eager_blocked_scratch(const fc_conv2d_desc *d, int nthreads);
int fc_f32_conv2d_nchw_blocked(const fc_conv2d_desc *d, const float *x, const float *weight, const float *bias,
                               const float *residual, float *y, void *scratch, int64_t scratch_bytes, int nthreads,
                               const char **kernel);

/* Winograd F(4x4, 3x3) for 3x3, stride-1, undilated, ungrouped float32 convolutions.  The
 * filters are transformed once (fc_f32_winograd_weights, into winograd_weights_size floats) and
 * the transform reused by every call with the same weights. */
int64_t fc_f32_winograd_weights_size(int64_t k, int64_t c);
int fc_f32_winograd_weights(int64_t k, int64_t c, const float *weight, float *u, int nthreads);
int fc_f32_conv2d_winograd(const fc_conv2d_desc *d, const float *x, const float *u, const float *bias,
                           const float *residual, float *y, int nthreads, const char **kernel);
/* The same on channel-blocked activations (see fc_f32_conv2d_blocked, residual == y included; c and
 * k multiples of L), with the filters transformed for it: fc_f32_winograd_blocked_weights, into
 * winograd_blocked_weights_size floats (another layout than fc_f32_winograd_weights'). */
int64_t fc_f32_winograd_blocked_weights_size(int64_t k, int64_t c);
int fc_f32_winograd_blocked_weights(int64_t k, int64_t c, const float *weight, float *ut, int nthreads);
int fc_f32_conv2d_winograd_blocked(const fc_conv2d_desc *d, const float *x, int64_t xb, const float *ut,
                                   const float *bias, const float *residual, int64_t rb, float *y, int64_t yb,
                                   int nthreads, const char **kernel);
/* 1 when the `bytes` bytes at a and b are equal (memcmp): the transform cache's content check. */
int fc_bytes_equal(const void *a, const void *b, int64_t bytes);

/* Max or average pooling of (n, c, h, w) into (n, c, oh, ow), torch's rules (see problem.py). */
typedef struct fc_pool2d_desc {
    int64_t n, c, h, w;
    int64_t oh, ow;
    int64_t kh, kw;
    int64_t stride_h, stride_w;
    int64_t pad_h, pad_w;
    int64_t dil_h, dil_w;          /* max pooling only */
    int32_t count_include_pad;     /* average pooling only */
    int64_t divisor_override;      /* average pooling only; 0 = none */
} fc_pool2d_desc;

int fc_f32_max_pool2d(const fc_pool2d_desc *d, const float *x, float *y, int nthreads);
/* Max pooling (the float32 rules of fc_f32_max_pool2d) from NCHW x into blocked y with border yb
 * (written with zeros); d->c a multiple of L. */
int fc_f32_max_pool2d_blocked(const fc_pool2d_desc *d, const float *x, float *y, int64_t yb, int nthreads);
int fc_f64_max_pool2d(const fc_pool2d_desc *d, const double *x, double *y, int nthreads);
int fc_f32_avg_pool2d(const fc_pool2d_desc *d, const float *x, float *y, int nthreads);
int fc_f64_avg_pool2d(const fc_pool2d_desc *d, const double *x, double *y, int nthreads);
/* Max pooling that also writes each output's arg max, the flat index ih * w + iw in its plane:
 * torch's scan (row-major; a later tap wins when strictly greater or NaN; the first tap inside
 * the input when the window holds only -inf). */
int fc_f32_max_pool2d_indices(const fc_pool2d_desc *d, const float *x, float *y, int64_t *indices, int nthreads);
int fc_f64_max_pool2d_indices(const fc_pool2d_desc *d, const double *x, double *y, int64_t *indices,
                              int nthreads);

/* Adaptive average pooling of `planes` (= n * c) planes of h x w into oh x ow. */
int fc_f32_adaptive_avg_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                               const float *x, float *y, int nthreads);
int fc_f64_adaptive_avg_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                               const double *x, double *y, int nthreads);
/* Adaptive max pooling (the same bins), with the arg max as max_pool2d_indices finds it;
 * indices may be NULL. */
int fc_f32_adaptive_max_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float *x,
                               float *y, int64_t *indices, int nthreads);
int fc_f64_adaptive_max_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const double *x,
                               double *y, int64_t *indices, int nthreads);

/* Batch norm of x (n, c, l): y = (x - mean) / sqrt(var + eps) * weight + bias per channel.
 * The per-channel parameters are float64 whatever x's dtype, so the scale is computed once,
 * accurately. */
int fc_f32_batch_norm(int64_t n, int64_t c, int64_t l, const float *x, const double *mean,
                      const double *var, const double *weight, const double *bias, double eps,
                      float *y, int nthreads);
int fc_f64_batch_norm(int64_t n, int64_t c, int64_t l, const double *x, const double *mean,
                      const double *var, const double *weight, const double *bias, double eps,
                      double *y, int nthreads);

/* The batch statistics of x (n, c, l) per channel: mean and biased variance, in float64. */
int fc_f32_batch_stats(int64_t n, int64_t c, int64_t l, const float *x, double *mean, double *var,
                       int nthreads);
int fc_f64_batch_stats(int64_t n, int64_t c, int64_t l, const double *x, double *mean, double *var,
                       int nthreads);

/* y = act(x) over `size` elements (FC_ACT_*, parameters a and b as in fc_conv2d_desc). */
int fc_f32_activation(int64_t size, const float *x, float *y, int32_t act, double a, double b, int nthreads);
int fc_f64_activation(int64_t size, const double *x, double *y, int32_t act, double a, double b, int nthreads);

/* y = max(x, 0) over `size` elements; NaN stays NaN. */
int fc_f32_relu(int64_t size, const float *x, float *y, int nthreads);
int fc_f64_relu(int64_t size, const double *x, double *y, int nthreads);

/* Backward ops.  Each takes the forward's descriptor and writes the gradient arrays whole
 * (no accumulation into what they held).  dbias may be NULL.  Batch norm: mean/var are the
 * statistics the forward normalised with (training: the batch's, biased variance); dweight and
 * dbias come back in float64. */
int fc_f32_conv2d_bwd_data(const fc_conv2d_desc *d, const float *dy, const float *weight, float *dx, int nthreads);
int fc_f64_conv2d_bwd_data(const fc_conv2d_desc *d, const double *dy, const double *weight, double *dx,
                           int nthreads);
/* The kernel of the transposed convolution that computes a stride-1 backward-data: w (groups *
 * kg, cg, r, s) -> wt (groups * cg, kg, r, s), wt[g*cg + c][k] = w[g*kg + k][c], each run of rs =
 * r*s taps reversed when flip is nonzero (the kernel turned by 180 degrees). */
int fc_f32_swap_channels(int64_t groups, int64_t kg, int64_t cg, int64_t rs, int32_t flip, const float *w,
                         float *wt, int nthreads);
int fc_f32_conv2d_bwd_weight(const fc_conv2d_desc *d, const float *x, const float *dy, float *dweight,
                             float *dbias, int nthreads);
int fc_f64_conv2d_bwd_weight(const fc_conv2d_desc *d, const double *x, const double *dy, double *dweight,
                             double *dbias, int nthreads);
int fc_f32_max_pool2d_bwd(const fc_pool2d_desc *d, const float *x, const float *dy, float *dx, int nthreads);
int fc_f64_max_pool2d_bwd(const fc_pool2d_desc *d, const double *x, const double *dy, double *dx, int nthreads);
int fc_f32_avg_pool2d_bwd(const fc_pool2d_desc *d, const float *dy, float *dx, int nthreads);
int fc_f64_avg_pool2d_bwd(const fc_pool2d_desc *d, const double *dy, double *dx, int nthreads);
int fc_f32_adaptive_avg_pool2d_bwd(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                   const float *dy, float *dx, int nthreads);
int fc_f64_adaptive_avg_pool2d_bwd(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                   const double *dy, double *dx, int nthreads);
int fc_f32_batch_norm_bwd(int64_t n, int64_t c, int64_t l, const float *x, const float *dy, const double *mean,
                          const double *var, const double *weight, double eps, int32_t training, float *dx,
                          double *dweight, double *dbias, int nthreads);
int fc_f64_batch_norm_bwd(int64_t n, int64_t c, int64_t l, const double *x, const double *dy,
                          const double *mean, const double *var, const double *weight, double eps,
                          int32_t training, double *dx, double *dweight, double *dbias, int nthreads);
int fc_f32_relu_bwd(int64_t size, const float *y, const float *dy, float *dx, int nthreads);
int fc_f64_relu_bwd(int64_t size, const double *y, const double *dy, double *dx, int nthreads);

/* What this build and CPU offer: the instruction set the float32 kernels use ("avx512",
 * "avx2", "generic"), and whether OpenMP was compiled in (0 = every call runs on one thread). */
const char *fc_isa(void);
int fc_openmp(void);

/* The measured peak float32 FMA rate, GFLOP/s (2 per multiply-add), of `nthreads` threads
 * running a short register-only FMA loop with the best instruction set available. */
double fc_peak_gflops(int nthreads);

#endif
