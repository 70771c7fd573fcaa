/* Winograd F(4x4, 3x3) for float32 3x3, stride-1 convolutions (Lavin & Gray 2016).
 *
 * Each 4x4 block of output pixels is A^T [ sum_c U_c * V_c ] A, with V_c = B^T d_c B the
 * transform of the 6x6 input tile under the block and U_c = G g_c G^T that of the filter: the
 * 3x3 convolution's 144 multiplies per block and channel become 36.  Summed over channels, each
 * of the 36 transform elements xi is a matrix product
 *     M[xi][k][tile] = sum_c U[xi][k][c] V[xi][c][tile]
 * which runs on the instruction set's GEMM microkernel (isa.c).
 *
 * The batch's tiles are processed in chunks whose V and M fit in the caches; per chunk the
 * team transforms the input (one channel x 16 tiles per step, the 16 tiles along the vector
 * lanes, so the transforms vectorise), runs the 36 GEMMs, and transforms the output back with
 * bias, residual and relu fused.  U is computed once per weight by fc_f32_winograd_weights
 * (the caller caches it), for each xi kp = k rounded up to the microkernel's mr rows (zero rows
 * past k, so no tail block exists; a common multiple of every table's mr, 24, made the GEMMs of
 * 64- and 128-channel layers 9% longer) in the layout the GEMM reads: where the
 * instruction set has kernels for pre-packed weights, each block of mr rows as [c][mr] (one
 * sequential stream the kernel fetches ahead; at batch 1 U comes from memory, four times the
 * weights' size), else [kp][c], rows read in place.  Panels of at most FC_NARROW_COLS tiles
 * (ResNet's 28x28 planes at batch 1: 49 tiles, one past a panel) run the narrow kernel over all
 * of xi's blocks at once instead of a 16-column pass.  On channel-blocked activations (compiled
 * plans), layers of up to 128 x 128 channels run with the channels in the vectors instead and the
 * products turned around (the last section).
 */
#include "fc_internal.h"

#define LANES 16
#define CHUNK_BYTES (2 << 20) /* V + M of one chunk of tiles */

static int64_t round_up(int64_t v, int64_t m) {
    return (v + m - 1) / m * m;
}

/* U's rows per element xi: k rounded up to the microkernel's mr (zero rows past k). */
static int64_t padded_k(int64_t k) {
    return round_up(k, fc_config()->mr);
}

int64_t fc_f32_winograd_weights_size(int64_t k, int64_t c) {
    if (k < 1 || c < 1 || k > INT64_MAX / 72) /* padded_k cannot overflow */
        return -1;
    const int64_t kp = padded_k(k);
    return kp > INT64_MAX / 36 / c ? -1 : 36 * kp * c;
}

/* u = G g G^T for one 3x3 filter, in double (the filter transform is done once per weight). */
static void filter_transform(const float *g, double u[6][6]) {
    static const double G[6][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                   {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                   {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
    double t[6][3];
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 3; j++)
            t[i][j] = G[i][0] * g[0 * 3 + j] + G[i][1] * g[1 * 3 + j] + G[i][2] * g[2 * 3 + j];
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++)
            u[i][j] = t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2];
}

int fc_bytes_equal(const void *a, const void *b, int64_t bytes) {
    return bytes <= 0 || memcmp(a, b, (size_t)bytes) == 0;
}

/* Where element xi of filter (kk, cc)'s transform lies, from the start of xi's matrix, in the
 * layouts the products read: rows [kk][cc] read in place; blocks of mr rows pre-packed as
 * [cc][kk % mr]; or (the blocked order's U^T, below) panels of nr columns as [cc][kk % nr]. */
typedef enum { U_ROWS, U_PACKED, U_PANELS } ukind_t;
typedef struct {
    ukind_t kind;
    int64_t c, mr, nr;
} ulayout_t;

static size_t u_at(const ulayout_t *l, int64_t kk, int64_t cc) {
    switch (l->kind) {
    case U_PACKED:
        return (size_t)(kk - kk % l->mr) * l->c + (size_t)cc * l->mr + (size_t)(kk % l->mr);
    case U_PANELS:
        return ((size_t)(kk / l->nr) * l->c + (size_t)cc) * l->nr + (size_t)(kk % l->nr);
    default:
        return (size_t)kk * l->c + (size_t)cc;
    }
}

/* Every filter's transform, computed in double, into `rows` x c floats per element xi (rows past
 * k zero), laid out as l says. */
static void transform_filters(int64_t k, int64_t rows, const float *w, float *u, const ulayout_t *l, int nthreads) {
    const int64_t c = l->c;
    const size_t estride = (size_t)rows * (size_t)c;
    int team = fc_team(nthreads, rows * c * 36, 1 << 16);
    (void)team;
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t kk = 0; kk < rows; kk++)
        for (int64_t cc = 0; cc < c; cc++) {
            double t[6][6] = {{0}};
            if (kk < k)
                filter_transform(w + (kk * c + cc) * 9, t);
            const size_t at = u_at(l, kk, cc);
            for (int e = 0; e < 36; e++)
                u[(size_t)e * estride + at] = (float)t[e / 6][e % 6];
        }
}

int fc_f32_winograd_weights(int64_t k, int64_t c, const float *w, float *u, int nthreads) {
    if (fc_f32_winograd_weights_size(k, c) < 0)
        return FC_EINVAL;
    const fc_isa_config *cfg = fc_config();
    const ulayout_t l = {.kind = cfg->gemm_packed ? U_PACKED : U_ROWS, .c = c, .mr = cfg->mr};
    transform_filters(k, padded_k(k), w, u, &l, nthreads);
    return FC_OK;
}

/* The 1-D transforms over L lanes (a compile-time constant where inlined): in[i * is + l] ->
 * out[i * os + l]. */
