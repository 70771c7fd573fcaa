/* float32 convolution with output channels along the vectors ("kvec"), the orientation ONNX
 * Runtime's MLAS and oneDNN give small images: a tile of np output pixels (consecutive in one
 * output row) x nv vectors of output channels sits in registers; each reduction step (c, r, s)
 * loads nv weight vectors and broadcasts np input values.
 *
 * Why: the GEMM kernel (conv_gemm_f32.c) puts pixels along its vectors, so on 7x7 and 14x14
 * outputs it either computes discarded columns (direct) or gathers a ninefold im2col copy
 * (packed).  Here a row of 7 or 14 pixels is one or two whole tiles and nothing is gathered:
 * the input is read from the same zero-padded, stride-split phase planes as the GEMM's direct
 * mode (so every stride and dilation reads unit-stride pixels), and the weights are packed
 * per reduction block as [channel vector][c][r][s][lanes] (zero lanes past a group's last
 * channel, so any kg runs; only the valid channels are stored).
 *
 * Blocking: a task is (group, block of nv vectors, chunk of output rows over the whole batch).
 * The reduction runs in blocks of about KV_STEPS steps (whole input channels): each block of
 * weights, packed into a per-thread buffer (L1), meets every tile of the task, whose partial
 * sums wait in another per-thread buffer (L2).  A row is written out (transposed into NCHW
 * through the ISA's fused epilogue: bias, residual, activations) as soon as its last block is
 * summed.  Each output element is summed by one thread in a fixed order: results do not depend
 * on the thread count.
 */
#include "conv_gemm_f32.h"

/* Reduction steps per block: KV_STEPS x 4 vectors x 64 bytes of weights (about 24 KB) stay in L1
 * while the task's tiles pass. */
#define KV_STEPS 96
/* Partial sums per task (floats): the task's rows x ow x (nv x lanes) in L2. */
#define KV_ACC_FLOATS (64 * 1024)

typedef struct {
    const fc_conv2d_desc *d;
    const fc_isa_config *cfg;
    int64_t cg, kg, crs, lanes, vmax, kvecs, kblocks, kcb, ohw;
    int64_t rows, rc, rchunks; /* output rows of the batch (n * oh), rows per task, chunks */
    const float *src;          /* x itself (plain 1x1) or the phase planes */
    int64_t src_img, src_chan, wq;
    const int64_t *off;        /* [crs] offset of step p's input from a tile's first pixel */
} kplan_t;

/* -- the choice ---------------------------------------------------------------------------------- */

static int kvec_forced(int *on) {
    const char *force = getenv("FASTCONV_F32_CONV");
    if (!force || !*force)
        return 0;
    *on = !strcmp(force, "kvec");
    return 1;
}

/* Shapes the kernel takes at all (Python refuses empty channels before any kernel runs): one
 * output row's partial sums must fit the per-thread buffer (rows longer than 1024 pixels on
 * AVX-512 stay with the GEMM, even when forced). */
static int kvec_shape_ok(const fc_conv2d_desc *d) {
    const fc_isa_config *cfg = fc_config();
    return d->n >= 1 && d->oh >= 1 && d->ow >= 1 && d->k >= 1 && d->c >= 1 &&
           d->ow <= KV_ACC_FLOATS / ((int64_t)cfg->kvec_v * cfg->kvec_lanes);
}

int fc_f32_kvec_wanted(const fc_conv2d_desc *d) {
    phases_t ph;
    if (!kvec_shape_ok(d) || !fc_stride_phases(d, &ph))
        return 0;
    int on;
    if (kvec_forced(&on)) /* test hook: FASTCONV_F32_CONV=kvec, or direct|packed for the GEMM */
        return on;
    const fc_isa_config *cfg = fc_config();
    const int64_t kg = d->k / d->groups, cg = d->c / d->groups;
    /* Where a table sets kvec_auto_pixels: spatial filters on output planes up to that many
     * pixels, with at least a full tile of output channels per group.  1x1 convolutions, whose
     * every reduction step reads another input line, stay with the GEMM (measured 0.4-0.7x of it
     * on 28x28 and 56x56 planes).  No table sets it yet: on the shared AVX-512 machine the 3x3
     * layers ran within noise of the GEMM (docs/results/c-backend.md), so "auto" keeps the GEMM. */
    return d->r * d->s > 1 && d->oh * d->ow <= cfg->kvec_auto_pixels && kg >= (int64_t)cfg->kvec_v * cfg->kvec_lanes &&
           kg % cfg->kvec_lanes == 0 && cg >= 16;
}

