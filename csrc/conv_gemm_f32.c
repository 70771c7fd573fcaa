/* float32 convolution as GEMM: per group, y[k, pixel] = sum over (c, r, s) of w[k, (c, r, s)] *
 * B[(c, r, s), pixel], with B the convolution's input windows.
 *
 * The microkernel (gemm_f32_*.c) computes 8 output channels x 48 output pixels in registers,
 * pixels along the vectors, so a finished tile is 8 runs of output row: it is written straight
 * into NCHW with bias, residual and relu fused -- no output layout conversion.  Where its B rows
 * come from is what makes this fast:
 *
 * - "direct": every B row is a contiguous window of one buffer, read in place.  The input is
 *   copied once into zero-padded, stride-split ("phase") planes of width wq; the kernel then
 *   computes virtual pixels q = oh * wq + ow of each image, where tap (r, s) of channel c reads
 *   plane[c, phase(r, s)][q + offset(r, s)].  Columns ow >= OW are computed and discarded (a few
 *   percent on large images).  A 1x1, stride-1, unpadded convolution reads the input itself.
 * - "packed": small images, where those discarded columns would cost too much, gather real
 *   pixels (over the whole batch, so a panel may span images) into a 48-wide panel per pass,
 *   as im2col would, but only a cache-sized block at a time.
 *
 * Blocking: the reduction runs in blocks of about KC_TARGET rows (whole channels).  Within a
 * block, each 8-channel slice of the weights (read in place, 8 row streams: no weight
 * reordering per call) meets every pixel panel of the task while it sits in L1, the panels'
 * B blocks waiting in L2; a task's partial sums live in a small per-thread tile buffer, and a
 * tile is written out (epilogue fused) as soon as its last block is summed.  Tasks (group x
 * pixel panels x output-channel blocks) are shared out dynamically, so batch 1 also uses every
 * thread.  Each output element is summed by one thread in a fixed order: results do not depend
 * on the thread count.
 */
#include "fc_internal.h"

#define KC_TARGET 192
#define CBUF_BYTES (192 * 1024)
#define MAX_SEGS (FC_NR + 1)

typedef struct {
    int64_t j0, len, n, oh, ow0; /* panel columns [j0, j0 + len) = output pixels (n, oh, ow0 + i) */
} seg_t;

typedef struct {
    const fc_conv2d_desc *d;
    const float *x;
    int64_t cg, kg, crs, mblocks, ohw, kcb;
    int direct;
    const float *src;        /* direct: where B rows live (x itself or the phase planes) */
    int64_t src_img, src_chan; /* direct: floats per image and per channel in src */
    int64_t wq;              /* direct: virtual row width */
    int64_t img_cols;        /* direct: virtual pixels per image; packed: real pixels in the batch */
    int64_t ppi, npanels;    /* panels per image (direct) and in all */
    int64_t *off;            /* direct: [crs] offset of B row p from a panel's first pixel */
    const float *w;          /* weights (k, cg, r, s): full 8-channel blocks are read in place */
    float *atail;            /* [groups][MR][crs]: each group's last, partial 8-channel block */
    const fc_ukernel_fn *uk;
    int avx512;
} plan_t;

/* -- panels ------------------------------------------------------------------------------------ */

static void panel_range(const plan_t *P, int64_t idx, int64_t *n, int64_t *q0, int64_t *ncols) {
    if (P->direct) {
        *n = idx / P->ppi;
        *q0 = idx % P->ppi * FC_NR;
        *ncols = FC_MIN(FC_NR, P->img_cols - *q0);
    } else {
        *n = 0;
        *q0 = idx * FC_NR;
        *ncols = FC_MIN(FC_NR, P->img_cols - *q0);
    }
}

/* The output runs a panel's columns map to.  Direct panels skip the discarded columns. */
static int64_t panel_segments(const plan_t *P, int64_t idx, seg_t *segs, int64_t *ncols_out) {
    const fc_conv2d_desc *d = P->d;
    int64_t n, q0, ncols, count = 0;
    panel_range(P, idx, &n, &q0, &ncols);
    *ncols_out = ncols;
    for (int64_t q = q0; q < q0 + ncols;) {
        int64_t oh, ow, nn = n;
        if (P->direct) {
            oh = q / P->wq;
            ow = q % P->wq;
            if (ow >= d->ow) {
                q += P->wq - ow;
                continue;
            }
        } else {
            nn = q / P->ohw;
            oh = q % P->ohw / d->ow;
            ow = q % d->ow;
        }
        int64_t len = FC_MIN(d->ow - ow, q0 + ncols - q);
        segs[count++] = (seg_t){q - q0, len, nn, oh, ow};
        q += len;
    }
    return count;
}