__attribute__((always_inline)) static inline void bt6(const float *restrict in, int64_t is, float *restrict out,
                                                      int64_t os, const int L) {
    for (int l = 0; l < L; l++) {
        float d0 = in[l], d1 = in[is + l], d2 = in[2 * is + l], d3 = in[3 * is + l], d4 = in[4 * is + l],
              d5 = in[5 * is + l];
        out[l] = 4 * d0 - 5 * d2 + d4;
        out[os + l] = -4 * d1 - 4 * d2 + d3 + d4;
        out[2 * os + l] = 4 * d1 - 4 * d2 - d3 + d4;
        out[3 * os + l] = -2 * d1 - d2 + 2 * d3 + d4;
        out[4 * os + l] = 2 * d1 - d2 - 2 * d3 + d4;
        out[5 * os + l] = 4 * d1 - 5 * d3 + d5;
    }
}

__attribute__((always_inline)) static inline void at6(const float *restrict in, int64_t is, float *restrict out,
                                                      int64_t os, const int L) {
    for (int l = 0; l < L; l++) {
        float m0 = in[l], m1 = in[is + l], m2 = in[2 * is + l], m3 = in[3 * is + l], m4 = in[4 * is + l],
              m5 = in[5 * is + l];
        float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        out[l] = m0 + s12 + s34;
        out[os + l] = d12 + 2 * d34;
        out[2 * os + l] = s12 + 4 * s34;
        out[3 * os + l] = d12 + 8 * d34 + m5;
    }
}

/* Where element (image n, channel c, row i, column j) of an activation lies: plane(n, c) + i * row +
 * j * pix.  NCHW: planes of h x w floats.  Channel-blocked (fastconv.h; compiled plans):
 * (n, c / L, h + 2b, w + 2b, L), the plane of channel c starting at its block's first interior
 * pixel, lane c % L. */
typedef struct {
    int64_t lanes;          /* 0: NCHW, else L */
    int64_t c, h, w;        /* the activation's channels and size */
    int64_t border, row, pix, block, img;
} layout_t;

static layout_t nchw_layout(int64_t c, int64_t h, int64_t w) {
    layout_t a = {.lanes = 0, .c = c, .h = h, .w = w, .row = w, .pix = 1};
    return a;
}

static layout_t blocked_layout(int64_t c, int64_t h, int64_t w, int64_t border, int64_t lanes) {
    const int64_t wp = w + 2 * border;
    layout_t a = {.lanes = lanes, .c = c, .h = h, .w = w, .border = border, .row = wp * lanes, .pix = lanes};
    a.block = (h + 2 * border) * wp * lanes;
    a.img = c / lanes * a.block;
    return a;
}

static inline size_t plane_at(const layout_t *a, int64_t n, int64_t c) {
    if (!a->lanes)
        return ((size_t)n * a->c + c) * a->h * a->w;
    return (size_t)n * a->img + (size_t)(c / a->lanes) * a->block + (a->border * a->row + a->border * a->pix) +
           c % a->lanes;
}

typedef struct {
    const fc_conv2d_desc *d;
    int64_t th, tw, tiles;  /* tile rows and columns per image, tiles in the batch */
    int64_t tcp;            /* tiles per chunk, a multiple of nr */
    int64_t kp, mr, nr, npan;
    layout_t xl, yl, rl;    /* the input's, output's and residual's layouts */
} wplan_t;

/* Tile t's image and tile row and column (th x tw tiles an image). */
static inline void tile_at(int64_t th, int64_t tw, int64_t t, int64_t *n, int64_t *ty, int64_t *tx) {
    *n = t / (th * tw);
    *ty = t / tw % th;
    *tx = t % tw;
}

/* The next tile's: the lanes walk consecutive tiles, so one division per call, not three per lane. */
static inline void tile_next(const wplan_t *W, int64_t *n, int64_t *ty, int64_t *tx) {
    if (++*tx == W->tw) {
        *tx = 0;
        if (++*ty == W->th) {
            *ty = 0;
            ++*n;
        }
    }
}

/* V[e][c][tl .. tl + 16) for channel c of the chunk's tiles t0 + tl + lane.  Gathering the 6x6
 * input patches into lanes is most of the transform's time: interior patches are copied without
 * a test per element (with one, and three divisions per lane, the transforms took 29% of a
 * Winograd layer at batch 8 on an AMD EPYC); only border patches check for padding. */
FC_CLONES
static void input_transform(const wplan_t *W, const float *x, int64_t c, int64_t t0, int64_t tl, int64_t t1,
                            float *v) {
    const fc_conv2d_desc *d = W->d;
    float tile[36 * LANES], tmp[36 * LANES];
    int64_t n, ty, tx;
    tile_at(W->th, W->tw, t0 + tl, &n, &ty, &tx);
    for (int l = 0; l < LANES; l++, tile_next(W, &n, &ty, &tx)) {
        if (t0 + tl + l >= t1) {
            for (int e = 0; e < 36; e++)
                tile[e * LANES + l] = 0.0f;
            continue;
        }
        const int64_t h0 = ty * 4 - d->pad_top, w0 = tx * 4 - d->pad_left, row = W->xl.row, pix = W->xl.pix;
        const float *plane = x + plane_at(&W->xl, n, c);
        if (h0 >= 0 && w0 >= 0 && h0 + 6 <= d->h && w0 + 6 <= d->w) {
            const float *src = plane + h0 * row + w0 * pix;
            if (pix == 1) /* NCHW: rows of 6 consecutive floats */
                for (int i = 0; i < 6; i++)
                    for (int j = 0; j < 6; j++)
                        tile[(i * 6 + j) * LANES + l] = src[i * row + j];
            else
                for (int i = 0; i < 6; i++)
                    for (int j = 0; j < 6; j++)
                        tile[(i * 6 + j) * LANES + l] = src[i * row + j * pix];
            continue;
        }
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 6; j++) {
                int64_t ih = h0 + i, iw = w0 + j;
                tile[(i * 6 + j) * LANES + l] =
                    ih >= 0 && ih < d->h && iw >= 0 && iw < d->w ? plane[ih * row + iw * pix] : 0.0f;
            }
    }
    for (int j = 0; j < 6; j++) /* down the columns: tmp = B^T d */
        bt6(tile + j * LANES, 6 * LANES, tmp + j * LANES, 6 * LANES, LANES);
    const size_t estride = (size_t)d->c * W->tcp;
    for (int i = 0; i < 6; i++) { /* along the rows: V = (B^T d) B, straight into V */
        float row[6 * LANES];
        bt6(tmp + i * 6 * LANES, LANES, row, LANES, LANES);
        for (int j = 0; j < 6; j++)
            memcpy(v + (size_t)(i * 6 + j) * estride + (size_t)c * W->tcp + tl, row + j * LANES,
                   LANES * sizeof(float));
    }
}

