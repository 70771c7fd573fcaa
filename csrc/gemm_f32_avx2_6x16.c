/* AVX2+FMA float32 GEMM microkernel, 6 output channels x 16 output pixels, and its epilogue.
 *
 * Designed for 16 ymm registers: 12 accumulators (6 rows x 2 vectors), 2 B vectors and one
 * broadcast weight.  Per reduction step: 2 loads of B and 6 broadcasts feed 12 FMAs, which keeps
 * both FMA pipes busy and hides their latency (the shape of MLAS's and BLIS's AVX2 SGEMM).
 * Compiled with a target attribute (no -march flag), called only when the CPU reports AVX2 and
 * FMA.
 */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

#define MR 6
#define NR 16

/* The accumulators are named variables, not an array: GCC kept an array of them in memory and
 * stored all twelve every step. */
#define ROW(i) c##i##0, c##i##1
#define STEP(i, q)                                                                                \
    do {                                                                                          \
        __m256 av = _mm256_broadcast_ss(packed ? a + (q) * MR + (i) : a + (i) * lda + (q));      \
        c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);                                               \
        c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);                                               \
    } while (0)
/* Reduction step q: one row of B (16 pixels) against the 6 weights of the step. */
#define STEPS(q)                                                                                  \
    do {                                                                                          \
        const float *bp = b + boff[q];                                                            \
        __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);                            \
        STEP(0, q);                                                                               \
        STEP(1, q);                                                                               \
        STEP(2, q);                                                                               \
        STEP(3, q);                                                                               \
        STEP(4, q);                                                                               \
        STEP(5, q);                                                                               \
    } while (0)
#define LOAD(i)                                                                                   \
    do {                                                                                          \
        c##i##0 = accumulate ? _mm256_loadu_ps(c + (i) * NR) : _mm256_setzero_ps();               \
        c##i##1 = accumulate ? _mm256_loadu_ps(c + (i) * NR + 8) : _mm256_setzero_ps();           \
    } while (0)
