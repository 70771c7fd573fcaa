/* Max, average and adaptive average pooling, written once for T = float and T = double
 * (pool.c includes it twice).  torch's rules, as problem.py states them.
 *
 * Max and average pooling are separable, so each output row is made in two vectorisable
 * passes: a vertical pass reduces the window's rows (only those inside the input: padding is
 * -inf for max, 0 for sums) into a scratch row padded on both sides, then a horizontal pass
 * reduces kw (strided) columns of that scratch row per output column.  Each input row is read
 * about kh/stride_h times, from cache, and no inner loop tests for padding.
 */

/* The padded scratch row holds every column any window of the row reaches -- unless that is far
 * wider than the input and output rows (huge padding or dilation around a small output): then
 * the row is just the input's width and the horizontal pass clips each window's taps to it
 * (returns 0 for that case and sets *len to w). */
static int FN(pool_row_len)(const fc_pool2d_desc *d, int64_t *len) {
    int64_t padded = FC_MAX(d->w + d->pad_w, (d->ow - 1) * d->stride_w + (d->kw - 1) * d->dil_w + 1);
    if ((double)padded > 4.0 * ((double)d->w + d->ow) + 4096) {
        *len = d->w;
        return 0;
    }
    *len = padded;
    return 1;
}

/* Scratch for `team` threads of `floats` elements each (SIZE_MAX: a size that overflowed); NULL
 * when it cannot be had. */
static char *FN(pool_scratch)(int team, size_t floats, size_t *slice) {
    size_t total;
    *slice = fc_slice(fc_size_mul3(floats, sizeof(T), 1));
    if (*slice == SIZE_MAX || fc_size_mul((size_t)team, *slice, &total))
        return NULL;
    return fc_alloc(total);
}

/* NaN-propagating max, as torch: a NaN anywhere in the window wins. */
#define FC_NANMAX(best, v) (((v) > (best) || (v) != (v)) ? (v) : (best))

FC_CLONES
static void FN(max_rows)(T *restrict acc, const T *restrict row, int64_t w) {
    for (int64_t j = 0; j < w; j++)
        acc[j] = FC_NANMAX(acc[j], row[j]);
}

FC_CLONES
static void FN(fill_row)(T *restrict row, T value, int64_t n) {
    for (int64_t j = 0; j < n; j++)
        row[j] = value;
}

/* even[j] = buf[2 j], odd[j] = buf[2 j + 1] for j < n (vector deinterleaving shuffles). */
FC_CLONES
static void FN(deinterleave)(T *restrict even, T *restrict odd, const T *restrict buf, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        even[j] = buf[2 * j];
        odd[j] = buf[2 * j + 1];
    }
}

/* out[j] = max(buf[2 j], buf[2 j + 1], buf[2 j + 2]) for j < ow: ResNet's 3x3 stride-2 pool.  The
 * taps are deinterleaved into two unit-stride rows first (tmp: 2 (ow + 1) elements): with the
 * NaN test, the strided taps compiled to scalar code, and a ResNet-50's max pool took 0.31 ms at
 * batch 1 on 2 threads of an AMD EPYC (AVX-512). */
FC_CLONES
static void FN(max_cols_3s2)(T *restrict out, const T *restrict buf, int64_t ow, T *restrict tmp) {
    T *even = tmp, *odd = tmp + ow + 1;
    FN(deinterleave)(even, odd, buf, ow);
    even[ow] = buf[2 * ow];
    for (int64_t j = 0; j < ow; j++) {
        T m = FC_NANMAX(even[j], odd[j]);
        out[j] = FC_NANMAX(m, even[j + 1]);
    }
}

FC_CLONES
static void FN(max_cols)(T *restrict out, const T *restrict buf, int64_t ow, int64_t kw, int64_t sw, int64_t dw) {
    for (int64_t j = 0; j < ow; j++)
        out[j] = buf[j * sw];
    for (int64_t s = 1; s < kw; s++)
        for (int64_t j = 0; j < ow; j++)
            out[j] = FC_NANMAX(out[j], buf[j * sw + s * dw]);
}