/* y for output channel k of the chunk's tiles t0 + tl + lane, from M, with the epilogue: bias,
 * residual and activation on all 16 x 16 values as vectors, then each lane's 4x4 block stored
 * (interior blocks without a test per element). */
FC_CLONES
static void output_transform(const wplan_t *W, const float *m, int64_t k, int64_t t0, int64_t tl, int64_t t1,
                             const float *bias, const float *residual, float *y) {
    const fc_conv2d_desc *d = W->d;
    float src[36 * LANES], tmp[24 * LANES], out[16 * LANES];
    const size_t estride = (size_t)W->kp * W->tcp;
    const int64_t mb = k / W->mr, i = k % W->mr, pan = tl / W->nr, j0 = tl % W->nr;
    const float *base = m + ((size_t)(mb * W->npan + pan) * W->mr + i) * W->nr + j0;
    for (int e = 0; e < 36; e++)
        memcpy(src + e * LANES, base + e * estride, LANES * sizeof(float));
    for (int j = 0; j < 6; j++) /* tmp = A^T M: 4 rows x 6 */
        at6(src + j * LANES, 6 * LANES, tmp + j * LANES, 6 * LANES, LANES);
    for (int a = 0; a < 4; a++) /* out = (A^T M) A: 4 x 4 */
        at6(tmp + a * 6 * LANES, LANES, out + a * 4 * LANES, LANES, LANES);
    const float b = bias ? bias[k] : 0.0f;
    for (int e = 0; e < 16 * LANES; e++)
        out[e] += b;
    const int64_t lanes = FC_MIN(LANES, t1 - t0 - tl);
    int64_t n, ty, tx;
    if (residual) { /* gathered into the lanes first, so the sum and activation stay vectors */
        float res[16 * LANES] = {0};
        const int64_t row = W->rl.row, pix = W->rl.pix;
        tile_at(W->th, W->tw, t0 + tl, &n, &ty, &tx);
        for (int l = 0; l < lanes; l++, tile_next(W, &n, &ty, &tx)) {
            const float *r0 = residual + plane_at(&W->rl, n, k) + ty * 4 * row + tx * 4 * pix;
            for (int a = 0; a < 4 && ty * 4 + a < d->oh; a++)
                for (int c = 0; c < 4 && tx * 4 + c < d->ow; c++)
                    res[(a * 4 + c) * LANES + l] = r0[a * row + c * pix];
        }
        for (int e = 0; e < 16 * LANES; e++)
            out[e] += res[e];
    }
    const int act = fc_conv_act(d);
    if (act != FC_ACT_NONE)
        fc_act_row_f32(out, 16 * LANES, act, (float)d->act_a, (float)d->act_b);
    const int64_t row = W->yl.row, pix = W->yl.pix;
    tile_at(W->th, W->tw, t0 + tl, &n, &ty, &tx);
    for (int l = 0; l < lanes; l++, tile_next(W, &n, &ty, &tx)) {
        float *y0 = y + plane_at(&W->yl, n, k) + ty * 4 * row + tx * 4 * pix;
        if (ty * 4 + 4 <= d->oh && tx * 4 + 4 <= d->ow) {
            for (int a = 0; a < 4; a++)
                for (int c = 0; c < 4; c++)
                    y0[a * row + c * pix] = out[(a * 4 + c) * LANES + l];
            continue;
        }
        for (int a = 0; a < 4 && ty * 4 + a < d->oh; a++)
            for (int c = 0; c < 4 && tx * 4 + c < d->ow; c++)
                y0[a * row + c * pix] = out[(a * 4 + c) * LANES + l];
    }
}

/* The GEMM kernels for U's layout: pre-packed blocks where the table has them (see the top). */
static const fc_ukernel_fn *u_kernels(const fc_isa_config *cfg) {
    return cfg->gemm_packed ? cfg->gemm_packed[0] : cfg->gemm[0];
}

/* Reduction step k0 of block mb of xi's U. */
static const float *u_block(const wplan_t *W, const fc_isa_config *cfg, const float *u, int64_t e, int64_t mb,
                            int64_t k0) {
    const float *a = u + ((size_t)e * W->kp + mb * W->mr) * W->d->c;
    return a + (cfg->gemm_packed ? k0 * W->mr : k0);
}

/* The tiles of a chunk's last panel when the narrow kernel takes it (1 to FC_NARROW_COLS, with U
 * pre-packed), else 0. */
static int64_t narrow_cols(const fc_isa_config *cfg, int64_t ntiles, int64_t nr) {
    const int64_t last = ntiles % nr;
    return cfg->gemm_packed && cfg->narrow && last > 0 && last <= FC_NARROW_COLS ? last : 0;
}

