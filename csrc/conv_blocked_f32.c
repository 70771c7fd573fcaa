/* float32 convolution on channel-blocked activations, the layout compiled plans keep between
 * convolutions: (n, c / L, h + 2b, w + 2b, L), L channels of a pixel in one vector, a zero border
 * of b pixels around each plane (fastconv.h).
 *
 * Why: the NCHW kernels pay for their layout on every layer -- the GEMM gathers its input into
 * panels (or reads discarded columns), the channel-vector kernel copies its input into padded
 * phase planes and transposes every output row back.  ONNX Runtime keeps this layout from layer
 * to layer for the same reason.  Here a convolution is the channel-vector tile (np pixels of one
 * output row x nv vectors of output channels, in registers) reading its input where it lies and
 * writing its output where the next layer reads it:
 *   - every reduction step (input channel c, tap r, s) broadcasts one input value per pixel, at
 *     x[xoff[tap] + i * stride * L + c % L]: the border makes every tap of every pixel a valid
 *     address, so there is no edge code (rows at the plane's top and bottom only skip the filter
 *     rows that read nothing but border: run_row);
 *   - the weights are packed once as [group of nv vectors][c / L][r][s][L][nv][L]: a task reads
 *     its weights as one sequential stream (an eager NCHW call packs each block as its tasks
 *     reach it, below);
 *   - the reduction runs in blocks of whole channel blocks (about blocked_steps steps, isa.c: 24-32
 *     KB of weights that stay in L1 while the task's tiles pass; blocked_steps_1x1 for 1x1 filters,
 *     longer on AVX2); a later block adds to the partial sums left in the output itself, and the
 *     last applies the epilogue (bias, residual, relu) on the way out.
 *
 * A task is (a set of groups of output channel vectors, a chunk of output rows over the batch;
 * task_shape); every output element is summed by one thread in a fixed order, so results do not
 * depend on the thread count. */
#include "fc_internal.h"

/* A task's output rows x ow x (nv x L) partial sums stay within about this many floats (L2). */
#define BL_ACC_FLOATS (32 * 1024)
/* Weights up to this many bytes are shared by all of a task's groups (task_shape).  640 KB takes
 * in ResNet's 3x3 stride-2 128-channel layer (576 KB): 6% faster at batch 1 and 18% at batch 8
 * as one set than as six groups each re-reading the input (AMD EPYC Zen 3, alternated in one
 * process); the 1 MB 1x1 layers ran 0-6% slower as sets. */
#define BL_SHARED_WEIGHTS (640 * 1024)
/* Tasks per thread, at least, where the problem has them (dynamic scheduling balances them). */
#define BL_TASKS_PER_THREAD 2
/* The most vectors a tile of any table has. */
#define BL_MAX_V 4

typedef struct {
    const fc_conv2d_desc *d;
    fc_blocked_fn kernel;
    int64_t L, P, V;                 /* lanes, the tile's pixels and vectors */
    int64_t cb, kvecs, groups;       /* input channel blocks, output vectors, groups of V vectors */
    int64_t cbb, rs;                 /* channel blocks per reduction block, r * s */
    int64_t xw, xplane, ximg;        /* input: padded row width, plane and image (floats but xw) */
    int64_t yw, yplane, yimg, yb;    /* output: the same, and its border */
    int64_t rw, rplane, rimg, rb;    /* residual: the same */
    int64_t xb;
    int64_t rows, rc, chunks;        /* output rows of the batch (n * oh), rows per task, chunks */
    int64_t gs, sets;                /* groups per task, sets of groups */
    int split;                       /* the last V + 1 vectors make two groups (group_vectors) */
    int inplace;                     /* the residual is y: the sums start from it (first block) */
    const int64_t *xoff;             /* [cbb * rs]: tap t's input offset from the tile's origin */
    const float *wraw;               /* eager calls: the (k, c, r, s) weights, packed a block at a time */
    float *wbuf;                     /* ... into each thread's part of this, wslice floats apart */
    int64_t wslice;
    const int64_t *woff[BL_MAX_V + 1]; /* ... at these offsets (step_offsets), by the group's vectors */
    int64_t *woffs;                  /* the tables' memory */
} bplan_t;

int fc_f32_blocked_lanes(void) { return fc_config()->kvec_lanes; }

static void interleave(const float *src, int64_t ld, int64_t rows, int64_t n, int64_t L, float *dst);

/* The tile for d: the table's wide tile for 1x1 filters where it divides the output rows, else
 * its other one (the weights are packed for the tile's vectors: fc_f32_blocked_weights and the
 * kernel call agree through this one rule).  Filters with taps take the other one: on AVX-512 a
 * 3x3 filter's 16-channel block of weights is 36 KB for the 4 x 64 tile, more than L1, and 27 KB
 * for 7 x 48.  ResNet-50's 3x3 layers of 56- and 28-pixel rows, eager calls alternated in one
 * process (AMD EPYC Zen 4, 2 threads): 0.89-0.97x the time at batch 1, 0.90-1.00x at batch 8. */
static void tile_of(const fc_conv2d_desc *d, int64_t *P, int64_t *V) {
    const fc_isa_config *cfg = fc_config();
    const int wide = d->r * d->s == 1 && d->ow % cfg->blocked_tiles[0][0] == 0;
    const int *t = cfg->blocked_tiles[wide ? 0 : 1];
    *P = t[0], *V = t[1];
}

