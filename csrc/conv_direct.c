/* The conv2d entry points: validate the descriptor defensively, then pick a kernel.
 *
 * "auto" sends float32 to the packed-GEMM kernels (conv_gemm_f32.c, with the instruction set's
 * microkernel), except depthwise convolutions, which have one input channel per output and so
 * nothing for a GEMM to reuse; those, float64 and "direct" run the loops of conv_direct_impl.h.
 */
#include "conv_gemm_f32.h" /* fc_internal.h, and the stride phases the GEMM reads */

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

int fc_f32_conv2d_algo(const fc_conv2d_desc *d, int algorithm, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads, const char **kernel) {
    const fc_isa_config *cfg = fc_config();
    const char *ran = NULL;
    int status;
    if (!f32_conv2d_desc_ok(d))
        return FC_EINVAL;
    if (algorithm != FC_ALGO_AUTO && algorithm != FC_ALGO_DIRECT && algorithm != FC_ALGO_GEMM)
        return FC_EINVAL;
    if (algorithm == FC_ALGO_GEMM || (algorithm == FC_ALGO_AUTO && !is_depthwise(d))) {
        ran = fc_f32_kvec_wanted(d) ? cfg->kvec_name : cfg->gemm_name;
        status = fc_f32_conv2d_fewc(d, x, w, bias, residual, y, nthreads, &ran);
        if (status == FC_EUNSUPPORTED)
            status = fc_f32_conv2d_gemm(d, x, w, NULL, bias, residual, y, nthreads, &ran);
        if (status != FC_EUNSUPPORTED || algorithm == FC_ALGO_GEMM)
            goto done;
    }
    if (is_depthwise(d)) {
        status = f32_conv2d_depthwise(d, x, w, bias, residual, y, nthreads);
        ran = d->r == 3 && d->s == 3 ? "conv2d f32 direct depthwise 3x3" : "conv2d f32 direct depthwise";
    } else {
        status = f32_conv2d_direct(d, x, w, bias, residual, y, nthreads);
        ran = cfg->direct_name;
    }
done:
    if (kernel)
        *kernel = ran;
    return status;
}

/* The GEMM's pre-packed weights: worth making only where "auto" and "gemm" run the GEMM itself
 * (not the few-channel or channel-vector kernels, not depthwise) and the ISA has a kernel that
 * reads them. */
int64_t fc_f32_gemm_weights_size(const fc_conv2d_desc *d) {
    phases_t ph;
    if (!f32_conv2d_desc_ok(d))
        return -1;
    if (!fc_config()->gemm_packed || is_depthwise(d) || fc_f32_fewc_wanted(d) || fc_f32_kvec_wanted(d) ||
        !fc_stride_phases(d, &ph))
        return 0;
    return fc_f32_gemm_packed_floats(d);
}

int fc_f32_gemm_weights(const fc_conv2d_desc *d, const float *w, float *wpack, int nthreads) {
    if (fc_f32_gemm_weights_size(d) <= 0)
        return FC_EINVAL;
    fc_f32_gemm_pack_weights(d, w, wpack, nthreads);
    return FC_OK;
}

int fc_f32_conv2d_prepacked(const fc_conv2d_desc *d, const float *x, const float *w, const float *wpack,
                            int64_t wpack_len, const float *bias, const float *residual, float *y, int nthreads,
                            const char **kernel) {
    int64_t want = fc_f32_gemm_weights_size(d);
    if (want <= 0 || wpack_len != want)
        return FC_EINVAL; /* packed for another problem or instruction set */
    if (kernel)
        *kernel = fc_config()->gemm_packed_name;
    return fc_f32_conv2d_gemm(d, x, w, wpack, bias, residual, y, nthreads, kernel);
}

int fc_f64_conv2d_algo(const fc_conv2d_desc *d, int algorithm, const double *x, const double *w,
                       const double *bias, const double *residual, double *y, int nthreads,
                       const char **kernel) {
    if (!f64_conv2d_desc_ok(d))
        return FC_EINVAL;
    if (algorithm == FC_ALGO_GEMM)
        return FC_EUNSUPPORTED; /* float64 has only the direct loops */
    if (algorithm != FC_ALGO_AUTO && algorithm != FC_ALGO_DIRECT)
        return FC_EINVAL;
    if (kernel)
        *kernel = is_depthwise(d) ? "conv2d f64 direct depthwise" : "conv2d f64 direct";
    if (is_depthwise(d))
        return f64_conv2d_depthwise(d, x, w, bias, residual, y, nthreads);
    return f64_conv2d_direct(d, x, w, bias, residual, y, nthreads);
}

int fc_f32_conv2d(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                  const float *residual, float *y, int nthreads) {
    return fc_f32_conv2d_algo(d, FC_ALGO_AUTO, x, w, bias, residual, y, nthreads, NULL);
}

int fc_f64_conv2d(const fc_conv2d_desc *d, const double *x, const double *w, const double *bias,
                  const double *residual, double *y, int nthreads) {
    return fc_f64_conv2d_algo(d, FC_ALGO_AUTO, x, w, bias, residual, y, nthreads, NULL);
}
