/* float32 backward-data as GEMMs on per-ISA microkernels: per group, cols (c*r*s x pixels) =
 * weight^T (c*r*s x kg) dy (kg x pixels), each finished tile of cols added straight onto the
 * input cells its taps read (col2im), never stored whole.
 *
 * A is weight^T without a transpose: the weights (kg x c*r*s per group) are what a GEMM packs
 * its A operand into -- step p of a tile's reduction needs mr consecutive values of weight row
 * p -- so the microkernels here broadcast A[p * lda + i] (the forward's read A[i * lda + p]).
 * Measured here: transposing a 2048 x 512 weight took ~2.5 ns a value (a third of a 1x1
 * layer's backward on 7x7 images); each task copies its blocks' runs of every weight row into
 * a contiguous buffer at about memcpy's speed instead.  B rows are dy's channels: read in place
 * (panels within one image), or copied once into [group][kg][n*oh*ow] so that a panel of nr
 * pixels may span images (small images).  A task is mt blocks of mr channels of one group (and, for 1x1 layers, a
 * range of pixel panels): its mt * r*s A blocks (mr*r*s rows per block: whole channels) meet
 * each pixel panel while the panel's B sliver sits in L1, and its tiles are added into those
 * channels' dx planes, which no other task writes (1x1 layers: the cells of its own pixels,
 * stored rather than added where stride 1 makes them every cell): no atomics, no partial sums,
 * the same result at any thread count.
 *
 * Scratch, in floats (checked, allocated up front): groups * kg * n*oh*ow + 48 for a copy of
 * dy, per thread mt * r*s * mr * (nr + kg) for the task's tiles and packed A blocks and (in
 * place) kg * nr for one packed panel; plus 2 kc int64 row offsets.
 */
#include "fc_internal.h"

/* -- transposing the weights ------------------------------------------------------------------- */

/* The forward route's transposed kernel, in tiles of TT x TT items.  Transposing stays costly
 * here (~2.5 ns a value for a 2048 x 512 weight: its columns are runs of lines a power of two
 * apart, which share one or two L1 sets), which is why the GEMM below does without; numpy's
 * strided copy took twice as long, and tiles of 16 half as long again as 64 (measured). */
#define TT 64

/* dst[j * dst_ld + i] = src[i * src_ld + j], i < ni, j < nj (at most TT each): through a local
 * tile, so that both the reads and the writes run along rows. */
FC_CLONES
static void transpose_floats(const float *restrict src, int64_t src_ld, float *restrict dst, int64_t dst_ld, int64_t ni,
                             int64_t nj) {
    float tmp[TT][TT];
    if (ni == TT && nj == TT) { /* full tiles: fixed trip counts the compiler unrolls */
        for (int64_t i = 0; i < TT; i++)
            for (int64_t j = 0; j < TT; j++)
                tmp[j][i] = src[i * src_ld + j];
        for (int64_t j = 0; j < TT; j++)
            for (int64_t i = 0; i < TT; i++)
                dst[j * dst_ld + i] = tmp[j][i];
        return;
    }
    for (int64_t i = 0; i < ni; i++)
        for (int64_t j = 0; j < nj; j++)
            tmp[j][i] = src[i * src_ld + j];
    for (int64_t j = 0; j < nj; j++)
        memcpy(dst + j * dst_ld, tmp[j], (size_t)ni * sizeof(float));
}

/* dst[j * dst_ld + i * item + u] = src[i * src_ld + j * item + (flip ? item - 1 - u : u)] for the
 * items (i, j) of one tile, i in [i0, i1), j in [j0, j1). */
static void transpose_tile(const float *src, int64_t src_ld, float *dst, int64_t dst_ld, int64_t item, int flip,
                           int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (item == 1) {
        transpose_floats(src + i0 * src_ld + j0, src_ld, dst + j0 * dst_ld + i0, dst_ld, i1 - i0, j1 - j0);
        return;
    }
    for (int64_t j = j0; j < j1; j++)
        for (int64_t i = i0; i < i1; i++) {
            const float *in = src + i * src_ld + j * item;
            float *out = dst + j * dst_ld + i * item;
            for (int64_t u = 0; u < item; u++)
                out[u] = in[flip ? item - 1 - u : u];
        }
}

