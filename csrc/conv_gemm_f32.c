/* float32 convolution as GEMM: per group, y[k, pixel] = sum over (c, r, s) of w[k, (c, r, s)] *
 * B[(c, r, s), pixel], with B the convolution's input windows.
 *
 * The microkernel (gemm_f32_*.c, chosen per instruction set in isa.c) computes mr output
 * channels x nr output pixels in registers (8 x 48 on AVX-512, 6 x 16 on AVX2),
 * pixels along the vectors, so a finished tile is mr runs of output row: it is written straight
 * into NCHW with bias, residual and relu fused -- no output layout conversion.  Where its B rows
 * come from is what makes this fast:
 *
 * - "direct": every B row is a contiguous window of one buffer, read in place.  The input is
 *   copied once into zero-padded, stride-split ("phase") planes of width wq; the kernel then
 *   computes virtual pixels q = oh * wq + ow of each image, where tap (r, s) of channel c reads
 *   plane[c, phase(r, s)][q + offset(r, s)].  Columns ow >= OW are computed and discarded (a few
 *   percent on large images).  A 1x1, stride-1, unpadded convolution reads the input itself.
 * - "packed": small images, where those discarded columns would cost too much, gather real
 *   pixels (over the whole batch, so a panel may span images) into nr-wide panels once per
 *   call, as im2col would: each run of a panel row is a run of the same phase planes.  Packing
 *   inflates a 3x3 convolution's B ninefold (direct windows share cache lines between taps),
 *   so it pays only where the discarded columns are many (7x7 images at batch 8).
 *
 * Blocking: the reduction runs in equal blocks of at most conv_kc rows (per ISA; whole
 * channels: reduction_block).  Within a block, each mr-channel slice of the weights (read in
 * place, mr row streams: no weight reordering per call; or packed once by a compiled plan, one
 * stream: fc_f32_gemm_weights) meets every pixel panel of the task while it sits in L1, the panels'
 * B blocks waiting in L2; a task's partial sums live in a small per-thread tile buffer, and a
 * tile is written out (epilogue fused) as soon as its last block is summed.  Tasks (group x
 * pixel panels x output-channel blocks) are shared out dynamically, so batch 1 also uses every
 * thread.  Each output element is summed by one thread in a fixed order: results do not depend
 * on the thread count.
 */
#include "conv_gemm_f32.h"

/* -- preparation ------------------------------------------------------------------------------- */

/* A group's last block of 8 output channels, when kg is not a multiple of 8: its rows, then
 * zero rows, so the microkernel never reads past the weights. */
static void pack_tail(const plan_t *P, int64_t g) {
    float *dst = P->atail + g * P->mr * P->crs;
    int64_t m0 = (P->mblocks - 1) * P->mr;
    for (int64_t i = 0; i < P->mr; i++) {
        if (m0 + i < P->kg)
            memcpy(dst + i * P->crs, P->w + (size_t)(g * P->kg + m0 + i) * P->crs, (size_t)P->crs * sizeof(float));
        else
            memset(dst + i * P->crs, 0, (size_t)P->crs * sizeof(float));
    }
}

/* Reduction step k0 of the A block mb of group g: in the pre-packed weights, or in the weights
 * themselves (row 0 of the block; the tail block from its copy). */
static const float *a_block(const plan_t *P, int64_t g, int64_t mb, int64_t k0) {
    if (P->apack)
        return P->apack + (((size_t)g * P->mblocks + mb) * P->crs + k0) * P->mr;
    if ((mb + 1) * P->mr > P->kg)
        return P->atail + g * P->mr * P->crs + k0;
    return P->w + (size_t)(g * P->kg + mb * P->mr) * P->crs + k0;
}

/* The weights as the pre-packed kernels read them: block mb of group g holds, for each reduction
 * step p, its mr weights side by side (zeros past the group's last channel), so the kernel
 * reads one sequential stream instead of mr rows crs apart.  Floats needed, or -1. */
int64_t fc_f32_gemm_packed_floats(const fc_conv2d_desc *d) {
    const int64_t mr = fc_config()->mr, kg = d->k / d->groups, crs = d->c / d->groups * d->r * d->s;
    size_t n = fc_size_mul3((size_t)d->groups * ((kg + mr - 1) / mr), (size_t)crs, (size_t)mr);
    return n > (size_t)INT64_MAX / sizeof(float) ? -1 : (int64_t)n;
}

void fc_f32_gemm_pack_weights(const fc_conv2d_desc *d, const float *w, float *out, int nthreads) {
    const int64_t mr = fc_config()->mr, kg = d->k / d->groups, crs = d->c / d->groups * d->r * d->s;
    const int64_t mblocks = (kg + mr - 1) / mr;
    int team = fc_team(nthreads, d->k * crs, 1 << 16);
    #pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t t = 0; t < d->groups * mblocks; t++) {
        int64_t g = t / mblocks, mb = t % mblocks;
        float *dst = out + (size_t)t * crs * mr;
        for (int64_t i = 0; i < mr; i++) {
            int64_t k = mb * mr + i;
            const float *src = w + (size_t)(g * kg + k) * crs;
            for (int64_t p = 0; p < crs; p++)
                dst[p * mr + i] = k < kg ? src[p] : 0.0f;
        }
    }
}

/* Whether the kernels read the weights packed: pre-packed by a plan, or per task. */
static int a_packed(const plan_t *P) {
    return P->apack != NULL || P->tpack;
}

/* Whether a panel of `cols` columns runs on the narrow kernel (packed weights only). */
static int narrow_width(const plan_t *P, int64_t cols) {
    return a_packed(P) && P->cfg->narrow && cols <= FC_NARROW_COLS;
}