/* Group g's output vectors: *v0 the first, the count returned.  Groups of V, the last taking what
 * is left -- except where that would be one vector and the table says so (blocked_split_tail):
 * then the last V + 1 vectors make two groups of about half each (3 + 1 -> 2 + 2 on AVX2).  A
 * tile of one vector has one accumulator per pixel, too few to cover the FMA latency (4 on
 * AVX2's 4-pixel tile: about half the FMA rate), and a layer of 128 output channels spent a
 * sixteenth of its work there (measured on AMD EPYC Zen 3: isa.c).  woff[] has a slot for each
 * group size up to BL_MAX_V, the widest tile of any table. */
static int64_t group_vectors(const bplan_t *B, int64_t g, int64_t *v0) {
    const int64_t V = B->V, full = B->groups - 1 - B->split; /* groups of V before the last one or two */
    if (g < full) {
        *v0 = g * V;
        return V;
    }
    const int64_t rest = B->kvecs - full * V, first = B->split ? rest / 2 : rest;
    *v0 = full * V + (g > full ? first : 0);
    return g > full ? rest - first : first;
}

/* What the blocked kernel takes; Python checks the same before building a plan's step. */
static int blocked_ok(const fc_conv2d_desc *d, int64_t L) {
    if (d->n < 1 || d->c < 1 || d->k < 1 || d->h < 1 || d->w < 1 || d->oh < 1 || d->ow < 1 || d->r < 1 ||
        d->s < 1 || d->stride_h < 1 || d->stride_w < 1 || d->dil_h < 1 || d->dil_w < 1)
        return 0;
    const int act = fc_conv_act(d);
    return d->groups == 1 && d->c % L == 0 && d->k % L == 0 && (act == FC_ACT_NONE || act == FC_ACT_RELU);
}

/* Every tap of every output pixel inside the input's plane plus its border (no bounds checks
 * after this). */
static int border_covers(const fc_conv2d_desc *d, int64_t xb) {
    const int64_t last_h = (d->oh - 1) * d->stride_h - d->pad_top + (d->r - 1) * d->dil_h;
    const int64_t last_w = (d->ow - 1) * d->stride_w - d->pad_left + (d->s - 1) * d->dil_w;
    return xb >= 0 && d->pad_top <= xb && d->pad_left <= xb && last_h <= d->h - 1 + xb && last_w <= d->w - 1 + xb;
}

int64_t fc_f32_blocked_weights_size(const fc_conv2d_desc *d) {
    const int64_t L = fc_config()->kvec_lanes;
    if (!blocked_ok(d, L))
        return -1;
    size_t n = fc_size_mul3((size_t)d->k, (size_t)d->c, fc_size_mul3((size_t)d->r, (size_t)d->s, 1));
    return n > (size_t)INT64_MAX / 4 ? -1 : (int64_t)n;
}

/* Where the kernel reads step p of a run of channel blocks (channel b * L + ci of the run, tap t;
 * p = (b * L + ci) * rs + t, the order of a row of w) for output vector j of a group of nv:
 * off[p] + j * L, off[p] = ((b * rs + t) * L + ci) * nv * L (the layout above). */
static void step_offsets(int64_t m, int64_t rs, int64_t L, int64_t nv, int64_t *off) {
    for (int64_t p = 0; p < m; p++) {
        const int64_t b = p / (L * rs), ci = p / rs % L, t = p % rs;
        off[p] = ((b * rs + t) * L + ci) * nv * L;
    }
}

/* L floats, one vector: a copy of known size, which the compiler makes register moves. */
static inline void copy_vector(float *dst, const float *src, int64_t L) {
    if (L == 8)
        memcpy(dst, src, 8 * sizeof(float));
    else if (L == 16)
        memcpy(dst, src, 16 * sizeof(float));
    else
        memcpy(dst, src, (size_t)L * sizeof(float));
}

/* Steps [p0, p1) of one output vector's L rows of w (src, ld apart) turned into lanes, step p's
 * vector stored at dst + off[p]: the table's transposing store where it has one (3x3 512 -> 512
 * at 7x7 on one thread, AVX2: 0.85-0.94x the time of the fallback), else PACK_STEPS steps at a
 * time through its register transpose (interleave) into a small buffer, then each vector to its
 * place.  (Element by element this took 1.4 ms for a 2 MB weight.) */
#define PACK_STEPS 64
static void pack_steps(const float *src, int64_t ld, int64_t L, int64_t p0, int64_t p1, const int64_t *off,
                       float *dst) {
    const fc_kvec_pack_to_fn pack = fc_config()->kvec_pack_to;
    if (pack) {
        pack(src + p0, ld, p1 - p0, off + p0, dst);
        return;
    }
    float tmp[PACK_STEPS * 16]; /* L <= 16 */
    for (int64_t p = p0; p < p1; p += PACK_STEPS) {
        const int64_t n = FC_MIN(PACK_STEPS, p1 - p);
        interleave(src + p, ld, L, n, L, tmp); /* tmp[q * L + l] = src[l * ld + p + q] */
        for (int64_t q = 0; q < n; q++)
            copy_vector(dst + off[p + q], tmp + q * L, L);
    }
}