/* M[e] for weight block mb, over the chunk's live tiles: whole panels, then the last one only as
 * wide (in 16-column vectors) as its live tiles -- unless the narrow kernel takes it (narrow_gemm).
 * A full-width last panel made the GEMM compute 48 columns for ResNet's 4 tiles of a 7x7 plane at
 * batch 1, 96 for the 49 of a 28x28 one. */
static void gemm_block(const wplan_t *W, const fc_isa_config *cfg, const float *u, const float *v, float *m,
                       const int64_t *rowoff, int64_t e, int64_t mb, int64_t live, int64_t ntiles) {
    const int64_t c = W->d->c, kc = cfg->kc;
    const fc_ukernel_fn *gemm = u_kernels(cfg);
    const int64_t end = narrow_cols(cfg, ntiles, W->nr) ? ntiles - ntiles % W->nr : live;
    for (int64_t pan = 0; pan * W->nr < end; pan++) {
        const int64_t nv = (FC_MIN(W->nr, end - pan * W->nr) + 15) / 16;
        float *tile = m + (size_t)e * W->kp * W->tcp + (size_t)(mb * W->npan + pan) * W->mr * W->nr;
        for (int64_t k0 = 0; k0 < c; k0 += kc)
            gemm[nv - 1](FC_MIN(kc, c - k0), u_block(W, cfg, u, e, mb, k0), c,
                         v + ((size_t)e * c + k0) * W->tcp + pan * W->nr, rowoff, tile, k0 > 0);
    }
}

/* M[e] of the last panel's nc tiles for every block at once (the narrow kernel's [col][8] sums,
 * then each block's into its tile's [row][nr] layout). */
static void narrow_gemm(const wplan_t *W, const fc_isa_config *cfg, const float *u, const float *v, float *m,
                        const int64_t *rowoff, int64_t e, int64_t ntiles) {
    const int64_t c = W->d->c, kc = cfg->kc, nc = narrow_cols(cfg, ntiles, W->nr), pan = ntiles / W->nr;
    const int64_t mblocks = W->kp / W->mr, tile = W->mr * W->nr, cstride = W->npan * tile;
    float *first = m + (size_t)e * W->kp * W->tcp + (size_t)pan * tile;
    for (int64_t k0 = 0; k0 < c; k0 += kc)
        cfg->narrow(FC_MIN(kc, c - k0), mblocks, nc, u_block(W, cfg, u, e, 0, k0), W->mr * c,
                    v + ((size_t)e * c + k0) * W->tcp + pan * W->nr, rowoff, first, cstride, k0 > 0);
    for (int64_t mb = 0; mb < mblocks; mb++) {
        float *t = first + mb * cstride, sums[8 * FC_NARROW_COLS];
        memcpy(sums, t, (size_t)(8 * nc) * sizeof(float));
        fc_narrow_to_tile(sums, nc, W->mr, W->nr, t);
    }
}

/* What every chunk of a call reads and writes: the arrays, and the GEMM's B row offsets. */
typedef struct {
    const float *x, *u, *bias, *residual;
    float *y;
    const int64_t *rowoff;
} wcall_t;

/* One chunk of tiles [t0, t1) of a call planned by `plan`, on scratch v and m; `shared`: run by
 * the whole team, each phase split among the threads. */
typedef void (*wchunk_fn)(const void *plan, const wcall_t *a, int64_t t0, int64_t t1, float *v, float *m,
                          int shared);

/* The chunks of tcp tiles that cover `tiles`, each with vbytes of V and mbytes of M: with `own`
 * every thread runs whole chunks on its own scratch (no barriers), otherwise the team runs one
 * chunk at a time together.  The GEMM's B rows lie `stride` floats apart (nrow of them). */
static int run_chunks(const void *plan, wchunk_fn run, wcall_t a, int team, int own, int64_t tiles, int64_t tcp,
                      size_t vbytes, size_t mbytes, int64_t nrow, int64_t stride) {
    const int64_t chunks = (tiles + tcp - 1) / tcp, copies = own ? team : 1;
    const size_t vslice = fc_slice(vbytes), mslice = fc_slice(mbytes);
    size_t both;
    fc_size_add(vslice, mslice, &both); /* SIZE_MAX on overflow: fc_alloc then fails */
    char *scratch = fc_alloc(fc_size_mul3((size_t)copies, both, 1));
    int64_t *rowoff = fc_alloc(fc_size_mul3((size_t)nrow, sizeof(int64_t), 1));
    if (!scratch || !rowoff) {
        free(scratch), free(rowoff);
        return FC_ENOMEM;
    }
    for (int64_t p = 0; p < nrow; p++)
        rowoff[p] = p * stride;
    a.rowoff = rowoff;

    #pragma omp parallel num_threads(team)
    {
        if (own) {
            char *mine = scratch + (size_t)FC_THREAD_ID() * (vslice + mslice);
            #pragma omp for schedule(dynamic, 1)
            for (int64_t ch = 0; ch < chunks; ch++)
                run(plan, &a, ch * tcp, FC_MIN(tiles, (ch + 1) * tcp), (float *)mine, (float *)(mine + vslice), 0);
        } else {
            for (int64_t ch = 0; ch < chunks; ch++)
                run(plan, &a, ch * tcp, FC_MIN(tiles, (ch + 1) * tcp), (float *)scratch,
                    (float *)(scratch + vslice), 1);
        }
    }
    free(scratch);
    free(rowoff);
    return FC_OK;
}

/* One chunk of tiles [t0, t1): input transform, the 36 GEMMs, output transform.  Called either
 * by one thread on its own scratch (`shared` = 0) or by the whole team on shared scratch, each
 * phase split among the threads. */
