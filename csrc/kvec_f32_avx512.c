/* AVX-512 channel-vector convolution microkernel: 7 output pixels x 4 vectors of 16 output
 * channels (28 accumulators).  Per step 4 weight vectors and 7 broadcast input values feed 28
 * FMAs.  Smaller tiles (row ends, a group's last channels) get their own unrolled copies.
 * Compiled with a target attribute (no -march flag), called only when the CPU reports AVX-512F. */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

#define KV_VEC __m512
#define KV_LANES 16
#define KV_ZERO() _mm512_setzero_ps()
#define KV_LOAD(p) _mm512_loadu_ps(p)
#define KV_STORE(p, v) _mm512_storeu_ps(p, v)
#define KV_SET1(f) _mm512_set1_ps(f)
#define KV_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define KV_TARGET __attribute__((target("avx512f")))
#define KV_PMAX 7
#define KV_VMAX 4
#include "conv_kvec_ukernel_impl.h"

#define KV_ROW(NP) KV_FN(NP, 1) KV_FN(NP, 2) KV_FN(NP, 3) KV_FN(NP, 4)
KV_ROW(1) KV_ROW(2) KV_ROW(3) KV_ROW(4) KV_ROW(5) KV_ROW(6) KV_ROW(7)
#define KV_ENTRY(NP) {kv_##NP##x1, kv_##NP##x2, kv_##NP##x3, kv_##NP##x4}
static void (*const TABLE[KV_PMAX][KV_VMAX])(KV_ARGS) = {KV_ENTRY(1), KV_ENTRY(2), KV_ENTRY(3), KV_ENTRY(4),
                                                         KV_ENTRY(5), KV_ENTRY(6), KV_ENTRY(7)};

void fc_f32_kvec_7x4_avx512(int64_t np, int64_t nv, KV_ARGS) {
    TABLE[np - 1][nv - 1](steps, x, xoff, w, wstride, acc, ldacc, accumulate);
}

/* Tiles of up to 7 pixels x 4 vectors on channel-blocked activations (conv_blocked_f32.c; the
 * table in isa.c picks 4 x 4 and 7 x 3: 7 x 4 needs 33 registers with its broadcast, and GCC
 * spills an accumulator to the stack on every step).  max(0, v) returns its second operand when
 * either is NaN: NaN stays NaN, as in torch's relu. */
#define KV_RELU(v) _mm512_max_ps(_mm512_setzero_ps(), v)
#define BL_PMAX 7
#define BL_VMAX 4
#include "conv_blocked_ukernel_impl.h"
#define BL_ROW(NP) BL_FN(NP, 1) BL_FN(NP, 2) BL_FN(NP, 3) BL_FN(NP, 4)
BL_ROW(1) BL_ROW(2) BL_ROW(3) BL_ROW(4) BL_ROW(5) BL_ROW(6) BL_ROW(7)
#define BL_ENTRY(NP) {bl_##NP##x1, bl_##NP##x2, bl_##NP##x3, bl_##NP##x4}
static void (*const BL_TABLE[BL_PMAX][BL_VMAX])(BL_ARGS) = {BL_ENTRY(1), BL_ENTRY(2), BL_ENTRY(3), BL_ENTRY(4),
                                                            BL_ENTRY(5), BL_ENTRY(6), BL_ENTRY(7)};

void fc_f32_blocked_7x4_avx512(int64_t np, int64_t nv, BL_ARGS) {
    BL_TABLE[np - 1][nv - 1](taps, x, xoff, xpix, w, y, yvec, mode, bias, res, rvec, relu);
}

/* dst[p * 16 + l] = l < rows ? w[l * ldw + p] : 0 for p < steps: 16 weight rows transposed into
 * channel vectors, 16 x 16 blocks in registers (unpack, then 128-bit lane shuffles), four times
 * faster than element by element. */
__attribute__((target("avx512f"))) void fc_f32_kvec_pack_avx512(const float *w, int64_t ldw, int64_t rows,
                                                                int64_t steps, float *dst) {
    for (int64_t p0 = 0; p0 < steps; p0 += 16) {
        const int64_t n = FC_MIN(16, steps - p0);
        const __mmask16 m = (__mmask16)((1u << n) - 1);
        __m512 r[16], t[16];
        for (int i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(m, w + i * ldw + p0) : _mm512_setzero_ps();
        for (int k = 0; k < 8; k++) {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        for (int k = 0; k < 4; k++) { /* r[4k + m], 128-bit lane q: rows 4k..4k+3 of column 4q + m */
            __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
            __m512d c = _mm512_castps_pd(t[4 * k + 2]), e = _mm512_castps_pd(t[4 * k + 3]);
            r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
            r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
        }
        for (int mm = 0; mm < 4; mm++) {
            __m512 s0 = _mm512_shuffle_f32x4(r[mm], r[4 + mm], 0x44), s1 = _mm512_shuffle_f32x4(r[mm], r[4 + mm], 0xEE);
            __m512 s2 = _mm512_shuffle_f32x4(r[8 + mm], r[12 + mm], 0x44);
            __m512 s3 = _mm512_shuffle_f32x4(r[8 + mm], r[12 + mm], 0xEE);
            t[mm] = _mm512_shuffle_f32x4(s0, s2, 0x88);      /* column mm */
            t[4 + mm] = _mm512_shuffle_f32x4(s0, s2, 0xDD);  /* column 4 + mm */
            t[8 + mm] = _mm512_shuffle_f32x4(s1, s3, 0x88);  /* column 8 + mm */
            t[12 + mm] = _mm512_shuffle_f32x4(s1, s3, 0xDD); /* column 12 + mm */
        }
        if (n == 16) { /* constant indices keep t[] in registers */
            for (int j = 0; j < 16; j++)
                _mm512_storeu_ps(dst + (p0 + j) * 16, t[j]);
        } else {
            float part[16 * 16];
            for (int j = 0; j < 16; j++)
                _mm512_storeu_ps(part + j * 16, t[j]);
            memcpy(dst + p0 * 16, part, (size_t)n * 16 * sizeof(float));
        }
    }
}
#else /* not x86: never called (fc_level() is FC_GENERIC), defined so the module links */
void fc_f32_kvec_7x4_avx512(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                            const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate) {
    (void)np, (void)nv, (void)steps, (void)x, (void)xoff, (void)w, (void)wstride, (void)acc, (void)ldacc,
        (void)accumulate;
}
void fc_f32_kvec_pack_avx512(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst) {
    (void)w, (void)ldw, (void)rows, (void)steps, (void)dst;
}
void fc_f32_blocked_7x4_avx512(int64_t np, int64_t nv, int64_t taps, const float *x, const int64_t *xoff,
                               int64_t xpix, const float *w, float *y, int64_t yvec, int mode, const float *bias,
                               const float *res, int64_t rvec, int relu) {
    (void)np, (void)nv, (void)taps, (void)x, (void)xoff, (void)xpix, (void)w, (void)y, (void)yvec, (void)mode,
        (void)bias, (void)res, (void)rvec, (void)relu;
}
#endif
