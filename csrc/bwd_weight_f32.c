/* float32 backward-weight on the forward's GEMM microkernels (the per-ISA tables of isa.c).
 *
 * Per group, dw^T (c*r*s x kg) = X (c*r*s x pixels) dy^T (pixels x kg): the reduction runs over
 * output pixels, and row (c, tap) of X is the input window that tap reads -- a contiguous run of
 * a zero-padded, stride-split copy of the input (the forward's "phase planes"), read in place.
 * The copy is laid out [channel][phase][image][hq][wq], so for one channel and phase the images
 * follow each other and one run of virtual pixels q = image * hq*wq + oh * wq + ow spans the
 * whole batch: the reduction is long even for 7x7 images.  Rows mr apart in the GEMM's A block
 * are mr consecutive channels of one tap, a fixed distance apart (the microkernel's lda); each
 * group's channels are padded with zero planes to a multiple of mr.
 *
 * B is dy^T over the same virtual pixels, packed per block of pixels into nr-wide panels of
 * output channels, with zero rows where a virtual pixel is no output pixel (ow >= OW, or the
 * rows between images).  Those pixels still read input values through A (0 * x); a
 * non-finite input value would turn that into NaN, so an input with any is left to the
 * portable kernel (FC_EUNSUPPORTED; the copy notices it for free).
 *
 * Threads split the pixel blocks (the reduction) evenly, each summing into its own copy of the
 * dw^T tiles; the copies are added and transposed into dw at the end.
 *
 * Scratch, in floats (every size checked, allocated before any work):
 *   planes: groups * cgp * na * nb * n * hq * wq     (cgp = cg rounded up to mr)
 *   per thread: groups * r*s * cgp * npan * nr       (the dw^T tiles; npan = ceil(kg / nr))
 *             + npan * nr * kcb                      (one pixel block of B; kcb <= the ISA's kc)
 * plus r*s + kcb int64 offsets.  Per-thread slices are rounded up to 128 bytes.
 */
#include "fc_internal.h"