static void run_chunk(const void *plan, const wcall_t *a, int64_t t0, int64_t t1, float *v, float *m, int shared) {
    const wplan_t *W = plan;
    const fc_isa_config *cfg = fc_config();
    const float *x = a->x, *u = a->u, *bias = a->bias, *residual = a->residual;
    float *y = a->y;
    const int64_t *rowoff = a->rowoff;
    const fc_conv2d_desc *d = W->d;
    const int64_t mblocks = W->kp / W->mr;
    /* Live tiles in 16-lane groups: what the transforms make and the GEMMs read. */
    const int64_t ntiles = t1 - t0, live16 = (ntiles + LANES - 1) / LANES, live = live16 * LANES;
    const int narrow = narrow_cols(cfg, ntiles, W->nr) > 0;
    /* GEMM tasks in xi order: xi's weight blocks, then its narrow panel where there is one. */
    const int64_t per_e = mblocks + (narrow ? 1 : 0), ngemm = 36 * per_e;
    const int64_t nin = d->c * live16, nout = d->k * live16;
    if (shared) {
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < nin; q++)
            input_transform(W, x, q / live16, t0, q % live16 * LANES, t1, v);
        /* Static: each thread takes a run of whole elements xi, whose U[xi] and V[xi] then stay
         * in its own cache (handed out one block at a time, both cores read every V[xi]).  256
         * channels at 14x14, batch 8: 2.08 -> 1.99 ms, 2.99 -> 2.58 with the caches flushed
         * before each call; 512 at 7x7: 2.72 -> 2.48; batch 1, 128 at 28x28: 0.34 -> 0.32. */
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < ngemm; q++)
            if (q % per_e < mblocks)
                gemm_block(W, cfg, u, v, m, rowoff, q / per_e, q % per_e, live, ntiles);
            else
                narrow_gemm(W, cfg, u, v, m, rowoff, q / per_e, ntiles);
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < nout; q++)
            output_transform(W, m, q / live16, t0, q % live16 * LANES, t1, bias, residual, y);
        return;
    }
    for (int64_t q = 0; q < nin; q++)
        input_transform(W, x, q / live16, t0, q % live16 * LANES, t1, v);
    for (int64_t q = 0; q < ngemm; q++)
        if (q % per_e < mblocks)
            gemm_block(W, cfg, u, v, m, rowoff, q / per_e, q % per_e, live, ntiles);
        else
            narrow_gemm(W, cfg, u, v, m, rowoff, q / per_e, ntiles);
    for (int64_t q = 0; q < nout; q++)
        output_transform(W, m, q / live16, t0, q % live16 * LANES, t1, bias, residual, y);
}

static int winograd(const fc_conv2d_desc *d, const float *x, layout_t xl, const float *u, const float *bias,
                    const float *residual, layout_t rl, float *y, layout_t yl, int nthreads) {
    const fc_isa_config *cfg = fc_config();
    if (d->n < 1 || d->c < 1 || d->k < 1 || d->oh < 1 || d->ow < 1 || d->pad_top < 0 || d->pad_left < 0)
        return FC_EINVAL;
    if (d->r != 3 || d->s != 3 || d->stride_h != 1 || d->stride_w != 1 || d->dil_h != 1 || d->dil_w != 1 ||
        d->groups != 1)
        return FC_EUNSUPPORTED;
    if (fc_f32_winograd_weights_size(d->k, d->c) < 0) /* bounds k and c for the sizes below */
        return FC_EINVAL;
    wplan_t W = {.d = d, .mr = cfg->mr, .nr = cfg->nr, .xl = xl, .yl = yl, .rl = rl};
    W.th = (d->oh + 3) / 4;
    W.tw = (d->ow + 3) / 4;
    W.tiles = d->n * W.th * W.tw;
    W.kp = padded_k(d->k);
    int team = fc_team(nthreads, W.tiles * d->c * d->k * 36, 1 << 16);
    /* Chunks: V and M of a chunk within CHUNK_BYTES, at least one panel.  With enough tiles each
     * thread runs whole chunks on its own scratch (no barriers); otherwise the team shares one
     * chunk at a time, phase by phase. */
    const size_t per_tile = fc_size_mul3(36 * sizeof(float), (size_t)d->c + (size_t)W.kp, 1);
    W.tcp = FC_MAX(W.nr, (int64_t)(CHUNK_BYTES / per_tile) / W.nr * W.nr);
    int own = W.tiles >= 2 * team * W.nr;
    if (own) /* at least two chunks per thread, for balance */
        W.tcp = FC_MIN(W.tcp, FC_MAX(W.nr, W.tiles / (2 * team) / W.nr * W.nr));
    W.tcp = FC_MIN(W.tcp, round_up(W.tiles, W.nr));
    W.npan = W.tcp / W.nr;
    const wcall_t args = {.x = x, .u = u, .bias = bias, .residual = residual, .y = y};
    return run_chunks(&W, run_chunk, args, team, own, W.tiles, W.tcp,
                      fc_size_mul3(36 * sizeof(float), (size_t)d->c, (size_t)W.tcp),
                      fc_size_mul3(36 * sizeof(float), (size_t)W.kp, (size_t)W.tcp), d->c, W.tcp);
}

int fc_f32_conv2d_winograd(const fc_conv2d_desc *d, const float *x, const float *u, const float *bias,
                           const float *residual, float *y, int nthreads, const char **kernel) {
    const int status = winograd(d, x, nchw_layout(d->c, d->h, d->w), u, bias, residual,
                                nchw_layout(d->k, d->oh, d->ow), y, nchw_layout(d->k, d->oh, d->ow), nthreads);
    if (status == FC_OK && kernel)
        *kernel = fc_config()->winograd_name;
    return status;
}