/* What a panel of `cols` columns costs, in columns of a full tile's time.  The kernel runs
 * ceil(cols / 16) vectors of 16 pixels; narrower than the full tile it loses (one B vector per
 * 8 broadcasts leaves the load ports, not the FMAs, the limit), and panels of 1-4 columns on
 * pre-packed weights take the narrow kernel.  Measured on AVX-512 (a 1x1 layer, 1024 -> 512
 * channels, weights pre-packed, one thread, AMD EPYC Zen 5): 16 columns cost 23, 32 cost 36, 1
 * narrow column 11 and 4 narrow columns 20. */
static double panel_cost(const plan_t *P, int64_t cols) {
    if (narrow_width(P, cols))
        return FC_MIN(8.0 + 3.0 * (double)cols, (double)P->nr);
    const int64_t nv = (cols + 15) / 16, full = P->nr / 16;
    return 16.0 * (double)nv * (nv == full ? 1.0 : nv == 1 ? 1.44 : 1.12);
}

/* The cost of `cols` columns cut into panels of nr. */
static double panels_cost(const plan_t *P, int64_t cols) {
    return (double)(cols / P->nr) * (double)P->nr + (cols % P->nr ? panel_cost(P, cols % P->nr) : 0.0);
}

/* Direct pays for the discarded columns, packed for gathering B (im2col) once, a cost that
 * matters less the more output channels share each gathered value.  Measured on ResNet shapes:
 * packing costs about as much as computing 8 more 8-channel blocks over the same pixels.  Both
 * count their panels' widths (panel_cost): on a 7x7 output at batch 1, direct computes 48 + 13
 * columns (the 13 on a 16-column pass), packed 48 + 1 (on the narrow kernel) -- a 3x3 512-channel
 * layer took 1.47 ms direct and 1.26 ms packed in a compiled plan (one thread, same machine;
 * 0.77 and 0.66 ms on two), ResNet-18 at batch 1 18.3 instead of 19.1 ms on one thread. */
static int choose_direct(const plan_t *P, int64_t wq, int64_t mblocks_total) {
    const fc_conv2d_desc *d = P->d;
    int64_t virt = (d->oh - 1) * wq + d->ow, real = d->oh * d->ow;
    double direct = (double)d->n * panels_cost(P, virt);
    double packed = panels_cost(P, d->n * real) * (1.0 + 8.0 / (double)mblocks_total);
    return direct <= packed;
}

/* -- the tasks --------------------------------------------------------------------------------- */

/* A task covers at most MAX_TASK_COLS pixels in at most MAX_TASK_FLOATS of partial sums
 * (8 x 96 AVX-512 tiles); narrower tiles mean more panels per task. */
#define MAX_TASK_COLS 384
#define MAX_TASK_PANELS (MAX_TASK_COLS / 16)
#define MAX_TASK_FLOATS (96 * FC_MR * FC_NR)

typedef struct {
    float *cbuf;    /* [panels][mblocks][MR][NR] partial sums of one task */
    float *bpack;   /* [panels][kcb][NR] the task's packed panel blocks */
    seg_t *isegs;   /* [panels][MAX_SEGS] input runs of each panel (packed panels) */
    seg_t *osegs;   /* [panels][MAX_SEGS] output runs of each panel */
    float *apack;   /* [mt][kcb][MR] the task's weight blocks, packed per reduction block (tpack) */
} scratch_t;

/* The weights of block mb from reduction step k0, as the task reads them: packed by the task
 * (blocks mb0.. of the current reduction block), or a_block's. */
static const float *task_a(const plan_t *P, const scratch_t *S, int64_t g, int64_t mb, int64_t mb0, int64_t k0) {
    return P->tpack ? S->apack + (mb - mb0) * P->kcb * P->mr : a_block(P, g, mb, k0);
}

/* An eager call may read its weights packed, as compiled plans do, packed by each task one
 * reduction block at a time (want_task_pack says where) into a buffer that stays in L2 while the
 * task's panels pass.  A task holds at most this many packed floats (1 MB: task_shape cuts the
 * weight blocks to fit); a reduction block longer than that (huge filters) reads in place. */
#define MAX_TASK_APACK_FLOATS (256 * 1024)

/* Whether an eager call packs its weights per task.  Packing costs about what 5-6 columns of a
 * full tile do per weight block (measured below), so it pays only where it lets the narrow kernel
 * take mostly empty panels: each image's last panel in direct mode, when it has 1 or 2 columns
 * (panel_cost: a 16-column pass on them costs 23 columns, the narrow kernel 11 or 14) -- the 7x7
 * outputs at batch 1.  Alternated in one process (ResNet-50 layers, AMD EPYC Zen 3, AVX2, 2
 * threads), the time against weights read in place: 1x1 layers to 7x7 at batch 1, 2048 -> 512
 * 0.80-0.85x, 512 -> 2048 0.88-0.92x, 1024 -> 2048 stride 2 0.78-0.89x; 3x3 256 -> 256 stride 2 at
 * batch 8 (209 virtual columns per image) 0.94x.  Forced on the other layers: 0.94-1.02x, but a 3x3
 * 512 -> 512 layer at 7x7, batch 1 1.12x (9.4 MB of weights packed for 4 panels).  Weights packed
 * once by a plan ran 0.73-1.0x: packing per call is what costs.  Test hook:
 * FASTCONV_F32_WEIGHTS=inplace|task forces either. */
static int want_task_pack(const plan_t *P, const phases_t *ph) { /* 0 no, 1 in direct mode, 2 yes */
    const fc_conv2d_desc *d = P->d;
    if (P->apack || !P->cfg->gemm_pack || !P->cfg->gemm_packed || !P->cfg->narrow ||
        P->kcb * P->mr > MAX_TASK_APACK_FLOATS)
        return 0;
    const char *force = getenv("FASTCONV_F32_WEIGHTS");
    if (force && (!strcmp(force, "inplace") || !strcmp(force, "task")))
        return !strcmp(force, "task") ? 2 : 0; /* 2: forced, whatever the mode */
    return ((d->oh - 1) * ph->wq + d->ow - 1) % P->nr + 1 <= 2; /* direct mode's last panel of an image */
}