/* A task is a set of gs groups of output channels over a chunk of rc output rows; its loops
 * (run_task) go reduction block, then row and group (a set) or row (a single group).
 * Where the weights are small (BL_SHARED_WEIGHTS) the set is every group: a block of the chunk's
 * input then comes from memory once and from cache for the other groups (the wide 1x1 layers of
 * large images ran at 0.74-0.9x the NCHW GEMM while each group re-read the whole input).
 * Otherwise a task is one group, and the chunks of a group follow each other so that its weights
 * stay in cache (the late layers at batch 1, whose weights outweigh their input).  Chunks are as
 * long as keep one group's partial sums within BL_ACC_FLOATS, split until every thread has
 * BL_TASKS_PER_THREAD tasks.  (Measured on ResNet-50 at batch 8: budgets on the chunk's input or
 * on the whole set's partial sums gave shorter chunks and a 3% slower network, while each layer
 * alone ran as fast or faster.) */
static void task_shape(bplan_t *B, int nthreads) {
    const int64_t per_row = B->d->ow * B->V * B->L;
    const int64_t wbytes = B->d->k * B->d->c * B->rs * (int64_t)sizeof(float);
    B->gs = wbytes <= BL_SHARED_WEIGHTS ? B->groups : 1;
    B->sets = (B->groups + B->gs - 1) / B->gs;
    const int64_t target = FC_MIN(BL_TASKS_PER_THREAD * (int64_t)nthreads, B->sets * B->rows);
    int64_t rc = B->rows;
    while (rc > 1 && (rc * per_row > BL_ACC_FLOATS || B->sets * ((B->rows + rc - 1) / rc) < target))
        rc = (rc + 1) / 2;
    B->rc = rc;
    B->chunks = (B->rows + rc - 1) / rc;
}

/* Group g's weights for the reduction block starting at channel block b0, and their length in
 * 64-byte lines. */
static const float *block_weights(const bplan_t *B, const float *wpack, int64_t g, int64_t b0, int64_t *lines) {
    int64_t v0;
    const int64_t L = B->L, nv = group_vectors(B, g, &v0);
    *lines = FC_MIN(B->cbb, B->cb - b0) * B->rs * L * nv * L / 16;
    return wpack + (size_t)v0 * L * B->d->c * B->rs + (size_t)b0 * B->rs * L * nv * L;
}

/* The pre-packed weights a task reads next (`lines` 64-byte lines from w), requested into L2
 * per_tile lines a tile (see run_task). */
typedef struct {
    const float *w;
    int64_t lines, per_tile, done;
} wnext_t;

static void prefetch_next(wnext_t *nx) {
    for (int64_t e = FC_MIN(nx->lines, nx->done + nx->per_tile); nx->done < e; nx->done++)
        __builtin_prefetch(nx->w + nx->done * 16, 0, 2);
}

/* Floats of one group's packed block: the most a reduction block holds. */
static int64_t block_floats(const bplan_t *B) { return FC_MIN(B->cbb, B->cb) * B->rs * B->L * B->V * B->L; }

/* Where group g's packed block starts among those of groups g0.. (a set's in a thread's buffer,
 * or every group's in a plan's weights): after the blocks of the vectors before it. */
static int64_t group_offset(const bplan_t *B, int64_t g, int64_t g0) {
    int64_t v0, vg0;
    group_vectors(B, g, &v0);
    group_vectors(B, g0, &vg0);
    return (v0 - vg0) * FC_MIN(B->cbb, B->cb) * B->rs * B->L * B->L;
}

/* The pre-packed weights of group g's block at b0, as lines to fetch ahead. */
static wnext_t next_weights(const bplan_t *B, const float *wpack, int64_t g, int64_t b0, int64_t tiles) {
    wnext_t nx = {0};
    if (b0 >= B->cb)
        return nx;
    nx.w = block_weights(B, wpack, g, b0, &nx.lines);
    nx.per_tile = (nx.lines + tiles - 1) / tiles;
    return nx;
}

/* An eager call's weights for the blocks at b0 of groups [g0, g1), packed into dst (group g at
 * (g - g0) * block_floats) before the task's tiles read them.  (Packing the next block between the
 * tiles of the current one, into a second buffer, was slower on the AMD EPYC Zen 3: the two
 * blocks no longer fit in L1 beside the tiles' input.) */
static void pack_blocks(const bplan_t *B, int64_t g0, int64_t g1, int64_t b0, float *dst) {
    const int64_t L = B->L, crs = B->d->c * B->rs, m = FC_MIN(B->cbb, B->cb - b0) * L * B->rs;
    for (int64_t g = g0; g < g1; g++) {
        int64_t v0;
        const int64_t nv = group_vectors(B, g, &v0);
        for (int64_t j = 0; j < nv; j++)
            pack_steps(B->wraw + (size_t)(v0 + j) * L * crs + b0 * L * B->rs, crs, L, 0, m, B->woff[nv],
                       dst + group_offset(B, g, g0) + j * L);
    }
}

/* pack_blocks' offsets (step_offsets), one table for each size of group there is (the first group
 * and the last two cover them); freed with free(B->woffs). */
static int weight_offsets(bplan_t *B) {
    const int64_t m = FC_MIN(B->cbb, B->cb) * B->L * B->rs;
    int64_t *off = fc_alloc(fc_size_mul3((size_t)m, (size_t)B->V + 1, sizeof(int64_t)));
    if (!off)
        return FC_ENOMEM;
    B->woffs = off;
    const int64_t some[3] = {0, FC_MAX(0, B->groups - 2), B->groups - 1};
    for (int i = 0; i < 3; i++) {
        int64_t v0;
        const int64_t nv = group_vectors(B, some[i], &v0);
        step_offsets(m, B->rs, B->L, nv, off + nv * m);
        B->woff[nv] = off + nv * m;
    }
    return FC_OK;
}

