/* AVX2+FMA float32 GEMM microkernel with the AVX-512 kernel's packing (8 x 48 tiles).
 *
 * AVX2 has 16 vector registers, too few for an 8 x 48 tile: each call sweeps the tile as
 * 4-channel x 16-pixel sub-tiles (8 accumulators, 2 B vectors, 1 broadcast), re-reading the
 * panel from L1 for each.  Compiled with a target attribute, called only when the CPU reports
 * AVX2 and FMA.
 */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

__attribute__((target("avx2,fma"), always_inline)) static inline void
gemm_8xNV(const int nv, int64_t kc, const float *restrict a, int64_t lda, const float *restrict b,
          const int64_t *restrict boff, float *restrict c, int accumulate) {
    for (int i0 = 0; i0 < FC_MR; i0 += 4)
        for (int j0 = 0; j0 < nv * 16; j0 += 16) {
            __m256 acc[4][2];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 2; j++)
                    acc[i][j] = accumulate ? _mm256_loadu_ps(c + (i0 + i) * FC_NR + j0 + j * 8)
                                           : _mm256_setzero_ps();
            for (int64_t p = 0; p < kc; p++) {
                const float *bp = b + boff[p] + j0;
                __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
                for (int i = 0; i < 4; i++) {
                    __m256 av = _mm256_broadcast_ss(a + (i0 + i) * lda + p);
                    acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
                }
            }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 2; j++)
                    _mm256_storeu_ps(c + (i0 + i) * FC_NR + j0 + j * 8, acc[i][j]);
        }
}

#define FC_GEMM_VARIANT(NV, COLS)                                                                      \
    __attribute__((target("avx2,fma"))) static void fc_f32_gemm_8x##COLS##_avx2(                  \
        int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff, float *c,        \
        int accumulate) { \
        gemm_8xNV(NV, kc, a, lda, b, boff, c, accumulate);                                              \
    }
FC_GEMM_VARIANT(1, 16)
FC_GEMM_VARIANT(2, 32)
FC_GEMM_VARIANT(3, 48)

const fc_ukernel_fn fc_f32_gemm_kernels_avx2[2][3] = {
    {fc_f32_gemm_8x16_avx2, fc_f32_gemm_8x32_avx2, fc_f32_gemm_8x48_avx2},
    {fc_f32_gemm_8x16_avx2, fc_f32_gemm_8x32_avx2, fc_f32_gemm_8x48_avx2}};
#else
const fc_ukernel_fn fc_f32_gemm_kernels_avx2[2][3] = {{0, 0, 0}, {0, 0, 0}};
#endif