static void task_pack(const plan_t *P, int64_t g, int64_t mb0, int64_t mb1, int64_t k0, int64_t k1, float *dst) {
    for (int64_t mb = mb0; mb < mb1; mb++)
        P->cfg->gemm_pack(P->w + (size_t)(g * P->kg + mb * P->mr) * P->crs + k0, P->crs,
                          FC_MIN(P->mr, P->kg - mb * P->mr), k1 - k0, dst + (mb - mb0) * P->kcb * P->mr);
}

/* bias + residual + activation while writing one finished tile's rows into NCHW. */
static void store_tile(const plan_t *P, const float *c, const float *bias, const float *residual,
                       float *y, int64_t g, int64_t mb, const seg_t *segs, int64_t nseg) {
    const fc_conv2d_desc *d = P->d;
    const int act = fc_conv_act(d);
    const int64_t k0 = g * P->kg + mb * P->mr, rows = FC_MIN(P->mr, P->kg - mb * P->mr);
    for (int64_t t = 0; t < nseg; t++) {
        const seg_t *sg = &segs[t];
        size_t at = ((size_t)sg->n * d->k + k0) * P->ohw + sg->oh * d->ow + sg->ow0;
        const float *res = residual ? residual + at : NULL, *bk = bias ? bias + k0 : NULL;
        P->cfg->store(c + sg->j0, P->nr, rows, sg->len, bk, res, y + at, P->ohw, act == FC_ACT_RELU);
        if (act > FC_ACT_RELU) /* the other activations on the rows just stored, still in cache */
            for (int64_t i = 0; i < rows; i++)
                fc_act_row_f32(y + at + (size_t)i * P->ohw, sg->len, act, (float)d->act_a, (float)d->act_b);
    }
}

/* Request for writing the output lines of a fused tile (mr rows of nr floats at o, ohw apart)
 * before it computes: its stores otherwise wait on each line's read for ownership, mr streams
 * the hardware prefetchers follow poorly.  Layers of few input channels have little work per tile
 * to hide that wait behind: 1x1 64->256 at 56x56, batch 8, 0.76-0.84x the time, most other 1x1
 * layers 0.92-0.97x at batch 8, level at batch 1 (AMD EPYC Zen 3, AVX2, alternated in one
 * process).  The same for tiles stored from the partial-sum buffer (3x3 layers) was level. */
static void prefetch_out_lines(const plan_t *P, const float *o) {
    for (int64_t i = 0; i < P->mr; i++) {
        for (int64_t j = 0; j < P->nr; j += 16)
            __builtin_prefetch(o + i * P->ohw + j, 1);
        __builtin_prefetch(o + i * P->ohw + P->nr - 1, 1); /* the last line where o is not aligned */
    }
}

/* Fetch the residual rows a tile's epilogue will read (mr streams lda apart, which the hardware
 * prefetchers follow poorly); measured on a 1x1 64->256 layer at 56x56, batch 1: the fused
 * residual+relu's extra time fell from about 1.1 to 0.8 ms (AVX-512, noisy shared cores). */
static void prefetch_residual(const plan_t *P, const float *residual, int64_t g, int64_t mb, const seg_t *segs,
                              int64_t nseg) {
    const fc_conv2d_desc *d = P->d;
    const int64_t k0 = g * P->kg + mb * P->mr, rows = FC_MIN(P->mr, P->kg - mb * P->mr);
    for (int64_t t = 0; t < nseg; t++) {
        const float *run = residual + ((size_t)segs[t].n * d->k + k0) * P->ohw + segs[t].oh * d->ow + segs[t].ow0;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < segs[t].len + 15; j += 16)
                __builtin_prefetch(run + i * P->ohw + FC_MIN(j, segs[t].len - 1));
    }
}

/* Whether a finished tile can take the fused-store kernel: the table has one, all mr rows are
 * real channels, the tile's columns are one full-width run of output row (a 1x1-like panel), and
 * the activation is relu or none. */
static int fused_store(const plan_t *P, int64_t nv, int64_t mb, const seg_t *segs, int64_t nseg) {
    const int act = fc_conv_act(P->d);
    return P->cfg->gemm_store && nv * 16 == P->nr && (mb + 1) * P->mr <= P->kg && nseg == 1 && segs[0].len == P->nr &&
           (act == FC_ACT_NONE || act == FC_ACT_RELU);
}

/* A narrow panel's sums ([col][8] floats) through the tile's epilogue, once its last block is summed. */
static void store_cols(const plan_t *P, const float *cm, int64_t ncols, const float *bias, const float *residual,
                       float *y, int64_t g, int64_t mb, const seg_t *segs, int64_t nseg) {
    float t[FC_MR * FC_NR];
    fc_narrow_to_tile(cm, ncols, P->mr, P->nr, t);
    store_tile(P, t, bias, residual, y, g, mb, segs, nseg);
}

/* Panel idx is a narrow panel that rides as the tail of the full-width panel before it
 * (P->tails): whichever task computes that panel computes this one too. */
static int tail_panel(const plan_t *P, int64_t idx) {
    int64_t n, q0, ncols;
    if (!P->tails || idx < 1 || idx >= P->npanels)
        return 0;
    fc_f32_panel_range(P, idx, &n, &q0, &ncols);
    if (!narrow_width(P, ncols))
        return 0;
    fc_f32_panel_range(P, idx - 1, &n, &q0, &ncols);
    return ncols > P->nr - 16;
}

