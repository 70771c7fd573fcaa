/* float32 convolution of few input channels (a network's stem: 3 channels, 7x7, stride 2) on
 * AVX-512 (tiles of 8 output channels x 16/32/48 pixels) and AVX2 (6 x 16).
 *
 * The reduction is short (c * r * s = 147 for the ResNet stem), so the GEMM driver's per-tile
 * costs weigh: measured at one thread on the stem, its fused store (partial sums written to a
 * tile buffer, read back, then stored as output runs) took about 10 % of the time, the phase
 * copy 4-5 %, and the columns its virtual rows discard another 3 %.  This driver keeps the
 * GEMM's operands -- pixels along the vectors, B rows read in place as windows of the
 * zero-padded, stride-split phase planes (conv_panels_f32.c) -- but:
 *
 * - tiles never cross an output row: each is 16, 32 or 48 pixels of one row (a row of 112 is
 *   48 + 32 + 32 on AVX-512, 7 x 16 on AVX2), so no column is computed and discarded and each
 *   tile row is one output run;
 * - the epilogue (bias, residual, relu) is applied to the accumulators in registers and stored
 *   straight into NCHW with masked stores, with no tile buffer;
 * - the weights are packed once per call, a tile's output channels interleaved per reduction
 *   row, so the broadcasts read one contiguous stream;
 * - the phase copy is split per (image, channel, phase), so batch 1 shares it out evenly.
 *
 * Work items are runs of up to 4 output rows handed out dynamically; every output element is
 * summed by one kernel call in a fixed order, so results do not depend on the thread count.
 */
#include "conv_gemm_f32.h"

/* Chosen for few input channels, a short reduction (a tile's weights and B windows stay in L1)
 * and rows wide enough for full vectors. */
#define FEWC_MAX_C 4
#define FEWC_MAX_CRS 256
#define FEWC_MIN_OW 32
#define FEWC_MAX_TILES 256

#if FC_X86
#include <immintrin.h>

/* y[i][0:len] = act(sum_p a[p][i] * b[off[p] + 0:len] + bias[i] + res[i][0:len]), i < rows. */
__attribute__((target("avx512f"), always_inline)) static inline void
tile_8xnv(const int nv, int64_t crs, const float *restrict a, const float *restrict b, const int64_t *restrict off,
          int64_t rows, int64_t len, const float *bias, const float *res, float *y, int64_t ldy, int relu) {
    __m512 acc[8][3];
    FC_TILE_LOOP for (int i = 0; i < 8; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < crs; p++) {
        const float *bp = b + off[p];
        __m512 bv[3];
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            bv[j] = _mm512_loadu_ps(bp + j * 16);
        FC_TILE_LOOP for (int i = 0; i < 8; i++) {
            __m512 av = _mm512_set1_ps(a[p * 8 + i]);
            FC_TILE_LOOP for (int j = 0; j < nv; j++)
                acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    __mmask16 mask[3];
    FC_TILE_LOOP for (int j = 0; j < nv; j++) {
        int64_t left = len - j * 16;
        mask[j] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
    const __m512 zero = _mm512_setzero_ps();
    FC_TILE_LOOP for (int i = 0; i < 8; i++) {
        if (i >= rows)
            break;
        __m512 bi = _mm512_set1_ps(bias ? bias[i] : 0.0f);
        FC_TILE_LOOP for (int j = 0; j < nv; j++) {
            __m512 v = _mm512_add_ps(acc[i][j], bi);
            if (res)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[j], res + i * ldy + j * 16));
            if (relu) /* max(0, v) returns v when v is NaN: NaN stays, as torch */
                v = _mm512_max_ps(zero, v);
            _mm512_mask_storeu_ps(y + i * ldy + j * 16, mask[j], v);
        }
    }
}

typedef void (*fewc_tile_fn)(int64_t crs, const float *a, const float *b, const int64_t *off, int64_t rows,
                             int64_t len, const float *bias, const float *res, float *y, int64_t ldy, int relu);

#define FEWC_TILE(NV)                                                                                          \
    __attribute__((target("avx512f"))) static void tile_8x##NV(int64_t crs, const float *a, const float *b,    \
                                                               const int64_t *off, int64_t rows, int64_t len,  \
                                                               const float *bias, const float *res, float *y, \
                                                               int64_t ldy, int relu) {                        \
        tile_8xnv(NV, crs, a, b, off, rows, len, bias, res, y, ldy, relu);                                    \
    }
