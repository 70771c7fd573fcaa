/* Backward entry points (fastconv.h): convolution through the packed GEMM of bwd_gemm_impl.h,
 * pooling, batch norm and relu by direct loops; both dtypes from the same templates. */
#include <math.h>

#include "fc_internal.h"

typedef float fc_v16f __attribute__((vector_size(64)));
typedef double fc_v8d __attribute__((vector_size(64)));

#define T float
#define V fc_v16f
#define VL 16
#define FN(name) bwd_f32_##name
#include "bwd_gemm_impl.h"
#include "conv_bwd_impl.h"
#include "pool_bwd_impl.h"
#undef T
#undef V
#undef VL
#undef FN

#define T double
#define V fc_v8d
#define VL 8
#define FN(name) bwd_f64_##name
#include "bwd_gemm_impl.h"
#include "conv_bwd_impl.h"
#include "pool_bwd_impl.h"
#undef T
#undef V
#undef VL
#undef FN

/* Defensive: the sizes every loop above assumes (Python validated them already). */
static int conv_desc_ok(const fc_conv2d_desc *d) {
    return d->n >= 0 && d->c >= 1 && d->h >= 1 && d->w >= 1 && d->k >= 1 && d->r >= 1 && d->s >= 1 &&
           d->oh >= 1 && d->ow >= 1 && d->stride_h >= 1 && d->stride_w >= 1 && d->dil_h >= 1 && d->dil_w >= 1 &&
           d->pad_top >= 0 && d->pad_left >= 0 && d->groups >= 1 && d->c % d->groups == 0 &&
           d->k % d->groups == 0 && d->h <= INT32_MAX && d->w <= INT32_MAX && d->r <= INT32_MAX &&
           d->s <= INT32_MAX && d->oh <= INT32_MAX && d->ow <= INT32_MAX;
}

static int pool_desc_ok(const fc_pool2d_desc *d) {
    return d->n >= 0 && d->c >= 1 && d->h >= 1 && d->w >= 1 && d->oh >= 1 && d->ow >= 1 && d->kh >= 1 &&
           d->kw >= 1 && d->stride_h >= 1 && d->stride_w >= 1 && d->dil_h >= 1 && d->dil_w >= 1 &&
           d->pad_h >= 0 && d->pad_w >= 0;
}

int fc_f32_conv2d_bwd_weight_gemm(const fc_conv2d_desc *d, const float *x, const float *dy, float *dw,
                                  int nthreads); /* bwd_weight_f32.c */
int fc_f32_conv2d_bwd_weight_cl(const fc_conv2d_desc *d, const float *x, const float *dy, float *dw, int nthreads,
                                int fold); /* bwd_weight_cl_f32.c */

/* float32 backward-weight: the microkernel GEMMs of bwd_weight_f32.c (which hands small images
 * to the channels-last mode of bwd_weight_cl_f32.c) where they take the problem; the channels-
 * last mode for fewer than mr / 2 input channels per group (the 3-channel stem: its rows fold
 * into one run of r*s*cg values per pixel); the portable packed GEMM for fewer than 16 output
 * channels per group, where padding to the tile would waste most of the work.
 * FASTCONV_BWD_WEIGHT=cl|clfold forces the channels-last mode (test hook). */
static int f32_bwd_weight(const fc_conv2d_desc *d, const float *x, const float *dy, float *dw, float *db,
                          int nthreads) {
    const char *force = getenv("FASTCONV_BWD_WEIGHT");
    const int cl = force && (!strcmp(force, "cl") || !strcmp(force, "clfold"));
    int status;
    if (d->n >= 1 && cl)
        status = fc_f32_conv2d_bwd_weight_cl(d, x, dy, dw, nthreads, !strcmp(force, "clfold"));
    else if (d->n < 1 || d->k / d->groups < 16)
        return bwd_f32_conv2d_bwd_weight(d, x, dy, dw, db, nthreads);
    else if (2 * (d->c / d->groups) < fc_config()->mr)
        status = d->r * d->s > 1 ? fc_f32_conv2d_bwd_weight_cl(d, x, dy, dw, nthreads, -1) : FC_EUNSUPPORTED;
    else
        status = fc_f32_conv2d_bwd_weight_gemm(d, x, dy, dw, nthreads);
    if (status == FC_EUNSUPPORTED)
        return bwd_f32_conv2d_bwd_weight(d, x, dy, dw, db, nthreads);
    if (status != FC_OK || !db)
        return status;
    const int64_t ohw = d->oh * d->ow;
#pragma omp parallel for num_threads(fc_team(nthreads, d->k, 64)) schedule(static)
    for (int64_t k = 0; k < d->k; k++) {
        double sum = 0;
        for (int64_t n = 0; n < d->n; n++) {
            const float *row = dy + (n * d->k + k) * ohw;
            for (int64_t p = 0; p < ohw; p++)
                sum += row[p];
        }
        db[k] = (float)sum;
    }
    return FC_OK;
}