/* Layers of few input channels (64 -> 64 or 256, 1x1, at 56x56) give each tile a short
 * reduction: the kernel's own prefetch, 8 rows ahead, cannot hide a cold panel's misses, and every
 * panel is cold (the input passes once).  So while one panel meets its weight blocks, the next
 * panel's rows are fetched into L2, a share with each block.  At batch 8 (AMD EPYC Zen 3, AVX2, 2
 * threads, alternated in one process) 1x1 64 -> 64 at 56x56 took 0.92-0.93x the time, 64 -> 256
 * 0.94-0.95x, 64 -> 128 stride 2 0.91x; at batch 1, or 28x28, level (the input stays in cache).
 * Longer reductions were level or slower (1.02-1.06x with the prefetch into L1). */
#define SHORT_REDUCTION 64

static void prefetch_panel_rows(const float *b, const int64_t *boff, int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; q++) {
        __builtin_prefetch(b + boff[q], 0, 2); /* both lines a 16-float row may span, into L2 */
        __builtin_prefetch(b + boff[q] + 15, 0, 2);
    }
}

static void run_task(const plan_t *P, const float *bias, const float *residual, float *y, int64_t g,
                     int64_t p0, int64_t p1, int64_t mb0, int64_t mb1, scratch_t *S) {
    const int64_t mt = mb1 - mb0, tile = P->mr * P->nr;
    const int packed = a_packed(P);
    const fc_ukernel_fn(*gemm)[3] = packed ? P->cfg->gemm_packed : P->cfg->gemm;
    const int64_t astride = (P->tpack ? P->kcb : P->crs) * P->mr; /* from one packed block to the next */
    const float *b[MAX_TASK_PANELS];
    const int64_t *boff[MAX_TASK_PANELS];
    int64_t nv[MAX_TASK_PANELS], ncols[MAX_TASK_PANELS], nis[MAX_TASK_PANELS], nos[MAX_TASK_PANELS];
    int in_place[MAX_TASK_PANELS], narrow[MAX_TASK_PANELS], any_narrow = 0;
    int64_t tail_of[MAX_TASK_PANELS]; /* the narrow panel riding on full panel j, or -1 */
    /* Each panel's runs, once per task. */
    for (int64_t j = 0; j < p1 - p0; j++) {
        int64_t n, q0;
        fc_f32_panel_range(P, p0 + j, &n, &q0, &ncols[j]);
        nv[j] = (ncols[j] + 15) / 16;
        seg_t *is = S->isegs + j * MAX_SEGS, *os = S->osegs + j * MAX_SEGS;
        nis[j] = fc_f32_panel_segments(P, p0 + j, is, &ncols[j]);
        memcpy(os, is, (size_t)nis[j] * sizeof(seg_t));
        nos[j] = fc_f32_merge_segments(P->d, os, nis[j]);
        /* A panel of a few columns on pre-packed weights: the narrow kernel, all blocks at once. */
        narrow[j] = narrow_width(P, ncols[j]);
        /* A direct panel reading x itself must not run past x's end: pack its tail here -- unless
         * it runs on the narrow kernel, which reads its own columns only.  (Packing the 1-column
         * tail of a 7x7 plane cost a kc x 16 copy per task: on a 1024 -> 512 1x1 layer, one
         * thread, the 49th column took 50 us, 2.5 times as long as 10 of the other 48; in
         * place, 30 us.) */
        in_place[j] = !P->direct || P->src != P->x || q0 + P->nr <= P->img_cols || narrow[j];
        if (!P->direct)
            b[j] = P->gpack + ((size_t)g * P->npanels + p0 + j) * P->crs * P->nr;
        else if (in_place[j])
            b[j] = P->src + (size_t)n * P->src_img + (size_t)g * P->cg * P->src_chan + q0;
        tail_of[j] = -1;
        if (j > 0 && tail_panel(P, p0 + j)) { /* the task's range ends with it (see the caller) */
            tail_of[j - 1] = j;
            narrow[j] = 0; /* computed with panel j - 1, not on the narrow pass */
        }
    }
    for (int64_t j = 0; j < p1 - p0; j++)
        any_narrow |= narrow[j];
    for (int64_t k0 = 0; k0 < P->crs; k0 += P->kcb) {
        int64_t k1 = FC_MIN(P->crs, k0 + P->kcb);
        int last = k1 == P->crs;
        if (P->tpack)
            task_pack(P, g, mb0, mb1, k0, k1, S->apack);
        /* The B block of every panel first (in place, or packed once for all weight blocks)... */
        for (int64_t j = 0; j < p1 - p0; j++) {
            if (in_place[j]) {
                boff[j] = P->direct ? P->off + k0 : P->poff + k0;
            } else {
                float *dst = S->bpack + j * P->kcb * P->nr;
                fc_f32_pack_panel(P, g, S->isegs + j * MAX_SEGS, nis[j], ncols[j], nv[j] * 16, k0, k1, dst);
                b[j] = dst;
                boff[j] = P->poff;
            }
        }
        /* ...then every (weight block, panel) tile.  The table says which of the two stays in L1
         * while the other passes (gemm_panel_outer): each mr-channel weight block meeting every
         * panel, or each panel meeting every weight block. */
        const int panel_outer = P->cfg->gemm_panel_outer;
        const int64_t outer = panel_outer ? p1 - p0 : mt, inner = panel_outer ? mt : p1 - p0;
        /* A short reduction: the next panel's rows, a share with each weight block (prefetch_panel_rows). */
        const int short_rows = P->crs <= SHORT_REDUCTION;
        const int64_t spread = (k1 - k0 + mt - 1) / mt;
        for (int64_t o = 0; o < outer; o++) {
            for (int64_t i = 0; i < inner; i++) {
                const int64_t mb = mb0 + (panel_outer ? i : o), j = panel_outer ? o : i;
                if (narrow[j] || (j > 0 && tail_of[j - 1] == j))
                    continue;
                const float *a = task_a(P, S, g, mb, mb0, k0);
                float *c = S->cbuf + (j * mt + (mb - mb0)) * tile;
                if (short_rows && panel_outer && j + 1 < p1 - p0 && in_place[j + 1])
                    prefetch_panel_rows(b[j + 1], boff[j + 1], k0 + i * spread, FC_MIN(k1, k0 + (i + 1) * spread));
                if (last && residual) /* the epilogue's residual arrives while the tile computes */
                    prefetch_residual(P, residual, g, mb, S->osegs + j * MAX_SEGS, nos[j]);
                if (tail_of[j] >= 0) { /* a full tile and the narrow panel after it, in one pass */
                    const int64_t u = tail_of[j];
                    float *ct = S->cbuf + (u * mt + (mb - mb0)) * tile;
                    if (last && residual)
                        prefetch_residual(P, residual, g, mb, S->osegs + u * MAX_SEGS, nos[u]);
                    P->cfg->gemm_tail(mb == mb0, k1 - k0, a, b[j], boff[j], c, k0 > 0, ncols[u], b[u], boff[u], ct);
                    if (last) {
                        store_tile(P, c, bias, residual, y, g, mb, S->osegs + j * MAX_SEGS, nos[j]);
                        store_cols(P, ct, ncols[u], bias, residual, y, g, mb, S->osegs + u * MAX_SEGS, nos[u]);
                    }
                    continue;
                }
                /* A full tile that is one run of output row (1x1-like panels) and needs no other
                 * activation: its last block writes the output from the registers. */
                if (last && fused_store(P, nv[j], mb, S->osegs + j * MAX_SEGS, nos[j])) {
                    const seg_t *sg = S->osegs + j * MAX_SEGS;
                    const int64_t k0o = g * P->kg + mb * P->mr;
                    const size_t at = ((size_t)sg->n * P->d->k + k0o) * P->ohw + sg->oh * P->d->ow + sg->ow0;
                    prefetch_out_lines(P, y + at);
                    P->cfg->gemm_store(mb == mb0, packed, k1 - k0, a, P->crs, b[j], boff[j], c, k0 > 0,
                                       y + at, P->ohw, bias ? bias + k0o : NULL, residual ? residual + at : NULL,
                                       fc_conv_act(P->d) == FC_ACT_RELU);
                    continue;
                }
                /* The first weight block meets cold B rows: use the kernel that prefetches them. */
                gemm[mb == mb0][nv[j] - 1](k1 - k0, a, P->crs, b[j], boff[j], c, k0 > 0);
                if (last) /* finished: write it out while the tile is in L1 */
                    store_tile(P, c, bias, residual, y, g, mb, S->osegs + j * MAX_SEGS, nos[j]);
            }
        }
        for (int64_t j = 0; any_narrow && j < p1 - p0; j++) {
            if (!narrow[j])
                continue;
            float *c = S->cbuf + j * mt * tile;
            if (last && residual)
                for (int64_t mb = mb0; mb < mb1; mb++)
                    prefetch_residual(P, residual, g, mb, S->osegs + j * MAX_SEGS, nos[j]);
            P->cfg->narrow(k1 - k0, mt, ncols[j], task_a(P, S, g, mb0, mb0, k0), astride, b[j], boff[j], c, tile,
                           k0 > 0);
            for (int64_t mb = mb0; last && mb < mb1; mb++)
                store_cols(P, c + (mb - mb0) * tile, ncols[j], bias, residual, y, g, mb, S->osegs + j * MAX_SEGS,
                           nos[j]);
        }
    }
}

