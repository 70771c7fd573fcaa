/* Portable direct convolution, written once for T = float and T = double (conv_direct.c includes
 * it twice with FN(name) naming the dtype's copy).  The float32 fast path lives in
 * conv_gemm_f32.c; these loops are its fallback and the float64 kernels.
 *
 * Both kernels work one output row at a time and vectorise along it: every tap adds
 * weight * (a contiguous or strided run of an input row) to the row, over the columns
 * fc_valid_range says the tap can reach, so no inner loop tests for padding.
 */

/* residual + activation on one finished output row (bias started it). */
static inline void FN(row_epilogue)(T *restrict yrow, const T *restrict rrow, int64_t ow, const fc_conv2d_desc *d) {
    const int act = fc_conv_act(d);
    if (rrow)
        for (int64_t j = 0; j < ow; j++)
            yrow[j] += rrow[j];
    if (act == FC_ACT_RELU)
        for (int64_t j = 0; j < ow; j++)
            yrow[j] = yrow[j] < 0 ? (T)0 : yrow[j]; /* NaN < 0 is false: NaN stays */
    else if (act != FC_ACT_NONE)
        fc_act_row(yrow, ow, act, (T)d->act_a, (T)d->act_b);
}

/* yrow[lo:hi] += wv * xrow[lo*sw + off :: sw] */
FC_CLONES
static void FN(axpy_row)(T *restrict yrow, const T *restrict xrow, T wv, int64_t lo, int64_t hi,
                         int64_t sw, int64_t off) {
    if (sw == 1) {
        const T *xs = xrow + off;
        for (int64_t j = lo; j < hi; j++)
            yrow[j] += wv * xs[j];
    } else {
        for (int64_t j = lo; j < hi; j++)
            yrow[j] += wv * xrow[j * sw + off];
    }
}

/* yrow[j] += 0 * wv outside [lo, hi): the padded taps of a non-finite weight. */
static void FN(pad_taps)(T *restrict yrow, T wv, int64_t lo, int64_t hi, int64_t ow) {
    const T z = wv * (T)0;
    for (int64_t j = 0; j < lo; j++)
        yrow[j] += z;
    for (int64_t j = hi; j < ow; j++)
        yrow[j] += z;
}

/* One output row y[nn, kk, i, :] of a grouped convolution. */
static void FN(conv_row)(const fc_conv2d_desc *d, const T *x, const T *w, const T *bias,
                         const T *residual, T *y, int64_t nn, int64_t kk, int64_t i) {
    const int64_t cg = d->c / d->groups, kg = d->k / d->groups, g = kk / kg;
    const int64_t ohw = d->oh * d->ow;
    T *yrow = y + ((size_t)nn * d->k + kk) * ohw + i * d->ow;
    const T b = bias ? bias[kk] : (T)0;
    for (int64_t j = 0; j < d->ow; j++)
        yrow[j] = b;
    for (int64_t c = 0; c < cg; c++) {
        const T *xplane = x + ((size_t)nn * d->c + g * cg + c) * d->h * d->w;
        const T *wk = w + ((size_t)kk * cg + c) * d->r * d->s;
        for (int64_t r = 0; r < d->r; r++) {
            int64_t ih = i * d->stride_h - d->pad_top + r * d->dil_h;
            const int row_in = ih >= 0 && ih < d->h;
            const T *xrow = row_in ? xplane + ih * d->w : xplane;
            for (int64_t s = 0; s < d->s; s++) {
                const T wv = wk[r * d->s + s];
                int64_t off = s * d->dil_w - d->pad_left, lo = 0, hi = 0;
                if (row_in) {
                    fc_valid_range(d->w, d->ow, d->stride_w, off, &lo, &hi);
                    FN(axpy_row)(yrow, xrow, wv, lo, hi, d->stride_w, off);
                }
                /* Taps in the zero padding are skipped, which is exact unless the weight is NaN
                 * or inf: then 0 * wv is NaN, as torch computes it. */
                if (wv - wv != (T)0)
                    FN(pad_taps)(yrow, wv, lo, hi, d->ow);
            }
        }
    }
    FN(row_epilogue)(yrow, residual ? residual + (yrow - y) : NULL, d->ow, d);
}

static int FN(conv2d_direct)(const fc_conv2d_desc *d, const T *x, const T *w, const T *bias,
                             const T *residual, T *y, int nthreads) {
    const int64_t rows = d->n * d->k * d->oh;
    const int64_t row_work = d->ow * (d->c / d->groups) * d->r * d->s;
    int team = fc_team(nthreads, rows * row_work, 1 << 15);
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < rows; t++) {
        int64_t i = t % d->oh, kk = (t / d->oh) % d->k, nn = t / (d->oh * d->k);
        FN(conv_row)(d, x, w, bias, residual, y, nn, kk, i);
    }
    return FC_OK;
}

/* One output row of a 3x3 depthwise convolution from three padded input rows: all nine taps
 * per output column at once, so the row is written once (MobileNet's case). */