/* Consecutive segments that are also consecutive in the output (the same image, the next row)
 * merge into one run, so the epilogue writes long runs. */
static int64_t merge_segments(const fc_conv2d_desc *d, seg_t *segs, int64_t nseg) {
    int64_t out = 0;
    for (int64_t t = 0; t < nseg; t++) {
        seg_t *last = out ? &segs[out - 1] : NULL;
        if (last && segs[t].n == last->n && segs[t].j0 == last->j0 + last->len &&
            segs[t].oh * d->ow + segs[t].ow0 == last->oh * d->ow + last->ow0 + last->len)
            last->len += segs[t].len;
        else
            segs[out++] = segs[t];
    }
    return out;
}

/* Gather B rows [k0, k1) of a panel (im2col of its segments) into bpack, FC_NR floats a row;
 * columns past the panel's end are zeroed up to the kernel's vector width `cols`. */
static void pack_panel(const plan_t *P, int64_t g, const seg_t *segs, int64_t nsegs, int64_t ncols,
                       int64_t cols, int64_t k0, int64_t k1, float *bpack) {
    const fc_conv2d_desc *d = P->d;
    const int64_t rs = d->r * d->s;
    for (int64_t p = k0; p < k1; p++) {
        int64_t c = p / rs, r = p % rs / d->s, s = p % d->s;
        float *row = bpack + (p - k0) * FC_NR;
        for (int64_t t = 0; t < nsegs; t++) {
            const seg_t *sg = &segs[t];
            float *out = row + sg->j0; /* out[i] is output column ow0 + i */
            int64_t ih = sg->oh * d->stride_h - d->pad_top + r * d->dil_h;
            int64_t end = sg->ow0 + sg->len, lo = end, hi = end;
            int64_t off = s * d->dil_w - d->pad_left;
            const float *xrow = P->x;
            if (ih >= 0 && ih < d->h) {
                xrow = P->x + (((size_t)sg->n * d->c + g * P->cg + c) * d->h + ih) * d->w;
                fc_valid_range(d->w, end, d->stride_w, off, &lo, &hi);
                lo = FC_MAX(lo, sg->ow0);
                hi = FC_MAX(hi, lo);
            }
            for (int64_t ow = sg->ow0; ow < lo; ow++)
                out[ow - sg->ow0] = 0.0f;
            if (d->stride_w == 1 && hi > lo)
                memcpy(out + (lo - sg->ow0), xrow + (lo + off), (size_t)(hi - lo) * sizeof(float));
            else
                for (int64_t ow = lo; ow < hi; ow++)
                    out[ow - sg->ow0] = xrow[ow * d->stride_w + off];
            for (int64_t ow = hi; ow < end; ow++)
                out[ow - sg->ow0] = 0.0f;
        }
        for (int64_t j = ncols; j < cols; j++)
            row[j] = 0.0f;
    }
}

/* -- preparation ------------------------------------------------------------------------------- */

/* A group's last block of 8 output channels, when kg is not a multiple of 8: its rows, then
 * zero rows, so the microkernel never reads past the weights. */
static void pack_tail(const plan_t *P, int64_t g) {
    float *dst = P->atail + g * FC_MR * P->crs;
    int64_t m0 = (P->mblocks - 1) * FC_MR;
    for (int64_t i = 0; i < FC_MR; i++) {
        if (m0 + i < P->kg)
            memcpy(dst + i * P->crs, P->w + (size_t)(g * P->kg + m0 + i) * P->crs, (size_t)P->crs * sizeof(float));
        else
            memset(dst + i * P->crs, 0, (size_t)P->crs * sizeof(float));
    }
}

/* Row 0 of the A block mb of group g. */
static const float *a_block(const plan_t *P, int64_t g, int64_t mb) {
    if ((mb + 1) * FC_MR > P->kg)
        return P->atail + g * FC_MR * P->crs;
    return P->w + (size_t)(g * P->kg + mb * FC_MR) * P->crs;
}

typedef struct {
    int64_t nb, hq, wq;      /* used column phases; phase plane size */
    int64_t arow[64], bcol[64]; /* index of row phase a / column phase b among the used ones, or -1 */
    int64_t rowphases[64], colphases[64], na;
} phases_t;