FEWC_TILE(1)
FEWC_TILE(2)
FEWC_TILE(3)
static const fewc_tile_fn TILES[3] = {tile_8x1, tile_8x2, tile_8x3};

/* AVX2 (16 ymm): 6 output channels x 16 pixels, 12 accumulators, 2 B vectors, 1 broadcast --
 * the GEMM table's tile, with the same fused epilogue, masked only at a row's end: a masked store
 * is many times slower than a plain one on AMD Zen 3, and storing every tile masked made the
 * ResNet stem 1.13-1.14x slower at batch 1 and 8 (alternated in one process, 2 threads).  Named
 * accumulators: with an array GCC kept them in memory through the loop. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
store_row_avx2(__m256 v0, __m256 v1, const float *bias, const float *res, float *y, const __m256i m0,
               const __m256i m1, int relu, int full) {
    __m256 bi = _mm256_set1_ps(bias ? *bias : 0.0f), zero = _mm256_setzero_ps();
    v0 = _mm256_add_ps(v0, bi);
    v1 = _mm256_add_ps(v1, bi);
    if (res) {
        v0 = _mm256_add_ps(v0, full ? _mm256_loadu_ps(res) : _mm256_maskload_ps(res, m0));
        v1 = _mm256_add_ps(v1, full ? _mm256_loadu_ps(res + 8) : _mm256_maskload_ps(res + 8, m1));
    }
    if (relu) { /* max(0, v) returns v when v is NaN: NaN stays, as torch */
        v0 = _mm256_max_ps(zero, v0);
        v1 = _mm256_max_ps(zero, v1);
    }
    if (full) {
        _mm256_storeu_ps(y, v0);
        _mm256_storeu_ps(y + 8, v1);
        return;
    }
    _mm256_maskstore_ps(y, m0, v0);
    _mm256_maskstore_ps(y + 8, m1, v1);
}

__attribute__((target("avx2,fma"))) static void tile_6x16_avx2(int64_t crs, const float *restrict a,
                                                               const float *restrict b,
                                                               const int64_t *restrict off, int64_t rows,
                                                               int64_t len, const float *bias, const float *res,
                                                               float *y, int64_t ldy, int relu) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t p = 0; p < crs; p++) {
        const float *bp = b + off[p], *ap = a + p * 6;
        __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8), av;
#define FEWC_ROW(I)                                                                                          \
    av = _mm256_broadcast_ss(ap + I);                                                                        \
    c##I##0 = _mm256_fmadd_ps(av, b0, c##I##0);                                                             \
    c##I##1 = _mm256_fmadd_ps(av, b1, c##I##1);
        FEWC_ROW(0)
        FEWC_ROW(1)
        FEWC_ROW(2)
        FEWC_ROW(3)
        FEWC_ROW(4)
        FEWC_ROW(5)
#undef FEWC_ROW
    }
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)len), lanes);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)len - 8), lanes);
    const __m256 r[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    const int full = len == 16;
    for (int i = 0; i < 6 && i < rows; i++)
        store_row_avx2(r[i][0], r[i][1], bias ? bias + i : NULL, res ? res + i * ldy : NULL, y + i * ldy, m0, m1,
                       relu, full);
}

/* Tile widths along a row, in vectors of 16: on AVX-512 48-pixel tiles, the last 48 + rest split
 * into two tiles of at least 32 (a 16-wide tile is load-bound: 9 loads per 8 FMAs); on AVX2
 * 16-pixel tiles. */
static int64_t row_tiles(int64_t ow, int wide, int64_t widths[], int64_t max_tiles) {
    int64_t vecs = (ow + 15) / 16, count = 0;
    while (vecs > 0 && count < max_tiles) {
        int64_t take = !wide ? 1 : vecs >= 6 || vecs == 3 ? 3 : (vecs == 5 || vecs == 4 ? 2 : vecs);
        widths[count++] = take;
        vecs -= take;
    }
    return count;
}

/* The scratch of the last call, kept for the next one (up to FEWC_KEEP bytes): a stem runs once
 * per forward pass, between layers whose allocations make the C library hand freed memory back
 * to the system, and the phase planes' pages were then faulted in afresh on every call
 * (measured alternating with torch's convolution on the stem: about 150 faults of about 2 us,
 * 0.3 ms).  One slot, swapped atomically: concurrent calls each get a buffer of their own. */