/* One output row of group g through reduction block b0: its tiles, left to right, and before each
 * a slice of the next weights fetched (nx). */
static void run_row(const bplan_t *B, const float *x, const float *wb, const float *bias, const float *res,
                    float *y, int64_t g, int64_t row, int64_t b0, int64_t taps, int mode, wnext_t *nx) {
    const fc_conv2d_desc *d = B->d;
    const int64_t L = B->L, xpix = d->stride_w * L;
    const int relu = fc_conv_act(d) == FC_ACT_RELU, last = mode & FC_BL_FINISH;
    int64_t v0;
    const int64_t nv = group_vectors(B, g, &v0), k0 = v0 * L;
    /* A row's tiles as even as they go (14 pixels as 4 + 4 + 3 + 3, not 4 + 4 + 4 + 2): a tile of
     * P - 1 pixels still has the accumulators to keep both FMA pipes busy, one of 1-2 pixels
     * waits on their latency. */
    const int64_t row_tiles = (d->ow + B->P - 1) / B->P;
    const int64_t n = row / d->oh, oh = row % d->oh;
    const int64_t ih = oh * d->stride_h - d->pad_top + B->xb, iw = B->xb - d->pad_left;
    const float *xr = x + (size_t)n * B->ximg + (size_t)b0 * B->xplane + (ih * B->xw + iw) * L;
    /* Filter rows r < rlo and r >= rhi read only the zero border here (a 3x3 filter's first row
     * on the plane's first output row, its last on the last): skipped, as oneDNN's direct
     * convolution skips them -- on a 7x7 output 2 of 21 row taps.  ResNet-50's 3x3 layers, eager
     * calls on this kernel alternated in one process with and without the skip (AMD EPYC Zen 4,
     * 2 threads, AVX-512 and AVX2 tables): 0.89-0.98x the time on 7x7 outputs (stride 1
     * 0.91-0.93x), 0.95-1.00x at 14x14, 0.91-0.99x at 28x28, 0.98-0.99x at 56x56. */
    int64_t rlo = 0, rhi = d->r;
    while (rlo < rhi && ih - B->xb + rlo * d->dil_h < 0)
        rlo++;
    while (rhi > rlo && ih - B->xb + (rhi - 1) * d->dil_h >= d->h)
        rhi--;
    float *yr = y + (size_t)n * B->yimg + (size_t)v0 * B->yplane + ((oh + B->yb) * B->yw + B->yb) * L;
    const float *rr =
        res ? res + (size_t)n * B->rimg + (size_t)v0 * B->rplane + ((oh + B->rb) * B->rw + B->rb) * L : NULL;
    for (int64_t q = 0, o0 = 0, np; q < row_tiles; q++, o0 += np) {
        prefetch_next(nx);
        np = (d->ow - o0 + row_tiles - q - 1) / (row_tiles - q);
        /* The lines the epilogue writes (and the residual it reads), requested while the tile
         * computes: a 64->256 1x1 layer with a residual at 56x56, batch 8, waited on them for a
         * third of its time (4.3 -> 2.9 ms). */
        if (last || (B->inplace && b0 == 0))
            for (int64_t j = 0; j < nv; j++)
                for (int64_t i = 0; i < np; i++) {
                    __builtin_prefetch(yr + (o0 + i) * L + j * B->yplane, 1);
                    if (rr)
                        __builtin_prefetch(rr + (o0 + i) * L + j * B->rplane);
                }
        if (rlo == 0 && rhi == d->r) {
            B->kernel(np, nv, taps, xr + o0 * xpix, B->xoff, xpix, wb, yr + o0 * L, B->yplane, mode,
                      bias ? bias + k0 : NULL, rr ? rr + o0 * L : NULL, B->rplane, relu);
            continue;
        }
        /* A row at the plane's top or bottom edge: each channel block's taps r in [rlo, rhi) (a
         * run, taps being (r, s) within a block), the sums carried from one block to the next in
         * y, the epilogue with the last (a zero run, where every tap reads padding, still starts
         * or finishes the sums). */
        const int64_t nb = taps / B->rs, run = (rhi - rlo) * d->s, first = rlo * d->s;
        for (int64_t b = 0; b < nb; b++) {
            const int m =
                (b > 0 ? FC_BL_ACCUMULATE : mode & FC_BL_ACCUMULATE) | (b == nb - 1 ? mode & FC_BL_FINISH : 0);
            const int64_t t0 = b * B->rs + first;
            B->kernel(np, nv, run, xr + o0 * xpix, B->xoff + t0, xpix, wb + t0 * L * nv * L, yr + o0 * L, B->yplane,
                      m, bias ? bias + k0 : NULL, rr ? rr + o0 * L : NULL, B->rplane, relu);
        }
    }
}