/* Tile t of the transposes of `mats` matrices of rows x cols items: matrix m reads src + m *
 * src_mat and writes dst + m * dst_mat.  Every output element is written by exactly one tile. */
static void transpose_task(int64_t t, int64_t rows, int64_t cols, int64_t item, int flip, const float *src,
                           int64_t src_ld, size_t src_mat, float *dst, int64_t dst_ld, size_t dst_mat) {
    const int64_t ti = (rows + TT - 1) / TT, tj = (cols + TT - 1) / TT;
    const int64_t m = t / (ti * tj), j0 = t / ti % tj * TT, i0 = t % ti * TT;
    transpose_tile(src + m * src_mat, src_ld, dst + m * dst_mat, dst_ld, item, flip, i0, FC_MIN(rows, i0 + TT), j0,
                   FC_MIN(cols, j0 + TT));
}

static int64_t transpose_tasks(int64_t mats, int64_t rows, int64_t cols) {
    return mats * ((rows + TT - 1) / TT) * ((cols + TT - 1) / TT);
}

/* The kernel of the transposed convolution (fastconv.h): per group, the (kg x cg) matrix of r*s
 * taps transposed, each tap run reversed when `flip` (the kernel turned by 180 degrees). */
int fc_f32_swap_channels(int64_t groups, int64_t kg, int64_t cg, int64_t rs, int32_t flip, const float *w,
                         float *wt, int nthreads) {
    if (groups < 1 || kg < 1 || cg < 1 || rs < 1)
        return FC_EINVAL;
    const int64_t tasks = transpose_tasks(groups, kg, cg);
#pragma omp parallel for num_threads(fc_team(nthreads, groups * kg * cg * rs, 1 << 16)) schedule(static)
    for (int64_t t = 0; t < tasks; t++)
        transpose_task(t, kg, cg, rs, flip, w, cg * rs, (size_t)kg * cg * rs, wt, kg * rs, (size_t)cg * kg * rs);
    return FC_OK;
}

/* -- microkernels: C[mr][nr] (+)= sum over p of A[p * lda + i] B[boff[p] + j] -------------------- */

#if FC_X86
#include <immintrin.h>

__attribute__((target("avx512f"), always_inline)) static inline void
at_8xnv(const int nv, const int prefetch_b, int64_t kc, const float *restrict a, int64_t lda, const float *restrict b,
        const int64_t *restrict boff, float *restrict c, int accumulate) {
    __m512 acc[8][3];
    FC_TILE_LOOP for (int i = 0; i < 8; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            acc[i][j] = accumulate ? _mm512_loadu_ps(c + i * 48 + j * 16) : _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; p++) {
        if (p + 8 < kc) /* weight rows lie lda apart: no prefetcher follows them */
            _mm_prefetch((const char *)(a + (p + 8) * lda), _MM_HINT_T0);
        if (prefetch_b && p + 8 < kc) { /* cold B rows (the task's first block): 8 rows ahead */
            const char *next = (const char *)(b + boff[p + 8]);
            FC_TILE_LOOP for (int j = 0; j < nv * 64; j += 64)
                _mm_prefetch(next + j, _MM_HINT_T0);
            _mm_prefetch(next + nv * 64 - 4, _MM_HINT_T0);
        }
        const float *bp = b + boff[p], *ap = a + p * lda;
        __m512 bv[3];
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            bv[j] = _mm512_loadu_ps(bp + j * 16);
        FC_TILE_LOOP for (int i = 0; i < 8; i++) {
            const __m512 av = _mm512_set1_ps(ap[i]);
            FC_TILE_LOOP for (int j = 0; j < nv; j++)
                acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    FC_TILE_LOOP for (int i = 0; i < 8; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            _mm512_storeu_ps(c + i * 48 + j * 16, acc[i][j]);
}

#define AT_AVX512(NV, PF)                                                                                    \
    __attribute__((target("avx512f"))) static void at_8x##NV##_##PF(int64_t kc, const float *a, int64_t lda,   \
                                                                     const float *b, const int64_t *boff,     \
                                                                     float *c, int accumulate) {               \
        at_8xnv(NV, PF, kc, a, lda, b, boff, c, accumulate);                                                 \
    }
AT_AVX512(1, 0)
AT_AVX512(2, 0)
AT_AVX512(3, 0)
AT_AVX512(1, 1)
AT_AVX512(2, 1)
AT_AVX512(3, 1)
static const fc_ukernel_fn AT_KERNELS_AVX512[2][3] = {{at_8x1_0, at_8x2_0, at_8x3_0}, {at_8x1_1, at_8x2_1, at_8x3_1}};

/* AVX2: 6 x 16, 12 accumulators in named variables (an array of them GCC kept in memory). */
#define AT_ROW(i) c##i##0, c##i##1
#define AT_STEP(i)                                                                                           \
    do {                                                                                                     \
        const __m256 av = _mm256_broadcast_ss(ap + (i));                                                     \
        c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);                                                          \
        c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);                                                          \
    } while (0)
