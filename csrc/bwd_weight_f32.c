/* float32 backward-weight on the forward's GEMM microkernels (the per-ISA tables of isa.c).
 *
 * Layers with more than one tap go to the channels-last mode of bwd_weight_cl_f32.c (measured
 * faster on all of ResNet-50's); the modes below run the 1x1 layers, and the others when forced
 * (FASTCONV_BWD_WEIGHT=direct|packed, tests) or when that mode declines a problem.
 *
 * The microkernel computes C[mr][nr] += A[mr][kc] B[kc][nr] with A's rows read in place (lda
 * apart) and B's rows nr-wide panels.  The reduction runs over output pixels; per group:
 *
 * - "direct" (large images): dw^T (c*r*s x kg) = X dy^T.  Row (c, tap) of X is the input window
 *   that tap reads -- a run of a zero-padded, stride-split copy of the input (the forward's
 *   "phase planes") laid out [channel][phase][image][hq][wq], so that one run of virtual pixels
 *   q = image * hq*wq + oh * wq + ow spans the whole batch and A is read in place (mr
 *   consecutive channels of one tap, a plane apart; channels padded with zero planes to a
 *   multiple of mr).  B is dy^T with zero rows where a virtual pixel is no output pixel (ow >=
 *   OW, the rows between images).  Those pixels still read input values through A (0 * x): an
 *   input with a non-finite value is left to the portable kernel (FC_EUNSUPPORTED; the copy
 *   notices it for free).
 * - "packed" (small images, where those virtual pixels would waste more than gathering costs):
 *   the same product with A the im2col rows of each block of real pixels (row c*r*s + t).
 * - "swap" (1x1, unpadded, cg <= kg): dw (kg x cg) = dy X^T: A is dy (rows copied per pixel
 *   block), B is x^T, so only the smaller side -- x's channels, not dy's -- is transposed.
 *
 * Pixels are cut into blocks whose B (every group's panels) fits in about 1.5 MB of L2; each
 * block is packed by all threads, then the A blocks ("units": mr rows of one group), in chunks,
 * are shared out: no two threads write the same tile, so there are no partial sums to add.
 *
 * Scratch (every size checked, allocated up front, freed before returning), in floats; mr, nr,
 * kc are the ISA table's (8, 48, 192 AVX-512; 6, 16, 256 AVX2; 4, 16, 128 portable):
 *   N = cg (swap) or kg; panels (plan_panels): full = N / nr, rest = N % nr rounded up to 16;
 *     npad = full * nr + rest, npan = full + (rest > 0), except nr == 48, rest == 16, full >= 1:
 *     npad = full * 48 + 16 + 16 and npan = full + 2 (the last 48 + 16 become 32 + 32).
 *   M = r*s * cgp (direct, cgp = cg rounded up to mr), crsp = cg*r*s rounded up to mr (packed),
 *     kgp = kg rounded up to mr (swap).
 *   span = oh*ow when A is read in place, else qall: (n-1)*hq*wq + (oh-1)*wq + ow (direct;
 *     hq = oh + (r-1)*dil_h / stride_h, wq likewise) or n*oh*ow (packed, swap);
 *     kc2 = ceil(span / ceil(span / max(kc, 393216 / (groups * npad)))).
 *   A:     in place: none (one byte); direct: groups * cgp * na*nb * n*hq*wq (na, nb: the stride
 *          phases the taps use); packed, swap: groups * M * kc2
 *   B:     groups * npad * kc2
 *   tiles: groups * (M / mr) * npan * mr * nr
 * plus int64 tables: 2 x (N / 16 + 2), r*s, 3 * kc.
 */
#include "conv_gemm_f32.h"
#include "fc_internal.h"

enum { DIRECT, PACKED, SWAP };

int fc_f32_conv2d_bwd_weight_cl(const fc_conv2d_desc *d, const float *x, const float *dy, float *dw, int nthreads,
                                int fold); /* bwd_weight_cl_f32.c */