static void run_task(const bplan_t *B, const float *x, const float *wpack, const float *bias, const float *res,
                     float *y, int64_t g0, int64_t g1, int64_t r0, int64_t r1) {
    const int64_t tiles = (r1 - r0) * ((B->d->ow + B->P - 1) / B->P);
    /* In place, the residual is where the output goes: the first reduction block adds to it (a
     * later block's partial sums would otherwise overwrite it before the epilogue reads it). */
    if (B->inplace)
        res = NULL;
    float *buf = B->wraw ? B->wbuf + (size_t)FC_THREAD_ID() * B->wslice : NULL; /* an eager call's */
    for (int64_t b0 = 0; b0 < B->cb; b0 += B->cbb) {
        const int64_t taps = FC_MIN(B->cbb, B->cb - b0) * B->rs;
        const int last = b0 + B->cbb >= B->cb;
        const int mode = (b0 > 0 || B->inplace ? FC_BL_ACCUMULATE : 0) | (last ? FC_BL_FINISH : 0);
        if (buf)
            pack_blocks(B, g0, g1, b0, buf);
        /* One group over all the task's rows: its next block of pre-packed weights is fetched into
         * L2 a slice per tile, as the block's first tile would otherwise wait on them (at batch 1
         * the weights of a late layer come from memory). */
        wnext_t nx = {0};
        if (!buf && g1 - g0 == 1)
            nx = next_weights(B, wpack, g0, b0 + B->cbb, tiles);
        /* A set of groups: each row meets every group while its input is in L1/L2, the set's
         * weights (at most BL_SHARED_WEIGHTS) staying in L2.  Against each group passing over all
         * the task's rows: ResNet-50's 56x56 and 28x28 1x1 layers level to 3% faster at batch 1,
         * the 1x1 stride-2 downsample 5-7% (AMD EPYC Zen 3, 2 threads, alternated in one process). */
        for (int64_t row = r0; row < r1; row++)
            for (int64_t g = g0; g < g1; g++) {
                int64_t lines;
                const float *wb =
                    buf ? buf + group_offset(B, g, g0) : block_weights(B, wpack, g, b0, &lines);
                run_row(B, x, wb, bias, res, y, g, row, b0, taps, mode, &nx);
            }
    }
}

/* Zero the border cells that rows [i0, i1) of a blocked plane of h x w interior pixels with
 * border b own: their ends, and the top and bottom border rows with the first and the last row. */
static void zero_rows_border(float *plane, int64_t h, int64_t w, int64_t b, int64_t L, int64_t i0, int64_t i1) {
    const int64_t wp = w + 2 * b;
    const size_t edge = (size_t)(b * wp * L) * sizeof(float), end = (size_t)(b * L) * sizeof(float);
    if (i0 == 0)
        memset(plane, 0, edge);
    if (i1 == h)
        memset(plane + (h + b) * wp * L, 0, edge);
    for (int64_t i = i0 + b; i < i1 + b; i++) {
        memset(plane + i * wp * L, 0, end);
        memset(plane + (i * wp + wp - b) * L, 0, end);
    }
}

static void zero_plane_border(float *plane, int64_t h, int64_t w, int64_t b, int64_t L) {
    zero_rows_border(plane, h, w, b, L, 0, h);
}

void fc_f32_blocked_zero_border(float *y, int64_t n, int64_t c, int64_t h, int64_t w, int64_t b, int nthreads) {
    const int64_t L = fc_config()->kvec_lanes, planes = n * (c / L), plane = (h + 2 * b) * (w + 2 * b) * L;
    if (b <= 0)
        return;
    const int team = fc_team(nthreads, planes * (h + w) * b * L, 1 << 14);
    (void)team;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < planes; t++)
        zero_plane_border(y + (size_t)t * plane, h, w, b, L);
}

/* B's sizes for d on blocked arrays with borders xb (input), yb (output), rb (residual). */
static void plan_init(bplan_t *B, const fc_conv2d_desc *d, int64_t xb, int64_t yb, int64_t rb, int nthreads) {
    const fc_isa_config *cfg = fc_config();
    *B = (bplan_t){.d = d, .kernel = cfg->blocked, .L = cfg->kvec_lanes};
    tile_of(d, &B->P, &B->V);
    const int64_t L = B->L;
    B->cb = d->c / L;
    B->kvecs = d->k / L;
    B->groups = (B->kvecs + B->V - 1) / B->V;
    B->split = cfg->blocked_split_tail && B->kvecs > B->V && B->kvecs % B->V == 1;
    B->rs = d->r * d->s;
    B->cbb = FC_MAX(1, (B->rs == 1 ? cfg->blocked_steps_1x1 : cfg->blocked_steps) / (B->rs * L));
    B->xb = xb, B->yb = yb, B->rb = rb;
    B->xw = d->w + 2 * xb;
    B->xplane = (d->h + 2 * xb) * B->xw * L;
    B->ximg = B->cb * B->xplane;
    B->yw = d->ow + 2 * yb;
    B->yplane = (d->oh + 2 * yb) * B->yw * L;
    B->yimg = B->kvecs * B->yplane;
    B->rw = d->ow + 2 * rb;
    B->rplane = (d->oh + 2 * rb) * B->rw * L;
    B->rimg = B->kvecs * B->rplane;
    B->rows = d->n * d->oh;
    task_shape(B, nthreads);
    /* An eager call's weight buffer per thread: a block for each group of a set (run_task). */
    B->wslice = (int64_t)(fc_slice(fc_size_mul3((size_t)B->gs, (size_t)block_floats(B), sizeof(float))) /
                          sizeof(float));
}

