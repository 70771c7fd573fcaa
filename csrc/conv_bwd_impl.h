/* Convolution backward, one dtype per inclusion (T, V, VL, FN; the GEMM from bwd_gemm_impl.h).
 *
 * bwd_data, per image and group: cols (cg*r*s x oh*ow) = weight_g^T (cg*r*s x kg) dy_g (kg x
 * oh*ow), then col2im adds each column row back onto the input cells its tap read.  A 1x1,
 * stride-1, unpadded convolution needs no col2im: the GEMM writes dx itself.
 * bwd_weight, per group and chunk of images: dw_g (kg x cg*r*s) += dy_g (kg x pixels) cols^T,
 * cols the forward's im2col of the images, which the GEMM packs straight from the input.  Each thread sums its images into a private dw, the
 * partial sums are added at the end: no two threads ever write the same element.
 */

/* dx planes (cg, h, w) += the column rows, each onto the cells its tap read. */
static void FN(col2im)(const fc_conv2d_desc *d, int64_t cg, const T *cols, T *dx) {
    int64_t ohw = d->oh * d->ow;
    for (int64_t c = 0; c < cg; c++)
        for (int64_t i = 0; i < d->r; i++)
            for (int64_t j = 0; j < d->s; j++) {
                const T *row = cols + ((c * d->r + i) * d->s + j) * ohw;
                int64_t off_w = j * d->dil_w - d->pad_left, lo, hi;
                fc_valid_range(d->w, d->ow, d->stride_w, off_w, &lo, &hi);
                for (int64_t oy = 0; oy < d->oh; oy++) {
                    int64_t iy = oy * d->stride_h - d->pad_top + i * d->dil_h;
                    if (iy < 0 || iy >= d->h)
                        continue;
                    T *dst = dx + (c * d->h + iy) * d->w + off_w;
                    const T *in = row + oy * d->ow;
                    if (d->stride_w == 1)
                        for (int64_t ox = lo; ox < hi; ox++)
                            dst[ox] += in[ox];
                    else
                        for (int64_t ox = lo; ox < hi; ox++)
                            dst[ox * d->stride_w] += in[ox];
                }
            }
}

static int FN(is_pointwise)(const fc_conv2d_desc *d) {
    return d->r == 1 && d->s == 1 && d->stride_h == 1 && d->stride_w == 1 && d->pad_top == 0 &&
           d->pad_left == 0 && d->oh == d->h && d->ow == d->w;
}

static int FN(conv2d_bwd_data)(const fc_conv2d_desc *d, const T *dy, const T *w, T *dx, int nthreads) {
    int64_t cg = d->c / d->groups, kg = d->k / d->groups, crs, cols_len, img_in, img_out;
    int64_t ohw = d->oh * d->ow;
    if (__builtin_mul_overflow(cg, d->r * d->s, &crs) || __builtin_mul_overflow(crs, ohw, &cols_len) ||
        __builtin_mul_overflow(d->c, d->h * d->w, &img_in) || __builtin_mul_overflow(d->k, ohw, &img_out))
        return FC_EINVAL;
    int pointwise = FN(is_pointwise)(d);
    size_t per_thread;
    if (__builtin_add_overflow(FN(gemm_scratch)(), pointwise ? 0 : (size_t)cols_len, &per_thread) ||
        per_thread > SIZE_MAX / sizeof(T) / 256)
        return FC_ENOMEM;
    int64_t tasks = d->n * d->groups;
    int team = fc_team(nthreads, tasks, 1);
    size_t slice = fc_slice(per_thread * sizeof(T));
    char *scratch = fc_alloc(slice * (size_t)team);
    if (!scratch)
        return FC_ENOMEM;
    memset(dx, 0, (size_t)d->n * (size_t)img_in * sizeof(T));
#pragma omp parallel num_threads(team)
    {
        T *gbuf = (T *)(scratch + slice * (size_t)FC_THREAD_ID());
        T *cols = gbuf + FN(gemm_scratch)();
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t n = t / d->groups, g = t % d->groups;
            const T *dyg = dy + n * img_out + g * kg * ohw;
            const T *wg = w + g * kg * crs; /* (kg, crs) row-major: weight_g^T is (crs, kg) with strides (1, crs) */
            T *dxg = dx + n * img_in + g * cg * d->h * d->w;
            if (pointwise) {
                FN(gemm)(crs, ohw, kg, wg, 1, crs, dyg, ohw, 1, NULL, dxg, ohw, gbuf);
            } else {
                memset(cols, 0, (size_t)cols_len * sizeof(T));
                FN(gemm)(crs, ohw, kg, wg, 1, crs, dyg, ohw, 1, NULL, cols, ohw, gbuf);
                FN(col2im)(d, cg, cols, dxg);
            }
        }
    }
    free(scratch);
    return FC_OK;
}

