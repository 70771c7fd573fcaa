#include "fc_internal.h"
int fc_f32_conv2d_gemm(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads) {
    (void)d; (void)x; (void)w; (void)bias; (void)residual; (void)y; (void)nthreads;
    return FC_EINVAL;
}
