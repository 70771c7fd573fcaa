/* AVX2 + FMA channel-vector convolution microkernel: 4 output pixels x 3 vectors of 8 output
 * channels (12 accumulators, 3 weight vectors and one broadcast: the 16 ymm registers).  Per
 * step 3 weight loads and 4 broadcasts feed 12 FMAs.  Smaller tiles get their own copies.
 * Called only when the CPU reports AVX2 and FMA. */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

#define KV_VEC __m256
#define KV_LANES 8
#define KV_ZERO() _mm256_setzero_ps()
#define KV_LOAD(p) _mm256_loadu_ps(p)
#define KV_STORE(p, v) _mm256_storeu_ps(p, v)
#define KV_SET1(f) _mm256_set1_ps(f)
#define KV_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define KV_TARGET __attribute__((target("avx2,fma")))
#define KV_PMAX 4
#define KV_VMAX 3
#include "conv_kvec_ukernel_impl.h"

#define KV_ROW(NP) KV_FN(NP, 1) KV_FN(NP, 2) KV_FN(NP, 3)
KV_ROW(1) KV_ROW(2) KV_ROW(3) KV_ROW(4)
#define KV_ENTRY(NP) {kv_##NP##x1, kv_##NP##x2, kv_##NP##x3}
static void (*const TABLE[KV_PMAX][KV_VMAX])(KV_ARGS) = {KV_ENTRY(1), KV_ENTRY(2), KV_ENTRY(3), KV_ENTRY(4)};

void fc_f32_kvec_4x3_avx2(int64_t np, int64_t nv, KV_ARGS) {
    TABLE[np - 1][nv - 1](steps, x, xoff, w, wstride, acc, ldacc, accumulate);
}

/* The same tile on channel-blocked activations (conv_blocked_f32.c); NaN stays NaN in relu.
 * 4 x 3 measured best of 4x3, 6x2, 7x2 and 7x1 on 3x3 and 1x1 layers (7x2's 17 registers
 * spill: 0.6x). */
#define KV_RELU(v) _mm256_max_ps(_mm256_setzero_ps(), v)
/* The 8 channel steps of a tap fully unrolled: GCC leaves this smaller body rolled under "unroll
 * 4" (25 instructions, 6 of them loop bookkeeping, per 12 FMAs); rolled out, ResNet-50 plans ran
 * 8-9% faster on a Zen 3 (batch 1 and 8, 2 threads, alternated in one process). */
#define BL_UNROLL _Pragma("GCC unroll 8")
#define BL_PMAX 4
#define BL_VMAX 3
#include "conv_blocked_ukernel_impl.h"
#define BL_ROW(NP) BL_FN(NP, 1) BL_FN(NP, 2) BL_FN(NP, 3)
BL_ROW(1) BL_ROW(2) BL_ROW(3) BL_ROW(4)
#define BL_ENTRY(NP) {bl_##NP##x1, bl_##NP##x2, bl_##NP##x3}
static void (*const BL_TABLE[BL_PMAX][BL_VMAX])(BL_ARGS) = {BL_ENTRY(1), BL_ENTRY(2), BL_ENTRY(3), BL_ENTRY(4)};

void fc_f32_blocked_4x3_avx2(int64_t np, int64_t nv, BL_ARGS) {
    BL_TABLE[np - 1][nv - 1](taps, x, xoff, xpix, w, y, yvec, mode, bias, res, rvec, relu);
}

/* -- rows into lanes (fc_kvec_pack_fn) ----------------------------------------------------------- */

/* Steps p .. p + 7 of the rows w + i * ldw (zero rows from `rows` on) transposed 8 x 8 in
 * registers: rows interleaved in pairs, then in fours, then the 128-bit halves swapped; t[q]
 * holds step p + q's 8 lanes. */
__attribute__((always_inline, target("avx2,fma"))) static inline void
transpose8(const float *w, int64_t ldw, int64_t rows, int64_t p, __m256 t[8]) {
    __m256 r[8];
    for (int i = 0; i < 8; i++)
        r[i] = i < rows ? _mm256_loadu_ps(w + i * ldw + p) : _mm256_setzero_ps();
    __m256 a[8], b[8];
    for (int i = 0; i < 4; i++) {
        a[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* b[4i..4i+3]: rows 4i..4i+3 of steps 0-3 (low half) and 4-7 */
        b[4 * i] = _mm256_shuffle_ps(a[4 * i], a[4 * i + 2], 0x44);
        b[4 * i + 1] = _mm256_shuffle_ps(a[4 * i], a[4 * i + 2], 0xEE);
        b[4 * i + 2] = _mm256_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0x44);
        b[4 * i + 3] = _mm256_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        t[q] = _mm256_permute2f128_ps(b[q], b[4 + q], 0x20);
        t[4 + q] = _mm256_permute2f128_ps(b[q], b[4 + q], 0x31);
    }
}

