/* Max pooling with indices, one dtype per inclusion (T, FN): each output scans its window's taps
 * inside the input in row-major order, as torch's CPU kernel does, so ties, NaN and all -inf
 * windows pick torch's index (see fastconv.h).  Padding taps are skipped: their -inf never wins. */

int FN(max_pool2d_indices)(const fc_pool2d_desc *d, const T *x, T *y, int64_t *indices, int nthreads) {
    const int64_t planes = d->n * d->c;
    int team = fc_team(nthreads, planes * d->oh * d->ow * FC_MIN(d->kh, d->h) * FC_MIN(d->kw, d->w), 1 << 15);
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < planes * d->oh; t++) {
        const int64_t p = t / d->oh, i = t % d->oh;
        const T *plane = x + (size_t)p * d->h * d->w;
        const int64_t top = i * d->stride_h - d->pad_h;
        int64_t r0, r1;
        fc_valid_range(d->h, d->kh, d->dil_h, top, &r0, &r1);
        T *out = y + ((size_t)p * d->oh + i) * d->ow;
        int64_t *where = indices + ((size_t)p * d->oh + i) * d->ow;
        for (int64_t j = 0; j < d->ow; j++) {
            const int64_t left = j * d->stride_w - d->pad_w;
            int64_t s0, s1;
            fc_valid_range(d->w, d->kw, d->dil_w, left, &s0, &s1);
            T best = -(T)INFINITY;
            int64_t at = (top + r0 * d->dil_h) * d->w + left + s0 * d->dil_w;
            for (int64_t r = r0; r < r1; r++) {
                const int64_t ih = top + r * d->dil_h;
                for (int64_t s = s0; s < s1; s++) {
                    const int64_t iw = left + s * d->dil_w;
                    const T v = plane[ih * d->w + iw];
                    if (v > best || v != v) { /* v != v: a NaN wins, and a later NaN again */
                        best = v;
                        at = ih * d->w + iw;
                    }
                }
            }
            out[j] = best;
            where[j] = at;
        }
    }
    return FC_OK;
}

/* Adaptive max pooling: bin i spans [floor(i*h/oh), ceil((i+1)*h/oh)), scanned as above;
 * indices may be NULL. */
int FN(adaptive_max_pool2d)(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const T *x, T *y,
                            int64_t *indices, int nthreads) {
    int team = fc_team(nthreads, planes * h * w, 1 << 15);
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < planes * oh; t++) {
        const int64_t p = t / oh, i = t % oh;
        const int64_t h0 = i * h / oh, h1 = ((i + 1) * h + oh - 1) / oh;
        const T *plane = x + (size_t)p * h * w;
        for (int64_t j = 0; j < ow; j++) {
            const int64_t w0 = j * w / ow, w1 = ((j + 1) * w + ow - 1) / ow;
            T best = -(T)INFINITY;
            int64_t at = h0 * w + w0;
            for (int64_t ih = h0; ih < h1; ih++)
                for (int64_t iw = w0; iw < w1; iw++) {
                    const T v = plane[ih * w + iw];
                    if (v > best || v != v) {
                        best = v;
                        at = ih * w + iw;
                    }
                }
            y[(size_t)t * ow + j] = best;
            if (indices)
                indices[(size_t)t * ow + j] = at;
        }
    }
    return FC_OK;
}
