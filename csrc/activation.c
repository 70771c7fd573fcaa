/* Elementwise activations (fc_act in fc_internal.h, the convolution epilogue's) on rows, and as
 * ops of their own. */
#include "fc_internal.h"

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