/* Zero-padded, stride-split planes: plane (a, b) of channel c holds padded-input pixels
 * (i * sh + a, j * sw + b), so every tap's window of virtual pixels is contiguous. */
static void fill_phase_plane(const plan_t *P, const phases_t *ph, int64_t n, int64_t c, float *dst) {
    const fc_conv2d_desc *d = P->d;
    const float *plane = P->x + ((size_t)n * d->c + c) * d->h * d->w;
    for (int64_t ia = 0; ia < ph->na; ia++)
        for (int64_t ib = 0; ib < ph->nb; ib++) {
            int64_t a = ph->rowphases[ia], b = ph->colphases[ib], lo, hi;
            float *out = dst + (ia * ph->nb + ib) * ph->hq * ph->wq;
            fc_valid_range(d->w, ph->wq, d->stride_w, b - d->pad_left, &lo, &hi);
            for (int64_t i = 0; i < ph->hq; i++) {
                float *orow = out + i * ph->wq;
                int64_t ih = i * d->stride_h + a - d->pad_top;
                if (ih < 0 || ih >= d->h) {
                    memset(orow, 0, (size_t)ph->wq * sizeof(float));
                    continue;
                }
                const float *xrow = plane + ih * d->w; /* orow[j] = xrow[j * sw + b - pad_left] */
                int64_t off = b - d->pad_left;
                memset(orow, 0, (size_t)lo * sizeof(float));
                if (d->stride_w == 1 && hi > lo)
                    memcpy(orow + lo, xrow + (lo + off), (size_t)(hi - lo) * sizeof(float));
                else
                    for (int64_t j = lo; j < hi; j++)
                        orow[j] = xrow[j * d->stride_w + off];
                memset(orow + hi, 0, (size_t)(ph->wq - hi) * sizeof(float));
            }
        }
}

static int64_t round16(int64_t v) {
    return (v + 15) / 16 * 16;
}

/* Direct pays for the discarded columns, packed for gathering every panel: pick the cheaper. */
static int choose_direct(const fc_conv2d_desc *d, int64_t wq, int plain_1x1) {
    int64_t virt = (d->oh - 1) * wq + d->ow, real = d->oh * d->ow;
    double direct = (double)d->n * round16(virt);
    double packed = (double)round16(d->n * real) * (plain_1x1 ? 1.03 : 1.10);
    return direct <= packed;
}

/* -- the tasks --------------------------------------------------------------------------------- */

typedef struct {
    float *cbuf;    /* [panels][mblocks][MR][NR] partial sums of one task */
    float *bpack;   /* [panels][kcb][NR] the task's packed panel blocks */
    int64_t *poff;  /* [kcb] row offsets within a packed block: p * NR */
    seg_t *segs;
} scratch_t;

/* bias + residual + relu while writing one finished tile's rows into NCHW. */
static void store_tile(const plan_t *P, const float *c, const float *bias, const float *residual,
                       float *y, int64_t g, int64_t mb, const seg_t *segs, int64_t nseg) {
    const fc_conv2d_desc *d = P->d;
    const int64_t k0 = g * P->kg + mb * FC_MR, rows = FC_MIN(FC_MR, P->kg - mb * FC_MR);
    for (int64_t t = 0; t < nseg; t++) {
        const seg_t *sg = &segs[t];
        size_t at = ((size_t)sg->n * d->k + k0) * P->ohw + sg->oh * d->ow + sg->ow0;
        const float *res = residual ? residual + at : NULL, *bk = bias ? bias + k0 : NULL;
        if (P->avx512) {
            fc_f32_tile_store_avx512(c + sg->j0, rows, sg->len, bk, res, y + at, P->ohw, d->relu);
            continue;
        }
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < sg->len; j++) {
                float v = c[i * FC_NR + sg->j0 + j] + (bk ? bk[i] : 0.0f) + (res ? res[i * P->ohw + j] : 0.0f);
                y[at + i * P->ohw + j] = d->relu && v < 0 ? 0.0f : v; /* NaN < 0 is false: NaN stays */
            }
    }
}

#define MAX_TASK_PANELS 16

