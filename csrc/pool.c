/* Pooling entry points: both dtypes from one template (pool_impl.h). */
#include <math.h>

#include "fc_internal.h"

/* Defensive: every size positive, so the scratch-row arithmetic in pool_impl.h holds. */
static int pool_desc_ok(const fc_pool2d_desc *d) {
    return d->n >= 1 && d->c >= 1 && d->h >= 1 && d->w >= 1 && d->oh >= 1 && d->ow >= 1 &&
           d->kh >= 1 && d->kw >= 1 && d->stride_h >= 1 && d->stride_w >= 1 && d->dil_h >= 1 &&
           d->dil_w >= 1 && d->pad_h >= 0 && d->pad_w >= 0;
}

#define T float
#define FN(name) pool_f32_##name
#define FC_POOL_SIMD_F32 1 /* pool_impl.h adds its float32 SIMD kernels */
#include "pool_impl.h"
#include "pool_idx_impl.h"
#undef FC_POOL_SIMD_F32
#undef T
#undef FN

#define T double
#define FN(name) pool_f64_##name
#include "pool_impl.h"
#include "pool_idx_impl.h"
#undef T
#undef FN

int fc_f32_max_pool2d(const fc_pool2d_desc *d, const float *x, float *y, int nthreads) {
    return pool_desc_ok(d) ? pool_f32_max_pool2d(d, x, y, nthreads) : FC_EINVAL;
}
int fc_f64_max_pool2d(const fc_pool2d_desc *d, const double *x, double *y, int nthreads) {
    return pool_desc_ok(d) ? pool_f64_max_pool2d(d, x, y, nthreads) : FC_EINVAL;
}
int fc_f32_max_pool2d_indices(const fc_pool2d_desc *d, const float *x, float *y, int64_t *indices, int nthreads) {
    return pool_desc_ok(d) ? pool_f32_max_pool2d_indices(d, x, y, indices, nthreads) : FC_EINVAL;
}
int fc_f64_max_pool2d_indices(const fc_pool2d_desc *d, const double *x, double *y, int64_t *indices,
                              int nthreads) {
    return pool_desc_ok(d) ? pool_f64_max_pool2d_indices(d, x, y, indices, nthreads) : FC_EINVAL;
}
int fc_f32_adaptive_max_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float *x,
                               float *y, int64_t *indices, int nthreads) {
    if (planes < 1 || h < 1 || w < 1 || oh < 1 || ow < 1)
        return FC_EINVAL;
    return pool_f32_adaptive_max_pool2d(planes, h, w, oh, ow, x, y, indices, nthreads);
}
int fc_f64_adaptive_max_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const double *x,
                               double *y, int64_t *indices, int nthreads) {
    if (planes < 1 || h < 1 || w < 1 || oh < 1 || ow < 1)
        return FC_EINVAL;
    return pool_f64_adaptive_max_pool2d(planes, h, w, oh, ow, x, y, indices, nthreads);
}
int fc_f32_avg_pool2d(const fc_pool2d_desc *d, const float *x, float *y, int nthreads) {
    return pool_desc_ok(d) ? pool_f32_avg_pool2d(d, x, y, nthreads) : FC_EINVAL;
}
int fc_f64_avg_pool2d(const fc_pool2d_desc *d, const double *x, double *y, int nthreads) {
    return pool_desc_ok(d) ? pool_f64_avg_pool2d(d, x, y, nthreads) : FC_EINVAL;
}
int fc_f32_adaptive_avg_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                               const float *x, float *y, int nthreads) {
    return pool_f32_adaptive_avg_pool2d(planes, h, w, oh, ow, x, y, nthreads);
}
int fc_f64_adaptive_avg_pool2d(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                               const double *x, double *y, int nthreads) {
    return pool_f64_adaptive_avg_pool2d(planes, h, w, oh, ow, x, y, nthreads);
}