/* A plan's weights, packed once: every group as one reduction block of all channels. */
int fc_f32_blocked_weights(const fc_conv2d_desc *d, const float *w, float *out) {
    if (fc_f32_blocked_weights_size(d) < 0)
        return FC_EUNSUPPORTED;
    bplan_t B;
    plan_init(&B, d, 0, 0, 0, 1);
    B.cbb = B.cb;
    B.wraw = w;
    if (weight_offsets(&B) != FC_OK)
        return FC_ENOMEM;
    pack_blocks(&B, 0, B.groups, 0, out);
    free(B.woffs);
    return FC_OK;
}

/* The convolution B plans (weights pre-packed in wpack, or B->wraw packed as the tasks go). */
static int run_blocked(bplan_t *B, const float *x, const float *wpack, const float *bias, const float *residual,
                       float *y, int nthreads) {
    const fc_conv2d_desc *d = B->d;
    const int64_t L = B->L, ntaps = FC_MIN(B->cbb, B->cb) * B->rs;
    B->inplace = residual == y;
    int64_t *xoff = fc_alloc(fc_size_mul3((size_t)ntaps, sizeof(int64_t), 1));
    if (!xoff)
        return FC_ENOMEM;
    for (int64_t t = 0; t < ntaps; t++) {
        const int64_t b = t / B->rs, r = t % B->rs / d->s, s = t % d->s;
        xoff[t] = b * B->xplane + (r * d->dil_h * B->xw + s * d->dil_w) * L;
    }
    B->xoff = xoff;
    if (B->wraw && weight_offsets(B) != FC_OK) {
        free(xoff);
        return FC_ENOMEM;
    }
    const int64_t ntasks = B->sets * B->chunks, planes = d->n * B->kvecs;
    const int team = (int)FC_MIN(fc_team(nthreads, d->n * d->k * d->oh * d->ow * d->c * B->rs, 1 << 16), ntasks);
    (void)team;

    #pragma omp parallel num_threads(team)
    {
        if (B->yb > 0) {
            #pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < planes; t++)
                zero_plane_border(y + (size_t)t * B->yplane, d->oh, d->ow, B->yb, L);
        }
        /* Row chunks vary fastest: consecutive tasks share their group's weights in cache. */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
            const int64_t chunk = t % B->chunks, set = t / B->chunks;
            run_task(B, x, wpack, bias, residual, y, set * B->gs, FC_MIN(B->groups, (set + 1) * B->gs),
                     chunk * B->rc, FC_MIN(B->rows, (chunk + 1) * B->rc));
        }
    }
    free(xoff);
    free(B->woffs);
    return FC_OK;
}

int fc_f32_conv2d_blocked(const fc_conv2d_desc *d, const float *x, int64_t xb, const float *wpack,
                          const float *bias, const float *residual, int64_t rb, float *y, int64_t yb, int nthreads,
                          const char **kernel) {
    const fc_isa_config *cfg = fc_config();
    if (!blocked_ok(d, cfg->kvec_lanes))
        return FC_EUNSUPPORTED;
    if (!border_covers(d, xb) || yb < 0 || rb < 0 || !x || !wpack || !y || (residual == y && rb != yb))
        return FC_EINVAL;
    bplan_t B;
    plan_init(&B, d, xb, yb, rb, nthreads);
    const int status = run_blocked(&B, x, wpack, bias, residual, y, nthreads);
    if (status == FC_OK && kernel)
        *kernel = cfg->blocked_name;
    return status;
}

/* -- eager NCHW calls on the blocked kernel ------------------------------------------------------- */

/* The border an input needs: the padding, and what the last taps of a row or column reach past
 * the plane (backends/c.py's blocked_border). */
static int64_t needed_border(const fc_conv2d_desc *d) {
    const int64_t over_h = (d->oh - 1) * d->stride_h - d->pad_top + (d->r - 1) * d->dil_h - (d->h - 1);
    const int64_t over_w = (d->ow - 1) * d->stride_w - d->pad_left + (d->s - 1) * d->dil_w - (d->w - 1);
    return FC_MAX(FC_MAX(0, FC_MAX(d->pad_top, d->pad_left)), FC_MAX(over_h, over_w));
}

/* Whether "auto" runs an eager NCHW call on the blocked kernel (fc_f32_conv2d_nchw_blocked): where
 * the kernel takes d, the filter has taps (r x s > 1) and the table says so (eager_blocked, and
 * eager_blocked_reuse: the AVX-512 table keeps layers whose weights outweigh their output on the
 * GEMM, isa.c) -- the rule measured on the table's CPU.  On the AVX2 table, alternated in one
 * process against the GEMM (AMD EPYC Zen 3, AVX2, 2 threads, ResNet-50's layers, conversions and
 * workspace included): the 3x3 layers took
 * 0.83-0.96x the time at batch 8, and at batch 1 0.83-0.87x (3x3 stride 2 at 56x56) to level
 * (128 channels at 28x28, 0.90-1.02x); since the weights are packed as the tasks go, also those
 * with large weights and few output pixels, which the GEMM kept while a cached packing had to be
 * checked against the weights on every call: 3x3 512 -> 512 at 7x7 0.91-0.92x at batch 1 and
 * 0.94-0.96x at batch 8, stride 2 at 14x14 0.86-0.87x and 0.86-0.92x, 256 channels at 14x14
 * 0.90-0.92x and stride 2 at 28x28 0.92-0.97x at batch 1 (three runs).  1x1 layers: see below
 * (eager_blocked_1x1).  FASTCONV_F32_CONV=blocked forces it where the kernel takes d (on any
 * table: tests); any other forced mode keeps the GEMM. */
