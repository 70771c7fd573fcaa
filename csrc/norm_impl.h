/* Batch norm and relu, written once for T = float and T = double (norm.c includes it twice). */

FC_CLONES
static void FN(scale_shift)(T *restrict out, const T *restrict in, int64_t len, T scale, T shift) {
    for (int64_t j = 0; j < len; j++)
        out[j] = in[j] * scale + shift;
}

int FN(batch_norm)(int64_t n, int64_t c, int64_t l, const T *x, const double *mean, const double *var,
                   const double *weight, const double *bias, double eps, T *y, int nthreads) {
    if (n < 0 || c < 1 || l < 0)
        return FC_EINVAL;
    int team = fc_team(nthreads, n * c * l, 1 << 16);
    /* One (image, channel) run of l values per task; the scale is folded once, in float64. */
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < n * c; t++) {
        int64_t ch = t % c;
        double scale = weight[ch] / sqrt(var[ch] + eps);
        double shift = bias[ch] - mean[ch] * scale;
        FN(scale_shift)(y + (size_t)t * l, x + (size_t)t * l, l, (T)scale, (T)shift);
    }
    return FC_OK;
}

/* Sum of a run in float64, in 8 interleaved partial sums so the loop vectorises without
 * -ffast-math (which would also license ignoring NaN). */
FC_CLONES
static double FN(sum)(const T *restrict v, int64_t len, double center, int squares) {
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= len; j += 8)
        for (int q = 0; q < 8; q++) {
            double e = (double)v[j + q] - center;
            part[q] += squares ? e * e : e;
        }
    double total = 0;
    for (; j < len; j++) {
        double e = (double)v[j] - center;
        total += squares ? e * e : e;
    }
    for (int q = 0; q < 8; q++)
        total += part[q];
    return total;
}

int FN(batch_stats)(int64_t n, int64_t c, int64_t l, const T *x, double *mean, double *var, int nthreads) {
    if (n < 0 || c < 1 || l < 0 || n * l < 1)
        return FC_EINVAL;
    int team = fc_team(nthreads, n * c * l, 1 << 15);
    /* Two passes per channel (mean, then squared deviations from it): no cancellation. */
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t ch = 0; ch < c; ch++) {
        double count = (double)(n * l), total = 0, squares = 0;
        for (int64_t i = 0; i < n; i++)
            total += FN(sum)(x + ((size_t)i * c + ch) * l, l, 0.0, 0);
        double m = total / count;
        for (int64_t i = 0; i < n; i++)
            squares += FN(sum)(x + ((size_t)i * c + ch) * l, l, m, 1);
        mean[ch] = m;
        var[ch] = squares / count;
    }
    return FC_OK;
}

FC_CLONES
static void FN(relu_run)(T *restrict out, const T *restrict in, int64_t len) {
    for (int64_t j = 0; j < len; j++)
        out[j] = in[j] < 0 ? (T)0 : in[j]; /* NaN < 0 is false: NaN stays */
}

int FN(relu)(int64_t size, const T *x, T *y, int nthreads) {
    if (size < 0)
        return FC_EINVAL;
    const int64_t chunk = 1 << 14;
    int64_t chunks = (size + chunk - 1) / chunk;
    int team = fc_team(nthreads, size, 1 << 16);
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < chunks; t++) {
        int64_t a = t * chunk;
        FN(relu_run)(y + a, x + a, FC_MIN(chunk, size - a));
    }
    return FC_OK;
}