/* -- preparation --------------------------------------------------------------------------------- */

/* The weights of one task's reduction block, transposed so that step p of vector v is
 * dst[(v * kcb + p - k0) * lanes + l] = w[kabs + v * lanes + l][p], zero past the group's last
 * channel.  Packed per block into a per-thread buffer (L1) right before its use: packing all
 * the weights up front wrote (and page-faulted) a buffer as large as the weights on every call. */
static void pack_block(const kplan_t *K, const float *w, int64_t g, int64_t kb, int64_t nv, int64_t k0,
                       int64_t k1, float *dst) {
    const int64_t L = K->lanes;
    for (int64_t v = 0; v < nv; v++) {
        const int64_t kv = kb * K->vmax + v, rows = FC_MIN(L, K->kg - kv * L);
        const float *w0 = w + (size_t)(g * K->kg + kv * L) * K->crs + k0;
        float *out = dst + v * K->kcb * L;
        if (K->cfg->kvec_pack) {
            K->cfg->kvec_pack(w0, K->crs, rows, k1 - k0, out);
            continue;
        }
        for (int64_t l = 0; l < L; l++)
            for (int64_t p = 0; p < k1 - k0; p++)
                out[p * L + l] = l < rows ? w0[l * K->crs + p] : 0.0f;
    }
}

/* Fetch weight rows [c0, c1) of the task's next reduction block [k0, k1) while this one
 * computes: its 64 short runs, 4 * crs bytes apart, are more streams than the hardware
 * prefetchers follow, and a batch-1 task reads each weight once.  Spread over the rows of the
 * block so that few requests are in flight at a time. */
static void prefetch_block(const kplan_t *K, const float *w, int64_t g, int64_t kb, int64_t c0, int64_t c1,
                           int64_t k0, int64_t k1) {
    for (int64_t c = c0; c < c1; c++) {
        const float *row = w + (size_t)(g * K->kg + kb * K->vmax * K->lanes + c) * K->crs;
        for (int64_t p = k0; p < k1 + 15; p += 16)
            __builtin_prefetch(row + FC_MIN(p, k1 - 1));
    }
}

/* Rows per task: the most (fewest weight re-reads) that still give every thread work, within
 * the partial-sum buffer. */
static void task_shape(kplan_t *K, int nthreads) {
    const int64_t per_row = K->d->ow * K->vmax * K->lanes;
    const int64_t outer = K->d->groups * K->kblocks;
    const int64_t target = FC_MIN(4 * (int64_t)nthreads, outer * K->rows);
    int64_t rc = K->rows;
    while (rc > 1 && (rc * per_row > KV_ACC_FLOATS || outer * ((K->rows + rc - 1) / rc) < target))
        rc = (rc + 1) / 2;
    K->rc = rc;
    K->rchunks = (K->rows + rc - 1) / rc;
}

/* -- the tasks ----------------------------------------------------------------------------------- */

/* Row (n, oh)'s finished sums, acc[ow][channel], into NCHW through the fused epilogue. */
static void store_row(const kplan_t *K, const float *acc, int64_t ldacc, int64_t n, int64_t oh, int64_t kabs,
                      int64_t nk, const float *bias, const float *residual, float *y, float *tmp) {
    const fc_conv2d_desc *d = K->d;
    const int act = fc_conv_act(d);
    for (int64_t o0 = 0; o0 < d->ow; o0 += FC_NR) {
        const int64_t len = FC_MIN(FC_NR, d->ow - o0);
        for (int64_t j = 0; j < len; j++)
            for (int64_t k = 0; k < nk; k++)
                tmp[k * FC_NR + j] = acc[(o0 + j) * ldacc + k];
        size_t at = (((size_t)n * d->k + kabs) * d->oh + oh) * d->ow + o0;
        K->cfg->store(tmp, FC_NR, nk, len, bias ? bias + kabs : NULL, residual ? residual + at : NULL, y + at, K->ohw,
                      act == FC_ACT_RELU);
        if (act > FC_ACT_RELU)
            for (int64_t k = 0; k < nk; k++)
                fc_act_row_f32(y + at + (size_t)k * K->ohw, len, act, (float)d->act_a, (float)d->act_b);
    }
}