/* -- on channel-blocked activations (compiled plans): channels in the vectors -------------------
 *
 * The transforms above put 16 tiles in the vector lanes, each lane gathering its 6x6 patch one
 * float at a time.  On channel-blocked activations ((n, c/L, h, w, L), fastconv.h) a pixel's L
 * channels are already one vector, so here the transforms run on channel vectors, one tile at a
 * time, without a gather or a scatter, and the matrix products are turned around so that the
 * channels stay the fastest dimension from input to output:
 *     M^T[xi][tile][k] = sum_c V^T[xi][tile][c] U^T[xi][c][k]
 * A tile's transformed input channels (a row of V^T) are the GEMM's A rows, read in place; an
 * input channel's transformed filters for every output channel (a row of U^T, kq = k rounded up
 * to 16 with zero columns) its B rows; each mr x nr tile of M^T holds mr tiles x nr output
 * channels, so the output transform reads a tile's L output channels as one vector too.  Chunks,
 * the own/shared split of the team and the fused epilogue are as above.  (ResNet-50 at batch 8,
 * AMD EPYC Zen 4: the transforms had taken 52% of a 64-channel layer at 56x56 and 36% of a
 * 128-channel one at 28x28; docs/results/inference.md.) */

#define KQ_STEP 16 /* the GEMM kernels' column vector: kq is a multiple of it */

/* Whether a blocked layer runs this way (channels in the vectors) or as the NCHW kernel does
 * (tiles in the vectors, the transforms reading and writing the blocked layout): this way where
 * the transforms weigh most against the products, up to 128 x 128 channels.  ResNet-50's 3x3
 * layers in Winograd plans, the two builds alternated in separate processes (AMD EPYC Zen 4,
 * AVX-512, 2 threads, medians of four): 64 channels at 56x56 0.75x the time at batch 1 and 0.79x
 * at batch 8, 128 at 28x28 0.77x and 0.82x; 256 at 14x14 1.25x and 0.99x, 512 at 7x7 1.04x and
 * 1.12x (their products turned around stream U^T's larger blocks with less reuse). */
static int channels_in_vectors(int64_t k, int64_t c) {
    return k * c <= 128 * 128;
}

/* U^T's panels of nr output channels over kq = k rounded up to 16. */
static int64_t u_panels(int64_t k) {
    return (round_up(k, KQ_STEP) + fc_config()->nr - 1) / fc_config()->nr;
}

int64_t fc_f32_winograd_blocked_weights_size(int64_t k, int64_t c) {
    if (k < 1 || c < 1 || k > INT64_MAX / 72)
        return -1;
    if (!channels_in_vectors(k, c))
        return fc_f32_winograd_weights_size(k, c);
    const int64_t cols = u_panels(k) * fc_config()->nr;
    return cols > INT64_MAX / 36 / c ? -1 : 36 * c * cols;
}

/* U^T[xi] as the GEMM's B, packed a panel at a time: [xi][panel][c][nr], element xi of filter
 * (k, c)'s transform at row c, column k % nr of panel k / nr, zero columns past k.  (Rows read in
 * place from a [c][kq] matrix lie kq floats apart: 2 KB for 512 channels, every row of a block in
 * the same few L1 sets, and the 7x7 layers ran 4x slower.) */
int fc_f32_winograd_blocked_weights(int64_t k, int64_t c, const float *w, float *ut, int nthreads) {
    if (fc_f32_winograd_blocked_weights_size(k, c) < 0 || !w || !ut)
        return FC_EINVAL;
    if (!channels_in_vectors(k, c))
        return fc_f32_winograd_weights(k, c, w, ut, nthreads);
    const ulayout_t l = {.kind = U_PANELS, .c = c, .nr = fc_config()->nr};
    transform_filters(k, u_panels(k) * l.nr, w, ut, &l, nthreads);
    return FC_OK;
}

typedef struct {
    const fc_conv2d_desc *d;
    int64_t L, mr, nr, kq, npk;  /* lanes; the GEMM tile; k rounded up to 16, panels of nr over it */
    int64_t th, tw, tiles, tcp;  /* tile rows and columns per image, tiles in the batch, per chunk (x mr) */
    int64_t vstride, mstride;    /* floats of one element's V^T (tcp x c) and M^T (tcp x npk * nr) */
    layout_t xl, yl, rl;
} bwplan_t;

/* V^T[xi][tl][cb * L ..] for tile t (the chunk's tl) and input channel block cb: the 6x6 patch's
 * pixel vectors (zero outside the image; interior patches copied without a test), B^T d down the
 * columns, then (B^T d) B along the rows straight into V^T. */
__attribute__((always_inline)) static inline void bw_input(const bwplan_t *W, const float *x, int64_t cb, int64_t t,
                                                           int64_t tl, float *vt, const int L) {
    const fc_conv2d_desc *d = W->d;
    float patch[36 * 16], tmp[36 * 16];
    int64_t n, ty, tx;
    tile_at(W->th, W->tw, t, &n, &ty, &tx);
    const int64_t h0 = ty * 4 - d->pad_top, w0 = tx * 4 - d->pad_left, row = W->xl.row;
    const float *plane = x + plane_at(&W->xl, n, cb * L);
    if (h0 >= 0 && w0 >= 0 && h0 + 6 <= d->h && w0 + 6 <= d->w) {
        for (int i = 0; i < 6; i++)
            memcpy(patch + i * 6 * L, plane + (h0 + i) * row + w0 * L, (size_t)(6 * L) * sizeof(float));
    } else {
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 6; j++) {
                const int64_t ih = h0 + i, iw = w0 + j;
                float *dst = patch + (i * 6 + j) * L;
                if (ih >= 0 && ih < d->h && iw >= 0 && iw < d->w)
                    memcpy(dst, plane + ih * row + iw * L, (size_t)L * sizeof(float));
                else
                    memset(dst, 0, (size_t)L * sizeof(float));
            }
    }
    for (int j = 0; j < 6; j++)
        bt6(patch + j * L, 6 * L, tmp + j * L, 6 * L, L);
    float *v = vt + tl * d->c + cb * L;
    for (int i = 0; i < 6; i++) { /* through a local row: constant strides, so the loop vectorises */
        float row[6 * 16];
        bt6(tmp + i * 6 * L, L, row, L, L);
        for (int j = 0; j < 6; j++)
            memcpy(v + (size_t)(i * 6 + j) * W->vstride, row + j * L, (size_t)L * sizeof(float));
    }
}