int fc_f32_eager_blocked_wanted(const fc_conv2d_desc *d) {
    const fc_isa_config *cfg = fc_config();
    if (!blocked_ok(d, cfg->kvec_lanes))
        return 0;
    const char *force = getenv("FASTCONV_F32_CONV");
    if (force && *force)
        return !strcmp(force, "blocked");
    /* 1x1 layers of many input channels and few output pixels (the late ResNet-50 layers at batch
     * 1, the 7x7 ones at batch 8): alternated in one process against the GEMM (two runs, AMD
     * EPYC Zen 3, 2 threads, batch 1), 512 -> 128 at 28x28 0.88-0.93x the time, 1024 -> 512 at
     * 14x14 0.93-0.95x, 2048 -> 512 and 512 -> 2048 at 7x7 0.85-0.93x, 1024 -> 2048 stride 2
     * 0.91-0.96x, 512 -> 256, 1024 -> 256 and 512 -> 1024 stride 2 0.95-1.02x; at batch 8 the 7x7
     * layers 0.95-1.00x.  With fewer input channels the conversions cost more than the kernel
     * saves (64 -> 256 at 56x56 1.28x, 128 -> 512 at 28x28 1.35x), and at batch 8 the 28x28 and
     * 14x14 layers were mixed (0.84-1.12x).  Linear layers (1x1 convolutions of 1x1 images, rows
     * as the batch) take the rule too: 4096 -> 4096 at 1, 8 and 64 rows 0.57-0.71x the GEMM's
     * time, 2048 -> 1000 and 512 -> 1000 0.65-1.02x (one run of 2048 -> 1000 at 1 row 1.13x, the
     * next 0.95x). */
    const int64_t pixels = d->n * d->oh * d->ow;
    if (d->r * d->s == 1)
        return cfg->eager_blocked_1x1 && d->c >= 512 && pixels <= 1024;
    return cfg->eager_blocked && (!cfg->eager_blocked_reuse || d->c * d->r * d->s <= cfg->eager_blocked_reuse * pixels);
}

/* Scratch bytes of fc_f32_conv2d_nchw_blocked on nthreads threads: the blocked input (with its
 * border) and output, then each thread's weight buffer (plan_init), whole cache lines apart. */
int64_t fc_f32_eager_blocked_scratch(const fc_conv2d_desc *d, int nthreads) {
    if (!blocked_ok(d, fc_config()->kvec_lanes))
        return -1;
    const int64_t b = needed_border(d);
    bplan_t B;
    plan_init(&B, d, b, 0, 0, nthreads);
    const size_t in = fc_size_mul3(fc_size_mul3((size_t)d->n, (size_t)d->c, (size_t)(d->h + 2 * b)),
                                   (size_t)(d->w + 2 * b), 1);
    const size_t out = fc_size_mul3(fc_size_mul3((size_t)d->n, (size_t)d->k, (size_t)d->oh), (size_t)d->ow, 1);
    const size_t wbufs = fc_size_mul3((size_t)FC_MAX(1, nthreads), (size_t)B.wslice, 1);
    size_t total, acts;
    if (fc_size_add(in, out, &acts) || fc_size_add(acts, wbufs, &total) || fc_size_add(total, 32, &total) ||
        total > (size_t)INT64_MAX / sizeof(float))
        return -1;
    return (int64_t)(total * sizeof(float));
}

/* An eager NCHW call on the blocked kernel: the input converted once into the blocked layout
 * (with the border its padding needs), the residual (if any) into the blocked output, which the
 * kernel then overwrites in place, and the output converted back.  What the GEMM pays on every
 * layer in gathered panels or discarded columns, this pays in two or three conversions at about
 * memory speed; which wins is fc_f32_eager_blocked_wanted's rule.  The (k, c, r, s) weights are
 * packed as the tasks go, a reduction block at a time into each thread's buffer (pack_blocks), so
 * nothing is cached and weights that change from call to call (a training loop) cost no more
 * than weights that stay.  (A cache of packed weights had to compare the weights with a copy on
 * every call, 0.5 ms of a 2.3 ms call for 3x3 512 -> 512 at batch 1, and to pack them again and
 * copy them when they changed.)  scratch: the caller's workspace of scratch_bytes, at least
 * fc_f32_eager_blocked_scratch(d, nthreads) (kept by the caller between calls: allocated and
 * freed per call it cost 2-12% of three 3x3 layers' time at batch 1). */