/* Where row `row`'s tiles read the input of group g. */
static const float *input_row(const kplan_t *K, int64_t g, int64_t row) {
    const int64_t n = row / K->d->oh, oh = row % K->d->oh;
    return K->src + (size_t)n * K->src_img + (size_t)g * K->cg * K->src_chan + oh * K->wq;
}

/* Fetch the input lines a row will read over steps [k0, k1) while the row before it computes:
 * they jump between channels and phase planes, which the hardware prefetchers do not predict,
 * and at batch 8 the planes have left L2 (measured: stride-2 layers lost most to this). */
static void prefetch_input(const kplan_t *K, const float *xrow, int64_t k0, int64_t k1) {
    const int64_t span = K->d->ow - 1;
    for (int64_t p = k0; p < k1; p++) {
        const float *at = xrow + K->off[p];
        if (p > k0 && K->off[p] - K->off[p - 1] == 1 && span < 16)
            continue; /* the next tap of the same run: same line, or the next one fetched below */
        for (int64_t j = 0; j < span + 16; j += 16)
            __builtin_prefetch(at + FC_MIN(j, span));
    }
}

static void run_task(const kplan_t *K, const float *w, int64_t g, int64_t kb, int64_t r0, int64_t r1,
                     const float *bias, const float *residual, float *y, float *acc, float *wbuf, float *tmp) {
    const fc_conv2d_desc *d = K->d;
    const int64_t L = K->lanes, P = K->cfg->kvec_p, ldacc = K->vmax * L;
    const int64_t nv = FC_MIN(K->vmax, K->kvecs - kb * K->vmax);
    const int64_t nk = FC_MIN(nv * L, K->kg - kb * K->vmax * L), kabs = g * K->kg + kb * K->vmax * L;
    for (int64_t k0 = 0; k0 < K->crs; k0 += K->kcb) {
        const int64_t k1 = FC_MIN(K->crs, k0 + K->kcb);
        const int last = k1 == K->crs;
        pack_block(K, w, g, kb, nv, k0, k1, wbuf);
        for (int64_t row = r0; row < r1; row++) {
            const int64_t n = row / d->oh, oh = row % d->oh;
            const float *xrow = input_row(K, g, row);
            if (row + 1 < r1)
                prefetch_input(K, input_row(K, g, row + 1), k0, k1);
            else if (!last)
                prefetch_input(K, input_row(K, g, r0), k1, FC_MIN(K->crs, k1 + K->kcb));
            float *arow = acc + (row - r0) * d->ow * ldacc;
            if (!last) /* this row's share of the next block's weights */
                prefetch_block(K, w, g, kb, nk * (row - r0) / (r1 - r0), nk * (row - r0 + 1) / (r1 - r0), k1,
                               FC_MIN(K->crs, k1 + K->kcb));
            for (int64_t o0 = 0; o0 < d->ow; o0 += P)
                K->cfg->kvec(FC_MIN(P, d->ow - o0), nv, k1 - k0, xrow + o0, K->off + k0, wbuf, K->kcb * L,
                             arow + o0 * ldacc, ldacc, k0 > 0);
            if (last) /* finished: written out while the row's sums are in cache */
                store_row(K, arow, ldacc, n, oh, kabs, nk, bias, residual, y, tmp);
        }
    }
}

