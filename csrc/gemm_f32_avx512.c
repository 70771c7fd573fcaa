/* AVX-512 float32 GEMM microkernel, 8 output channels x 48 output pixels (24 accumulators).
 *
 * Per reduction step it loads three 16-pixel vectors of B and broadcasts 8 weights of A (one
 * from each of 8 weight rows, lda apart): 24 FMAs for 11 loads, which keeps both FMA pipes
 * busy from L1 (measured: 97 % of the FMA peak).  Variants: 16/32/48 columns (tail panels),
 * each with and without prefetching of B rows, and each reading A either in place (8 weight
 * rows, lda apart) or pre-packed (fc_f32_gemm_weights: the 8 weights of step p at a + 8 p, one
 * sequential stream).  Compiled with a target attribute (no -march
 * flag), called only when the CPU reports AVX-512F.
 */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

/* The fused epilogue of a finished tile (gemm_8xNV with `store`): out[i * ldo + j] =
 * act(acc + bias[i] + res[i * ldo + j]), the same operations in the same order as
 * fc_f32_tile_store_avx512, straight from the registers. */
typedef struct {
    float *out;
    int64_t ldo;
    const float *bias, *res;
    int relu;
} tile_out_t;

/* A tile's tail (gemm_8xNV with nt > 0; pre-packed weights only): nt more columns, 1 to 4, whose
 * B rows lie at bt + boff_t[p] -- the few columns past a plane's last full panel (a 7x7 plane's
 * 49th pixel, a 14x14 plane's last 4).  Each is 8 channels in the low half of one more
 * accumulator: per step the 8 weights (one vector of the pre-packed block) times the column's
 * broadcast value, the same fused multiply-add in the same order as the microkernel and the
 * narrow kernel, so results are bit for bit the same.  Sums go to ct as [col][8]. */
typedef struct {
    const float *bt;
    const int64_t *boff_t;
    float *ct;
} tile_tail_t;

