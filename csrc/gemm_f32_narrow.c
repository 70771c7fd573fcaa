/* Narrow panels on pre-packed weights: C[mb][col][i] (+)= sum over steps p of
 * A_mb[p][i] * B[p][col] for up to 4 columns and many weight blocks at once (x86: AVX2 + FMA,
 * 8-lane vectors; used by the AVX-512 and AVX2 tables alike).
 *
 * Why: the GEMM microkernel puts pixels along its vectors, so a panel of 1 to 4 columns -- a
 * classifier at batch 1 (one column), a 7x7 plane's 49th pixel, a 14x14 plane's last 4 --
 * still costs a full 16-column pass: on ResNet-50 at batch 1 the fc layer and every res5 1x1
 * layer spent a quarter or more of their time on columns that were not there.  Here the
 * pre-packed weights' mr channels of step p (adjacent in memory) are one vector and each
 * column's value is broadcast, so every lane is real work; each block keeps its own
 * accumulators and up to 8 blocks run side by side, independent chains that hide the FMA
 * latency.  Each output element is still one fused multiply-add per step in step order, the
 * same arithmetic as the microkernel: results are bit for bit the same.
 *
 * A block's accumulators are nc vectors of 8 floats, column after column ([col][8]); with the
 * AVX2 table's 6-channel blocks lanes 6 and 7 read no weights (masked loads) and are never
 * stored out. */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

#define NARROW_MB 8 /* most blocks per pass: one column, 8 accumulators */

__attribute__((target("avx2,fma"), always_inline)) static inline void
narrow_body(const int mr, const int nmb, const int nc, int64_t kc, const float *restrict a, int64_t astride,
            const float *restrict b, const int64_t *restrict boff, float *restrict c, int64_t cstride,
            int accumulate) {
    __m256 acc[NARROW_MB][FC_NARROW_COLS];
    const __m256i mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, mr > 6 ? -1 : 0, mr > 7 ? -1 : 0);
    FC_TILE_LOOP for (int m = 0; m < nmb; m++)
        FC_TILE_LOOP for (int j = 0; j < nc; j++)
            acc[m][j] = accumulate ? _mm256_loadu_ps(c + m * cstride + j * 8) : _mm256_setzero_ps();
    for (int64_t p = 0; p < kc; p++) {
        /* The weights stream from L3 or memory once per call, one stream per block: fetch
         * each 64 steps ahead, as the microkernel does. */
        if ((p & 1) == 0)
            FC_TILE_LOOP for (int m = 0; m < nmb; m++)
                _mm_prefetch((const char *)(a + m * astride + (p + 64) * mr), _MM_HINT_T0);
        const float *bp = b + boff[p];
        __m256 bv[FC_NARROW_COLS];
        FC_TILE_LOOP for (int j = 0; j < nc; j++)
            bv[j] = _mm256_broadcast_ss(bp + j);
        FC_TILE_LOOP for (int m = 0; m < nmb; m++) {
            const float *ap = a + m * astride + p * mr;
            __m256 av = mr == 8 ? _mm256_loadu_ps(ap) : _mm256_maskload_ps(ap, mask);
            FC_TILE_LOOP for (int j = 0; j < nc; j++)
                acc[m][j] = _mm256_fmadd_ps(av, bv[j], acc[m][j]);
        }
    }
    FC_TILE_LOOP for (int m = 0; m < nmb; m++)
        FC_TILE_LOOP for (int j = 0; j < nc; j++)
            _mm256_storeu_ps(c + m * cstride + j * 8, acc[m][j]);
}

/* Blocks per pass for nc columns: at most 12 accumulators (AVX2 has 16 registers). */
static const int CHUNK[FC_NARROW_COLS] = {8, 6, 4, 3};

#define NARROW_ARGS                                                                                  \
    int64_t kc, const float *a, int64_t astride, const float *b, const int64_t *boff, float *c,      \
        int64_t cstride, int accumulate
#define NARROW_FN(MR, NC, MB)                                                                        \
    __attribute__((target("avx2,fma"))) static void narrow_##MR##_##NC##_##MB(NARROW_ARGS) {         \
        narrow_body(MR, MB, NC, kc, a, astride, b, boff, c, cstride, accumulate);                    \
    }
#define NARROW_COLS(MR)                                                                              \
    NARROW_FN(MR, 1, 1) NARROW_FN(MR, 1, 2) NARROW_FN(MR, 1, 3) NARROW_FN(MR, 1, 4)                  \
    NARROW_FN(MR, 1, 5) NARROW_FN(MR, 1, 6) NARROW_FN(MR, 1, 7) NARROW_FN(MR, 1, 8)                  \
    NARROW_FN(MR, 2, 1) NARROW_FN(MR, 2, 2) NARROW_FN(MR, 2, 3) NARROW_FN(MR, 2, 4)                  \
    NARROW_FN(MR, 2, 5) NARROW_FN(MR, 2, 6)                                                          \
    NARROW_FN(MR, 3, 1) NARROW_FN(MR, 3, 2) NARROW_FN(MR, 3, 3) NARROW_FN(MR, 3, 4)                  \
    NARROW_FN(MR, 4, 1) NARROW_FN(MR, 4, 2) NARROW_FN(MR, 4, 3)
NARROW_COLS(8)
NARROW_COLS(6)

typedef void (*narrow_fn)(NARROW_ARGS);
#define NARROW_TABLE(MR)                                                                             \
    {{narrow_##MR##_1_1, narrow_##MR##_1_2, narrow_##MR##_1_3, narrow_##MR##_1_4, narrow_##MR##_1_5, \
      narrow_##MR##_1_6, narrow_##MR##_1_7, narrow_##MR##_1_8},                                      \
     {narrow_##MR##_2_1, narrow_##MR##_2_2, narrow_##MR##_2_3, narrow_##MR##_2_4, narrow_##MR##_2_5, \
      narrow_##MR##_2_6},                                                                            \
     {narrow_##MR##_3_1, narrow_##MR##_3_2, narrow_##MR##_3_3, narrow_##MR##_3_4},                   \
     {narrow_##MR##_4_1, narrow_##MR##_4_2, narrow_##MR##_4_3}}
static const narrow_fn TABLE8[FC_NARROW_COLS][NARROW_MB] = NARROW_TABLE(8);
static const narrow_fn TABLE6[FC_NARROW_COLS][NARROW_MB] = NARROW_TABLE(6);

static void narrow(const narrow_fn (*table)[NARROW_MB], int64_t kc, int64_t nmb, int64_t nc, const float *a,
                   int64_t astride, const float *b, const int64_t *boff, float *c, int64_t cstride, int accumulate) {
    const int chunk = CHUNK[nc - 1];
    for (int64_t m0 = 0; m0 < nmb; m0 += chunk) {
        const int64_t m = FC_MIN(chunk, nmb - m0);
        table[nc - 1][m - 1](kc, a + m0 * astride, astride, b, boff, c + m0 * cstride, cstride, accumulate);
    }
}

void fc_f32_gemm_narrow_8(int64_t kc, int64_t nmb, int64_t nc, const float *a, int64_t astride, const float *b,
                          const int64_t *boff, float *c, int64_t cstride, int accumulate) {
    narrow(TABLE8, kc, nmb, nc, a, astride, b, boff, c, cstride, accumulate);
}

void fc_f32_gemm_narrow_6(int64_t kc, int64_t nmb, int64_t nc, const float *a, int64_t astride, const float *b,
                          const int64_t *boff, float *c, int64_t cstride, int accumulate) {
    narrow(TABLE6, kc, nmb, nc, a, astride, b, boff, c, cstride, accumulate);
}
#endif