typedef struct {
    const fc_conv2d_desc *d;
    const fc_isa_config *cfg;
    int mode;
    int64_t mr, nr, cg, kg, rs, kc2, qall;
    int64_t cgp, ncb;         /* direct: channels padded to mr, blocks of mr */
    int64_t mrows, ublk;      /* A rows per group (padded to mr), A blocks per group */
    int64_t ncols, npad, npan; /* B: columns per group (N), padded, panels */
    int64_t *pan0, *panw;     /* [npan]: each panel's first column and width (16, 32 or 48) */
    phases_t ph;              /* the stride phases of the input planes (as the forward's) */
    int64_t plane, chan;
    float *src;               /* A: the planes (direct) or one pixel block's rows */
    const float *ain;         /* in place: A read from x (direct 1x1) or dy (swap) itself */
    int64_t per_img;          /* in place: pixel blocks per image (blocks never span two) */
    int64_t lda;
    int64_t *tapoff;          /* direct: [rs] offset of tap (r, s)'s window in its channel */
    const int64_t *poff;      /* [3][kc]: p * 16, p * 32, p * 48 */
} wplan_t;

/* out[j] = in[j * stride] for j < n; returns 0, or NaN when any value copied is not finite. */
FC_CLONES
static float copy_check(float *restrict out, const float *restrict in, int64_t n, int64_t stride) {
    float z = 0.0f;
    if (stride == 1) {
        for (int64_t j = 0; j < n; j++) {
            out[j] = in[j];
            z += in[j] * 0.0f;
        }
    } else if (stride == 2) {
        for (int64_t j = 0; j < n; j++) {
            out[j] = in[2 * j];
            z += in[2 * j] * 0.0f;
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            out[j] = in[j * stride];
            z += in[j * stride] * 0.0f;
        }
    }
    return z;
}

/* Direct: the planes of channel c (of cgp per group) of group g for image n; 0, or NaN if x
 * has a non-finite value there. */
static float fill_planes(const wplan_t *P, const float *x, int64_t g, int64_t c, int64_t n) {
    const fc_conv2d_desc *d = P->d;
    float *base = P->src + (size_t)(g * P->cgp + c) * P->chan + (size_t)n * P->plane;
    float z = 0.0f;
    for (int64_t ia = 0; ia < P->ph.na; ia++)
        for (int64_t ib = 0; ib < P->ph.nb; ib++) {
            float *out = base + (size_t)(ia * P->ph.nb + ib) * d->n * P->plane;
            if (c >= P->cg) {
                memset(out, 0, (size_t)P->plane * sizeof(float));
                continue;
            }
            const float *xp = x + ((size_t)n * d->c + g * P->cg + c) * d->h * d->w;
            int64_t a = P->ph.rowphases[ia], b = P->ph.colphases[ib], lo, hi, off = b - d->pad_left;
            fc_valid_range(d->w, P->ph.wq, d->stride_w, off, &lo, &hi);
            for (int64_t i = 0; i < P->ph.hq; i++) {
                float *orow = out + i * P->ph.wq;
                int64_t ih = i * d->stride_h + a - d->pad_top;
                if (ih < 0 || ih >= d->h) {
                    memset(orow, 0, (size_t)P->ph.wq * sizeof(float));
                    continue;
                }
                memset(orow, 0, (size_t)lo * sizeof(float));
                if (hi > lo)
                    z += copy_check(orow + lo, xp + ih * d->w + lo * d->stride_w + off, hi - lo, d->stride_w);
                memset(orow + hi, 0, (size_t)(P->ph.wq - hi) * sizeof(float));
            }
        }
    return z;
}

/* Packed and swap: A row `row` of group g over pixels [q0, q1) of the block that starts at qb.
 * Packed: im2col row c*r*s + t (the value tap t of channel c reads at each output pixel, 0 in
 * the padding); swap: dy's channel; zero rows past the real ones. */