#define AT_LOAD(i)                                                                                           \
    do {                                                                                                     \
        c##i##0 = accumulate ? _mm256_loadu_ps(c + (i) * 16) : _mm256_setzero_ps();                          \
        c##i##1 = accumulate ? _mm256_loadu_ps(c + (i) * 16 + 8) : _mm256_setzero_ps();                      \
    } while (0)
#define AT_SAVE(i)                                                                                           \
    do {                                                                                                     \
        _mm256_storeu_ps(c + (i) * 16, c##i##0);                                                             \
        _mm256_storeu_ps(c + (i) * 16 + 8, c##i##1);                                                         \
    } while (0)

__attribute__((target("avx2,fma"), always_inline)) static inline void
at_6x16(const int prefetch_b, int64_t kc, const float *restrict a, int64_t lda, const float *restrict b,
        const int64_t *restrict boff, float *restrict c, int accumulate) {
    __m256 AT_ROW(0), AT_ROW(1), AT_ROW(2), AT_ROW(3), AT_ROW(4), AT_ROW(5);
    AT_LOAD(0);
    AT_LOAD(1);
    AT_LOAD(2);
    AT_LOAD(3);
    AT_LOAD(4);
    AT_LOAD(5);
    for (int64_t p = 0; p < kc; p++) {
        if (p + 8 < kc)
            _mm_prefetch((const char *)(a + (p + 8) * lda), _MM_HINT_T0);
        if (prefetch_b && p + 8 < kc) {
            const char *next = (const char *)(b + boff[p + 8]);
            _mm_prefetch(next, _MM_HINT_T0);
            _mm_prefetch(next + 60, _MM_HINT_T0);
        }
        const float *bp = b + boff[p], *ap = a + p * lda;
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        AT_STEP(0);
        AT_STEP(1);
        AT_STEP(2);
        AT_STEP(3);
        AT_STEP(4);
        AT_STEP(5);
    }
    AT_SAVE(0);
    AT_SAVE(1);
    AT_SAVE(2);
    AT_SAVE(3);
    AT_SAVE(4);
    AT_SAVE(5);
}

__attribute__((target("avx2,fma"))) static void at_6x16_0(int64_t kc, const float *a, int64_t lda, const float *b,
                                                           const int64_t *boff, float *c, int accumulate) {
    at_6x16(0, kc, a, lda, b, boff, c, accumulate);
}
__attribute__((target("avx2,fma"))) static void at_6x16_1(int64_t kc, const float *a, int64_t lda, const float *b,
                                                           const int64_t *boff, float *c, int accumulate) {
    at_6x16(1, kc, a, lda, b, boff, c, accumulate);
}
static const fc_ukernel_fn AT_KERNELS_AVX2[2][3] = {{at_6x16_0, NULL, NULL}, {at_6x16_1, NULL, NULL}};
#endif

/* Portable: 4 x 16 in plain C, vectorised by the compiler for its baseline. */
static void at_4x16(int64_t kc, const float *restrict a, int64_t lda, const float *restrict b,
                    const int64_t *restrict boff, float *restrict c, int accumulate) {
    float acc[4][16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 16; j++)
            acc[i][j] = accumulate ? c[i * 16 + j] : 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *restrict bp = b + boff[p], *restrict ap = a + p * lda;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 16; j++)
                acc[i][j] += ap[i] * bp[j];
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 16; j++)
            c[i * 16 + j] = acc[i][j];
}
static const fc_ukernel_fn AT_KERNELS_GENERIC[2][3] = {{at_4x16, NULL, NULL}, {at_4x16, NULL, NULL}};