/* The output block of tile t (the chunk's tl) for output channel block kb: A^T M A on its 36
 * vectors of M^T, + bias, + residual, the activation, stored where it lies in the image. */
__attribute__((always_inline)) static inline void bw_output(const bwplan_t *W, const float *mt, int64_t kb,
                                                            int64_t t, int64_t tl, const float *bias,
                                                            const float *residual, float *y, const int L) {
    const fc_conv2d_desc *d = W->d;
    float src[36 * 16], tmp[24 * 16], out[16 * 16];
    const int64_t k0 = kb * L;
    const float *base = mt + ((tl / W->mr) * W->npk + k0 / W->nr) * W->mr * W->nr + (tl % W->mr) * W->nr + k0 % W->nr;
    for (int e = 0; e < 36; e++)
        memcpy(src + e * L, base + (size_t)e * W->mstride, (size_t)L * sizeof(float));
    for (int j = 0; j < 6; j++)
        at6(src + j * L, 6 * L, tmp + j * L, 6 * L, L);
    for (int a = 0; a < 4; a++)
        at6(tmp + a * 6 * L, L, out + a * 4 * L, L, L);
    int64_t n, ty, tx;
    tile_at(W->th, W->tw, t, &n, &ty, &tx);
    const int64_t rows = FC_MIN(4, d->oh - ty * 4), cols = FC_MIN(4, d->ow - tx * 4);
    if (bias)
        for (int p = 0; p < 16; p++)
            for (int l = 0; l < L; l++)
                out[p * L + l] += bias[k0 + l];
    if (residual) {
        const float *r0 = residual + plane_at(&W->rl, n, k0) + ty * 4 * W->rl.row + tx * 4 * L;
        for (int a = 0; a < rows; a++)
            for (int c = 0; c < cols; c++)
                for (int l = 0; l < L; l++)
                    out[(a * 4 + c) * L + l] += r0[a * W->rl.row + c * L + l];
    }
    const int act = fc_conv_act(d);
    if (act != FC_ACT_NONE)
        fc_act_row_f32(out, 16 * L, act, (float)d->act_a, (float)d->act_b);
    float *y0 = y + plane_at(&W->yl, n, k0) + ty * 4 * W->yl.row + tx * 4 * L;
    for (int a = 0; a < rows; a++)
        memcpy(y0 + a * W->yl.row, out + a * 4 * L, (size_t)(cols * L) * sizeof(float));
}

/* The transforms for both blocked widths, each in the CPU's clones. */
FC_CLONES static void bw_input_any(const bwplan_t *W, const float *x, int64_t cb, int64_t t, int64_t tl, float *vt) {
    if (W->L == 16)
        bw_input(W, x, cb, t, tl, vt, 16);
    else
        bw_input(W, x, cb, t, tl, vt, 8);
}

FC_CLONES static void bw_output_any(const bwplan_t *W, const float *mt, int64_t kb, int64_t t, int64_t tl,
                                    const float *bias, const float *residual, float *y) {
    if (W->L == 16)
        bw_output(W, mt, kb, t, tl, bias, residual, y, 16);
    else
        bw_output(W, mt, kb, t, tl, bias, residual, y, 8);
}

/* M^T[xi] = V^T[xi] U^T[xi] over the chunk's tile blocks (ntb of mr tiles): for each panel of nr
 * output channels and each reduction block of kc input channels, every tile block in turn, so
 * that the block of U^T (kc x nr) stays in cache while the tiles pass. */
static void bw_gemm(const bwplan_t *W, const fc_isa_config *cfg, const float *ut, const float *vt, float *mt,
                    const int64_t *rowoff, int64_t e, int64_t ntb) {
    const int64_t c = W->d->c, kc = cfg->kc;
    const float *v = vt + (size_t)e * W->vstride;
    float *m = mt + (size_t)e * W->mstride;
    for (int64_t pan = 0; pan < W->npk; pan++) {
        const int64_t nv = FC_MIN(W->nr, W->kq - pan * W->nr) / 16;
        const float *u = ut + ((size_t)e * W->npk + pan) * c * W->nr;
        for (int64_t k0 = 0; k0 < c; k0 += kc) {
            for (int64_t tb = 0; tb < ntb; tb++)
                cfg->gemm[0][nv - 1](FC_MIN(kc, c - k0), v + tb * W->mr * c + k0, c, u + k0 * W->nr, rowoff,
                                     m + (tb * W->npk + pan) * W->mr * W->nr, k0 > 0);
        }
    }
}

/* One chunk of tiles [t0, t1), as run_chunk: by one thread on its own scratch, or by the team
 * (`shared`), each phase split among the threads (the GEMMs by whole elements xi). */