static void fill_rows(const wplan_t *P, const float *x, const float *dy, int64_t g, int64_t row, int64_t qb,
                      int64_t q0, int64_t q1) {
    const fc_conv2d_desc *d = P->d;
    const int64_t ohw = d->oh * d->ow;
    float *out = P->src + (size_t)(g * P->mrows + row) * P->kc2 - qb;
    if (row >= (P->mode == SWAP ? P->kg : P->cg * P->rs)) {
        memset(out + q0, 0, (size_t)(q1 - q0) * sizeof(float));
        return;
    }
    if (P->mode == SWAP) {
        for (int64_t q = q0; q < q1;) {
            const int64_t n = q / ohw, pix = q % ohw, len = FC_MIN(ohw - pix, q1 - q);
            memcpy(out + q, dy + ((size_t)n * d->k + g * P->kg + row) * ohw + pix, (size_t)len * sizeof(float));
            q += len;
        }
        return;
    }
    const int64_t c = row / P->rs, t = row % P->rs, off = t % d->s * d->dil_w - d->pad_left;
    int64_t lo, hi;
    fc_valid_range(d->w, d->ow, d->stride_w, off, &lo, &hi);
    for (int64_t q = q0; q < q1;) {
        const int64_t n = q / ohw, oh = q % ohw / d->ow, ow = q % d->ow, len = FC_MIN(d->ow - ow, q1 - q);
        const int64_t ih = oh * d->stride_h - d->pad_top + t / d->s * d->dil_h;
        float *o = out + q - ow; /* o[j]: output column j of this row */
        const int64_t a = FC_MAX(ow, lo), b = FC_MIN(ow + len, hi);
        if (ih < 0 || ih >= d->h || b <= a) {
            memset(o + ow, 0, (size_t)len * sizeof(float));
        } else {
            const float *xrow = x + (((size_t)n * d->c + g * P->cg + c) * d->h + ih) * d->w;
            memset(o + ow, 0, (size_t)(a - ow) * sizeof(float));
            copy_check(o + a, xrow + a * d->stride_w + off, b - a, d->stride_w);
            memset(o + b, 0, (size_t)(ow + len - b) * sizeof(float));
        }
        q += len;
    }
}

/* dst[t * w + c] = src[c * chan + t * cstep] for t < len, c < cols; 0 for cols <= c < w.
 * Column by column: each source run is read as one stream, the writes stay within the panel
 * (measured: reading 16 columns' streams at a time for each row written was 2x slower). */
static void transpose_run(float *restrict dst, int64_t w, const float *restrict src, int64_t chan, int64_t cstep,
                          int64_t len, int64_t cols) {
    for (int64_t c = 0; c < w; c++) {
        float *o = dst + c;
        if (c < cols) {
            const float *in = src + c * chan;
            if (cstep == 1)
                for (int64_t t = 0; t < len; t++)
                    o[t * w] = in[t];
            else
                for (int64_t t = 0; t < len; t++)
                    o[t * w] = in[t * cstep];
        } else {
            for (int64_t t = 0; t < len; t++)
                o[t * w] = 0.0f;
        }
    }
}

/* B rows [q0, q1) of group g (row 0 = pixel qb) into that group's panels: panel j holds the
 * columns [pan0[j], pan0[j] + panw[j]), rows panw[j] floats apart, zero past the real columns
 * and on virtual pixels that are no output pixel.  Columns are dy's channels (direct, packed)
 * or x's (swap: x at the pixel a 1x1 tap reads). */
static void pack_b(const wplan_t *P, const float *x, const float *dy, int64_t g, int64_t qb, int64_t q0, int64_t q1,
                   float *bp) {
    const fc_conv2d_desc *d = P->d;
    const int swap = P->mode == SWAP;
    const int64_t img = swap ? d->c * d->h * d->w : d->k * d->oh * d->ow, chan = swap ? d->h * d->w : d->oh * d->ow;
    const int64_t rstep = swap ? d->stride_h * d->w : d->ow, cstep = swap ? d->stride_w : 1;
    const float *base = (swap ? x : dy) + (size_t)g * P->ncols * chan;
    for (int64_t q = q0; q < q1;) {
        int64_t n = q / P->plane, rem = q % P->plane, oh = rem / P->ph.wq, ow = rem % P->ph.wq, len;
        if (oh >= d->oh || ow >= d->ow) {
            len = oh >= d->oh ? FC_MIN(P->plane - rem, q1 - q) : FC_MIN(P->ph.wq - ow, q1 - q);
            for (int64_t j = 0; j < P->npan; j++)
                memset(bp + P->pan0[j] * P->kc2 + (q - qb) * P->panw[j], 0, (size_t)(len * P->panw[j]) * sizeof(float));
        } else {
            /* One output row, or the rest of the image where rows follow each other in the
             * source too (long runs: the prefetchers follow each column's stream). */
            const int rows_follow = P->ph.wq == d->ow && rstep == d->ow * cstep;
            len = rows_follow ? FC_MIN(P->plane - rem, q1 - q) : FC_MIN(d->ow - ow, q1 - q);
            const float *src = base + (size_t)n * img + oh * rstep + ow * cstep;
            for (int64_t j = 0; j < P->npan; j++)
                transpose_run(bp + P->pan0[j] * P->kc2 + (q - qb) * P->panw[j], P->panw[j],
                              src + P->pan0[j] * chan, chan, cstep, len, FC_MIN(P->panw[j], P->ncols - P->pan0[j]));
        }
        q += len;
    }
}