/* out[j] = max of the window's taps that land in the row acc[0, w) (-inf when none do). */
static void FN(max_cols_clipped)(T *restrict out, const T *restrict acc, const fc_pool2d_desc *d) {
    for (int64_t j = 0; j < d->ow; j++) {
        int64_t start = j * d->stride_w - d->pad_w, s0, s1;
        fc_valid_range(d->w, d->kw, d->dil_w, start, &s0, &s1);
        T m = -(T)INFINITY;
        for (int64_t s = s0; s < s1; s++)
            m = FC_NANMAX(m, acc[start + s * d->dil_w]);
        out[j] = m;
    }
}

int FN(max_pool2d)(const fc_pool2d_desc *d, const T *x, T *y, int nthreads) {
    const int64_t planes = d->n * d->c;
    int64_t row_len;
    const int padded = FN(pool_row_len)(d, &row_len);
    const int64_t len = row_len; /* not address-taken: the fill loop need not reload it */
    const int taps3s2 = padded && d->kw == 3 && d->stride_w == 2 && d->dil_w == 1;
    int team = fc_team(nthreads, planes * d->oh * d->ow * FC_MIN(d->kh, d->h) * FC_MIN(d->kw, d->w), 1 << 15);
    size_t slice;
    size_t floats = (size_t)len; /* the padded row, then the 3x3/2 path's even and odd rows */
    if (taps3s2) /* saturates at SIZE_MAX on overflow, which pool_scratch refuses */
        fc_size_add(floats, fc_size_mul3((size_t)d->ow + 1, 2, 1), &floats);
    char *scratch = FN(pool_scratch)(team, floats, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        T *buf = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < planes * d->oh; t++) {
            int64_t p = t / d->oh, i = t % d->oh, r0, r1;
            const T *plane = x + (size_t)p * d->h * d->w;
            FN(fill_row)(buf, -(T)INFINITY, len);
            T *acc = padded ? buf + d->pad_w : buf;
            /* Only the window rows inside the input: padding rows are -inf. */
            int64_t top = i * d->stride_h - d->pad_h;
            fc_valid_range(d->h, d->kh, d->dil_h, top, &r0, &r1);
            for (int64_t r = r0; r < r1; r++)
                FN(max_rows)(acc, plane + (top + r * d->dil_h) * d->w, d->w);
            T *out = y + ((size_t)p * d->oh + i) * d->ow;
            if (taps3s2)
                FN(max_cols_3s2)(out, buf, d->ow, buf + len);
            else if (padded)
                FN(max_cols)(out, buf, d->ow, d->kw, d->stride_w, d->dil_w);
            else
                FN(max_cols_clipped)(out, acc, d);
        }
    }
    free(scratch);
    return FC_OK;
}

FC_CLONES
static void FN(add_rows)(T *restrict acc, const T *restrict row, int64_t w) {
    for (int64_t j = 0; j < w; j++)
        acc[j] += row[j];
}

/* Cells of window [start, start + k) counted by the divisor along one dimension: with
 * count_include_pad the padded cells count but the ceil-mode overhang past the padding does not. */
static inline int64_t FN(pool_count)(int64_t start, int64_t k, int64_t n, int64_t pad, int include_pad) {
    int64_t end = FC_MIN(start + k, n + pad);
    if (!include_pad) {
        start = FC_MAX(start, 0);
        end = FC_MIN(end, n);
    }
    return end - start;
}

