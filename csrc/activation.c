/* Elementwise activations (fc_act in fc_internal.h, the convolution epilogue's) on rows, and as
 * ops of their own. */
#include "fc_internal.h"

/* exp(x) for x <= 0 (or NaN, which it returns), written so the compiler vectorises it: Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for exp(r) (Cephes' expf
 * coefficients, about 1 ulp), and 2^n built in the exponent bits.  Below -87 the result is 0
 * (exp(-87) is 1.6e-38, at the edge of the normal floats). */
static inline float expneg_f32(float x0) {
    float x = x0 < -87.0f ? -87.0f : x0;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * r * r + r + 1.0f;
    int32_t k = (int32_t)(x == x ? n : 0.0f); /* no float-to-int conversion of NaN */
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x0 < -87.0f ? 0.0f : e * scale; /* 0 for -inf too: silu(-inf) = -inf * 0 = NaN, as torch */
}

static inline double expneg_f64(double x) {
    return exp(x);
}

/* One loop per activation, the switch outside it, so each loop vectorises (the clamps, leaky
 * relu and hardswish fully; the sigmoids around their scalar exp). */
#define DEFINE_ACT_ROW(T, P)                                                                           \
    FC_CLONES void fc_act_row_##P(T *restrict y, int64_t n, int act, T a, T b) {                       \
        switch (act) {                                                                                 \
        case FC_ACT_RELU:                                                                              \
            for (int64_t j = 0; j < n; j++)                                                            \
                y[j] = y[j] < 0 ? (T)0 : y[j];                                                         \
            break;                                                                                     \
        case FC_ACT_RELU6:                                                                             \
            for (int64_t j = 0; j < n; j++)                                                            \
                y[j] = y[j] < 0 ? (T)0 : (y[j] > 6 ? (T)6 : y[j]);                                    \
            break;                                                                                     \
        case FC_ACT_HARDTANH:                                                                          \
            for (int64_t j = 0; j < n; j++)                                                            \
                y[j] = y[j] < a ? a : (y[j] > b ? b : y[j]);                                           \
            break;                                                                                     \
        case FC_ACT_LEAKY_RELU:                                                                        \
            for (int64_t j = 0; j < n; j++)                                                            \
                y[j] = y[j] > 0 ? y[j] : y[j] * a;                                                     \
            break;                                                                                     \
        case FC_ACT_HARDSWISH:                                                                         \
            for (int64_t j = 0; j < n; j++) {                                                          \
                T v = y[j], t = v + 3;                                                                 \
                t = t < 0 ? (T)0 : (t > 6 ? (T)6 : t);                                                 \
                y[j] = v != v ? v : v * t / 6;                                                         \
            }                                                                                          \
            break;                                                                                     \
        case FC_ACT_SIGMOID:                                                                           \
            for (int64_t j = 0; j < n; j++) {                                                          \
                T v = y[j], e = expneg_##P(v < 0 ? v : -v);                                            \
                T s = (v >= 0 ? (T)1 : e) / (1 + e);                                                   \
                y[j] = v != v ? v : s;                                                                 \
            }                                                                                          \
            break;                                                                                     \
        case FC_ACT_SILU:                                                                              \
            for (int64_t j = 0; j < n; j++) {                                                          \
                T v = y[j], e = expneg_##P(v < 0 ? v : -v);                                            \
                T s = (v >= 0 ? (T)1 : e) / (1 + e);                                                   \
                y[j] = v != v ? v : v * s;                                                             \
            }                                                                                          \
            break;                                                                                     \
        case FC_ACT_NONE:                                                                              \
            break;                                                                                     \
        default:                                                                                       \
            for (int64_t j = 0; j < n; j++)                                                            \
                y[j] = fc_act_##P(y[j], act, a, b);                                                    \
        }                                                                                              \
    }

DEFINE_ACT_ROW(float, f32)
DEFINE_ACT_ROW(double, f64)

#define DEFINE_ACTIVATION(T, P)                                                                        \
    int fc_##P##_activation(int64_t size, const T *x, T *y, int32_t act, double a, double b, int nthreads) { \
        if (size < 0 || act < FC_ACT_NONE || act > FC_ACT_HARDSWISH)                                   \
            return FC_EINVAL;                                                                          \
        const T ta = (T)a, tb = (T)b;                                                                  \
        int team = fc_team(nthreads, size, 1 << 15);                                                   \
        const int64_t chunk = 1 << 14, chunks = (size + chunk - 1) / chunk;                            \
        _Pragma("omp parallel for num_threads(team) schedule(static)")                                 \
        for (int64_t t = 0; t < chunks; t++) {                                                         \
            const int64_t lo = t * chunk, len = FC_MIN(chunk, size - lo);                              \
            memcpy(y + lo, x + lo, (size_t)len * sizeof(T));                                           \
            fc_act_row_##P(y + lo, len, act, ta, tb);                                                  \
        }                                                                                              \
        return FC_OK;                                                                                  \
    }

DEFINE_ACTIVATION(float, f32)
DEFINE_ACTIVATION(double, f64)