/* The tiles of A blocks [u0, u1) (mr rows of one group each) += pixels [q0, q1) of the block
 * that starts at qb.  Per sub-block of the ISA's kc pixels, each B sliver stays in L1 while it
 * meets the A slivers of every unit of the chunk (from L2), the chunk's tiles waiting in L2. */
static void run_units(const wplan_t *P, int64_t u0, int64_t u1, int64_t qb, int64_t q0, int64_t q1,
                      const float *bbuf, float *ct) {
    const fc_conv2d_desc *d = P->d;
    const int64_t tile = P->mr * P->nr;
    /* Sub-blocks of equal length (a short last one would pay a whole pass over the tiles). */
    const int64_t nsub = (q1 - q0 + P->cfg->kc - 1) / P->cfg->kc;
    for (int64_t sb = 0; sb < nsub; sb++) {
        const int64_t s0 = q0 + (q1 - q0) * sb / nsub, kc = q0 + (q1 - q0) * (sb + 1) / nsub - s0;
        for (int64_t j = 0; j < P->npan; j++) {
            const int64_t w = P->panw[j], nv = w / 16;
            for (int64_t u = u0; u < u1; u++) {
                const int64_t g = u / P->ublk;
                const float *a;
                if (P->ain) { /* rows mr channels of one image, a plane apart */
                    const int64_t n = s0 / P->plane, nch = P->mode == SWAP ? d->k : d->c;
                    const int64_t ch = P->mode == SWAP ? g * P->kg : g * P->cg;
                    a = P->ain + ((size_t)n * nch + ch + u % P->ublk * P->mr) * P->plane + (s0 - n * P->plane);
                } else if (P->mode == DIRECT) {
                    const int64_t t = u % P->ublk / P->ncb, cb = u % P->ncb;
                    a = P->src + (size_t)(g * P->cgp + cb * P->mr) * P->chan + P->tapoff[t] + s0;
                } else {
                    a = P->src + (size_t)u * P->mr * P->kc2 + (s0 - qb);
                }
                const float *b = bbuf + (size_t)g * P->npad * P->kc2 + P->pan0[j] * P->kc2 + (s0 - qb) * w;
                P->cfg->gemm[0][nv - 1](kc, a, P->lda, b, P->poff + (nv - 1) * P->cfg->kc,
                                        ct + ((size_t)u * P->npan + j) * tile, s0 > 0);
            }
        }
    }
}

/* dw from the tiles.  Swap: tile rows are dw rows.  Otherwise tile (unit, panel) holds dw^T:
 * one channel block (direct) or mr columns (packed) at a time, its tiles in L2 while each dw
 * row gets its values. */
static void store_dw(const wplan_t *P, const float *ct, float *dw, int64_t v) {
    const fc_conv2d_desc *d = P->d;
    const int64_t tile = P->mr * P->nr, crs = P->cg * P->rs;
    if (P->mode == SWAP) { /* v: a unit */
        const int64_t g = v / P->ublk, k0 = v % P->ublk * P->mr, rows = FC_MIN(P->mr, P->kg - k0);
        for (int64_t j = 0; j < P->npan; j++) {
            const int64_t cols = FC_MIN(P->panw[j], P->cg - P->pan0[j]);
            for (int64_t i = 0; i < rows; i++)
                memcpy(dw + (size_t)(g * P->kg + k0 + i) * P->cg + P->pan0[j],
                       ct + ((size_t)v * P->npan + j) * tile + i * P->nr, (size_t)FC_MAX(cols, 0) * sizeof(float));
        }
        return;
    }
    int64_t j = 0;
    if (P->mode == PACKED) { /* v: a unit, whose rows are dw columns col0... of its group */
        const int64_t g = v / P->ublk, col0 = v % P->ublk * P->mr, rows = FC_MIN(P->mr, crs - col0);
        for (int64_t k = 0; k < P->kg; k++) {
            while (k >= P->pan0[j] + P->panw[j])
                j++;
            const float *tl = ct + ((size_t)v * P->npan + j) * tile + (k - P->pan0[j]);
            float *out = dw + (size_t)(g * P->kg + k) * crs + col0;
            for (int64_t i = 0; i < rows; i++)
                out[i] = tl[i * P->nr];
        }
        return;
    }
    /* direct; v: a channel block of a group */
    const int64_t g = v / P->ncb, cb = v % P->ncb, rows = FC_MIN(P->mr, P->cg - cb * P->mr);
    for (int64_t k = 0; k < P->kg; k++) {
        while (k >= P->pan0[j] + P->panw[j])
            j++;
        float *out = dw + (size_t)(g * P->kg + k) * crs + cb * P->mr * P->rs;
        for (int64_t t = 0; t < P->rs; t++) {
            const float *tl = ct + ((size_t)((g * P->rs + t) * P->ncb + cb) * P->npan + j) * tile + (k - P->pan0[j]);
            for (int64_t i = 0; i < rows; i++)
                out[i * P->rs + t] = tl[i * P->nr];
        }
    }
    (void)d;
}