/* The kernels of the configuration's tile (its mr x nr, isa.c). */
static const fc_ukernel_fn (*at_kernels(const fc_isa_config *cfg))[3] {
#if FC_X86
    if (cfg->level == FC_AVX512)
        return AT_KERNELS_AVX512;
    if (cfg->level == FC_AVX2)
        return AT_KERNELS_AVX2;
#endif
    return AT_KERNELS_GENERIC;
}

/* -- the GEMM ------------------------------------------------------------------------------------ */

typedef struct {
    const fc_conv2d_desc *d;
    const fc_isa_config *cfg;
    int64_t mr, nr, cg, kg, rs, crs, pall, npanels;
    int64_t ncb, mt; /* mr-channel blocks per group, and per task */
    int assign;      /* every dx cell is one tile element (1x1, stride 1, no padding): store, not add */
    int in_place;    /* B rows read from dy itself, panels within one image (else from dyc) */
    int64_t ohw, ppi; /* pixels per image; panels per image (in place) */
    const float *w;     /* the weights (groups * kg, cg * r*s): A, read in place */
    const fc_ukernel_fn (*gemm)[3];
    const float *dy;
    const float *dyc; /* [g][kg][pall] */
    const int64_t *boff; /* [kc] row offsets of B: p * pall (dyc) or p * ohw (dy) */
    const int64_t *poff; /* [kc] p * nr: a packed panel */
} dplan_t;

/* Panel pi of group g: its first pixel over the batch (*q), its width, and its B rows (row p at
 * the result + p * *ld; *boff: the kernel's table of those offsets).  In place, a panel whose 16-column vectors would read past the end of
 * dy (the last image's last channels) is copied into `pack` (kg x nr) first. */
static const float *panel_b(const dplan_t *P, int64_t g, int64_t pi, float *pack, int64_t *q, int64_t *ncols,
                            int64_t *ld, const int64_t **boff) {
    const fc_conv2d_desc *d = P->d;
    *boff = P->boff;
    if (!P->in_place) {
        *q = pi * P->nr;
        *ncols = FC_MIN(P->nr, P->pall - *q);
        *ld = P->pall;
        return P->dyc + (size_t)g * P->kg * P->pall + *q;
    }
    const int64_t n = pi / P->ppi, q0 = pi % P->ppi * P->nr;
    *ncols = FC_MIN(P->nr, P->ohw - q0);
    *q = n * P->ohw + q0;
    *ld = P->ohw;
    const float *b = P->dy + ((size_t)n * d->k + g * P->kg) * P->ohw + q0;
    const int64_t cols = (*ncols + 15) / 16 * 16;
    if (n < d->n - 1 || g < d->groups - 1 || (P->kg - 1) * P->ohw + q0 + cols <= P->kg * P->ohw)
        return b;
    for (int64_t p = 0; p < P->kg; p++) {
        memcpy(pack + p * P->nr, b + p * P->ohw, (size_t)*ncols * sizeof(float));
        memset(pack + p * P->nr + *ncols, 0, (size_t)(cols - *ncols) * sizeof(float));
    }
    *ld = P->nr;
    *boff = P->poff;
    return pack;
}