/* dst[p * lanes + l] = l < rows ? w[l * ldw + p] : 0 for lanes 8 or 6, rows <= lanes.  With 6
 * lanes each step's 8 are stored over the next step's first two (in ascending order, so each
 * overwrite comes later), and the last step of each 8 as 4 + 2 lanes: a masked store is many
 * times slower on AMD Zen 3 (see conv_fewc_f32.c). */
__attribute__((always_inline, target("avx2,fma"))) static inline void
pack_rows(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst, const int lanes) {
    int64_t p = 0;
    for (; p + 8 <= steps; p += 8) {
        __m256 t[8];
        transpose8(w, ldw, rows, p, t);
        float *o = dst + p * lanes;
        for (int q = 0; q < (lanes == 8 ? 8 : 7); q++)
            _mm256_storeu_ps(o + q * lanes, t[q]);
        if (lanes == 6) {
            _mm_storeu_ps(o + 42, _mm256_castps256_ps128(t[7]));
            _mm_storel_pi((__m64 *)(o + 46), _mm256_extractf128_ps(t[7], 1));
        }
    }
    for (; p < steps; p++)
        for (int64_t l = 0; l < lanes; l++)
            dst[p * lanes + l] = l < rows ? w[l * ldw + p] : 0.0f;
}

/* A blocked layout's L = 8 channels interleaved (plans' conversions and pool, conv_blocked_f32.c),
 * the channel-vector kernel's weights.  Against the portable loop (AMD EPYC Zen 3, 2 threads):
 * (1, 256, 56, 56) to blocked 280 -> 72 us, (8, 512, 28, 28) back 1.67 -> 0.7-1.25 ms, the stem's
 * max pool into blocked 150 -> 95 us. */
__attribute__((target("avx2,fma"))) void fc_f32_kvec_pack_avx2(const float *w, int64_t ldw, int64_t rows,
                                                               int64_t steps, float *dst) {
    pack_rows(w, ldw, rows, steps, dst, 8);
}

/* fc_kvec_pack_to_fn, 8 lanes: eight steps a transpose, each vector stored where off says. */
__attribute__((target("avx2,fma"))) void fc_f32_kvec_pack_to_avx2(const float *w, int64_t ldw, int64_t steps,
                                                                  const int64_t *off, float *dst) {
    int64_t p = 0;
    for (; p + 8 <= steps; p += 8) {
        __m256 t[8];
        transpose8(w, ldw, 8, p, t);
        for (int q = 0; q < 8; q++)
            _mm256_storeu_ps(dst + off[p + q], t[q]);
    }
    for (; p < steps; p++)
        for (int l = 0; l < 8; l++)
            dst[off[p] + l] = w[l * ldw + p];
}

/* A block of weight rows into the order the GEMM's packed kernels read: 6 lanes (its mr). */
__attribute__((target("avx2,fma"))) void fc_f32_gemm_pack6_avx2(const float *w, int64_t ldw, int64_t rows,
                                                                int64_t steps, float *dst) {
    pack_rows(w, ldw, rows, steps, dst, 6);
}
#else
void fc_f32_kvec_pack_avx2(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst) {
    (void)w, (void)ldw, (void)rows, (void)steps, (void)dst;
}
void fc_f32_gemm_pack6_avx2(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst) {
    (void)w, (void)ldw, (void)rows, (void)steps, (void)dst;
}
void fc_f32_kvec_pack_to_avx2(const float *w, int64_t ldw, int64_t steps, const int64_t *off, float *dst) {
    (void)w, (void)ldw, (void)steps, (void)off, (void)dst;
}
void fc_f32_kvec_4x3_avx2(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                          const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate) {
    (void)np, (void)nv, (void)steps, (void)x, (void)xoff, (void)w, (void)wstride, (void)acc, (void)ldacc,
        (void)accumulate;
}
void fc_f32_blocked_4x3_avx2(int64_t np, int64_t nv, int64_t taps, const float *x, const int64_t *xoff,
                             int64_t xpix, const float *w, float *y, int64_t yvec, int mode, const float *bias,
                             const float *res, int64_t rvec, int relu) {
    (void)np, (void)nv, (void)taps, (void)x, (void)xoff, (void)xpix, (void)w, (void)y, (void)yvec, (void)mode,
        (void)bias, (void)res, (void)rvec, (void)relu;
}
#endif