#define SAVE(i)                                                                                   \
    do {                                                                                          \
        _mm256_storeu_ps(c + (i) * NR, c##i##0);                                                  \
        _mm256_storeu_ps(c + (i) * NR + 8, c##i##1);                                              \
    } while (0)

/* Row i of a finished tile through the fused epilogue straight from the registers (the same
 * operations in the same order as fc_f32_tile_store_avx2): out + i * ldo = act(acc + bias[i] +
 * res[i * ldo ...]). */
#define OUT(i)                                                                                    \
    do {                                                                                          \
        const __m256 bv = _mm256_set1_ps(bias ? bias[i] : 0.0f);                                  \
        __m256 v0 = _mm256_add_ps(c##i##0, bv), v1 = _mm256_add_ps(c##i##1, bv);                  \
        if (res) {                                                                                \
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(res + (i) * ldo));                             \
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(res + (i) * ldo + 8));                         \
        }                                                                                         \
        if (relu) { /* max(0, v) returns v when v is NaN: NaN stays, as torch */                 \
            v0 = _mm256_max_ps(_mm256_setzero_ps(), v0);                                          \
            v1 = _mm256_max_ps(_mm256_setzero_ps(), v1);                                          \
        }                                                                                         \
        _mm256_storeu_ps(out + (i) * ldo, v0);                                                    \
        _mm256_storeu_ps(out + (i) * ldo + 8, v1);                                                \
    } while (0)

__attribute__((target("avx2,fma"), always_inline)) static inline void
gemm_6x16(const int prefetch_b, const int packed, int64_t kc, const float *restrict a, int64_t lda, const float *restrict b,
          const int64_t *restrict boff, float *restrict c, int accumulate, float *restrict out, int64_t ldo,
          const float *restrict bias, const float *restrict res, int relu) {
    __m256 ROW(0), ROW(1), ROW(2), ROW(3), ROW(4), ROW(5);
    LOAD(0);
    LOAD(1);
    LOAD(2);
    LOAD(3);
    LOAD(4);
    LOAD(5);
    int64_t p = 0;
    /* Blocks of 16 steps, straight-line, their prefetches issued once at the start: rolled one
     * step at a time the loop spent 27 instructions per 12 FMAs, and unrolled with the
     * prefetches still decided step by step it ran no faster (AMD EPYC Zen 3).  Blocked so,
     * eleven ResNet-50 layers took 0.93-0.95x the time (geometric means of two alternations in
     * one process, 2 threads), none slower by more than noise. */
    for (; p + 16 <= kc; p += 16) {
        if (packed) { /* one sequential stream (fc_f32_gemm_weights): 16 steps are 6 lines, */
            for (int l = 0; l < 6; l++) /* fetched 64 steps ahead, as the AVX-512 kernel (see there) */
                _mm_prefetch((const char *)(a + p * MR + 384 + 16 * l), _MM_HINT_T0);
        } else { /* each weight row enters a new line every 16 steps: fetch the one after it */
            for (int i = 0; i < MR; i++)
                _mm_prefetch((const char *)(a + i * lda + p + 32), _MM_HINT_T0);
        }
        if (prefetch_b) /* cold B rows: fetch 8 rows ahead (both lines each spans) */
            for (int64_t q = p + 8; q < FC_MIN(p + 24, kc); q++) {
                _mm_prefetch((const char *)(b + boff[q]), _MM_HINT_T0);
                _mm_prefetch((const char *)(b + boff[q]) + 60, _MM_HINT_T0);
            }
        _Pragma("GCC unroll 16") for (int64_t q = p; q < p + 16; q++) STEPS(q);
    }
    for (; p < kc; p++) { /* the last steps, prefetching as the rolled loop did */
        if (packed) {
            if ((p & 1) == 0)
                _mm_prefetch((const char *)(a + p * MR + 384), _MM_HINT_T0);
        } else if ((p & 15) < MR) {
            _mm_prefetch((const char *)(a + (p & 15) * lda + p + 32), _MM_HINT_T0);
        }
        if (prefetch_b && p + 8 < kc) {
            _mm_prefetch((const char *)(b + boff[p + 8]), _MM_HINT_T0);
            _mm_prefetch((const char *)(b + boff[p + 8]) + 60, _MM_HINT_T0);
        }
        STEPS(p);
    }
    if (out) {
        OUT(0);
        OUT(1);
        OUT(2);
        OUT(3);
        OUT(4);
        OUT(5);
        return;
    }
    SAVE(0);
    SAVE(1);
    SAVE(2);
    SAVE(3);
    SAVE(4);
    SAVE(5);
}

__attribute__((target("avx2,fma"))) void fc_f32_gemm_6x16_avx2(int64_t kc, const float *a, int64_t lda,
                                                               const float *b, const int64_t *boff, float *c,
                                                               int accumulate) {
    gemm_6x16(0, 0, kc, a, lda, b, boff, c, accumulate, NULL, 0, NULL, NULL, 0);
}

__attribute__((target("avx2,fma"))) void fc_f32_gemm_6x16_prefetch_avx2(int64_t kc, const float *a, int64_t lda,
                                                                        const float *b, const int64_t *boff,
                                                                        float *c, int accumulate) {
    gemm_6x16(1, 0, kc, a, lda, b, boff, c, accumulate, NULL, 0, NULL, NULL, 0);
}

/* The same reading A pre-packed: the 6 weights of step p at a + 6 p (lda unused). */
__attribute__((target("avx2,fma"))) void fc_f32_gemm_6x16_packed_avx2(int64_t kc, const float *a, int64_t lda,
                                                                      const float *b, const int64_t *boff, float *c,
                                                                      int accumulate) {
    gemm_6x16(0, 1, kc, a, lda, b, boff, c, accumulate, NULL, 0, NULL, NULL, 0);
}

__attribute__((target("avx2,fma"))) void fc_f32_gemm_6x16_prefetch_packed_avx2(int64_t kc, const float *a,
                                                                               int64_t lda, const float *b,
                                                                               const int64_t *boff, float *c,
                                                                               int accumulate) {
    gemm_6x16(1, 1, kc, a, lda, b, boff, c, accumulate, NULL, 0, NULL, NULL, 0);
}

/* A full tile's last reduction block with the epilogue fused (fc_gemm_store_fn): 1x1-like
 * panels, whose 16 pixels are one run of output row, skip the partial-sum buffer. */
__attribute__((target("avx2,fma"))) void fc_f32_gemm_store_avx2(int prefetch_b, int apacked, int64_t kc,
                                                                const float *a, int64_t lda, const float *b,
                                                                const int64_t *boff, const float *c, int accumulate,
                                                                float *out, int64_t ldo, const float *bias,
                                                                const float *res, int relu) {
    float *cc = (float *)c; /* read only: the partial sums when accumulate */
    if (prefetch_b && apacked)
        gemm_6x16(1, 1, kc, a, lda, b, boff, cc, accumulate, out, ldo, bias, res, relu);
    else if (prefetch_b)
        gemm_6x16(1, 0, kc, a, lda, b, boff, cc, accumulate, out, ldo, bias, res, relu);
    else if (apacked)
        gemm_6x16(0, 1, kc, a, lda, b, boff, cc, accumulate, out, ldo, bias, res, relu);
    else
        gemm_6x16(0, 0, kc, a, lda, b, boff, cc, accumulate, out, ldo, bias, res, relu);
}

/* The first n < 8 lanes of v at dst, as plain stores of 4, 2 and 1 lanes: a masked store is many
 * times slower on AMD Zen 3 (see conv_fewc_f32.c).  For the GEMM's row tails (7-, 14- and 28-pixel
 * rows end in one), alternated in one process against the masked store: 3x3 layers at 14x14 and
 * 7x7, batch 8, 0.97x and 0.985x the time, others level. */
__attribute__((always_inline, target("avx2,fma"))) static inline void
store_first_avx2(float *dst, __m256 v, int64_t n) {
    __m128 q = _mm256_castps256_ps128(v);
    if (n & 4) {
        _mm_storeu_ps(dst, q);
        q = _mm256_extractf128_ps(v, 1);
        dst += 4;
    }
    if (n & 2) {
        _mm_storel_pi((__m64 *)dst, q);
        q = _mm_movehl_ps(q, q);
        dst += 2;
    }
    if (n & 1)
        _mm_store_ss(dst, q);
}

/* The fused epilogue, 8 lanes at a time, the tail's residual read with a masked load: bias,
 * residual and relu cost one add, one load+add and one max per vector on top of the store. */
__attribute__((target("avx2,fma"))) void fc_f32_tile_store_avx2(const float *c, int64_t ldc, int64_t rows,
                                                                int64_t len, const float *bias, const float *res,
                                                                float *out, int64_t ldo, int relu) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t i = 0; i < rows; i++) {
        const __m256 bv = _mm256_set1_ps(bias ? bias[i] : 0.0f);
        const float *ci = c + i * ldc, *ri = res ? res + i * ldo : NULL;
        float *oi = out + i * ldo;
        int64_t j = 0;
        for (; j + 8 <= len; j += 8) {
            __m256 v = _mm256_add_ps(_mm256_loadu_ps(ci + j), bv);
            if (ri)
                v = _mm256_add_ps(v, _mm256_loadu_ps(ri + j));
            if (relu) /* max(0, v) returns v when v is NaN: NaN stays, as torch */
                v = _mm256_max_ps(zero, v);
            _mm256_storeu_ps(oi + j, v);
        }
        if (j < len) {
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(len - j)), lanes);
            __m256 v = _mm256_add_ps(_mm256_maskload_ps(ci + j, m), bv);
            if (ri)
                v = _mm256_add_ps(v, _mm256_maskload_ps(ri + j, m));
            if (relu)
                v = _mm256_max_ps(zero, v);
            store_first_avx2(oi + j, v, len - j);
        }
    }
}
#else /* not x86: never called (fc_config() is the generic table), defined so the module links */
void fc_f32_gemm_6x16_avx2(int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff, float *c,
                           int accumulate) {
    (void)kc, (void)a, (void)lda, (void)b, (void)boff, (void)c, (void)accumulate;
}
void fc_f32_gemm_6x16_prefetch_avx2(int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff,
                                    float *c, int accumulate) {
    (void)kc, (void)a, (void)lda, (void)b, (void)boff, (void)c, (void)accumulate;
}
void fc_f32_tile_store_avx2(const float *c, int64_t ldc, int64_t rows, int64_t len, const float *bias,
                            const float *res, float *out, int64_t ldo, int relu) {
    (void)c, (void)ldc, (void)rows, (void)len, (void)bias, (void)res, (void)out, (void)ldo, (void)relu;
}
void fc_f32_gemm_store_avx2(int prefetch_b, int apacked, int64_t kc, const float *a, int64_t lda, const float *b,
                            const int64_t *boff, const float *c, int accumulate, float *out, int64_t ldo,
                            const float *bias, const float *res, int relu) {
    (void)prefetch_b, (void)apacked, (void)kc, (void)a, (void)lda, (void)b, (void)boff, (void)c, (void)accumulate;
    (void)out, (void)ldo, (void)bias, (void)res, (void)relu;
}
#endif