/* dx planes of channels [c0, c0 + rows) of group g += the tiles of one panel (pixels j0 ...). */
static void scatter(const dplan_t *P, const float *tiles, int64_t g, int64_t c0, int64_t rows, int64_t j0,
                    int64_t ncols, float *dx) {
    const fc_conv2d_desc *d = P->d;
    const int64_t ohw = d->oh * d->ow, tile = P->mr * P->nr;
    if (P->assign) { /* the tile's rows are runs of dx planes (oh, ow) = (h, w) */
        for (int64_t q = j0; q < j0 + ncols;) {
            const int64_t n = q / ohw, p = q % ohw, len = FC_MIN(ohw - p, j0 + ncols - q);
            P->cfg->store(tiles + (q - j0), P->nr, rows, len, NULL, NULL, dx + ((size_t)n * d->c + g * P->cg + c0) * ohw + p,
                          ohw, 0);
            q += len;
        }
        return;
    }
    for (int64_t q = j0; q < j0 + ncols;) {
        const int64_t n = q / ohw, oh = q % ohw / d->ow, ow = q % d->ow, len = FC_MIN(d->ow - ow, j0 + ncols - q);
        for (int64_t t = 0; t < P->rs; t++) {
            const int64_t r = t / d->s, s = t % d->s;
            const int64_t ih = oh * d->stride_h - d->pad_top + r * d->dil_h;
            if (ih < 0 || ih >= d->h)
                continue;
            const int64_t off = s * d->dil_w - d->pad_left;
            int64_t lo, hi;
            fc_valid_range(d->w, d->ow, d->stride_w, off, &lo, &hi);
            lo = FC_MAX(lo, ow);
            hi = FC_MIN(hi, ow + len);
            for (int64_t i = 0; i < rows; i++) {
                /* row c*rs + t of the task's block of mr*rs rows: tile (c*rs + t) / mr, row % mr */
                const int64_t rho = i * P->rs + t;
                const float *src = tiles + (rho / P->mr) * tile + (rho % P->mr) * P->nr + (q - j0) - ow;
                float *dst = dx + (((size_t)n * d->c + g * P->cg + c0 + i) * d->h + ih) * d->w + off;
                if (d->stride_w == 1)
                    for (int64_t x = lo; x < hi; x++)
                        dst[x] += src[x];
                else
                    for (int64_t x = lo; x < hi; x++)
                        dst[x * d->stride_w] += src[x];
            }
        }
        q += len;
    }
}

/* Channel blocks [cb0, cb1) of group g over pixel panels [p0, p1): per panel and block of kc
 * rows of dy, the panel's B sliver meets all (cb1 - cb0) * r*s A blocks of the task while it sits
 * in L1 (a 1x1 layer has one A block per channel block: tasks of one block would read every B
 * sliver from L2 for 8 channels' work). */
static void run_task(const dplan_t *P, int64_t g, int64_t cb0, int64_t cb1, int64_t p0, int64_t p1, float *tiles,
                     float *apack, float *pack, float *dx) {
    const int64_t tile = P->mr * P->nr, kc = P->cfg->kc, blocks = (cb1 - cb0) * P->rs;
    /* The task's A blocks packed once, block b as kg steps of mr values: row p of the weights
     * from column cb0 * mr * r*s + b * mr on (zeros past the group's columns).  Read in place,
     * rows crs apart (a power of two in ResNets) fall into one or two L1 sets and evict each
     * other on every step. */
    const int64_t c0 = cb0 * P->mr * P->rs, cols = FC_MIN(P->crs - c0, blocks * P->mr);
    for (int64_t p = 0; p < P->kg; p++) {
        const float *row = P->w + ((size_t)g * P->kg + p) * P->crs + c0;
        for (int64_t b = 0; b < blocks; b++) {
            float *dst = apack + ((size_t)b * P->kg + p) * P->mr;
            const int64_t valid = FC_MAX(0, FC_MIN(P->mr, cols - b * P->mr));
            memcpy(dst, row + b * P->mr, (size_t)valid * sizeof(float));
            memset(dst + valid, 0, (size_t)(P->mr - valid) * sizeof(float));
        }
    }
    for (int64_t pi = p0; pi < p1; pi++) {
        int64_t j0, ncols, ld;
        const int64_t *boff;
        const float *b0 = panel_b(P, g, pi, pack, &j0, &ncols, &ld, &boff);
        const int64_t nv = (ncols + 15) / 16;
        for (int64_t k0 = 0; k0 < P->kg; k0 += kc) {
            const int64_t kk = FC_MIN(kc, P->kg - k0);
            for (int64_t blk = 0; blk < blocks; blk++)
                P->gemm[blk == 0][nv - 1](kk, apack + ((size_t)blk * P->kg + k0) * P->mr, P->mr, b0 + k0 * ld, boff,
                                          tiles + blk * tile, k0 > 0);
        }
        for (int64_t cb = cb0; cb < cb1; cb++)
            scatter(P, tiles + (cb - cb0) * P->rs * tile, g, cb * P->mr, FC_MIN(P->mr, P->cg - cb * P->mr), j0, ncols,
                    dx);
    }
}