int fc_f32_conv2d_nchw_blocked(const fc_conv2d_desc *d, const float *x, const float *weight, const float *bias,
                               const float *residual, float *y, void *scratch, int64_t scratch_bytes, int nthreads,
                               const char **kernel) {
    if (!blocked_ok(d, fc_config()->kvec_lanes))
        return FC_EUNSUPPORTED;
    const int64_t b = needed_border(d), bytes = fc_f32_eager_blocked_scratch(d, nthreads);
    if (bytes < 0 || !scratch || scratch_bytes < bytes || !x || !weight || !y)
        return FC_EINVAL;
    bplan_t B;
    plan_init(&B, d, b, 0, 0, nthreads);
    const size_t xfloats = (size_t)d->n * d->c * (d->h + 2 * b) * (d->w + 2 * b);
    const size_t yfloats = (size_t)d->n * d->k * d->oh * d->ow;
    float *xb = (float *)scratch, *yb = xb + xfloats;
    B.wraw = weight;
    B.wbuf = xb + (xfloats + yfloats + 31) / 32 * 32; /* 128 bytes past a multiple of scratch's alignment */
    int status = fc_f32_to_blocked(d->n, d->c, d->h, d->w, x, b, xb, nthreads);
    if (status == FC_OK && residual)
        status = fc_f32_to_blocked(d->n, d->k, d->oh, d->ow, residual, 0, yb, nthreads);
    if (status == FC_OK)
        status = run_blocked(&B, xb, NULL, bias, residual ? yb : NULL, yb, nthreads);
    if (status == FC_OK)
        status = fc_f32_from_blocked(d->n, d->k, d->oh, d->ow, yb, 0, y, nthreads);
    if (status == FC_OK && kernel)
        *kernel = fc_config()->blocked_eager_name;
    return status;
}

/* -- layout conversions --------------------------------------------------------------------------- */

static int convert_ok(int64_t n, int64_t c, int64_t h, int64_t w, int64_t border, int64_t L) {
    return n >= 1 && c >= 1 && h >= 1 && w >= 1 && border >= 0 && c % L == 0;
}

/* dst[p * L + l] = l < rows ? src[l * ld + p] : 0 for p < n: up to L rows of n values
 * interleaved into n vectors of L lanes (the table's register transpose where it has one: the
 * element-by-element loop ran conversions at a third of a copy's speed). */
static void interleave(const float *src, int64_t ld, int64_t rows, int64_t n, int64_t L, float *dst) {
    const fc_kvec_pack_fn pack = fc_config()->kvec_pack;
    if (pack) {
        pack(src, ld, rows, n, dst);
        return;
    }
    for (int64_t p = 0; p < n; p++)
        for (int64_t l = 0; l < L; l++)
            dst[p * L + l] = l < rows ? src[l * ld + p] : 0.0f;
}

/* Rows [i0, i1) of L NCHW planes of h x w (nchw: the first) into one blocked plane with border b
 * (blk), pixel by pixel, with the border those rows own zeroed (zero_rows_border). */
static void rows_to_blocked(const float *nchw, float *blk, int64_t h, int64_t w, int64_t b, int64_t L, int64_t i0,
                            int64_t i1) {
    const int64_t wp = w + 2 * b;
    zero_rows_border(blk, h, w, b, L, i0, i1);
    for (int64_t i = i0; i < i1; i++)
        interleave(nchw + i * w, h * w, L, w, L, blk + ((i + b) * wp + b) * L);
}

void fc_f32_rows_to_blocked(const float *nchw, float *blk, int64_t h, int64_t w, int64_t b, int64_t i0, int64_t i1) {
    rows_to_blocked(nchw, blk, h, w, b, fc_config()->kvec_lanes, i0, i1);
}

/* Between L NCHW planes of h x w (nchw) and one blocked plane with border b (blk): to_blocked
 * interleaves them (rows_to_blocked); else the reverse, L pixels at a time through a small
 * transposed block. */
static void convert_plane(float *nchw, float *blk, int64_t h, int64_t w, int64_t b, int64_t L, int to_blocked) {
    float tmp[16 * 16]; /* L x L, L <= 16 */
    if (b == 0) /* the rows follow each other in both layouts: one long row */
        w *= h, h = 1;
    if (to_blocked) {
        rows_to_blocked(nchw, blk, h, w, b, L, 0, h);
        return;
    }
    const int64_t wp = w + 2 * b;
    for (int64_t i = 0; i < h; i++) {
        const float *row = blk + ((i + b) * wp + b) * L;
        for (int64_t p0 = 0; p0 < w; p0 += L) { /* tmp[l * L + p] = row[(p0 + p) * L + l] */
            const int64_t np = FC_MIN(L, w - p0);
            interleave(row + p0 * L, L, np, L, L, tmp);
            for (int64_t l = 0; l < L; l++) {
                float *dst = nchw + ((size_t)l * h + i) * w + p0;
                for (int64_t p = 0; p < np; p++)
                    dst[p] = tmp[l * L + p];
            }
        }
    }
}

static int convert(int64_t n, int64_t c, int64_t h, int64_t w, float *nchw, int64_t border, float *blk,
                   int nthreads, int to_blocked) {
    const int64_t L = fc_config()->kvec_lanes;
    if (!convert_ok(n, c, h, w, border, L) || !nchw || !blk)
        return FC_EINVAL;
    const int64_t plane = (h + 2 * border) * (w + 2 * border) * L, planes = n * (c / L);
    const int team = fc_team(nthreads, planes * plane, 1 << 15);
    (void)team;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < planes; t++)
        convert_plane(nchw + (size_t)t * L * h * w, blk + (size_t)t * plane, h, w, border, L, to_blocked);
    return FC_OK;
}

/* x is only read: the one conversion routine serves both directions. */
int fc_f32_to_blocked(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t border, float *y,
                      int nthreads) {
    return convert(n, c, h, w, (float *)x, border, y, nthreads, 1);
}

int fc_f32_from_blocked(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t border, float *y,
                        int nthreads) {
    return convert(n, c, h, w, y, border, (float *)x, nthreads, 0);
}
