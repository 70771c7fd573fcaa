/* Elementwise activations (fc_act in fc_internal.h, the convolution epilogue's) as ops of their own. */
#include "fc_internal.h"

#define DEFINE_ACTIVATION(T, P)                                                                        \
    int fc_##P##_activation(int64_t size, const T *x, T *y, int32_t act, double a, double b, int nthreads) { \
        if (size < 0 || act < FC_ACT_NONE || act > FC_ACT_HARDSWISH)                                   \
            return FC_EINVAL;                                                                          \
        const T ta = (T)a, tb = (T)b;                                                                  \
        int team = fc_team(nthreads, size, 1 << 15);                                                   \
        _Pragma("omp parallel for num_threads(team) schedule(static)")                                 \
        for (int64_t i = 0; i < size; i++)                                                             \
            y[i] = fc_act_##P(x[i], act, ta, tb);                                                      \
        return FC_OK;                                                                                  \
    }

DEFINE_ACTIVATION(float, f32)
DEFINE_ACTIVATION(double, f64)