typedef struct {
    const fc_conv2d_desc *d;
    const fc_isa_config *cfg;
    int64_t mr, nr, cg, kg, cgp, ncb, rs, npan, pw, kc2;
    int64_t crsp, ublk, lda; /* packed: cg*r*s rounded up to mr; A blocks per group; A's row stride */
    int packed;       /* A rows: im2col rows (packed) or windows of the planes (direct) */
    int64_t na, nb, hq, wq, plane, chan, qall;
    int64_t rowph[64], colph[64], arow[64], bcol[64];
    float *src;       /* the planes */
    int64_t *tapoff;  /* [rs]: offset of tap (r, s)'s window from its channel's start */
    const int64_t *poff; /* [kc]: p * pw, the rows of a B panel */
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

/* The planes of channel c (of cgp per group) of group g for image n; 0, or NaN if x has a
 * non-finite value there. */
static float fill(const wplan_t *P, const float *x, int64_t g, int64_t c, int64_t n) {
    const fc_conv2d_desc *d = P->d;
    float *base = P->src + (size_t)(g * P->cgp + c) * P->chan + (size_t)n * P->plane;
    float z = 0.0f;
    for (int64_t ia = 0; ia < P->na; ia++)
        for (int64_t ib = 0; ib < P->nb; ib++) {
            float *out = base + (size_t)(ia * P->nb + ib) * d->n * P->plane;
            if (c >= P->cg) {
                memset(out, 0, (size_t)P->plane * sizeof(float));
                continue;
            }
            const float *xp = x + ((size_t)n * d->c + g * P->cg + c) * d->h * d->w;
            int64_t a = P->rowph[ia], b = P->colph[ib], lo, hi, off = b - d->pad_left;
            fc_valid_range(d->w, P->wq, d->stride_w, off, &lo, &hi);
            for (int64_t i = 0; i < P->hq; i++) {
                float *orow = out + i * P->wq;
                int64_t ih = i * d->stride_h + a - d->pad_top;
                if (ih < 0 || ih >= d->h) {
                    memset(orow, 0, (size_t)P->wq * sizeof(float));
                    continue;
                }
                memset(orow, 0, (size_t)lo * sizeof(float));
                if (hi > lo)
                    z += copy_check(orow + lo, xp + ih * d->w + lo * d->stride_w + off, hi - lo, d->stride_w);
                memset(orow + hi, 0, (size_t)(P->wq - hi) * sizeof(float));
            }
        }
    return z;
}

/* Packed mode: im2col row rho = c*r*s + t of group g (the order of dw's columns, mr of them per
 * A block) over pixels [q0, q1) of the block that starts at qb: the value tap t of channel c
 * reads at each output pixel, 0 in the padding; zero rows past cg*r*s. */
static void fill_cols(const wplan_t *P, const float *x, int64_t g, int64_t rho, int64_t qb, int64_t q0, int64_t q1) {
    const fc_conv2d_desc *d = P->d;
    float *out = P->src + (size_t)(g * P->crsp + rho) * P->kc2 - qb;
    if (rho >= P->cg * P->rs) {
        memset(out + q0, 0, (size_t)(q1 - q0) * sizeof(float));
        return;
    }
    const int64_t c = rho / P->rs, t = rho % P->rs, ohw = d->oh * d->ow;
    const int64_t off = t % d->s * d->dil_w - d->pad_left;
    int64_t lo, hi;
    fc_valid_range(d->w, d->ow, d->stride_w, off, &lo, &hi);
    for (int64_t q = q0; q < q1;) {
        const int64_t n = q / ohw, oh = q % ohw / d->ow, ow = q % d->ow, len = FC_MIN(d->ow - ow, q1 - q);
        const int64_t ih = oh * d->stride_h - d->pad_top + t / d->s * d->dil_h;
        float *o = out + q - ow; /* o[j]: output column j of this row */
        if (ih < 0 || ih >= d->h) {
            memset(o + ow, 0, (size_t)len * sizeof(float));
        } else {
            const float *xrow = x + (((size_t)n * d->c + g * P->cg + c) * d->h + ih) * d->w;
            const int64_t a = FC_MAX(ow, lo), b = FC_MIN(ow + len, hi);
            if (b > a) {
                memset(o + ow, 0, (size_t)(a - ow) * sizeof(float));
                copy_check(o + a, xrow + a * d->stride_w + off, b - a, d->stride_w);
                memset(o + b, 0, (size_t)(ow + len - b) * sizeof(float));
            } else {
                memset(o + ow, 0, (size_t)len * sizeof(float));
            }
        }
        q += len;
    }
}

/* B rows [q0, q1) of group g (rows from block start qb): panel j holds the output channels
 * [j*pw, (j+1)*pw), rows pw floats apart; zero past kg and on virtual pixels that are no output
 * pixel. */
static void pack_dy(const wplan_t *P, const float *dy, int64_t g, int64_t qb, int64_t q0, int64_t q1, float *bp) {
    const fc_conv2d_desc *d = P->d;
    const int64_t pw = P->pw, ohw = d->oh * d->ow, blk = P->kc2 * pw, kpad = P->npan * pw;
    for (int64_t q = q0; q < q1;) {
        int64_t n = q / P->plane, rem = q % P->plane, oh = rem / P->wq, ow = rem % P->wq, len;
        if (oh >= d->oh || ow >= d->ow) {
            len = oh >= d->oh ? FC_MIN(P->plane - rem, q1 - q) : FC_MIN(P->wq - ow, q1 - q);
            for (int64_t j = 0; j < P->npan; j++)
                memset(bp + j * blk + (q - qb) * pw, 0, (size_t)(len * pw) * sizeof(float));
        } else {
            len = FC_MIN(d->ow - ow, q1 - q);
            const float *src = dy + ((size_t)n * d->k + g * P->kg) * ohw + oh * d->ow + ow;
            for (int64_t k = 0; k < kpad; k++) {
                float *dst = bp + (k / pw) * blk + (q - qb) * pw + k % pw;
                if (k < P->kg) {
                    const float *s = src + k * ohw;
                    for (int64_t t = 0; t < len; t++)
                        dst[t * pw] = s[t];
                } else {
                    for (int64_t t = 0; t < len; t++)
                        dst[t * pw] = 0.0f;
                }
            }
        }
        q += len;
    }
}

/* The dw^T tiles of A blocks [u0, u1) (each a group, tap and channel block) += pixels [q0, q1)
 * of the block that starts at qb.  Per sub-block of the ISA's kc pixels, each B sliver (kc x
 * pw) stays in L1 while it meets the A slivers of every unit of the chunk (from L2), the
 * chunk's tiles waiting in L2. */
static void run_units(const wplan_t *P, int64_t u0, int64_t u1, int64_t qb, int64_t q0, int64_t q1,
                      const float *bbuf, float *ct) {
    const int64_t tile = P->mr * P->nr, blk = P->kc2 * P->pw;
    for (int64_t s0 = q0; s0 < q1; s0 += P->cfg->kc) {
        const int64_t kc = FC_MIN(P->cfg->kc, q1 - s0);
        for (int64_t j = 0; j < P->npan; j++) {
            const int64_t cols = FC_MIN(P->pw, P->kg - j * P->pw), nv = (cols + 15) / 16;
            for (int64_t u = u0; u < u1; u++) {
                const int64_t g = u / P->ublk, t = u / P->ncb % P->rs, cb = u % P->ncb;
                const float *a = P->packed ? P->src + (size_t)u * P->mr * P->kc2 - qb
                                           : P->src + (size_t)(g * P->cgp + cb * P->mr) * P->chan + P->tapoff[t];
                const float *b = bbuf + (size_t)(g * P->npan + j) * blk + (s0 - qb) * P->pw;
                P->cfg->gemm[0][nv - 1](kc, a + s0, P->lda, b, P->poff, ct + ((size_t)u * P->npan + j) * tile, s0 > 0);
            }
        }
    }
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
    /* Panels of equal width (64 channels: 2 x 32, not 48 + 16, whose 16-wide kernel is
     * load-bound). */
    P.npan = (P.kg + P.nr - 1) / P.nr;
    P.pw = ((P.kg + P.npan - 1) / P.npan + 15) / 16 * 16;
    if (d->n < 1 || d->stride_h > 64 || d->stride_w > 64)
        return FC_EUNSUPPORTED;
    /* Which taps land on which stride phase (as the forward's planes). */
    for (int64_t a = 0; a < 64; a++)
        P.arow[a] = P.bcol[a] = -1;
    for (int64_t r = 0; r < d->r; r++) {
        int64_t a = r * d->dil_h % d->stride_h;
        if (P.arow[a] < 0) {
            P.arow[a] = P.na;
            P.rowph[P.na++] = a;
        }
    }
    for (int64_t s = 0; s < d->s; s++) {
        int64_t b = s * d->dil_w % d->stride_w;
        if (P.bcol[b] < 0) {
            P.bcol[b] = P.nb;
            P.colph[P.nb++] = b;
        }
    }
    P.hq = d->oh + (d->r - 1) * d->dil_h / d->stride_h;
    P.wq = d->ow + (d->s - 1) * d->dil_w / d->stride_w;
    /* As the forward: planes mostly of zeros no tap needs (huge dilation around a small output)
     * are left to the portable kernel. */
    if ((double)P.na * P.nb * (double)P.hq * (double)P.wq > 8.0 * ((double)d->h * d->w + (double)d->oh * d->ow) + (1 << 20))
        return FC_EUNSUPPORTED;
    /* Direct (the planes, read in place) pays for the virtual pixels that are no output pixel,
     * times kg output channels; packed (im2col rows: r*s copies of the input) for gathering, a
     * cost measured in the tens of multiply-adds per value.  Packed is chosen where the waste
     * times kg exceeds that, and its buffer stays below 64 MB. */
    const double real = (double)d->n * d->oh * d->ow;
    const double virt = (double)(d->n - 1) * P.hq * P.wq + (double)(d->oh - 1) * P.wq + d->ow;
    P.crsp = (P.cg * P.rs + P.mr - 1) / P.mr * P.mr;
    const int fits = 1;
    const double waste = virt * P.cgp / (real * P.cg) - (double)P.crsp / (P.cg * P.rs);
    P.packed = fits && waste * (double)P.kg > 32.0;
    const char *force = getenv("FASTCONV_BWD_WEIGHT"); /* test hook: reach both modes */
    if (force && !strcmp(force, "direct"))
        P.packed = 0;
    else if (force && !strcmp(force, "packed") && fits)
        P.packed = 1;
    if (P.packed) { /* one "plane" per image: its output pixels */
        P.hq = d->oh;
        P.wq = d->ow;
        P.plane = d->oh * d->ow;
        P.qall = d->n * P.plane;
        P.chan = P.rs * P.qall;
        P.ublk = P.crsp / P.mr;
    } else {
        P.plane = P.hq * P.wq;
        P.chan = P.na * P.nb * d->n * P.plane;
        P.qall = (d->n - 1) * P.plane + (d->oh - 1) * P.wq + d->ow;
        P.lda = P.chan;
        P.ublk = P.rs * P.ncb;
    }

    /* Pixel blocks whose B (every group's panels) fits in about 1.5 MB of L2: each block is one
     * pass over the dw^T tiles, so the fewer, the less those large tiles travel. */
    const int64_t kpad = d->groups * P.npan * P.pw, units = d->groups * P.ublk;
    const int64_t per_px = kpad, kc2_max = FC_MAX(P.cfg->kc, (384 * 1024) / per_px);
    int64_t nbb = (P.qall + kc2_max - 1) / kc2_max;
    P.kc2 = (P.qall + nbb - 1) / nbb;
    if (P.packed)
        P.lda = P.kc2;
    nbb = (P.qall + P.kc2 - 1) / P.kc2;
    double macs = (double)d->n * d->k * d->oh * d->ow * P.cg * P.rs;
    int team = fc_team(nthreads, macs > 1e15 ? (int64_t)1e15 : (int64_t)macs, 1 << 16);
    team = (int)FC_MIN(team, units);
    /* Units per chunk: their tiles within about 256 KB, and chunks enough for every thread. */
    int64_t chunk = FC_MAX(1, (256 * 1024) / (P.npan * P.mr * P.nr * (int64_t)sizeof(float)));
    chunk = FC_MIN(chunk, (units + team - 1) / team);
    const int64_t nchunks = (units + chunk - 1) / chunk;

    const size_t planes = P.packed ? fc_size_mul3(fc_size_mul3(d->groups, P.crsp, P.kc2), sizeof(float), 1)
                                   : fc_size_mul3(fc_size_mul3(d->groups, P.cgp, P.chan), sizeof(float), 1);
    const size_t bbytes = fc_size_mul3(kpad, P.kc2, sizeof(float));
    const size_t cbytes = fc_size_mul3(fc_size_mul3(units, P.npan, P.mr), P.nr, sizeof(float));
    P.src = fc_alloc(planes);
    float *bbuf = fc_alloc(bbytes), *ct = fc_alloc(cbytes);
    P.tapoff = fc_alloc(fc_size_mul3(P.rs, sizeof(int64_t), 1));
    int64_t *poff = fc_alloc(fc_size_mul3(P.cfg->kc, sizeof(int64_t), 1));
    int status = FC_OK;
    if (!P.src || !bbuf || !ct || !P.tapoff || !poff) {
        status = FC_ENOMEM;
        goto done;
    }
    for (int64_t p = 0; p < P.cfg->kc; p++)
        poff[p] = p * P.pw;
    P.poff = poff;
    for (int64_t t = 0; t < P.rs; t++) {
        int64_t rr = t / d->s * d->dil_h, ss = t % d->s * d->dil_w;
        int64_t phase = P.arow[rr % d->stride_h] * P.nb + P.bcol[ss % d->stride_w];
        P.tapoff[t] = P.packed ? t * P.qall : phase * d->n * P.plane + rr / d->stride_h * P.wq + ss / d->stride_w;
    }

    int nonfinite = 0;
#pragma omp parallel num_threads(team)
    {
        float z = 0.0f;
#pragma omp for schedule(static)
        for (int64_t v = 0; v < (P.packed ? 0 : d->groups * P.cgp * d->n); v++)
            z += fill(&P, x, v / (P.cgp * d->n), v / d->n % P.cgp, v % d->n);
        if (z != 0.0f) { /* NaN != 0 */
#pragma omp atomic write
            nonfinite = 1;
        }
#pragma omp barrier
        int stop;
#pragma omp atomic read
        stop = nonfinite;
        if (!stop) { /* the same value in every thread (read after the barrier) */
            const int64_t pieces = 4 * (int64_t)team, blk = P.kc2 * P.pw;
            for (int64_t bb = 0; bb < nbb; bb++) {
                const int64_t q0 = bb * P.kc2, q1 = FC_MIN(P.qall, q0 + P.kc2);
#pragma omp for schedule(static)
                for (int64_t v = 0; v < d->groups * pieces; v++) {
                    int64_t g = v / pieces, i = v % pieces;
                    pack_dy(&P, dy, g, q0, q0 + (q1 - q0) * i / pieces, q0 + (q1 - q0) * (i + 1) / pieces,
                            bbuf + (size_t)g * P.npan * blk);
                }
                if (P.packed) { /* this block's im2col rows */
                    const int64_t halves = (q1 - q0) >= 2048 ? 2 : 1;
#pragma omp for schedule(static)
                    for (int64_t v = 0; v < d->groups * P.crsp * halves; v++) {
                        const int64_t h = v % halves, row = v / halves;
                        fill_cols(&P, x, row / P.crsp, row % P.crsp, q0, q0 + (q1 - q0) * h / halves,
                                  q0 + (q1 - q0) * (h + 1) / halves);
                    }
                }
#pragma omp for schedule(static)
                for (int64_t ch = 0; ch < nchunks; ch++)
                    run_units(&P, ch * chunk, FC_MIN(units, (ch + 1) * chunk), q0, q0, q1, bbuf, ct);
            }
            /* dw (k, c, r, s) from the dw^T tiles, one channel block at a time: its tiles (every
             * tap and panel) stay in L2 while each dw row gets its run of mr * r*s values. */
            const int64_t tile = P.mr * P.nr, crs = P.cg * P.rs;
            if (P.packed) { /* A block u's rows are dw columns u*mr... of its group */
#pragma omp for schedule(static)
                for (int64_t u = 0; u < units; u++) {
                    const int64_t g = u / P.ublk, col0 = u % P.ublk * P.mr, rows = FC_MIN(P.mr, crs - col0);
                    for (int64_t k = 0; k < P.kg; k++) {
                        const float *tl = ct + ((size_t)u * P.npan + k / P.pw) * tile + k % P.pw;
                        float *out = dw + (size_t)(g * P.kg + k) * crs + col0;
                        for (int64_t i = 0; i < rows; i++)
                            out[i] = tl[i * P.nr];
                    }
                }
            } else {
#pragma omp for schedule(static)
                for (int64_t gb = 0; gb < d->groups * P.ncb; gb++) {
                    const int64_t g = gb / P.ncb, cb = gb % P.ncb, rows = FC_MIN(P.mr, P.cg - cb * P.mr);
                    for (int64_t k = 0; k < P.kg; k++) {
                        const int64_t j = k / P.pw, kk = k % P.pw;
                        float *out = dw + (size_t)(g * P.kg + k) * crs + cb * P.mr * P.rs;
                        for (int64_t t = 0; t < P.rs; t++) {
                            const float *tl = ct + ((size_t)((g * P.rs + t) * P.ncb + cb) * P.npan + j) * tile + kk;
                            for (int64_t i = 0; i < rows; i++)
                                out[i * P.rs + t] = tl[i * P.nr];
                        }
                    }
                }
            }
        }
    }
    if (nonfinite)
        status = FC_EUNSUPPORTED;
done:
    free(P.src);
    free(bbuf);
    free(ct);
    free(P.tapoff);
    free(poff);
    return status;
}