int FN(avg_pool2d)(const fc_pool2d_desc *d, const T *x, T *y, int nthreads) {
    const int64_t planes = d->n * d->c;
    int64_t len;
    const int padded = FN(pool_row_len)(d, &len);
    int team = fc_team(nthreads, planes * d->oh * d->ow * FC_MIN(d->kh, d->h) * FC_MIN(d->kw, d->w), 1 << 15);
    /* Per thread: the scratch row, then the ow horizontal divisor factors. */
    size_t slice;
    size_t floats;
    fc_size_add((size_t)len, (size_t)d->ow, &floats); /* saturates: pool_scratch refuses it */
    char *scratch = FN(pool_scratch)(team, floats, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        T *buf = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        T *wcount = buf + len;
        for (int64_t j = 0; j < d->ow; j++)
            wcount[j] = (T)FN(pool_count)(j * d->stride_w - d->pad_w, d->kw, d->w, d->pad_w, d->count_include_pad);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < planes * d->oh; t++) {
            int64_t p = t / d->oh, i = t % d->oh;
            const T *plane = x + (size_t)p * d->h * d->w;
            memset(buf, 0, (size_t)len * sizeof(T));
            T *acc = padded ? buf + d->pad_w : buf;
            int64_t top = i * d->stride_h - d->pad_h, r0, r1;
            fc_valid_range(d->h, d->kh, 1, top, &r0, &r1);
            for (int64_t r = r0; r < r1; r++)
                FN(add_rows)(acc, plane + (top + r) * d->w, d->w);
            T *out = y + ((size_t)p * d->oh + i) * d->ow;
            for (int64_t j = 0; j < d->ow; j++) {
                T sum = 0;
                if (padded) {
                    for (int64_t s = 0; s < d->kw; s++)
                        sum += buf[j * d->stride_w + s];
                } else { /* only the taps inside the row: padding adds zeros */
                    int64_t start = j * d->stride_w - d->pad_w, s0, s1;
                    fc_valid_range(d->w, d->kw, 1, start, &s0, &s1);
                    for (int64_t s = s0; s < s1; s++)
                        sum += acc[start + s];
                }
                out[j] = sum;
            }
            if (d->divisor_override) {
                T div = (T)d->divisor_override;
                for (int64_t j = 0; j < d->ow; j++)
                    out[j] /= div;
            } else {
                T hcount = (T)FN(pool_count)(i * d->stride_h - d->pad_h, d->kh, d->h, d->pad_h, d->count_include_pad);
                for (int64_t j = 0; j < d->ow; j++)
                    out[j] /= hcount * wcount[j];
            }
        }
    }
    free(scratch);
    return FC_OK;
}

/* Bin i of n cells into `out` bins: [floor(i*n/out), ceil((i+1)*n/out)). */
static inline void FN(bin)(int64_t i, int64_t n, int64_t out, int64_t *a, int64_t *b) {
    *a = i * n / out;
    *b = ((i + 1) * n + out - 1) / out;
}

int FN(adaptive_avg_pool2d)(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                            const T *x, T *y, int nthreads) {
    if (planes < 0 || h < 1 || w < 1 || oh < 0 || ow < 0)
        return FC_EINVAL;
    int team = fc_team(nthreads, planes * (h * w + oh * ow), 1 << 15);
    size_t slice;
    char *scratch = FN(pool_scratch)(team, (size_t)w, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        T *rowsum = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < planes * oh; t++) {
            int64_t p = t / oh, i = t % oh, h0, h1;
            FN(bin)(i, h, oh, &h0, &h1);
            const T *plane = x + (size_t)p * h * w;
            memset(rowsum, 0, (size_t)w * sizeof(T));
            for (int64_t ih = h0; ih < h1; ih++)
                FN(add_rows)(rowsum, plane + ih * w, w);
            T *out = y + ((size_t)p * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++) {
                int64_t w0, w1;
                FN(bin)(j, w, ow, &w0, &w1);
                T sum = 0;
                for (int64_t iw = w0; iw < w1; iw++)
                    sum += rowsum[iw];
                out[j] = sum / (T)((h1 - h0) * (w1 - w0));
            }
        }
    }
    free(scratch);
    return FC_OK;
}