static void run_task(const plan_t *P, const float *bias, const float *residual, float *y, int64_t g,
                     int64_t p0, int64_t p1, int64_t mb0, int64_t mb1, scratch_t *S) {
    const int64_t mt = mb1 - mb0, tile = FC_MR * FC_NR;
    const float *b[MAX_TASK_PANELS];
    const int64_t *boff[MAX_TASK_PANELS];
    int64_t nv[MAX_TASK_PANELS];
    for (int64_t k0 = 0; k0 < P->crs; k0 += P->kcb) {
        int64_t k1 = FC_MIN(P->crs, k0 + P->kcb);
        int last = k1 == P->crs;
        /* The B block of every panel first (in place, or packed once for all weight blocks)... */
        for (int64_t pi = p0; pi < p1; pi++) {
            int64_t n, q0, ncols, j = pi - p0;
            panel_range(P, pi, &n, &q0, &ncols);
            nv[j] = (ncols + 15) / 16;
            /* A direct panel reading x itself must not run past x's end: pack its tail. */
            if (P->direct && (P->src != P->x || q0 + FC_NR <= P->img_cols)) {
                b[j] = P->src + (size_t)n * P->src_img + (size_t)g * P->cg * P->src_chan + q0;
                boff[j] = P->off + k0;
            } else {
                float *dst = S->bpack + j * P->kcb * FC_NR;
                int64_t nseg = panel_segments(P, pi, S->segs, &ncols);
                pack_panel(P, g, S->segs, nseg, ncols, nv[j] * 16, k0, k1, dst);
                b[j] = dst;
                boff[j] = S->poff;
            }
        }
        /* ...then each 8-channel weight block meets every panel while it sits in L1. */
        for (int64_t mb = mb0; mb < mb1; mb++) {
            const float *a = a_block(P, g, mb) + k0;
            for (int64_t pi = p0; pi < p1; pi++) {
                int64_t j = pi - p0;
                float *c = S->cbuf + (j * mt + (mb - mb0)) * tile;
                P->uk[nv[j] - 1](k1 - k0, a, P->crs, b[j], boff[j], c, k0 > 0);
                if (last) { /* finished: write it out while the tile is in L1 */
                    int64_t ncols, nseg = panel_segments(P, pi, S->segs, &ncols);
                    nseg = merge_segments(P->d, S->segs, nseg);
                    store_tile(P, c, bias, residual, y, g, mb, S->segs, nseg);
                }
            }
        }
    }
}