/* Panels over n columns: nr wide, except that a 16-wide last panel next to a full one becomes
 * two of 32 (the 16-wide kernel is load-bound).  Returns the padded width. */
static int64_t plan_panels(int64_t n, int64_t nr, int64_t *pan0, int64_t *panw, int64_t *npan) {
    int64_t full = n / nr, rest = (n % nr + 15) / 16 * 16, j = 0, at = 0;
    int split = nr == 48 && rest == 16 && full >= 1;
    if (split)
        full--;
    for (int64_t i = 0; i < full; i++, at += nr)
        pan0[j] = at, panw[j++] = nr;
    if (split) {
        pan0[j] = at, panw[j++] = 32, at += 32;
        pan0[j] = at, panw[j++] = 32, at += 32;
    } else if (rest) {
        pan0[j] = at, panw[j++] = rest, at += rest;
    }
    *npan = j;
    return at;
}

int fc_f32_conv2d_bwd_weight_gemm(const fc_conv2d_desc *d, const float *x, const float *dy, float *dw,
                                  int nthreads) {
    wplan_t P = {.d = d, .cfg = fc_config()};
    P.mr = P.cfg->mr;
    P.nr = P.cfg->nr;
    P.cg = d->c / d->groups;
    P.kg = d->k / d->groups;
    P.cgp = (P.cg + P.mr - 1) / P.mr * P.mr;
    P.ncb = P.cgp / P.mr;
    P.rs = d->r * d->s;
    if (d->n < 1 || d->stride_h > 64 || d->stride_w > 64 || P.cfg->nr % 16 || P.cfg->nr > 48)
        return FC_EUNSUPPORTED;
    if (!fc_stride_phases(d, &P.ph))
        return FC_EUNSUPPORTED; /* as the forward: the portable kernel takes it */

    /* Direct pays for the virtual pixels that are no output pixel (and padded channels), times
     * kg output channels; packed for gathering r*s copies of the input, a cost measured in the
     * tens of multiply-adds per value; swap (1x1) needs neither. */
    const double real = (double)d->n * d->oh * d->ow;
    const double virt = (double)(d->n - 1) * P.ph.hq * P.ph.wq + (double)(d->oh - 1) * P.ph.wq + d->ow;
    const int64_t crsp = (P.cg * P.rs + P.mr - 1) / P.mr * P.mr;
    const double waste = virt * P.cgp / (real * P.cg) - (double)crsp / (P.cg * P.rs);
    P.mode = waste * (double)P.kg > 32.0 ? PACKED : DIRECT;
    if (d->r == 1 && d->s == 1 && d->pad_top == 0 && d->pad_left == 0 && P.cg <= P.kg)
        P.mode = SWAP;
    const char *force = getenv("FASTCONV_BWD_WEIGHT"); /* test hook: reach every mode */
    if (force && !strcmp(force, "direct"))
        P.mode = DIRECT;
    else if (force && !strcmp(force, "packed"))
        P.mode = PACKED;
    else if (P.rs > 1) { /* the channels-last mode: no gathered rows, no virtual pixels; measured
                           * faster on every ResNet-50 3x3 layer (or as fast: res3a's 3x3/2) */
        const int status = fc_f32_conv2d_bwd_weight_cl(d, x, dy, dw, nthreads, -1);
        if (status != FC_EUNSUPPORTED)
            return status;
    }
    P.ncols = P.mode == SWAP ? P.cg : P.kg;
    if (P.mode == DIRECT) {
        P.plane = P.ph.hq * P.ph.wq;
        P.chan = P.ph.na * P.ph.nb * d->n * P.plane;
        P.qall = (d->n - 1) * P.plane + (d->oh - 1) * P.ph.wq + d->ow;
        P.lda = P.chan;
        P.mrows = P.rs * P.cgp;
    } else { /* one "plane" per image: its output pixels */
        P.ph.hq = d->oh;
        P.ph.wq = d->ow;
        P.plane = d->oh * d->ow;
        P.qall = d->n * P.plane;
        P.mrows = P.mode == SWAP ? (P.kg + P.mr - 1) / P.mr * P.mr : crsp;
    }
    P.ublk = P.mrows / P.mr;
    /* 1x1, stride 1, unpadded (direct) or swap, whole blocks of mr rows: A is read in place (mr
     * channels of one image, a plane apart), no copy; pixel blocks then stop at image
     * boundaries.  Measured on ResNet-50's 1x1 layers: in place wins from 14x14 images (swap) and
     * from 7x7 (direct, where the copy is of the larger side); below, blocks are too short. */
    if (d->oh * d->ow >= (P.mode == SWAP ? 196 : 49) && d->r == 1 && d->s == 1 && d->pad_top == 0 &&
        d->pad_left == 0 &&
        ((P.mode == SWAP && P.kg % P.mr == 0) ||
         (P.mode == DIRECT && d->stride_h == 1 && d->stride_w == 1 && P.cg % P.mr == 0 && d->oh == d->h &&
          d->ow == d->w))) {
        P.ain = P.mode == SWAP ? dy : x;
        P.plane = d->oh * d->ow;
        P.ph.wq = d->ow;
        P.ph.hq = d->oh;
        P.qall = d->n * P.plane;
        P.lda = P.plane;
    }

    const size_t tbl = fc_size_mul3((size_t)P.ncols / 16 + 2, sizeof(int64_t), 1);
    P.pan0 = fc_alloc(tbl);
    P.panw = fc_alloc(tbl);
    P.tapoff = fc_alloc(fc_size_mul3(P.rs, sizeof(int64_t), 1));
    int64_t *poff = fc_alloc(fc_size_mul3(3 * (size_t)P.cfg->kc, sizeof(int64_t), 1));
    float *bbuf = NULL, *ct = NULL;
    int status = FC_OK;
    if (!P.pan0 || !P.panw || !P.tapoff || !poff) {
        status = FC_ENOMEM;
        goto done;
    }
    P.npad = plan_panels(P.ncols, P.nr, P.pan0, P.panw, &P.npan);

    /* Pixel blocks whose B (every group's panels) fits in about 1.5 MB of L2: each block is one
     * pass over the tiles, so the fewer, the less those tiles travel. */
    const int64_t units = d->groups * P.ublk;
    const int64_t kc2_max = FC_MAX(P.cfg->kc, (384 * 1024) / (d->groups * P.npad));
    const int64_t span = P.ain ? P.plane : P.qall; /* what one run of blocks covers */
    const int64_t nbb0 = (span + kc2_max - 1) / kc2_max;
    P.kc2 = (span + nbb0 - 1) / nbb0;
    P.per_img = (span + P.kc2 - 1) / P.kc2;
    const int64_t nbb = P.ain ? d->n * P.per_img : P.per_img;
    if (P.mode != DIRECT && !P.ain)
        P.lda = P.kc2;
    double macs = (double)d->n * d->k * d->oh * d->ow * P.cg * P.rs;
    int team = fc_team(nthreads, macs > 1e15 ? (int64_t)1e15 : (int64_t)macs, 1 << 16);
    team = (int)FC_MIN(team, units);
    /* Units per chunk: their tiles within about 256 KB, and the same number of chunks of about
     * the same size for every thread (the static schedule below gives each thread a contiguous
     * run of chunks; uneven runs left one thread idle for a third of the time). */
    const int64_t cmax = FC_MAX(1, (256 * 1024) / (P.npan * P.mr * P.nr * (int64_t)sizeof(float)));
    const int64_t rounds = (units + team * cmax - 1) / (team * cmax);
    const int64_t chunk = (units + team * rounds - 1) / (team * rounds);
    const int64_t nchunks = (units + chunk - 1) / chunk;

    const size_t abytes = P.ain ? 1 : P.mode == DIRECT ? fc_size_mul3(fc_size_mul3(d->groups, P.cgp, P.chan), sizeof(float), 1)
                                           : fc_size_mul3(fc_size_mul3(d->groups, P.mrows, P.kc2), sizeof(float), 1);
    P.src = fc_alloc(abytes);
    bbuf = fc_alloc(fc_size_mul3(fc_size_mul3(d->groups, P.npad, P.kc2), sizeof(float), 1));
    ct = fc_alloc(fc_size_mul3(fc_size_mul3(units, P.npan, P.mr), P.nr, sizeof(float)));
    if (!P.src || !bbuf || !ct) {
        status = FC_ENOMEM;
        goto done;
    }
    for (int64_t v = 0; v < 3; v++)
        for (int64_t p = 0; p < P.cfg->kc; p++)
            poff[v * P.cfg->kc + p] = p * 16 * (v + 1);
    P.poff = poff;
    for (int64_t t = 0; t < P.rs; t++) {
        int64_t rr = t / d->s * d->dil_h, ss = t % d->s * d->dil_w;
        int64_t phase = P.ph.arow[rr % d->stride_h] * P.ph.nb + P.ph.bcol[ss % d->stride_w];
        P.tapoff[t] = phase * d->n * P.plane + rr / d->stride_h * P.ph.wq + ss / d->stride_w;
    }

    int nonfinite = 0;
#pragma omp parallel num_threads(team)
    {
        float z = 0.0f;
        const int64_t nfill = P.mode == DIRECT && !P.ain ? d->groups * P.cgp * d->n : 0;
#pragma omp for schedule(static)
        for (int64_t v = 0; v < nfill; v++)
            z += fill_planes(&P, x, v / (P.cgp * d->n), v / d->n % P.cgp, v % d->n);
        if (z != 0.0f) { /* NaN != 0 */
#pragma omp atomic write
            nonfinite = 1;
        }
#pragma omp barrier
        int stop;
#pragma omp atomic read
        stop = nonfinite;
        if (!stop) { /* the same value in every thread (read after the barrier) */
            const int64_t pieces = 4 * (int64_t)team;
            for (int64_t bb = 0; bb < nbb; bb++) {
                const int64_t q0 = P.ain ? bb / P.per_img * P.plane + bb % P.per_img * P.kc2 : bb * P.kc2;
                const int64_t q1 = P.ain ? FC_MIN((bb / P.per_img + 1) * P.plane, q0 + P.kc2) : FC_MIN(P.qall, q0 + P.kc2);
#pragma omp for schedule(static) nowait
                for (int64_t v = 0; v < d->groups * pieces; v++) {
                    int64_t g = v / pieces, i = v % pieces;
                    pack_b(&P, x, dy, g, q0, q0 + (q1 - q0) * i / pieces, q0 + (q1 - q0) * (i + 1) / pieces,
                           bbuf + (size_t)g * P.npad * P.kc2);
                }
                if (P.mode != DIRECT && !P.ain) { /* this block's A rows */
                    const int64_t halves = (q1 - q0) >= 2048 ? 2 : 1;
#pragma omp for schedule(static) nowait
                    for (int64_t v = 0; v < d->groups * P.mrows * halves; v++) {
                        const int64_t h = v % halves, row = v / halves;
                        fill_rows(&P, x, dy, row / P.mrows, row % P.mrows, q0, q0 + (q1 - q0) * h / halves,
                                  q0 + (q1 - q0) * (h + 1) / halves);
                    }
                }
#pragma omp barrier
#pragma omp for schedule(static)
                for (int64_t ch = 0; ch < nchunks; ch++)
                    run_units(&P, ch * chunk, FC_MIN(units, (ch + 1) * chunk), q0, q0, q1, bbuf, ct);
            }
            const int64_t nstore = P.mode == DIRECT ? d->groups * P.ncb : units;
#pragma omp for schedule(static)
            for (int64_t v = 0; v < nstore; v++)
                store_dw(&P, ct, dw, v);
        }
    }
    if (nonfinite)
        status = FC_EUNSUPPORTED;
done:
    free(P.src);
    free(bbuf);
    free(ct);
    free(P.tapoff);
    free(P.pan0);
    free(P.panw);
    free(poff);
    return status;
}