int fc_f32_conv2d_bwd_data_gemm(const fc_conv2d_desc *d, const float *dy, const float *w, float *dx,
                                int nthreads); /* bwd_data_f32.c */

/* float32 backward-data: the microkernel GEMM + col2im of bwd_data_f32.c, else the portable one. */
static int f32_bwd_data(const fc_conv2d_desc *d, const float *dy, const float *w, float *dx, int nthreads) {
    int status = d->n >= 1 ? fc_f32_conv2d_bwd_data_gemm(d, dy, w, dx, nthreads) : FC_EUNSUPPORTED;
    return status == FC_EUNSUPPORTED ? bwd_f32_conv2d_bwd_data(d, dy, w, dx, nthreads) : status;
}

#define BWD_DATA_f32 f32_bwd_data
#define BWD_DATA_f64 bwd_f64_conv2d_bwd_data
#define BWD_WEIGHT_f32 f32_bwd_weight
#define BWD_WEIGHT_f64 bwd_f64_conv2d_bwd_weight

#define DEFINE_ENTRIES(T, P)                                                                                 \
    int fc_##P##_conv2d_bwd_data(const fc_conv2d_desc *d, const T *dy, const T *weight, T *dx, int nthreads) { \
        return conv_desc_ok(d) ? BWD_DATA_##P(d, dy, weight, dx, nthreads) : FC_EINVAL;                      \
    }                                                                                                         \
    int fc_##P##_conv2d_bwd_weight(const fc_conv2d_desc *d, const T *x, const T *dy, T *dweight, T *dbias,     \
                                   int nthreads) {                                                            \
        return conv_desc_ok(d) ? BWD_WEIGHT_##P(d, x, dy, dweight, dbias, nthreads) : FC_EINVAL;               \
    }                                                                                                         \
    int fc_##P##_max_pool2d_bwd(const fc_pool2d_desc *d, const T *x, const T *dy, T *dx, int nthreads) {      \
        return pool_desc_ok(d) ? bwd_##P##_max_pool2d_bwd(d, x, dy, dx, nthreads) : FC_EINVAL;                  \
    }                                                                                                         \
    int fc_##P##_avg_pool2d_bwd(const fc_pool2d_desc *d, const T *dy, T *dx, int nthreads) {                   \
        return pool_desc_ok(d) ? bwd_##P##_avg_pool2d_bwd(d, dy, dx, nthreads) : FC_EINVAL;                     \
    }                                                                                                         \
    int fc_##P##_adaptive_avg_pool2d_bwd(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,          \
                                         const T *dy, T *dx, int nthreads) {                                   \
        if (planes < 0 || h < 1 || w < 1 || oh < 1 || ow < 1)                                                   \
            return FC_EINVAL;                                                                                 \
        return bwd_##P##_adaptive_avg_pool2d_bwd(planes, h, w, oh, ow, dy, dx, nthreads);                       \
    }                                                                                                         \
    int fc_##P##_batch_norm_bwd(int64_t n, int64_t c, int64_t l, const T *x, const T *dy, const double *mean,  \
                                const double *var, const double *weight, double eps, int32_t training, T *dx,  \
                                double *dweight, double *dbias, int nthreads) {                               \
        if (n < 0 || c < 1 || l < 0)                                                                          \
            return FC_EINVAL;                                                                                 \
        return bwd_##P##_batch_norm_bwd(n, c, l, x, dy, mean, var, weight, eps, training, dx, dweight, dbias,   \
                                        nthreads);                                                            \
    }                                                                                                         \
    int fc_##P##_relu_bwd(int64_t size, const T *y, const T *dy, T *dx, int nthreads) {                       \
        return size < 0 ? FC_EINVAL : bwd_##P##_relu_bwd(size, y, dy, dx, nthreads);                          \
    }

DEFINE_ENTRIES(float, f32)
DEFINE_ENTRIES(double, f64)
