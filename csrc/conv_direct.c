/* The conv2d entry points: validate the descriptor defensively, then pick a kernel.
 *
 * float32 goes to the packed-GEMM kernels (conv_gemm_f32.c) on CPUs with AVX2 or AVX-512,
 * except depthwise convolutions, which have one input channel per output and so nothing for a
 * GEMM to reuse; everything else runs the portable direct loops of conv_direct_impl.h.
 */
#include "fc_internal.h"

#define T float
#define FN(name) f32_##name
#include "conv_direct_impl.h"
#undef T
#undef FN

#define T double
#define FN(name) f64_##name
#include "conv_direct_impl.h"
#undef T
#undef FN

static int is_depthwise(const fc_conv2d_desc *d) {
    return d->groups == d->c && d->groups > 1;
}

int fc_f32_conv2d(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                  const float *residual, float *y, int nthreads) {
    if (!f32_conv2d_desc_ok(d))
        return FC_EINVAL;
    if (is_depthwise(d))
        return f32_conv2d_depthwise(d, x, w, bias, residual, y, nthreads);
    int status = fc_f32_conv2d_gemm(d, x, w, bias, residual, y, nthreads);
    if (status != FC_EINVAL)
        return status;
    return f32_conv2d_direct(d, x, w, bias, residual, y, nthreads);
}

int fc_f64_conv2d(const fc_conv2d_desc *d, const double *x, const double *w, const double *bias,
                  const double *residual, double *y, int nthreads) {
    if (!f64_conv2d_desc_ok(d))
        return FC_EINVAL;
    if (is_depthwise(d))
        return f64_conv2d_depthwise(d, x, w, bias, residual, y, nthreads);
    return f64_conv2d_direct(d, x, w, bias, residual, y, nthreads);
}