/* Tasks of pt panels x mt weight blocks: enough of them to keep every thread busy, and among
 * those the split that moves the least data -- each task reads its weight block and its
 * panels' B blocks, so cutting panels re-reads weights and cutting weight blocks re-reads
 * (or re-packs) B. */
static void task_shape(const plan_t *P, int nthreads, int64_t *pt_out, int64_t *mt_out) {
    const fc_conv2d_desc *d = P->d;
    double a_cost = (double)P->kg * P->crs, b_cost = (double)P->crs * FC_MIN(P->npanels * P->nr, P->img_cols);
    int64_t target = FC_MIN(4 * (int64_t)nthreads, d->groups * P->npanels * P->mblocks);
    double best = -1;
    for (int64_t mc = 1;; mc *= 2) {
        int64_t mt = (P->mblocks + mc - 1) / mc;
        for (int64_t pc = 1;; pc *= 2) {
            int64_t pt = (P->npanels + pc - 1) / pc;
            int64_t tasks = d->groups * ((P->npanels + pt - 1) / pt) * ((P->mblocks + mt - 1) / mt);
            if (pt * P->nr <= MAX_TASK_COLS && pt * mt * P->mr * P->nr <= MAX_TASK_FLOATS &&
                (!P->tpack || mt * P->kcb * P->mr <= MAX_TASK_APACK_FLOATS)) {
                double cost = a_cost * ((P->npanels + pt - 1) / pt) + b_cost * ((P->mblocks + mt - 1) / mt);
                if (tasks < target) /* idle threads cost more than any traffic */
                    cost += 1e18 * (double)(target - tasks);
                if (best < 0 || cost < best) {
                    best = cost;
                    *pt_out = pt;
                    *mt_out = mt;
                }
            }
            if (pt == 1)
                break;
        }
        if (mt == 1)
            break;
    }
}

/* Which taps land on which stride phase, and the size of the phase planes (the forward GEMM and
 * the backward-weight GEMM read the input as these planes).  0 when the planes are not worth
 * making: absurd strides, or -- huge dilation around a small output -- planes mostly of zeros
 * no tap needs; the portable loops (which clip taps and need no scratch) take those. */