int fc_f32_conv2d_gemm(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads) {
    int level = fc_level();
    if (level == FC_GENERIC)
        return FC_EINVAL; /* no vector kernels: the caller runs the portable loops */
    plan_t P = {.d = d, .x = x, .w = w};
    P.uk = level == FC_AVX512 ? fc_f32_gemm_kernels_avx512 : fc_f32_gemm_kernels_avx2;
    P.avx512 = level == FC_AVX512;
    P.cg = d->c / d->groups;
    P.kg = d->k / d->groups;
    P.crs = P.cg * d->r * d->s;
    P.mblocks = (P.kg + FC_MR - 1) / FC_MR;
    P.ohw = d->oh * d->ow;
    P.kcb = FC_MIN(P.crs, FC_MAX(1, KC_TARGET / (d->r * d->s)) * d->r * d->s);

    /* Which taps land on which stride phase. */
    phases_t ph = {0};
    if (d->stride_h > 64 || d->stride_w > 64)
        return FC_EINVAL; /* absurd strides: the portable loops handle them */
    for (int64_t a = 0; a < 64; a++)
        ph.arow[a] = ph.bcol[a] = -1;
    for (int64_t r = 0; r < d->r; r++) {
        int64_t a = r * d->dil_h % d->stride_h;
        if (ph.arow[a] < 0) {
            ph.arow[a] = ph.na;
            ph.rowphases[ph.na++] = a;
        }
    }
    for (int64_t s = 0; s < d->s; s++) {
        int64_t b = s * d->dil_w % d->stride_w;
        if (ph.bcol[b] < 0) {
            ph.bcol[b] = ph.nb;
            ph.colphases[ph.nb++] = b;
        }
    }
    ph.hq = d->oh + (d->r - 1) * d->dil_h / d->stride_h;
    ph.wq = d->ow + (d->s - 1) * d->dil_w / d->stride_w;

    int plain_1x1 = d->r == 1 && d->s == 1 && d->stride_h == 1 && d->stride_w == 1 &&
                    d->pad_top == 0 && d->pad_left == 0 && d->oh == d->h && d->ow == d->w;
    P.direct = choose_direct(d, plain_1x1 ? d->ow : ph.wq, plain_1x1);
    int copy_input = P.direct && !plain_1x1;

    size_t phase_floats = 0;
    if (P.direct) {
        P.wq = plain_1x1 ? d->ow : ph.wq;
        P.img_cols = (d->oh - 1) * P.wq + d->ow;
        P.ppi = (P.img_cols + FC_NR - 1) / FC_NR;
        P.npanels = d->n * P.ppi;
        P.src_chan = plain_1x1 ? d->h * d->w : ph.na * ph.nb * ph.hq * ph.wq;
        P.src_img = d->c * P.src_chan;
        if (copy_input)
            phase_floats = (size_t)d->n * P.src_img + FC_NR; /* slack: the last panel runs past */
    } else {
        P.img_cols = d->n * P.ohw;
        P.npanels = (P.img_cols + FC_NR - 1) / FC_NR;
    }

    /* Task shape: enough tasks for every thread, partial sums of one task in about L2/8. */
    int64_t mt = FC_MIN(P.mblocks, 32);
    int64_t pt = FC_MAX(1, CBUF_BYTES / (mt * FC_MR * FC_NR * (int64_t)sizeof(float)));
    pt = FC_MIN(FC_MIN(pt, P.npanels), MAX_TASK_PANELS);
#define NTASKS(pt_, mt_) (d->groups * ((P.npanels + (pt_) - 1) / (pt_)) * ((P.mblocks + (mt_) - 1) / (mt_)))
    while (pt > 1 && NTASKS(pt, mt) < 4 * (int64_t)nthreads)
        pt = (pt + 1) / 2;
    while (mt > 1 && NTASKS(pt, mt) < 2 * (int64_t)nthreads)
        mt = (mt + 1) / 2;
    const int64_t pchunks = (P.npanels + pt - 1) / pt, mchunks = (P.mblocks + mt - 1) / mt;
    const int64_t ntasks = d->groups * pchunks * mchunks;
    int team = fc_team(nthreads, d->n * d->k * P.ohw * P.crs, 1 << 16);
    team = (int)FC_MIN(team, ntasks);

    /* Every buffer up front, so a failed allocation stops the call before any work. */
    size_t cbuf_floats = (size_t)pt * mt * FC_MR * FC_NR, bpack_floats = (size_t)pt * P.kcb * FC_NR;
    int tail = P.kg % FC_MR != 0;
    P.atail = tail ? fc_alloc((size_t)d->groups * FC_MR * P.crs * sizeof(float)) : NULL;
    P.off = fc_alloc((size_t)P.crs * sizeof(int64_t));
    float *phase = phase_floats ? fc_alloc(phase_floats * sizeof(float)) : NULL;
    float *tbuf = fc_alloc((size_t)team * (cbuf_floats + bpack_floats) * sizeof(float));
    int64_t *poff = fc_alloc((size_t)P.kcb * sizeof(int64_t));
    seg_t *segs = fc_alloc((size_t)team * MAX_SEGS * sizeof(seg_t));
    int status = FC_OK;
    if ((tail && !P.atail) || !P.off || (phase_floats && !phase) || !tbuf || !poff || !segs) {
        status = FC_ENOMEM;
        goto done;
    }
    for (int64_t p = 0; p < P.kcb; p++)
        poff[p] = p * FC_NR;
    if (P.direct) {
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
        S.cbuf = tbuf + (size_t)tid * (cbuf_floats + bpack_floats);
        S.bpack = S.cbuf + cbuf_floats;
        S.poff = poff;
        S.segs = segs + (size_t)tid * MAX_SEGS;

        if (tail) {
            #pragma omp for schedule(static) nowait
            for (int64_t g = 0; g < d->groups; g++)
                pack_tail(&P, g);
        }
        if (copy_input) {
            #pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < d->n * d->c; t++)
                fill_phase_plane(&P, &ph, t / d->c, t % d->c, phase + (size_t)t * P.src_chan);
        }
        #pragma omp barrier

        /* Panels vary fastest, so consecutive tasks share their weights block in cache. */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
            int64_t pc = t % pchunks, mc = t / pchunks % mchunks, g = t / (pchunks * mchunks);
            run_task(&P, bias, residual, y, g, pc * pt, FC_MIN(P.npanels, (pc + 1) * pt), mc * mt,
                     FC_MIN(P.mblocks, (mc + 1) * mt), &S);
        }
    }
done:
    free(P.atail);
    free(P.off);
    free(phase);
    free(tbuf);
    free(poff);
    free(segs);
    return status;
}