/* Images per GEMM in bwd_weight: enough pixels that the reduction (K) amortises reading and
 * writing the dw tiles, which a small image (7x7 = 49 pixels) alone would not. */
#define BWD_MIN_PIXELS 1024

static int FN(conv2d_bwd_weight)(const fc_conv2d_desc *d, const T *x, const T *dy, T *dw, T *db, int nthreads) {
    int64_t cg = d->c / d->groups, kg = d->k / d->groups, crs, img_in, img_out, wsize;
    int64_t ohw = d->oh * d->ow;
    int team = fc_team(nthreads, d->n, 1);
    int64_t per_img = (d->n + team - 1) / team;
    int64_t chunk = FC_MAX(1, FC_MIN(per_img, (BWD_MIN_PIXELS + ohw - 1) / ohw));
    int64_t ld, dy_len;
    if (__builtin_mul_overflow(cg, d->r * d->s, &crs) || __builtin_mul_overflow(chunk, ohw, &ld) ||
        __builtin_mul_overflow(kg, ld, &dy_len) ||
        __builtin_mul_overflow(d->c, d->h * d->w, &img_in) || __builtin_mul_overflow(d->k, ohw, &img_out) ||
        __builtin_mul_overflow(d->k, crs, &wsize))
        return FC_EINVAL;
    size_t per_thread;
    if (__builtin_add_overflow(FN(gemm_scratch)() + (size_t)wsize, (size_t)dy_len, &per_thread) ||
        per_thread > SIZE_MAX / sizeof(T) / 256)
        return FC_ENOMEM;
    size_t slice = fc_slice(per_thread * sizeof(T));
    char *scratch = fc_alloc(slice * (size_t)team);
    if (!scratch)
        return FC_ENOMEM;
#pragma omp parallel num_threads(team)
    {
        int tid = FC_THREAD_ID();
        T *gbuf = (T *)(scratch + slice * (size_t)tid);
        T *part = gbuf + FN(gemm_scratch)();
        T *dyk = part + wsize;
        memset(part, 0, (size_t)wsize * sizeof(T));
        /* Thread t owns images [t * per_img, (t + 1) * per_img), summed into its own part. */
        int64_t n0 = tid * per_img, n1 = FC_MIN(d->n, n0 + per_img);
        for (int64_t a = n0; a < n1; a += chunk) {
            int64_t m = FC_MIN(chunk, n1 - a), kk = m * ohw;
            for (int64_t g = 0; g < d->groups; g++) {
                /* The chunk's images side by side along the reduction: dy (kg x m*ohw) copied,
                 * the columns (crs x m*ohw) packed straight from the input. */
                for (int64_t b = 0; b < m; b++)
                    for (int64_t k = 0; k < kg; k++)
                        memcpy(dyk + k * ld + b * ohw, dy + (a + b) * img_out + (g * kg + k) * ohw,
                               (size_t)ohw * sizeof(T));
                FN(cols_src) src = {d, x + a * img_in + g * cg * d->h * d->w, img_in, ohw};
                /* dw_g (kg x crs) += dy (kg x K) cols^T. */
                FN(gemm)(kg, crs, kk, dyk, ld, 1, NULL, 0, 0, &src, part + g * kg * crs, crs, gbuf);
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t e = 0; e < wsize; e++) {
            T sum = 0;
            for (int t = 0; t < team; t++)
                sum += ((const T *)(scratch + slice * (size_t)t + FN(gemm_scratch)() * sizeof(T)))[e];
            dw[e] = sum;
        }
        if (db) {
#pragma omp for schedule(static)
            for (int64_t k = 0; k < d->k; k++) {
                double sum = 0;
                for (int64_t n = 0; n < d->n; n++) {
                    const T *row = dy + n * img_out + k * ohw;
                    for (int64_t p = 0; p < ohw; p++)
                        sum += row[p];
                }
                db[k] = (T)sum;
            }
        }
    }
    free(scratch);
    return FC_OK;
}

#undef BWD_MIN_PIXELS