int fc_stride_phases(const fc_conv2d_desc *d, phases_t *ph) {
    memset(ph, 0, sizeof *ph);
    if (d->stride_h > 64 || d->stride_w > 64)
        return 0;
    for (int64_t a = 0; a < 64; a++)
        ph->arow[a] = ph->bcol[a] = -1;
    for (int64_t r = 0; r < d->r; r++) {
        int64_t a = r * d->dil_h % d->stride_h;
        if (ph->arow[a] < 0) {
            ph->arow[a] = ph->na;
            ph->rowphases[ph->na++] = a;
        }
    }
    for (int64_t s = 0; s < d->s; s++) {
        int64_t b = s * d->dil_w % d->stride_w;
        if (ph->bcol[b] < 0) {
            ph->bcol[b] = ph->nb;
            ph->colphases[ph->nb++] = b;
        }
    }
    ph->hq = d->oh + (d->r - 1) * d->dil_h / d->stride_h;
    ph->wq = d->ow + (d->s - 1) * d->dil_w / d->stride_w;
    return (double)ph->na * ph->nb * (double)ph->hq * (double)ph->wq <=
           8.0 * ((double)d->h * d->w + (double)d->oh * d->ow) + (1 << 20);
}

int fc_f32_gemm_supports(const fc_conv2d_desc *d) {
    phases_t ph; /* the few-channel and channel-vector kernels need the phases too */
    return fc_stride_phases(d, &ph);
}

/* Rows per reduction block: whole input channels, at most the table's conv_kc, and blocks of
 * equal size -- a 256-channel 1x1 layer runs as one block, not as 192 + 64 rows.  Each block
 * costs a pass over the task's partial sums and a short tail block runs the kernel at a loss;
 * what stays in L1 must still fit: the mr x conv_kc weight slice on AVX-512 (32 KB), the
 * conv_kc x 16 panel on AVX2 (16 KB; see isa.c).  Measured with compiled ResNet-50 plans, 2
 * threads, AMD EPYC (Zen 5), in one process, alternating settings: the previous 192 rows
 * (AVX-512) took 22.8 ms at batch 1 and 186 ms at batch 8, 1024 rows in equal blocks 21.9 and
 * 174 ms.  `max_channels` caps the channels of a block further (MAX_BLOCK_RUNS). */
static int64_t reduction_block(const plan_t *P, int64_t max_channels) {
    const int64_t rs = P->d->r * P->d->s;
    const int64_t per = FC_MAX(1, FC_MIN(P->cfg->conv_kc / rs, max_channels)), blocks = (P->cg + per - 1) / per;
    return (P->cg + blocks - 1) / blocks * rs;
}

/* The separate runs of memory one channel's taps read for a direct panel of nr virtual pixels:
 * a tap reads nr floats from offset (r / stride) * wq + s / stride of its phase plane, and
 * windows of one plane that overlap or touch are one run.  A 3x3 stride-1 layer reads 3 runs (one
 * per filter row); stride 2 splits the taps over 4 planes, 6 runs where a plane row is wider than
 * the panel (2 rows in the phase of even rows and even columns, 2 in odd rows and even columns,
 * 1 and 1 in the others), 4 where the rows of a plane are close enough to merge. */
static int64_t channel_runs(const plan_t *P, const phases_t *ph) {
    const fc_conv2d_desc *d = P->d;
    if (d->r * d->s > 64) /* a big filter's block holds few channels anyway: no need to count */
        return d->r * d->s;
    int64_t runs = 0;
    for (int64_t a = 0; a < ph->na * ph->nb; a++) {
        int64_t start[64], n = 0;
        for (int64_t r = 0; r < d->r; r++)
            for (int64_t s = 0; s < d->s; s++) {
                int64_t rr = r * d->dil_h, ss = s * d->dil_w;
                if (ph->arow[rr % d->stride_h] * ph->nb + ph->bcol[ss % d->stride_w] == a)
                    start[n++] = rr / d->stride_h * ph->wq + ss / d->stride_w;
            }
        for (int64_t i = 1; i < n; i++) /* insertion sort: at most 64 taps */
            for (int64_t j = i; j > 0 && start[j - 1] > start[j]; j--) {
                int64_t t = start[j];
                start[j] = start[j - 1];
                start[j - 1] = t;
            }
        for (int64_t i = 0; i < n; i++)
            runs += i == 0 || start[i] > start[i - 1] + P->nr;
    }
    return runs;
}

/* Where the panel stays in L1 while the weight blocks pass (gemm_panel_outer), an in-place direct
 * panel's reduction block reads at most MAX_BLOCK_RUNS runs (channel_runs): beyond that its rows
 * fall out of L1 between weight blocks.  But never fewer than MIN_BLOCK_ROWS rows, which keeps
 * the cost of each block (a pass over the partial sums, the kernel's start) small.  Alternated in
 * one process (AMD EPYC Zen 3, AVX2, 2 threads), against the table's 256 rows:
 * - 3x3 stride 2 on a 56x56 input, 6 runs a channel: blocks of 26 channels (156 runs) took
 *   1.05-1.14x the time of 16 (96 runs), batch 1 and 8, 128 or 64 channels; 21 channels (128
 *   runs) were in between (1.02-1.03x).  On a 28x28 input (4 runs a channel) 24-28 channels were
 *   best, 14-20 slower (1.02-1.09x); 3x3 stride-1 layers (1-3 runs) slower in smaller blocks.
 * - 1x1 layers, one run a channel: 128 rows took 0.89-0.99x the time of 256 on most ResNet-50
 *   layers (1024 -> 256 at 14x14, batch 8, 0.94x), 96 rows 1.0-1.09x at batch 8. */
#define MAX_BLOCK_RUNS 96
#define MIN_BLOCK_ROWS 128