__attribute__((target("avx512f"), always_inline)) static inline void
gemm_8xNV(const int nv, const int prefetch_b, const int apacked, const int store, const int nt, int64_t kc,
          const float *restrict a, int64_t lda, const float *restrict b, const int64_t *restrict boff,
          float *restrict c, int accumulate, const tile_out_t *o, const tile_tail_t *tl) {
    __m512 acc[FC_MR][3], tacc[FC_NARROW_COLS];
    FC_TILE_LOOP for (int i = 0; i < FC_MR; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            acc[i][j] = accumulate ? _mm512_loadu_ps(c + i * FC_NR + j * 16) : _mm512_setzero_ps();
    FC_TILE_LOOP for (int u = 0; u < nt; u++)
        tacc[u] = accumulate ? _mm512_castps256_ps512(_mm256_loadu_ps(tl->ct + u * 8)) : _mm512_setzero_ps();
    /* The 8 weight rows are read in place (no packing): 8 sequential streams. */
    const float *ar[FC_MR];
    FC_TILE_LOOP for (int i = 0; i < FC_MR; i++)
        ar[i] = a + i * lda;
    for (int64_t p = 0; p < kc; p++) {
        /* The weights stream from L2/L3 once per call: fetch each row two lines ahead, one
         * row per step (so every 64-byte line is requested twice, early enough).  Pre-packed
         * weights are one stream, fetched 64 steps (2 KB) ahead: in a compiled plan they come
         * from L3 or memory, and 8 steps ahead (about 100 cycles) left the kernel waiting.
         * ResNet-50 batch 1, AMD EPYC (AVX-512): 8 steps 28.2-30.9 ms on 2 threads, 64 steps
         * 24.7-25.9 ms (52.3-56.6 and 47.3-52.3 ms on one); 128 steps gained nothing more. */
        if (!apacked)
            _mm_prefetch((const char *)(ar[p & (FC_MR - 1)] + p + 32), _MM_HINT_T0);
        else if ((p & 1) == 0) /* one line per two steps, 64 steps (2 KB) ahead: see above */
            _mm_prefetch((const char *)(a + p * FC_MR + 512), _MM_HINT_T0);
        /* First pass over a block (cold B rows, from L3 at large batch): fetch the row 8 steps
         * ahead, all the lines it spans, while this one computes. */
        if (prefetch_b && p + 8 < kc) {
            const char *next = (const char *)(b + boff[p + 8]);
            FC_TILE_LOOP for (int j = 0; j < nv * 64; j += 64)
                _mm_prefetch(next + j, _MM_HINT_T0);
            _mm_prefetch(next + nv * 64 - 4, _MM_HINT_T0);
        }
        const float *bp = b + boff[p];
        __m512 bv[3];
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            bv[j] = _mm512_loadu_ps(bp + j * 16);
        FC_TILE_LOOP for (int i = 0; i < FC_MR; i++) {
            __m512 av = _mm512_set1_ps(apacked ? a[p * FC_MR + i] : ar[i][p]);
            FC_TILE_LOOP for (int j = 0; j < nv; j++)
                acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
        if (nt) { /* the tail: step p's 8 weights (lanes 0-7) times each column's value */
            const __m512 a8 = _mm512_castps256_ps512(_mm256_loadu_ps(a + p * FC_MR));
            const float *btp = tl->bt + tl->boff_t[p];
            FC_TILE_LOOP for (int u = 0; u < nt; u++)
                tacc[u] = _mm512_fmadd_ps(a8, _mm512_set1_ps(btp[u]), tacc[u]);
        }
    }
    FC_TILE_LOOP for (int u = 0; u < nt; u++)
        _mm256_storeu_ps(tl->ct + u * 8, _mm512_castps512_ps256(tacc[u]));
    if (store) {
        const __m512 zero = _mm512_setzero_ps();
        FC_TILE_LOOP for (int i = 0; i < FC_MR; i++) {
            const __m512 bv = _mm512_set1_ps(o->bias ? o->bias[i] : 0.0f);
            FC_TILE_LOOP for (int j = 0; j < nv; j++) {
                __m512 v = _mm512_add_ps(acc[i][j], bv);
                if (o->res)
                    v = _mm512_add_ps(v, _mm512_loadu_ps(o->res + i * o->ldo + j * 16));
                if (o->relu) /* max(0, v) returns v when v is NaN: NaN stays, as torch */
                    v = _mm512_max_ps(zero, v);
                _mm512_storeu_ps(o->out + i * o->ldo + j * 16, v);
            }
        }
        return;
    }
    FC_TILE_LOOP for (int i = 0; i < FC_MR; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            _mm512_storeu_ps(c + i * FC_NR + j * 16, acc[i][j]);
}

#define FC_GEMM_VARIANT(NV, COLS, PF, AP, SUFFIX)                                               \
    __attribute__((target("avx512f"))) static void fc_f32_gemm_8x##COLS##SUFFIX##_avx512(    \
        int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff, float *c, \
        int accumulate) {                                                                   \
        gemm_8xNV(NV, PF, AP, 0, 0, kc, a, lda, b, boff, c, accumulate, NULL, NULL);        \
    }
FC_GEMM_VARIANT(1, 16, 0, 0, )
FC_GEMM_VARIANT(2, 32, 0, 0, )
FC_GEMM_VARIANT(3, 48, 0, 0, )
FC_GEMM_VARIANT(1, 16, 1, 0, _prefetch)
FC_GEMM_VARIANT(2, 32, 1, 0, _prefetch)
FC_GEMM_VARIANT(3, 48, 1, 0, _prefetch)
FC_GEMM_VARIANT(1, 16, 0, 1, _packed)
FC_GEMM_VARIANT(2, 32, 0, 1, _packed)
FC_GEMM_VARIANT(3, 48, 0, 1, _packed)
FC_GEMM_VARIANT(1, 16, 1, 1, _prefetch_packed)
FC_GEMM_VARIANT(2, 32, 1, 1, _prefetch_packed)
FC_GEMM_VARIANT(3, 48, 1, 1, _prefetch_packed)

/* A whole tile's last reduction block with the epilogue fused (fc_gemm_store_fn): the
 * 8 x 48 tile on 1x1-like panels, whose 48 pixels are one run of output row -- the tile never
 * goes through the partial-sum buffer and the epilogue's second pass. */
#define FC_GEMM_STORE(PF, AP)                                                                     \
    __attribute__((target("avx512f"))) static void gemm_store_##PF##AP(                          \
        int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff, const float *c, \
        int accumulate, float *out, int64_t ldo, const float *bias, const float *res, int relu) { \
        const tile_out_t o = {out, ldo, bias, res, relu};                                         \
        gemm_8xNV(3, PF, AP, 1, 0, kc, a, lda, b, boff, (float *)c, accumulate, &o, NULL);        \
    }
FC_GEMM_STORE(0, 0)
FC_GEMM_STORE(0, 1)
FC_GEMM_STORE(1, 0)
FC_GEMM_STORE(1, 1)

void fc_f32_gemm_store_avx512(int prefetch_b, int apacked, int64_t kc, const float *a, int64_t lda, const float *b,
                              const int64_t *boff, const float *c, int accumulate, float *out, int64_t ldo,
                              const float *bias, const float *res, int relu) {
    void (*const fn[2][2])(int64_t, const float *, int64_t, const float *, const int64_t *, const float *, int,
                           float *, int64_t, const float *, const float *, int) = {
        {gemm_store_00, gemm_store_01}, {gemm_store_10, gemm_store_11}};
    fn[prefetch_b != 0][apacked != 0](kc, a, lda, b, boff, c, accumulate, out, ldo, bias, res, relu);
}

/* The full 8 x 48 tile with a tail of NT columns (fc_gemm_tail_fn), pre-packed weights. */
#define FC_GEMM_TAIL(PF, NT)                                                                         \
    __attribute__((target("avx512f"))) static void gemm_tail_##PF##NT(                              \
        int64_t kc, const float *a, const float *b, const int64_t *boff, float *c, int accumulate,  \
        const float *bt, const int64_t *boff_t, float *ct) {                                        \
        const tile_tail_t tl = {bt, boff_t, ct};                                                \
        gemm_8xNV(3, PF, 1, 0, NT, kc, a, FC_MR, b, boff, c, accumulate, NULL, &tl);                \
    }
