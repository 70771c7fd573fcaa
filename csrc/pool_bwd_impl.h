/* Pooling, batch-norm and relu backward, one dtype per inclusion (T, FN).  Every loop is split
 * over whole planes (or channels): a thread only ever writes its own part of dx. */

static int FN(max_pool2d_bwd)(const fc_pool2d_desc *d, const T *x, const T *dy, T *dx, int nthreads) {
    int64_t planes = d->n * d->c, in = d->h * d->w, out = d->oh * d->ow;
    int team = fc_team(nthreads, planes * out * d->kh * d->kw, 1 << 14);
#pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const T *xp = x + pl * in, *g = dy + pl * out;
        T *dp = dx + pl * in;
        memset(dp, 0, (size_t)in * sizeof(T));
        for (int64_t i = 0; i < d->oh; i++) {
            int64_t h0 = i * d->stride_h - d->pad_h;
            if (h0 < 0) /* the first tap inside the input, in one step (padding may be huge) */
                h0 += (-h0 + d->dil_h - 1) / d->dil_h * d->dil_h;
            for (int64_t j = 0; j < d->ow; j++) {
                int64_t w0 = j * d->stride_w - d->pad_w;
                if (w0 < 0)
                    w0 += (-w0 + d->dil_w - 1) / d->dil_w * d->dil_w;
                /* torch's scan: start at the first tap inside the input, take every strictly
                 * larger value and every NaN. */
                int64_t best = h0 * d->w + w0;
                T maxval = -(T)INFINITY;
                int64_t h1 = FC_MIN(i * d->stride_h - d->pad_h + (d->kh - 1) * d->dil_h + 1, d->h);
                int64_t w1 = FC_MIN(j * d->stride_w - d->pad_w + (d->kw - 1) * d->dil_w + 1, d->w);
                if (h0 >= h1 || w0 >= w1) /* dilation steps over the input: every tap is padding */
                    continue;
                for (int64_t ih = h0; ih < h1; ih += d->dil_h)
                    for (int64_t iw = w0; iw < w1; iw += d->dil_w) {
                        T v = xp[ih * d->w + iw];
                        if (v > maxval || isnan(v)) {
                            maxval = v;
                            best = ih * d->w + iw;
                        }
                    }
                dp[best] += g[i * d->ow + j];
            }
        }
    }
    return FC_OK;
}

static int FN(avg_pool2d_bwd)(const fc_pool2d_desc *d, const T *dy, T *dx, int nthreads) {
    int64_t planes = d->n * d->c, in = d->h * d->w, out = d->oh * d->ow;
    int team = fc_team(nthreads, planes * out * d->kh * d->kw, 1 << 14);
#pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const T *g = dy + pl * out;
        T *dp = dx + pl * in;
        memset(dp, 0, (size_t)in * sizeof(T));
        for (int64_t i = 0; i < d->oh; i++) {
            int64_t h0 = i * d->stride_h - d->pad_h, h1 = FC_MIN(h0 + d->kh, d->h + d->pad_h);
            for (int64_t j = 0; j < d->ow; j++) {
                int64_t w0 = j * d->stride_w - d->pad_w, w1 = FC_MIN(w0 + d->kw, d->w + d->pad_w);
                int64_t pool = (h1 - h0) * (w1 - w0);
                int64_t a0 = FC_MAX(h0, 0), a1 = FC_MIN(h1, d->h), b0 = FC_MAX(w0, 0), b1 = FC_MIN(w1, d->w);
                int64_t div = d->divisor_override ? d->divisor_override
                              : d->count_include_pad ? pool : (a1 - a0) * (b1 - b0);
                if (a1 <= a0 || b1 <= b0)
                    continue;
                T share = g[i * d->ow + j] / (T)div;
                for (int64_t ih = a0; ih < a1; ih++)
                    for (int64_t iw = b0; iw < b1; iw++)
                        dp[ih * d->w + iw] += share;
            }
        }
    }
    return FC_OK;
}

static int FN(adaptive_avg_pool2d_bwd)(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                       const T *dy, T *dx, int nthreads) {
    int team = fc_team(nthreads, planes * h * w, 1 << 14);
#pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        T *dp = dx + pl * h * w;
        memset(dp, 0, (size_t)(h * w) * sizeof(T));
        for (int64_t i = 0; i < oh; i++) {
            int64_t h0 = i * h / oh, h1 = ((i + 1) * h + oh - 1) / oh;
            for (int64_t j = 0; j < ow; j++) {
                int64_t w0 = j * w / ow, w1 = ((j + 1) * w + ow - 1) / ow;
                T share = dy[(pl * oh + i) * ow + j] / (T)(h1 - h0) / (T)(w1 - w0);
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++)
                        dp[ih * w + iw] += share;
            }
        }
    }
    return FC_OK;
}

/* Per channel, sums in double: dbias = sum dy, dweight = inv_std * sum dy (x - mean);
 * dx = weight * inv_std * (dy - [training] (dbias + (x - mean) inv_std dweight) / count). */
static int FN(batch_norm_bwd)(int64_t n, int64_t c, int64_t l, const T *x, const T *dy, const double *mean,
                              const double *var, const double *weight, double eps, int32_t training, T *dx,
                              double *dweight, double *dbias, int nthreads) {
    int team = fc_team(nthreads, n * c * l, 1 << 15);
    double count = (double)n * (double)l;
#pragma omp parallel for num_threads(team) schedule(dynamic, 1)
    for (int64_t ch = 0; ch < c; ch++) {
        double m = mean[ch], inv_std = 1.0 / sqrt(var[ch] + eps), sdy = 0, sdyx = 0;
        for (int64_t b = 0; b < n; b++) {
            const T *xr = x + (b * c + ch) * l, *gr = dy + (b * c + ch) * l;
            for (int64_t i = 0; i < l; i++) {
                sdy += gr[i];
                sdyx += gr[i] * ((double)xr[i] - m);
            }
        }
        dbias[ch] = sdy;
        dweight[ch] = sdyx * inv_std;
        double scale = weight[ch] * inv_std;
        double shift = training && count > 0 ? sdy / count : 0;
        double slope = training && count > 0 ? sdyx * inv_std * inv_std / count : 0;
        for (int64_t b = 0; b < n; b++) {
            const T *xr = x + (b * c + ch) * l, *gr = dy + (b * c + ch) * l;
            T *out = dx + (b * c + ch) * l;
            if (!training) /* eval: the statistics are constants, x does not enter (inf x: no NaN) */
                for (int64_t i = 0; i < l; i++)
                    out[i] = (T)(scale * gr[i]);
            else
                for (int64_t i = 0; i < l; i++)
                    out[i] = (T)(scale * (gr[i] - shift - ((double)xr[i] - m) * slope));
        }
    }
    return FC_OK;
}

static int FN(relu_bwd)(int64_t size, const T *y, const T *dy, T *dx, int nthreads) {
    int team = fc_team(nthreads, size, 1 << 16);
#pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t i = 0; i < size; i++)
        dx[i] = y[i] <= 0 ? (T)0 : dy[i]; /* NaN: not <= 0, the gradient passes, as in torch */
    return FC_OK;
}