int fc_f32_conv2d_kvec(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads) {
    kplan_t K = {.d = d, .cfg = fc_config()};
    phases_t ph;
    if (!kvec_shape_ok(d) || !fc_stride_phases(d, &ph))
        return FC_EUNSUPPORTED;
    K.lanes = K.cfg->kvec_lanes;
    K.vmax = K.cfg->kvec_v;
    K.cg = d->c / d->groups;
    K.kg = d->k / d->groups;
    K.crs = K.cg * d->r * d->s;
    K.kvecs = (K.kg + K.lanes - 1) / K.lanes;
    K.kblocks = (K.kvecs + K.vmax - 1) / K.vmax;
    K.kcb = FC_MIN(K.crs, FC_MAX(1, KV_STEPS / (d->r * d->s)) * d->r * d->s);
    K.ohw = d->oh * d->ow;
    K.rows = d->n * d->oh;

    int plain_1x1 = d->r == 1 && d->s == 1 && d->stride_h == 1 && d->stride_w == 1 && d->pad_top == 0 &&
                    d->pad_left == 0 && d->oh == d->h && d->ow == d->w;
    K.wq = plain_1x1 ? d->w : ph.wq;
    K.src_chan = plain_1x1 ? d->h * d->w : ph.na * ph.nb * ph.hq * ph.wq;
    K.src_img = d->c * K.src_chan;
    task_shape(&K, nthreads);
    const int64_t ntasks = d->groups * K.kblocks * K.rchunks;
    int team = (int)FC_MIN(fc_team(nthreads, d->n * d->k * K.ohw * K.crs, 1 << 16), ntasks);

    /* Every buffer up front; sizes saturate at SIZE_MAX on overflow, which fc_alloc refuses. */
    size_t phase_floats = plain_1x1 ? 0 : fc_size_mul3((size_t)d->n, (size_t)d->c, (size_t)K.src_chan);
    size_t acc_floats = fc_size_mul3((size_t)K.rc, (size_t)d->ow, (size_t)(K.vmax * K.lanes));
    size_t wbuf_floats = (size_t)K.vmax * K.lanes * K.kcb, tmp_floats = (size_t)K.vmax * K.lanes * FC_NR;
    size_t tfloats, tbytes;
    fc_size_add(acc_floats, wbuf_floats + tmp_floats, &tfloats);
    const size_t tslice = fc_slice(fc_size_mul3(tfloats, sizeof(float), 1));
    float *phase = phase_floats ? fc_alloc(fc_size_mul3(phase_floats, sizeof(float), 1)) : NULL;
    int64_t *off = fc_alloc(fc_size_mul3((size_t)K.crs, sizeof(int64_t), 1));
    char *tbuf = fc_size_mul((size_t)team, tslice, &tbytes) ? NULL : fc_alloc(tbytes);
    int status = FC_OK;
    if ((phase_floats && !phase) || !off || !tbuf) {
        status = FC_ENOMEM;
        goto done;
    }
    K.src = plain_1x1 ? x : phase;
    {
        const int64_t rs = d->r * d->s;
        for (int64_t p = 0; p < K.crs; p++) {
            int64_t c = p / rs, r = p % rs / d->s, s = p % d->s;
            if (plain_1x1) {
                off[p] = c * K.src_chan;
                continue;
            }
            int64_t rr = r * d->dil_h, ss = s * d->dil_w;
            int64_t phase_idx = ph.arow[rr % d->stride_h] * ph.nb + ph.bcol[ss % d->stride_w];
            off[p] = c * K.src_chan + phase_idx * ph.hq * ph.wq + rr / d->stride_h * ph.wq + ss / d->stride_w;
        }
        K.off = off;
    }
    plan_t fill = {.d = d, .x = x}; /* what fc_f32_fill_phase_plane reads */

    #pragma omp parallel num_threads(team)
    {
        const int tid = FC_THREAD_ID();
        float *acc = (float *)(tbuf + (size_t)tid * tslice), *wbuf = acc + acc_floats, *tmp = wbuf + wbuf_floats;
        if (!plain_1x1) {
            #pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < d->n * d->c; t++)
                fc_f32_fill_phase_plane(&fill, &ph, t / d->c, t % d->c, phase + (size_t)t * K.src_chan);
        }
        #pragma omp barrier
        /* Row chunks vary fastest, so consecutive tasks share their weight block in cache. */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
            int64_t rcn = t % K.rchunks, kb = t / K.rchunks % K.kblocks, g = t / (K.rchunks * K.kblocks);
            run_task(&K, w, g, kb, rcn * K.rc, FC_MIN(K.rows, (rcn + 1) * K.rc), bias, residual, y, acc, wbuf, tmp);
        }
    }
done:
    free(phase);
    free(off);
    free(tbuf);
    return status;
}
