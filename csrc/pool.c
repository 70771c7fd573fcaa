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

/* -- pooling on the channel-blocked layout (fastconv.h), float32 --------------------------------- */

/* Each task pools a chunk of output rows of a block of L planes with the kernels above into the
 * thread's scratch, NCHW, and interleaves them from there (still in cache) into the block's blocked
 * plane: a compiled plan's pool before its first blocked convolution writes the layout that
 * convolution reads, with no conversion pass over the pooled tensor in memory. */
int fc_f32_max_pool2d_blocked(const fc_pool2d_desc *d, const float *x, float *y, int64_t yb, int nthreads) {
    const int64_t L = fc_f32_blocked_lanes();
    if (!pool_desc_ok(d) || d->c % L != 0 || yb < 0 || !x || !y)
        return FC_EINVAL;
    int64_t len;
    int padded, taps3s2, simd;
    size_t floats = pool_f32_max_pool_setup(d, &len, &padded, &taps3s2, &simd), block;
    block = fc_size_mul3((size_t)L, (size_t)d->oh, (size_t)d->ow); /* a block's NCHW output */
    fc_size_add(floats, block, &floats); /* saturates: pool_scratch refuses it */
    /* A task is a whole block (each plane's input read as one long stream), cut into chunks of
     * rows only where that gives every thread two tasks. */
    const int64_t blocks = d->n * (d->c / L), plane = (d->oh + 2 * yb) * (d->ow + 2 * yb) * L;
    const int team0 = fc_team(nthreads, (int64_t)block * blocks * FC_MIN(d->kh, d->h) * FC_MIN(d->kw, d->w), 1 << 15);
    const int64_t want = FC_MIN(d->oh, (2 * team0 + blocks - 1) / blocks), rc = (d->oh + want - 1) / want;
    const int64_t chunks = (d->oh + rc - 1) / rc, tasks = blocks * chunks;
    const int team = (int)FC_MIN(team0, tasks);
    size_t slice;
    char *scratch = pool_f32_pool_scratch(team, floats, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        float *out = (float *)(scratch + (size_t)FC_THREAD_ID() * slice), *row = out + block;
        const int64_t b = t / chunks, i0 = t % chunks * rc, i1 = FC_MIN(d->oh, i0 + rc);
        const float *xb = x + (size_t)b * L * d->h * d->w;
        for (int64_t l = 0; l < L; l++)
            pool_f32_max_pool_span(d, xb, out, l * d->oh + i0, l * d->oh + i1, row, len, padded, taps3s2, simd);
        fc_f32_rows_to_blocked(out, y + (size_t)b * plane, d->oh, d->ow, yb, i0, i1);
    }
    free(scratch);
    return FC_OK;
}

/* y[i, c] = the mean of plane (i, c) of x, blocked with border xb: each block's L channels summed
 * as one vector, pixel by pixel in row order (a plan's global average pool reads its blocked
 * input where it lies instead of converting it back to NCHW first). */
__attribute__((always_inline)) static inline void mean_lanes(const float *restrict plane, int64_t h, int64_t w,
                                                            int64_t xb, const int64_t L, float *restrict y) {
    float acc[16] = {0}; /* L <= 16 */
    const int64_t wp = w + 2 * xb;
    for (int64_t i = 0; i < h; i++) {
        const float *restrict row = plane + ((i + xb) * wp + xb) * L;
        for (int64_t j = 0; j < w; j++)
            for (int64_t l = 0; l < L; l++)
                acc[l] += row[j * L + l];
    }
    for (int64_t l = 0; l < L; l++)
        y[l] = acc[l] / (float)(h * w);
}

FC_CLONES
static void blocked_mean(const float *plane, int64_t h, int64_t w, int64_t xb, int64_t L, float *y) {
    if (L == 16) /* constant lane counts: the sums stay in vector registers */
        mean_lanes(plane, h, w, xb, 16, y);
    else
        mean_lanes(plane, h, w, xb, 8, y);
}

int fc_f32_blocked_global_avg_pool(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t xb,
                                   float *y, int nthreads) {
    const int64_t L = fc_f32_blocked_lanes();
    if (n < 1 || c < 1 || h < 1 || w < 1 || xb < 0 || c % L != 0 || !x || !y)
        return FC_EINVAL;
    const int64_t planes = n * (c / L), plane = (h + 2 * xb) * (w + 2 * xb) * L;
    const int team = fc_team(nthreads, planes * h * w * L, 1 << 15);
    (void)team;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < planes; t++)
        blocked_mean(x + (size_t)t * plane, h, w, xb, L, y + (size_t)t * L);
    return FC_OK;
}