FC_GEMM_TAIL(0, 1)
FC_GEMM_TAIL(0, 2)
FC_GEMM_TAIL(0, 3)
FC_GEMM_TAIL(0, 4)
FC_GEMM_TAIL(1, 1)
FC_GEMM_TAIL(1, 2)
FC_GEMM_TAIL(1, 3)
FC_GEMM_TAIL(1, 4)

void fc_f32_gemm_tail_avx512(int prefetch_b, int64_t kc, const float *a, const float *b, const int64_t *boff,
                             float *c, int accumulate, int64_t nt, const float *bt, const int64_t *boff_t,
                             float *ct) {
    void (*const fn[2][FC_NARROW_COLS])(int64_t, const float *, const float *, const int64_t *, float *, int,
                                        const float *, const int64_t *, float *) = {
        {gemm_tail_01, gemm_tail_02, gemm_tail_03, gemm_tail_04},
        {gemm_tail_11, gemm_tail_12, gemm_tail_13, gemm_tail_14}};
    fn[prefetch_b != 0][nt - 1](kc, a, b, boff, c, accumulate, bt, boff_t, ct);
}

const fc_ukernel_fn fc_f32_gemm_kernels_packed_avx512[2][3] = {
    {fc_f32_gemm_8x16_packed_avx512, fc_f32_gemm_8x32_packed_avx512, fc_f32_gemm_8x48_packed_avx512},
    {fc_f32_gemm_8x16_prefetch_packed_avx512, fc_f32_gemm_8x32_prefetch_packed_avx512, fc_f32_gemm_8x48_prefetch_packed_avx512}};

const fc_ukernel_fn fc_f32_gemm_kernels_avx512[2][3] = {
    {fc_f32_gemm_8x16_avx512, fc_f32_gemm_8x32_avx512, fc_f32_gemm_8x48_avx512},
    {fc_f32_gemm_8x16_prefetch_avx512, fc_f32_gemm_8x32_prefetch_avx512, fc_f32_gemm_8x48_prefetch_avx512}};

/* out[i * ldo + j] = act(c[i * NR + j0 + j] + bias[i] + res[i * ldo + j]) for i < rows, j < len:
 * one contiguous output run of a finished tile, 16 lanes at a time (masked at the end). */
__attribute__((target("avx512f"))) void fc_f32_tile_store_avx512(const float *c, int64_t rows, int64_t len,
                                                                 const float *bias, const float *res,
                                                                 float *out, int64_t ldo, int relu) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < rows; i++) {
        __m512 b = _mm512_set1_ps(bias ? bias[i] : 0.0f);
        for (int64_t j = 0; j < len; j += 16) {
            __mmask16 m = len - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - j)) - 1);
            __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + i * FC_NR + j), b);
            if (res)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res + i * ldo + j));
            if (relu) /* max(0, v) returns v when v is NaN: NaN stays, as torch */
                v = _mm512_max_ps(zero, v);
            _mm512_mask_storeu_ps(out + i * ldo + j, m, v);
        }
    }
}
#else /* not x86: never called (fc_level() is FC_GENERIC), defined so the module links */
void fc_f32_gemm_store_avx512(int prefetch_b, int apacked, int64_t kc, const float *a, int64_t lda, const float *b,
                              const int64_t *boff, const float *c, int accumulate, float *out, int64_t ldo,
                              const float *bias, const float *res, int relu) {
    (void)prefetch_b, (void)apacked, (void)kc, (void)a, (void)lda, (void)b, (void)boff, (void)c, (void)accumulate;
    (void)out, (void)ldo, (void)bias, (void)res, (void)relu;
}
void fc_f32_gemm_tail_avx512(int prefetch_b, int64_t kc, const float *a, const float *b, const int64_t *boff,
                             float *c, int accumulate, int64_t nt, const float *bt, const int64_t *boff_t,
                             float *ct) {
    (void)prefetch_b, (void)kc, (void)a, (void)b, (void)boff, (void)c, (void)accumulate, (void)nt, (void)bt;
    (void)boff_t, (void)ct;
}
const fc_ukernel_fn fc_f32_gemm_kernels_avx512[2][3] = {{0, 0, 0}, {0, 0, 0}};
const fc_ukernel_fn fc_f32_gemm_kernels_packed_avx512[2][3] = {{0, 0, 0}, {0, 0, 0}};
void fc_f32_tile_store_avx512(const float *c, int64_t rows, int64_t len, const float *bias, const float *res,
                              float *out, int64_t ldo, int relu) {
    (void)c, (void)rows, (void)len, (void)bias, (void)res, (void)out, (void)ldo, (void)relu;
}
#endif