#define FEWC_KEEP (32u << 20)

typedef struct {
    size_t bytes; /* usable bytes after the FC_ALIGN-byte header */
} blob_t;

static blob_t *kept;

static float *scratch_take(size_t bytes, blob_t **blob) {
    blob_t *b = __atomic_exchange_n(&kept, NULL, __ATOMIC_ACQ_REL);
    if (!b || b->bytes < bytes) {
        free(b);
        size_t total;
        b = fc_size_add(bytes, FC_ALIGN, &total) ? NULL : fc_alloc(total);
        if (!b)
            return NULL;
        b->bytes = bytes;
    }
    *blob = b;
    return (float *)((char *)b + FC_ALIGN);
}

static void scratch_give_back(blob_t *b) {
    if (b && b->bytes > FEWC_KEEP) {
        free(b);
        return;
    }
    free(__atomic_exchange_n(&kept, b, __ATOMIC_ACQ_REL));
}

/* Whether this driver takes d: FASTCONV_F32_FEWC=on forces it where it can run, =off never. */
static int fewc_wanted(const fc_conv2d_desc *d, const fc_isa_config *cfg) {
    if (cfg->level < FC_AVX2 || d->groups != 1 || d->c * d->r * d->s > FEWC_MAX_CRS)
        return 0;
    const char *force = getenv("FASTCONV_F32_FEWC");
    if (force && !strcmp(force, "off"))
        return 0;
    if (force && !strcmp(force, "on"))
        return 1;
    return d->c <= FEWC_MAX_C && d->ow >= FEWC_MIN_OW;
}

int fc_f32_fewc_wanted(const fc_conv2d_desc *d) {
    return fewc_wanted(d, fc_config());
}

