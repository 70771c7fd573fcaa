/* The portable float32 GEMM microkernel (4 output channels x 16 pixels) and epilogue: plain C
 * that any compiler vectorises for its baseline instruction set.  It serves CPUs without AVX2
 * and builds without x86 intrinsics (-DFC_NO_X86, other architectures). */
#include "fc_internal.h"

#define MR 4
#define NR 16

void fc_f32_gemm_4x16_generic(int64_t kc, const float *restrict a, int64_t lda, const float *restrict b,
                              const int64_t *restrict boff, float *restrict c, int accumulate) {
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            acc[i][j] = accumulate ? c[i * NR + j] : 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *restrict bp = b + boff[p];
        for (int i = 0; i < MR; i++) {
            const float av = a[i * lda + p];
            for (int j = 0; j < NR; j++)
                acc[i][j] += av * bp[j];
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            c[i * NR + j] = acc[i][j];
}

void fc_f32_tile_store_generic(const float *restrict c, int64_t ldc, int64_t rows, int64_t len,
                               const float *restrict bias, const float *restrict res, float *restrict out,
                               int64_t ldo, int relu) {
    for (int64_t i = 0; i < rows; i++) {
        const float b = bias ? bias[i] : 0.0f;
        const float *ci = c + i * ldc;
        float *oi = out + i * ldo;
        if (res) {
            const float *ri = res + i * ldo;
            for (int64_t j = 0; j < len; j++)
                oi[j] = ci[j] + b + ri[j];
        } else {
            for (int64_t j = 0; j < len; j++)
                oi[j] = ci[j] + b;
        }
        if (relu)
            for (int64_t j = 0; j < len; j++)
                oi[j] = oi[j] < 0.0f ? 0.0f : oi[j]; /* NaN < 0 is false: NaN stays */
    }
}