/* Channel blocks per task: up to MAX_TASK_TILES tiles of partial sums (more reuse of each B
 * sliver), as long as the task's A rows (mt * mr * r*s rows of kg) stay within MAX_TASK_A bytes
 * (L2: they are read once per panel).  Then at least 4 tasks per thread (dynamic scheduling
 * evens them out): 1x1 layers split the panels (each split re-reads A, not B); larger kernels
 * cannot, since neighbouring pixels' taps add into the same input cells, and take fewer channel
 * blocks per task instead. */
#define MAX_TASK_TILES 32
#define MAX_TASK_A (512 << 10)
static void task_shape(const dplan_t *P, int nthreads, int64_t *mt, int64_t *pt) {
    const int64_t block_bytes = P->mr * P->rs * P->kg * (int64_t)sizeof(float), want = 4 * (int64_t)nthreads;
    *mt = FC_MAX(1, FC_MIN(FC_MIN(P->ncb, MAX_TASK_TILES / P->rs), MAX_TASK_A / block_bytes));
    *pt = P->npanels;
    if (P->rs > 1) {
        while (*mt > 1 && P->d->groups * ((P->ncb + *mt - 1) / *mt) < want)
            *mt = (*mt + 1) / 2;
        return;
    }
    const int64_t mtasks = P->d->groups * ((P->ncb + *mt - 1) / *mt);
    const int64_t pchunks = FC_MIN(P->npanels, (want + mtasks - 1) / mtasks);
    *pt = (P->npanels + pchunks - 1) / pchunks;
}

/* B read in place from dy unless panels confined to one image would waste more than 1/8 of the
 * columns on tails (7x7 images: 64 columns for 49 pixels), where copying dy so that panels span
 * images costs less.  FASTCONV_BWD_DATA_B=in_place|copy forces one (tests reach both). */
static int choose_in_place(const dplan_t *P) {
    const int64_t ohw = P->ohw, per_image = ohw / P->nr * P->nr + (ohw % P->nr + 15) / 16 * 16;
    const char *force = getenv("FASTCONV_BWD_DATA_B");
    if (force && !strcmp(force, "in_place"))
        return 1;
    if (force && !strcmp(force, "copy"))
        return 0;
    return 8 * per_image <= 9 * ohw;
}

