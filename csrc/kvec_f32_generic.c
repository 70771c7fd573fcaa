/* The portable channel-vector convolution microkernel: 4 output pixels x 2 vectors of 8 output
 * channels, plain C that any compiler vectorises along the channels for its baseline
 * instruction set.  It serves CPUs without AVX2 and builds without x86 intrinsics. */
#include "fc_internal.h"

#define P 4
#define LANES 8
#define VMAX 2

void fc_f32_kvec_4x2_generic(int64_t np, int64_t nv, int64_t steps, const float *restrict x,
                             const int64_t *restrict xoff, const float *restrict w, int64_t wstride,
                             float *restrict acc, int64_t ldacc, int accumulate) {
    float a[P][VMAX * LANES];
    const int64_t nl = nv * LANES;
    for (int64_t i = 0; i < np; i++)
        for (int64_t l = 0; l < nl; l++)
            a[i][l] = accumulate ? acc[i * ldacc + l] : 0.0f;
    for (int64_t p = 0; p < steps; p++) {
        const float *restrict xp = x + xoff[p];
        for (int64_t j = 0; j < nv; j++) {
            const float *restrict wj = w + j * wstride + p * LANES;
            for (int64_t i = 0; i < np; i++) {
                const float b = xp[i];
                for (int l = 0; l < LANES; l++)
                    a[i][j * LANES + l] += b * wj[l];
            }
        }
    }
    for (int64_t i = 0; i < np; i++)
        for (int64_t l = 0; l < nl; l++)
            acc[i * ldacc + l] = a[i][l];
}

/* The same tile on channel-blocked activations (conv_blocked_f32.c): over taps t and their LANES
 * channels c, pixel i of the tile reads x[xoff[t] + i * xpix + c] and its sums live at
 * y[i * LANES + j * yvec + l]; the epilogue as in conv_blocked_ukernel_impl.h (relu keeps NaN:
 * NaN < 0 is false). */
void fc_f32_blocked_4x2_generic(int64_t np, int64_t nv, int64_t taps, const float *restrict x,
                                const int64_t *restrict xoff, int64_t xpix, const float *restrict w,
                                float *restrict y, int64_t yvec, int mode, const float *bias, const float *res,
                                int64_t rvec, int relu) {
    float a[P][VMAX][LANES];
    for (int64_t i = 0; i < np; i++)
        for (int64_t j = 0; j < nv; j++)
            for (int l = 0; l < LANES; l++)
                a[i][j][l] = (mode & FC_BL_ACCUMULATE) ? y[i * LANES + j * yvec + l] : 0.0f;
    for (int64_t t = 0; t < taps; t++)
        for (int c = 0; c < LANES; c++) {
            const float *restrict wp = w + (t * LANES + c) * nv * LANES;
            for (int64_t i = 0; i < np; i++) {
                const float b = x[xoff[t] + i * xpix + c];
                for (int64_t j = 0; j < nv; j++)
                    for (int l = 0; l < LANES; l++)
                        a[i][j][l] += b * wp[j * LANES + l];
            }
        }
    for (int64_t i = 0; i < np; i++)
        for (int64_t j = 0; j < nv; j++)
            for (int l = 0; l < LANES; l++) {
                float v = a[i][j][l];
                if (mode & FC_BL_FINISH) {
                    if (bias)
                        v += bias[j * LANES + l];
                    if (res)
                        v += res[i * LANES + j * rvec + l];
                    if (relu && v < 0)
                        v = 0.0f;
                }
                y[i * LANES + j * yvec + l] = v;
            }
}