static void run_bchunk(const void *plan, const wcall_t *a, int64_t t0, int64_t t1, float *vt, float *mt,
                       int shared) {
    const bwplan_t *W = plan;
    const fc_isa_config *cfg = fc_config();
    const float *x = a->x, *ut = a->u, *bias = a->bias, *residual = a->residual;
    float *y = a->y;
    const int64_t *rowoff = a->rowoff;
    const fc_conv2d_desc *d = W->d;
    const int64_t ntiles = t1 - t0, ntb = (ntiles + W->mr - 1) / W->mr, pad = ntb * W->mr - ntiles;
    const int64_t cbs = d->c / W->L, kbs = d->k / W->L, nin = ntiles * cbs, nout = ntiles * kbs;
    if (shared) {
        if (pad) { /* the last tile block's dead rows: zero, so their sums are (never stored) zeros */
            #pragma omp for schedule(static)
            for (int e = 0; e < 36; e++)
                memset(vt + e * W->vstride + ntiles * d->c, 0, (size_t)(pad * d->c) * sizeof(float));
        }
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < nin; q++)
            bw_input_any(W, x, q / ntiles, t0 + q % ntiles, q % ntiles, vt);
        #pragma omp for schedule(static)
        for (int e = 0; e < 36; e++)
            bw_gemm(W, cfg, ut, vt, mt, rowoff, e, ntb);
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < nout; q++)
            bw_output_any(W, mt, q / ntiles, t0 + q % ntiles, q % ntiles, bias, residual, y);
        return;
    }
    if (pad)
        for (int e = 0; e < 36; e++)
            memset(vt + e * W->vstride + ntiles * d->c, 0, (size_t)(pad * d->c) * sizeof(float));
    for (int64_t q = 0; q < nin; q++)
        bw_input_any(W, x, q / ntiles, t0 + q % ntiles, q % ntiles, vt);
    for (int e = 0; e < 36; e++)
        bw_gemm(W, cfg, ut, vt, mt, rowoff, e, ntb);
    for (int64_t q = 0; q < nout; q++)
        bw_output_any(W, mt, q / ntiles, t0 + q % ntiles, q % ntiles, bias, residual, y);
}

/* Channel-blocked activations (compiled plans): input with border xb (the transform checks its
 * bounds, so any border serves), output with border yb (zeroed here), residual with border rb
 * (residual == y: each output block's residual is read before the block is written, and no other
 * block reads it, so the output may overwrite it in place). */
int fc_f32_conv2d_winograd_blocked(const fc_conv2d_desc *d, const float *x, int64_t xb, const float *ut,
                                   const float *bias, const float *residual, int64_t rb, float *y, int64_t yb,
                                   int nthreads, const char **kernel) {
    const fc_isa_config *cfg = fc_config();
    const int64_t L = fc_f32_blocked_lanes();
    if (d->n < 1 || d->c < 1 || d->k < 1 || d->oh < 1 || d->ow < 1 || d->pad_top < 0 || d->pad_left < 0)
        return FC_EINVAL;
    if (d->r != 3 || d->s != 3 || d->stride_h != 1 || d->stride_w != 1 || d->dil_h != 1 || d->dil_w != 1 ||
        d->groups != 1)
        return FC_EUNSUPPORTED;
    if (d->c % L || d->k % L || (L != 8 && L != 16) || cfg->nr % L || xb < 0 || rb < 0 || yb < 0 || !x || !ut ||
        !y || (residual == y && rb != yb) || fc_f32_winograd_blocked_weights_size(d->k, d->c) < 0)
        return FC_EINVAL;
    if (!channels_in_vectors(d->k, d->c)) {
        fc_f32_blocked_zero_border(y, d->n, d->k, d->oh, d->ow, yb, nthreads);
        const int status = winograd(d, x, blocked_layout(d->c, d->h, d->w, xb, L), ut, bias, residual,
                                    blocked_layout(d->k, d->oh, d->ow, rb, L), y,
                                    blocked_layout(d->k, d->oh, d->ow, yb, L), nthreads);
        if (status == FC_OK && kernel)
            *kernel = cfg->winograd_blocked_name;
        return status;
    }
    bwplan_t W = {.d = d, .L = L, .mr = cfg->mr, .nr = cfg->nr, .kq = round_up(d->k, KQ_STEP)};
    W.xl = blocked_layout(d->c, d->h, d->w, xb, L);
    W.yl = blocked_layout(d->k, d->oh, d->ow, yb, L);
    W.rl = blocked_layout(d->k, d->oh, d->ow, rb, L);
    W.npk = u_panels(d->k);
    W.th = (d->oh + 3) / 4;
    W.tw = (d->ow + 3) / 4;
    W.tiles = d->n * W.th * W.tw;
    int team = fc_team(nthreads, W.tiles * d->c * d->k * 36, 1 << 16);
    /* Chunks: V^T and M^T of a chunk within CHUNK_BYTES, a multiple of mr tiles; with enough tiles
     * each thread runs whole chunks on its own scratch (at least two per thread, for balance),
     * otherwise the team shares one chunk at a time. */
    const size_t per_tile = fc_size_mul3(36 * sizeof(float), (size_t)d->c + (size_t)(W.npk * W.nr), 1);
    const int64_t least = round_up(FC_NR, W.mr); /* fewer tiles a chunk stream U^T once more each */
    W.tcp = FC_MAX(least, (int64_t)(CHUNK_BYTES / per_tile) / W.mr * W.mr);
    const int own = W.tiles >= 2 * team * least;
    if (own)
        W.tcp = FC_MIN(W.tcp, FC_MAX(least, W.tiles / (2 * team) / W.mr * W.mr));
    W.tcp = FC_MIN(W.tcp, round_up(W.tiles, W.mr));
    W.vstride = W.tcp * d->c;
    W.mstride = W.tcp * W.npk * W.nr;
    fc_f32_blocked_zero_border(y, d->n, d->k, d->oh, d->ow, yb, nthreads);
    const wcall_t args = {.x = x, .u = ut, .bias = bias, .residual = residual, .y = y};
    const int status = run_chunks(&W, run_bchunk, args, team, own, W.tiles, W.tcp,
                                  fc_size_mul3(36 * sizeof(float), (size_t)W.tcp, (size_t)d->c),
                                  fc_size_mul3(36 * sizeof(float), (size_t)W.tcp, (size_t)(W.npk * W.nr)),
                                  FC_MIN(cfg->kc, d->c), W.nr);
    if (status == FC_OK && kernel)
        *kernel = cfg->winograd_channels_name;
    return status;
}