int fc_f32_conv2d_gemm(const fc_conv2d_desc *d, const float *x, const float *w, const float *wpack,
                       const float *bias, const float *residual, float *y, int nthreads, const char **kernel) {
    if (fc_f32_kvec_wanted(d)) /* small output planes: channels along the vectors (conv_kvec_f32.c) */
        return fc_f32_conv2d_kvec(d, x, w, bias, residual, y, nthreads);
    plan_t P = {.d = d, .x = x, .w = w, .cfg = fc_config()};
    if (wpack && P.cfg->gemm_packed)
        P.apack = wpack;
    P.mr = P.cfg->mr;
    P.nr = P.cfg->nr;
    P.cg = d->c / d->groups;
    P.kg = d->k / d->groups;
    P.crs = P.cg * d->r * d->s;
    P.mblocks = (P.kg + P.mr - 1) / P.mr;
    P.ohw = d->oh * d->ow;
    P.kcb = reduction_block(&P, INT64_MAX);

    phases_t ph;
    if (!fc_stride_phases(d, &ph))
        return FC_EUNSUPPORTED; /* the portable loops handle it */
    P.tpack = want_task_pack(&P, &ph);

    int plain_1x1 = d->r == 1 && d->s == 1 && d->stride_h == 1 && d->stride_w == 1 &&
                    d->pad_top == 0 && d->pad_left == 0 && d->oh == d->h && d->ow == d->w;
    /* Packed mode gathers all of B up front; beyond about 64 MB direct mode is always used. */
    double packed_floats = (double)d->groups * P.crs * round16(d->n * P.ohw + FC_NR);
    P.direct = packed_floats > (double)(16 << 20) || choose_direct(&P, plain_1x1 ? d->ow : ph.wq, d->groups * P.mblocks);
    /* Test hook: FASTCONV_F32_CONV=direct|packed forces a mode, so tests reach both paths. */
    const char *force = getenv("FASTCONV_F32_CONV");
    if (force && !strcmp(force, "direct"))
        P.direct = 1;
    else if (force && !strcmp(force, "packed") && packed_floats <= (double)(16 << 20))
        P.direct = 0;
    if (P.tpack == 1 && !P.direct) /* packed mode has no per-image last panels for it to help */
        P.tpack = 0;
    /* Both modes read B rows as windows of one source: x itself (plain 1x1), else the phase planes. */
    int copy_input = !plain_1x1;
    P.wq = plain_1x1 ? d->ow : ph.wq;
    if (P.direct && P.cfg->gemm_panel_outer) { /* fewer channels a block where they read many runs */
        const int64_t rs = d->r * d->s, runs = copy_input ? channel_runs(&P, &ph) : 1;
        P.kcb = reduction_block(&P, FC_MAX(MAX_BLOCK_RUNS / runs, (MIN_BLOCK_ROWS + rs - 1) / rs));
    }
    P.src_chan = plain_1x1 ? d->h * d->w : ph.na * ph.nb * ph.hq * ph.wq;
    P.src_img = d->c * P.src_chan;
    size_t phase_floats = 0; /* slack: the last panel runs past */
    if (copy_input && fc_size_add(fc_size_mul3((size_t)d->n, (size_t)d->c, (size_t)P.src_chan), FC_NR, &phase_floats))
        return FC_ENOMEM;
    if (P.direct) {
        P.img_cols = (d->oh - 1) * P.wq + d->ow;
        /* A plain 1x1 layer reads x itself, wherever the caller's array starts: NumPy's large
         * arrays begin 16 bytes into a cache line, so every 16-pixel panel row then straddles two
         * lines and half the kernel's vector loads split.  Where every B row has the same
         * alignment (planes of a multiple of 16 floats), each image's first panel takes the
         * columns up to the first line boundary and the others start on one.  1x1 256 > 128 at
         * 56x56, batch 8, 2 threads (AMD EPYC Zen 3): 118 -> 140 GFLOP/s on a NumPy input.  A head
         * of at most FC_NARROW_COLS columns is left alone: such a panel could take the narrow
         * kernel's tail pass, which belongs to the panel before it. */
        const int64_t head = plain_1x1 && P.src_chan % 16 == 0 && (uintptr_t)x % sizeof(float) == 0
                                 ? (int64_t)((64 - (uintptr_t)x % 64) % 64 / sizeof(float))
                                 : 0;
        P.head = head > FC_NARROW_COLS && P.img_cols >= head + P.nr ? head : 0;
        P.ppi = P.head ? 1 + (P.img_cols - P.head + P.nr - 1) / P.nr : (P.img_cols + P.nr - 1) / P.nr;
        P.npanels = d->n * P.ppi;
    } else {
        P.img_cols = d->n * P.ohw;
        P.npanels = (P.img_cols + P.nr - 1) / P.nr;
    }

    /* Every image's (direct) or the batch's (packed) last panel has this many columns. */
    int64_t last_n, last_q0, last_cols;
    fc_f32_panel_range(&P, P.npanels - 1, &last_n, &last_q0, &last_cols);
    P.tails = a_packed(&P) && P.cfg->gemm_tail && P.cfg->narrow;
    if (kernel && narrow_width(&P, last_cols))
        *kernel = tail_panel(&P, P.npanels - 1) ? P.cfg->gemm_tail_name : P.cfg->gemm_narrow_name;

    if (kernel && P.tpack)
        *kernel = P.cfg->gemm_task_name;

    int64_t pt = 1, mt = 1;
    task_shape(&P, nthreads, &pt, &mt);
    const int64_t pchunks = (P.npanels + pt - 1) / pt, mchunks = (P.mblocks + mt - 1) / mt;
    const int64_t ntasks = d->groups * pchunks * mchunks;
    int team = fc_team(nthreads, d->n * d->k * P.ohw * P.crs, 1 << 16);
    team = (int)FC_MIN(team, ntasks);

    /* Every buffer up front, so a failed allocation stops the call before any work.  Sizes
     * saturate at SIZE_MAX on overflow, which fc_alloc refuses. */
    /* Buffers for pt + 1 panels: a task may take one tail panel past its chunk. */
    size_t cbuf_floats = fc_size_mul3((size_t)(pt + 1) * mt, P.mr, P.nr),
           bpack_floats = fc_size_mul3(pt + 1, P.kcb, P.nr),
           apack_floats = P.tpack ? fc_size_mul3((size_t)mt, P.kcb, P.mr) : 0;
    int tail = P.kg % P.mr != 0 && !a_packed(&P);
    P.atail = tail ? fc_alloc(fc_size_mul3((size_t)d->groups * P.mr, P.crs, sizeof(float))) : NULL;
    P.off = fc_alloc(fc_size_mul3(P.crs, sizeof(int64_t), 1));
    float *phase = phase_floats ? fc_alloc(fc_size_mul3(phase_floats, sizeof(float), 1)) : NULL;
    size_t tfloats, tbytes, sbytes;
    fc_size_add(cbuf_floats, bpack_floats, &tfloats);
    fc_size_add(tfloats, apack_floats, &tfloats);
    const size_t tslice = fc_slice(fc_size_mul3(tfloats, sizeof(float), 1));
    char *tbuf = fc_size_mul((size_t)team, tslice, &tbytes) ? NULL : fc_alloc(tbytes);
    int64_t *poff = fc_alloc(fc_size_mul3(P.crs, sizeof(int64_t), 1));
    size_t gpack_floats = P.direct ? 0 : fc_size_mul3((size_t)d->groups * P.npanels, P.crs, P.nr);
    P.gpack = gpack_floats ? fc_alloc(fc_size_mul3(gpack_floats, sizeof(float), 1)) : NULL;
    const size_t sslice = fc_slice(fc_size_mul3(pt + 1, MAX_SEGS * 2, sizeof(seg_t)));
    char *segs = fc_size_mul((size_t)team, sslice, &sbytes) ? NULL : fc_alloc(sbytes);
    int status = FC_OK;
    if ((tail && !P.atail) || !P.off || (phase_floats && !phase) || !tbuf || !poff || !segs ||
        (gpack_floats && !P.gpack)) {
        status = FC_ENOMEM;
        goto done;
    }
    for (int64_t p = 0; p < P.crs; p++)
        poff[p] = p * P.nr;
    P.poff = poff;
    {
        P.src = copy_input ? phase : x;
        const int64_t rs = d->r * d->s;
        for (int64_t p = 0; p < P.crs; p++) {
            int64_t c = p / rs, r = p % rs / d->s, s = p % d->s;
            if (plain_1x1) {
                P.off[p] = c * P.src_chan;
                continue;
            }
            int64_t rr = r * d->dil_h, ss = s * d->dil_w;
            int64_t phase_idx = ph.arow[rr % d->stride_h] * ph.nb + ph.bcol[ss % d->stride_w];
            P.off[p] = c * P.src_chan + phase_idx * ph.hq * ph.wq + rr / d->stride_h * ph.wq + ss / d->stride_w;
        }
        if (copy_input)
            memset(phase + (size_t)d->n * P.src_img, 0, FC_NR * sizeof(float));
    }

    #pragma omp parallel num_threads(team)
    {
        scratch_t S;
        int tid = FC_THREAD_ID();
        S.cbuf = (float *)(tbuf + (size_t)tid * tslice);
        S.bpack = S.cbuf + cbuf_floats;
        S.apack = S.bpack + bpack_floats;
        S.isegs = (seg_t *)(segs + (size_t)tid * sslice);
        S.osegs = S.isegs + (size_t)(pt + 1) * MAX_SEGS;

        if (tail) {
            #pragma omp for schedule(static) nowait
            for (int64_t g = 0; g < d->groups; g++)
                pack_tail(&P, g);
        }
        if (copy_input) {
            #pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < d->n * d->c; t++)
                fc_f32_fill_phase_plane(&P, &ph, t / d->c, t % d->c, phase + (size_t)t * P.src_chan);
        }
        if (!P.direct) { /* gather every panel once (from the finished planes), in blocks of rows */
            #pragma omp barrier
            const int64_t kblocks = (P.crs + P.kcb - 1) / P.kcb;
            #pragma omp for schedule(dynamic, 1) nowait
            for (int64_t u = 0; u < d->groups * P.npanels * kblocks; u++) {
                int64_t kb = u % kblocks, pi = u / kblocks % P.npanels, g = u / (kblocks * P.npanels);
                int64_t ncols, nseg = fc_f32_panel_segments(&P, pi, S.isegs, &ncols);
                int64_t k0 = kb * P.kcb, k1 = FC_MIN(P.crs, k0 + P.kcb);
                fc_f32_pack_panel(&P, g, S.isegs, nseg, ncols, round16(ncols), k0, k1,
                                  P.gpack + ((g * P.npanels + pi) * P.crs + k0) * P.nr);
            }
        }
        #pragma omp barrier

        /* Panels vary fastest, so consecutive tasks share their weights block in cache. */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
            int64_t pc = t % pchunks, mc = t / pchunks % mchunks, g = t / (pchunks * mchunks);
            /* A tail panel (tail_panel) goes with the full panel before it, whatever the chunks. */
            int64_t q0 = pc * pt, q1 = FC_MIN(P.npanels, (pc + 1) * pt);
            q0 += tail_panel(&P, q0);
            q1 += tail_panel(&P, q1);
            if (q0 < q1)
                run_task(&P, bias, residual, y, g, q0, q1, mc * mt, FC_MIN(P.mblocks, (mc + 1) * mt), &S);
        }
    }
done:
    free(P.atail);
    free(P.off);
    free(phase);
    free(tbuf);
    free(poff);
    free(segs);
    free(P.gpack);
    return status;
}