int fc_f32_conv2d_fewc(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads, const char **kernel) {
    const fc_isa_config *cfg = fc_config();
    phases_t ph;
    if (!fewc_wanted(d, cfg) || !fc_stride_phases(d, &ph))
        return FC_EUNSUPPORTED;
    plan_t P = {.d = d, .x = x, .w = w, .cfg = cfg};
    const int wide = cfg->level == FC_AVX512, mr = wide ? 8 : 6;
    const int64_t crs = d->c * d->r * d->s, rs = d->r * d->s, ohw = d->oh * d->ow;
    const int64_t mblocks = (d->k + mr - 1) / mr, nph = ph.na * ph.nb;
    const int64_t plane = ph.hq * ph.wq, src_chan = nph * plane, src_img = d->c * src_chan;
    const int act = fc_conv_act(d), relu = act == FC_ACT_RELU;

    /* Scratch (mirrored in backends/_c_scratch.py): the phase planes (+ slack: a row's last
     * tile reads up to 15 columns past its end), the packed weights, the B row offsets. */
    size_t phase_floats, floats, bytes;
    const size_t apack_floats = fc_size_mul3((size_t)mblocks, (size_t)crs, (size_t)mr);
    if (fc_size_add(fc_size_mul3((size_t)d->n, (size_t)d->c, (size_t)src_chan), FC_NR + 15, &phase_floats))
        return FC_ENOMEM;
    phase_floats -= phase_floats % 16; /* the packed weights and offsets start 64-byte aligned */
    if (fc_size_add(phase_floats, apack_floats, &floats) ||
        fc_size_add(fc_size_mul3(floats, sizeof(float), 1), (size_t)crs * sizeof(int64_t), &bytes))
        return FC_ENOMEM;
    blob_t *blob = NULL;
    float *phase = scratch_take(bytes, &blob);
    if (!phase)
        return FC_ENOMEM;
    float *apack = phase + phase_floats;
    int64_t *off = (int64_t *)(apack + apack_floats);
    int status = FC_OK;
    for (int64_t p = 0; p < crs; p++) {
        int64_t c = p / rs, rr = p % rs / d->s * d->dil_h, ss = p % d->s * d->dil_w;
        int64_t k = ph.arow[rr % d->stride_h] * ph.nb + ph.bcol[ss % d->stride_w];
        off[p] = c * src_chan + k * plane + rr / d->stride_h * ph.wq + ss / d->stride_w;
    }
    memset(phase + (size_t)d->n * src_img, 0, FC_NR * sizeof(float));

    int64_t widths[FEWC_MAX_TILES];
    const int64_t ntiles = row_tiles(d->ow, wide, widths, FEWC_MAX_TILES);
    if (ntiles * (wide ? 48 : 16) < d->ow) { /* rows of more tiles: the GEMM driver takes them */
        status = FC_EUNSUPPORTED;
        goto done;
    }
    const int64_t rows_total = d->n * d->oh;
    int team = fc_team(nthreads, d->n * d->k * ohw * crs, 1 << 16);
    /* Items of up to 4 consecutive output rows, at least 8 per thread: a thread's next row reuses
     * most of the B rows in its cache, and fewer threads write neighbouring output rows at once
     * (their boundaries share cache lines unless the output is 64-byte aligned). */
    const int64_t per_item = FC_MAX(1, FC_MIN(4, rows_total / (8 * (int64_t)team)));
    const int64_t items = (rows_total + per_item - 1) / per_item;

    #pragma omp parallel num_threads(team)
    {
        /* Weights: apack[mb][p][i] = w[mb * mr + i][p], zero rows past k. */
        #pragma omp for schedule(static) nowait
        for (int64_t mb = 0; mb < mblocks; mb++)
            for (int64_t p = 0; p < crs; p++)
                for (int64_t i = 0; i < mr; i++) {
                    int64_t k = mb * mr + i;
                    apack[(mb * crs + p) * mr + i] = k < d->k ? w[k * crs + p] : 0.0f;
                }
        /* One phase plane of one channel of one image per item. */
        #pragma omp for schedule(static) nowait
        for (int64_t t = 0; t < d->n * d->c * nph; t++) {
            phases_t one = ph;
            int64_t k = t % nph, nc = t / nph;
            one.na = one.nb = 1;
            one.rowphases[0] = ph.rowphases[k / ph.nb];
            one.colphases[0] = ph.colphases[k % ph.nb];
            fc_f32_fill_phase_plane(&P, &one, nc / d->c, nc % d->c, phase + (size_t)nc * src_chan + k * plane);
        }
        #pragma omp barrier

        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++)
        for (int64_t u = item * per_item; u < FC_MIN(rows_total, (item + 1) * per_item); u++) {
            const int64_t n = u / d->oh, oh = u % d->oh;
            const float *brow = phase + (size_t)n * src_img + oh * ph.wq;
            for (int64_t mb = 0; mb < mblocks; mb++) {
                const int64_t k0 = mb * mr, rows = FC_MIN(mr, d->k - k0);
                const size_t at = ((size_t)n * d->k + k0) * ohw + oh * d->ow;
                const float *bk = bias ? bias + k0 : NULL;
                int64_t ow0 = 0;
                for (int64_t t = 0; t < ntiles; t++) {
                    const int64_t len = FC_MIN(widths[t] * 16, d->ow - ow0);
                    (wide ? TILES[widths[t] - 1] : tile_6x16_avx2)(crs, apack + mb * crs * mr, brow + ow0, off,
                                                                   rows, len, bk,
                                                                   residual ? residual + at + ow0 : NULL,
                                                                   y + at + ow0, ohw, relu);
                    if (act > FC_ACT_RELU) /* the other activations on the runs just stored */
                        for (int64_t i = 0; i < rows; i++)
                            fc_act_row_f32(y + at + ow0 + (size_t)i * ohw, len, act, (float)d->act_a,
                                           (float)d->act_b);
                    ow0 += len;
                }
            }
        }
    }
done:
    scratch_give_back(blob);
    if (status == FC_OK && kernel)
        *kernel = wide ? "conv2d f32 few-channel 8x48 avx512" : "conv2d f32 few-channel 6x16 avx2";
    return status;
}
#else /* not x86: the GEMM driver's portable kernel takes every problem */
int fc_f32_fewc_wanted(const fc_conv2d_desc *d) {
    (void)d;
    return 0;
}

int fc_f32_conv2d_fewc(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads, const char **kernel) {
    (void)d, (void)x, (void)w, (void)bias, (void)residual, (void)y, (void)nthreads, (void)kernel;
    return FC_EUNSUPPORTED;
}
#endif