int fc_f32_conv2d_bwd_data_gemm(const fc_conv2d_desc *d, const float *dy, const float *w, float *dx, int nthreads) {
    dplan_t P = {.d = d, .cfg = fc_config(), .dy = dy, .w = w};
    P.mr = P.cfg->mr;
    P.nr = P.cfg->nr;
    P.cg = d->c / d->groups;
    P.kg = d->k / d->groups;
    P.rs = d->r * d->s;
    P.crs = P.cg * P.rs;
    P.ncb = (P.cg + P.mr - 1) / P.mr;
    P.ohw = d->oh * d->ow;
    P.pall = d->n * P.ohw;
    P.assign = P.rs == 1 && d->stride_h == 1 && d->stride_w == 1 && d->pad_top == 0 && d->pad_left == 0 &&
               d->oh == d->h && d->ow == d->w;
    if (d->n < 1 || P.nr % 16 || P.nr > 48)
        return FC_EUNSUPPORTED;
    P.in_place = choose_in_place(&P);
    P.ppi = (P.ohw + P.nr - 1) / P.nr;
    P.npanels = P.in_place ? d->n * P.ppi : (P.pall + P.nr - 1) / P.nr;
    int64_t pt;
    task_shape(&P, fc_team(nthreads, d->groups * P.ncb * P.npanels, 1), &P.mt, &pt);
    const int64_t mchunks = (P.ncb + P.mt - 1) / P.mt, pchunks = (P.npanels + pt - 1) / pt;
    const int64_t tasks = d->groups * mchunks * pchunks;
    const int team = fc_team(nthreads, tasks, 1);
    /* Per thread: the task's tiles, its packed A blocks and (in place) room for one packed panel. */
    const size_t tile_floats = fc_size_mul3(P.mt * P.rs * P.mr, P.nr, 1), a_floats = fc_size_mul3(P.mt * P.rs * P.mr, P.kg, 1);
    size_t slice_floats, tbytes, dyfloats = 0;
    fc_size_add(tile_floats, a_floats, &slice_floats);
    fc_size_add(slice_floats, P.in_place ? fc_size_mul3(P.kg, P.nr, 1) : 0, &slice_floats);
    const size_t tslice = fc_slice(fc_size_mul3(slice_floats, sizeof(float), 1));
    fc_size_mul(tslice, (size_t)team, &tbytes);
    if (!P.in_place)
        fc_size_add(fc_size_mul3(d->groups, P.kg, P.pall), 48, &dyfloats);
    float *dyc = P.in_place ? NULL : fc_alloc(fc_size_mul3(dyfloats, sizeof(float), 1));
    char *tb = fc_alloc(tbytes);
    int64_t *boff = fc_alloc(fc_size_mul3(P.cfg->kc, 2 * sizeof(int64_t), 1));
    int status = FC_OK;
    if ((!P.in_place && !dyc) || !tb || !boff) {
        status = FC_ENOMEM;
        goto done;
    }
    for (int64_t p = 0; p < P.cfg->kc; p++) {
        boff[p] = p * (P.in_place ? P.ohw : P.pall);
        boff[P.cfg->kc + p] = p * P.nr;
    }
    P.gemm = at_kernels(P.cfg);
    P.dyc = dyc;
    P.boff = boff;
    P.poff = boff + P.cfg->kc;
    const int64_t ohw = P.ohw;
#pragma omp parallel num_threads(team)
    {
        if (!P.in_place) {
#pragma omp for schedule(static) nowait
            for (int64_t v = 0; v < d->k * d->n; v++) { /* dy channel (g, k) of image n */
                const int64_t ch = v / d->n, n = v % d->n, g = ch / P.kg, k = ch % P.kg;
                memcpy(dyc + ((size_t)g * P.kg + k) * P.pall + n * ohw, dy + ((size_t)n * d->k + ch) * ohw,
                       (size_t)ohw * sizeof(float));
            }
#pragma omp single nowait
            memset(dyc + (size_t)d->groups * P.kg * P.pall, 0, 48 * sizeof(float));
        }
        if (!P.assign) {
#pragma omp for schedule(static) nowait
            for (int64_t v = 0; v < d->n * d->c; v++)
                memset(dx + (size_t)v * d->h * d->w, 0, (size_t)(d->h * d->w) * sizeof(float));
        }
#pragma omp barrier
        float *tiles = (float *)(tb + tslice * (size_t)FC_THREAD_ID()), *apack = tiles + tile_floats;
        float *pack = apack + a_floats;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) { /* panels vary fastest: neighbouring tasks share A */
            const int64_t g = t / (mchunks * pchunks), cb0 = t / pchunks % mchunks * P.mt, p0 = t % pchunks * pt;
            run_task(&P, g, cb0, FC_MIN(P.ncb, cb0 + P.mt), p0, FC_MIN(P.npanels, p0 + pt), tiles, apack, pack, dx);
        }
    }
done:
    free(dyc);
    free(tb);
    free(boff);
    return status;
}