FC_CLONES
static void FN(dw3x3_row)(T *restrict yrow, const T *restrict x0, const T *restrict x1, const T *restrict x2,
                          const T *restrict wk, int64_t ow, int64_t sw, T b) {
    const T w0 = wk[0], w1 = wk[1], w2 = wk[2], w3 = wk[3], w4 = wk[4], w5 = wk[5], w6 = wk[6],
            w7 = wk[7], w8 = wk[8];
    if (sw == 1) {
        for (int64_t j = 0; j < ow; j++)
            yrow[j] = b + w0 * x0[j] + w1 * x0[j + 1] + w2 * x0[j + 2] + w3 * x1[j] + w4 * x1[j + 1] +
                      w5 * x1[j + 2] + w6 * x2[j] + w7 * x2[j + 1] + w8 * x2[j + 2];
    } else {
        for (int64_t j = 0; j < ow; j++) {
            int64_t q = j * sw;
            yrow[j] = b + w0 * x0[q] + w1 * x0[q + 1] + w2 * x0[q + 2] + w3 * x1[q] + w4 * x1[q + 1] +
                      w5 * x1[q + 2] + w6 * x2[q] + w7 * x2[q + 1] + w8 * x2[q + 2];
        }
    }
}

/* Depthwise (one input channel per group): each task is one (image, channel) plane, copied once
 * into a zero-padded scratch plane so that every tap of every output row is a plain run of the
 * padded row; the channel's k/c output planes (the channel multiplier) are computed from it. */
static int FN(conv2d_depthwise)(const fc_conv2d_desc *d, const T *x, const T *w, const T *bias,
                                const T *residual, T *y, int nthreads) {
    const int64_t mult = d->k / d->c, planes = d->n * d->c, ohw = d->oh * d->ow;
    /* The padded plane covers every row and column a window reaches (bottom/right included). */
    const int64_t hp = FC_MAX(d->h + d->pad_top, (d->oh - 1) * d->stride_h + (d->r - 1) * d->dil_h + 1);
    const int64_t wp = FC_MAX(d->w + d->pad_left, (d->ow - 1) * d->stride_w + (d->s - 1) * d->dil_w + 1);
    /* A padded plane far larger than the input and output planes (huge padding or dilation
     * around a small output) is all zeros that no window needs: the direct loops clip taps
     * instead and need no scratch. */
    if ((double)hp * (double)wp > 8.0 * ((double)d->h * d->w + (double)mult * ohw) + (1 << 20))
        return FN(conv2d_direct)(d, x, w, bias, residual, y, nthreads);
    int team = fc_team(nthreads, planes * mult * ohw * d->r * d->s, 1 << 15);
    const size_t slice = fc_slice(fc_size_mul3((size_t)hp, (size_t)wp, sizeof(T)));
    size_t total;
    if (slice == SIZE_MAX || fc_size_mul((size_t)team, slice, &total))
        return FC_ENOMEM;
    char *scratch = fc_alloc(total);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        T *xp = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        #pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; p++) {
            const T *src = x + (size_t)p * d->h * d->w;
            memset(xp, 0, (size_t)hp * wp * sizeof(T));
            for (int64_t ih = 0; ih < d->h; ih++)
                memcpy(xp + (ih + d->pad_top) * wp + d->pad_left, src + ih * d->w, (size_t)d->w * sizeof(T));
            int64_t c = p % d->c;
            for (int64_t m = 0; m < mult; m++) {
                int64_t kk = c * mult + m;
                size_t obase = ((size_t)(p / d->c) * d->k + kk) * ohw;
                const T *wk = w + (size_t)kk * d->r * d->s;
                const T b = bias ? bias[kk] : (T)0;
                for (int64_t i = 0; i < d->oh; i++) {
                    T *yrow = y + obase + i * d->ow;
                    if (d->r == 3 && d->s == 3 && d->dil_w == 1) {
                        const T *x0 = xp + i * d->stride_h * wp;
                        FN(dw3x3_row)(yrow, x0, x0 + d->dil_h * wp, x0 + 2 * d->dil_h * wp, wk, d->ow, d->stride_w, b);
                        FN(row_epilogue)(yrow, residual ? residual + obase + i * d->ow : NULL, d->ow, d);
                        continue;
                    }
                    for (int64_t j = 0; j < d->ow; j++)
                        yrow[j] = b;
                    for (int64_t r = 0; r < d->r; r++) {
                        const T *xrow = xp + (i * d->stride_h + r * d->dil_h) * wp;
                        for (int64_t s = 0; s < d->s; s++)
                            FN(axpy_row)(yrow, xrow, wk[r * d->s + s], 0, d->ow, d->stride_w, s * d->dil_w);
                    }
                    FN(row_epilogue)(yrow, residual ? residual + obase + i * d->ow : NULL, d->ow, d);
                }
            }
        }
    }
    free(scratch);
    return FC_OK;
}

/* Defensive: sizes and options Python validated are at least consistent.  Cheap next to any
 * convolution. */
static int FN(conv2d_desc_ok)(const fc_conv2d_desc *d) {
    if (d->n < 1 || d->c < 1 || d->h < 1 || d->w < 1 || d->k < 1 || d->r < 1 || d->s < 1)
        return 0;
    if (d->groups < 1 || d->c % d->groups || d->k % d->groups)
        return 0;
    if (d->stride_h < 1 || d->stride_w < 1 || d->dil_h < 1 || d->dil_w < 1 || d->pad_top < 0 || d->pad_left < 0)
        return 0;
    /* Any oh, ow >= 1 is safe: every kernel clips its taps to the input (or sizes its padded
     * scratch from oh and ow), so a window lying wholly in the padding just reads zeros. */
    if (d->oh < 1 || d->ow < 1)
        return 0;
    return 1;
}
