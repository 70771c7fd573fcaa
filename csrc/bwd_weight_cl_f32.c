/* float32 backward-weight with the input read in place from a channels-last copy ("cl" mode).
 *
 * dw (kg x c*r*s) = dy (kg x pixels) im2col^T (pixels x c*r*s), per group, on the per-ISA GEMM
 * microkernels of isa.c: A is dy (mr output channels, read in place when the images are large,
 * else from a copy laid out [group][kg rounded up to mr][pixel]), B the im2col^T rows, never
 * gathered: the input is copied once, zero-padded, channels last, xs[group][image][row][col][e],
 * so that at every output pixel the values of a run of taps lie side by side:
 *
 * - e = c (cg values per column): for each kernel row r, the s taps' cg channels are one run of
 *   s*cg floats (r*s runs of cg when dilated along the width);
 * - "folded" (few channels: the 3-channel stem): e = (r, c), rows are output rows, and all r*s*cg
 *   values of a pixel are one run.
 *
 * A run is cut into nr-wide panels (columns past its end are read from the next values and
 * dropped); the microkernel reads panel row p at xs + boff[p], boff being each output pixel's
 * offset.  Nothing is gathered per tap, and no pixel is virtual, so non-finite inputs need no
 * special case.
 *
 * Work items are (panel, a range of A blocks of mr rows, a part of the pixels): each B sliver
 * of kc pixels is read into L1 once and meets every A block of the item.  When there are too
 * few panels for the threads (the stem) the pixels are split into parts chosen from the problem
 * only, each part summed into its own tiles, and the parts added in order at the end: the sums
 * never depend on the thread count.
 *
 * Scratch (checked sizes, allocated up front, freed before returning), in floats:
 *   xs: groups * n * rows * wp * e + 64, rows = oh (folded) or (oh-1)*stride_h + (r-1)*dil_h + 1,
 *       wp = (ow-1)*stride_w + (s-1)*dil_w + 1, e = r*cg (folded) or cg;
 *   A copy: groups * kgp * n*oh*ow unless dy is read in place (kg % mr == 0, oh*ow >= 256);
 *   tiles: parts * groups * (kgp / mr) * npan * mr * nr;
 * plus int64 tables: n*oh*ow pixel offsets, 3 * npan, the panels' total width.
 */
#include "conv_gemm_f32.h"
#include "fc_internal.h"

typedef struct {
    const fc_conv2d_desc *d;
    const fc_isa_config *cfg;
    int64_t mr, nr, cg, kg, kgp, ublk, units, rs;
    int fold;
    int64_t rows, wp, e;      /* xs: rows per image, columns per row, floats per column */
    int64_t xs_group;         /* floats per group in xs */
    int64_t npan, parts, npix, ohw;
    int64_t *pan_off, *pan_w, *pan_col; /* per panel: offset from a pixel's base, width, first map entry */
    int64_t *colmap;          /* per panel column: its dw column (c*r*s + r*s + s), or -1 */
    int64_t *pixoff;          /* [npix]: each output pixel's base offset in its group's xs */
    int64_t nblk, bpi;        /* pixel blocks (in place: bpi per image) */
    const float *a;           /* dy itself or its copy */
    int64_t lda;
    int in_place;
    float *xs, *ct;
} clplan_t;

/* Pixel block b: pixels [q0, q1) (in place: within one image). */
static void block_range(const clplan_t *P, int64_t b, int64_t *q0, int64_t *q1) {
    if (P->in_place) {
        const int64_t n = b / P->bpi, i = b % P->bpi;
        *q0 = n * P->ohw + P->ohw * i / P->bpi;
        *q1 = n * P->ohw + P->ohw * (i + 1) / P->bpi;
    } else {
        *q0 = P->npix * b / P->nblk;
        *q1 = P->npix * (b + 1) / P->nblk;
    }
}

/* xs for (group g, image n, row i): zero padding around the input, channels last. */
static void fill_row(const clplan_t *P, const float *x, int64_t g, int64_t n, int64_t i) {
    const fc_conv2d_desc *d = P->d;
    float *out = P->xs + g * P->xs_group + ((size_t)n * P->rows + i) * P->wp * P->e;
    const int64_t nr = P->fold ? d->r : 1;
    const int64_t lo = FC_MIN(d->pad_left, P->wp), hi = FC_MAX(lo, FC_MIN(P->wp, d->pad_left + d->w));
    memset(out, 0, (size_t)(lo * P->e) * sizeof(float));
    memset(out + hi * P->e, 0, (size_t)((P->wp - hi) * P->e) * sizeof(float));
    for (int64_t r = 0; r < nr; r++) {
        const int64_t ih = (P->fold ? i * d->stride_h + r * d->dil_h : i) - d->pad_top;
        float *o = out + r * P->cg;
        if (ih < 0 || ih >= d->h) {
            for (int64_t j = lo; j < hi; j++)
                memset(o + j * P->e, 0, (size_t)P->cg * sizeof(float));
            continue;
        }
        const int64_t len = hi - lo, chan = d->h * d->w;
        if (len <= 0)
            continue;
        const float *src = x + (((size_t)n * d->c + g * P->cg) * d->h + ih) * d->w + (lo - d->pad_left);
        /* Blocks of 16 channels x 16 columns: reads stay in 16 lines, writes in 16 runs. */
        for (int64_t c0 = 0; c0 < P->cg; c0 += 16) {
            const int64_t cn = FC_MIN(16, P->cg - c0);
            for (int64_t j0 = 0; j0 < len; j0 += 16) {
                const int64_t jn = FC_MIN(16, len - j0);
                for (int64_t j = 0; j < jn; j++) {
                    float *oj = o + (lo + j0 + j) * P->e + c0;
                    const float *sj = src + c0 * chan + j0 + j;
                    for (int64_t c = 0; c < cn; c++)
                        oj[c] = sj[c * chan];
                }
            }
        }
    }
}

/* The copy of dy's rows for group g, output channel row k (zeros past kg). */
static void fill_a(const clplan_t *P, const float *dy, float *ay, int64_t g, int64_t k) {
    const fc_conv2d_desc *d = P->d;
    float *out = ay + ((size_t)g * P->kgp + k) * P->npix;
    if (k >= P->kg) {
        memset(out, 0, (size_t)P->npix * sizeof(float));
        return;
    }
    for (int64_t n = 0; n < d->n; n++)
        memcpy(out + n * P->ohw, dy + ((size_t)n * d->k + g * P->kg + k) * P->ohw, (size_t)P->ohw * sizeof(float));
}

/* Item (panel j, units [u0, u1), pixel part h) over its pixel block b.  The first unit reads
 * the B sliver from L2 or memory (the prefetching kernel), the others from L1. */
static void run_block(const clplan_t *P, int64_t j, int64_t u0, int64_t u1, int64_t h, int64_t b) {
    const fc_conv2d_desc *d = P->d;
    const int64_t tile = P->mr * P->nr, nv = P->pan_w[j] / 16;
    int64_t q0, q1;
    block_range(P, b, &q0, &q1);
    for (int64_t u = u0; u < u1; u++) {
        const int64_t g = u / P->ublk, k0 = u % P->ublk * P->mr;
        const float *a;
        if (P->in_place) {
            const int64_t n = q0 / P->ohw;
            a = P->a + ((size_t)n * d->k + g * P->kg + k0) * P->ohw + (q0 - n * P->ohw);
        } else {
            a = P->a + ((size_t)g * P->kgp + k0) * P->npix + q0;
        }
        P->cfg->gemm[u == u0][nv - 1](q1 - q0, a, P->lda, P->xs + g * P->xs_group + P->pan_off[j], P->pixoff + q0,
                                      P->ct + (((size_t)h * P->units + u) * P->npan + j) * tile,
                                      b > P->nblk * h / P->parts);
    }
}

/* out[i * stride] = in[i], i < n. */
FC_CLONES static void scatter_run(float *restrict out, int64_t stride, const float *restrict in, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i * stride] = in[i];
}

/* dw from tile (unit u, panel j): the parts added in order. */
static void store_tile(const clplan_t *P, int64_t u, int64_t j, float *dw) {
    const int64_t tile = P->mr * P->nr, g = u / P->ublk, k0 = u % P->ublk * P->mr;
    const int64_t rows = FC_MIN(P->mr, P->kg - k0), crs = P->cg * P->rs;
    float *t0 = P->ct + ((size_t)u * P->npan + j) * tile;
    for (int64_t h = 1; h < P->parts; h++) {
        const float *th = P->ct + (((size_t)h * P->units + u) * P->npan + j) * tile;
        for (int64_t i = 0; i < tile; i++)
            t0[i] += th[i];
    }
    /* The panel's columns as runs of consecutive channels of one tap (a dw stride of r*s):
     * strided stores with no test per value (a branch per value cost an eighth of the time). */
    const int64_t *map = P->colmap + P->pan_col[j], w = P->pan_w[j];
    int64_t col[FC_NR], base[FC_NR], len[FC_NR], nseg = 0;
    for (int64_t c = 0; c < w && map[c] >= 0; nseg++) {
        int64_t l = 1;
        while (c + l < w && map[c + l] == map[c] + l * P->rs)
            l++;
        col[nseg] = c, base[nseg] = map[c], len[nseg] = l;
        c += l;
    }
    for (int64_t i = 0; i < rows; i++) {
        float *out = dw + (size_t)(g * P->kg + k0 + i) * crs;
        const float *t = t0 + i * P->nr;
        for (int64_t sg = 0; sg < nseg; sg++)
            scatter_run(out + base[sg], P->rs, t + col[sg], len[sg]);
    }
}

/* Panels over a run of `len` columns at offset `off`: nr wide, the last rounded up to 16, a
 * 16-wide last one next to a full one made two of 32 (the 16-wide kernel is load-bound). */
static void add_panels(clplan_t *P, int64_t off, int64_t len, int64_t r_fixed, int64_t s_fixed, int64_t *at) {
    int64_t full = len / P->nr, rest = (len % P->nr + 15) / 16 * 16, w[FC_NR / 16 + 2], nw = 0;
    if (P->nr == 48 && rest == 16 && full >= 1)
        full--, w[0] = w[1] = 32, nw = 2;
    else if (rest)
        w[nw++] = rest;
    for (int64_t col = 0, i = 0; col < len; i++) {
        const int64_t width = i < full ? P->nr : w[i - full];
        const int64_t j = P->npan++;
        P->pan_off[j] = off + col, P->pan_w[j] = width, P->pan_col[j] = *at;
        for (int64_t t = 0; t < width; t++, (*at)++) {
            const int64_t e = col + t;
            if (e >= len) {
                P->colmap[*at] = -1;
                continue;
            }
            /* e -> (s, r, c): runs span s (s_fixed < 0), folded columns span r (r_fixed < 0) */
            const int64_t s = s_fixed >= 0 ? s_fixed : e / P->e, rem = s_fixed >= 0 ? e : e % P->e;
            const int64_t r = r_fixed >= 0 ? r_fixed : rem / P->cg, c = rem % P->cg;
            P->colmap[*at] = c * P->rs + r * P->d->s + s;
        }
        col += width;
    }
}

/* Floats of xs (groups * n * rows * wp * e) for problem d, or 0 when the copy would be out of
 * proportion to the input and output (huge padding or stride): then the mode is not used. */
static size_t xs_floats(const fc_conv2d_desc *d, int fold, int64_t *rows, int64_t *wp) {
    *rows = fold ? d->oh : (d->oh - 1) * d->stride_h + (d->r - 1) * d->dil_h + 1;
    *wp = (d->ow - 1) * d->stride_w + (d->s - 1) * d->dil_w + 1;
    const double need = (double)d->n * d->c * *rows * *wp * (fold ? d->r : 1);
    if (need > 8.0 * ((double)d->n * d->c * d->h * d->w * (fold ? d->r : 1) + (double)d->n * d->k * d->oh * d->ow) +
                   (1 << 20))
        return 0;
    return fc_size_mul3(fc_size_mul3(d->n, d->c, *rows), *wp, fold ? d->r : 1);
}

int fc_f32_conv2d_bwd_weight_cl(const fc_conv2d_desc *d, const float *x, const float *dy, float *dw, int nthreads,
                                int fold) {
    clplan_t P = {.d = d, .cfg = fc_config(), .fold = fold};
    P.mr = P.cfg->mr;
    P.nr = P.cfg->nr;
    P.cg = d->c / d->groups;
    P.kg = d->k / d->groups;
    P.kgp = (P.kg + P.mr - 1) / P.mr * P.mr;
    P.ublk = P.kgp / P.mr;
    P.units = d->groups * P.ublk;
    P.rs = d->r * d->s;
    P.ohw = d->oh * d->ow;
    P.npix = d->n * P.ohw;
    if (d->n < 1 || P.cfg->nr % 16 || P.cfg->nr > 48)
        return FC_EUNSUPPORTED;
    if (fold < 0) /* few channels: s*cg columns would fill less than one panel per kernel row */
        fold = P.cg * d->s < 48;
    P.fold = fold && d->r > 1;
    const size_t xsn = xs_floats(d, P.fold, &P.rows, &P.wp);
    if (!xsn)
        return FC_EUNSUPPORTED;
    P.e = P.fold ? d->r * P.cg : P.cg;
    P.xs_group = d->n * P.rows * P.wp * P.e;

    /* Runs: [r][s] of cg (dilated width), [r] of s*cg, or one of r*s*cg (folded). */
    const int64_t nruns = (P.fold ? 1 : d->r) * (d->dil_w > 1 ? d->s : 1);
    const int64_t runlen = (P.fold ? P.e : P.cg) * (d->dil_w > 1 ? 1 : d->s);
    const int64_t pan_per_run = runlen / P.nr + 2;
    const size_t maxpan = fc_size_mul3(nruns, pan_per_run, 1);
    int64_t *tabs = fc_alloc(fc_size_mul3(maxpan, 3 * sizeof(int64_t), 1));
    P.colmap = fc_alloc(fc_size_mul3(maxpan, P.nr, sizeof(int64_t)));
    P.pixoff = fc_alloc(fc_size_mul3(P.npix, sizeof(int64_t), 1));
    float *ay = NULL;
    int status = FC_OK;
    if (!tabs || !P.colmap || !P.pixoff) {
        status = FC_ENOMEM;
        goto done;
    }
    P.pan_off = tabs, P.pan_w = tabs + maxpan, P.pan_col = tabs + 2 * maxpan;
    int64_t at = 0;
    for (int64_t i = 0; i < nruns; i++) {
        const int64_t r = P.fold ? -1 : d->dil_w > 1 ? i / d->s : i, s = d->dil_w > 1 ? i % d->s : -1;
        const int64_t off = ((P.fold ? 0 : r * d->dil_h) * P.wp + (s >= 0 ? s * d->dil_w : 0)) * P.e;
        add_panels(&P, off, runlen, r, s, &at);
    }
    for (int64_t n = 0; n < d->n; n++)
        for (int64_t oh = 0; oh < d->oh; oh++)
            for (int64_t ow = 0; ow < d->ow; ow++)
                P.pixoff[(n * d->oh + oh) * d->ow + ow] =
                    ((n * P.rows + (P.fold ? oh : oh * d->stride_h)) * P.wp + ow * d->stride_w) * P.e;

    /* Pixel blocks of at most kc (in place: within images); parts when panels are too few. */
    P.in_place = P.kg % P.mr == 0 && P.ohw >= 256;
    const int64_t kc = P.cfg->kc;
    if (P.in_place) {
        P.bpi = (P.ohw + kc - 1) / kc;
        P.nblk = d->n * P.bpi;
        P.a = dy;
        P.lda = P.ohw;
    } else {
        P.nblk = (P.npix + kc - 1) / kc;
        P.lda = P.npix;
    }
    P.parts = 1;
    while (P.npan * P.parts < 8 && P.nblk >= 8 * P.parts)
        P.parts *= 2;
    const char *force = getenv("FASTCONV_BWD_WEIGHT_PARTS"); /* test hook: reach the part sums */
    if (force && atoi(force) >= 1 && atoi(force) <= 16)
        P.parts = FC_MIN(atoi(force), P.nblk);

    const double macs = (double)P.npix * d->k * P.cg * P.rs;
    const int team = fc_team(nthreads, macs > 1e15 ? (int64_t)1e15 : (int64_t)macs, 1 << 16);
    size_t xbytes = fc_size_mul3(xsn, sizeof(float), 1), ctn;
    if (fc_size_add(xbytes, 64 * sizeof(float), &xbytes)) {
        status = FC_ENOMEM;
        goto done;
    }
    P.xs = fc_alloc(xbytes);
    ctn = fc_size_mul3(fc_size_mul3(P.parts, P.units, P.npan), P.mr * P.nr, sizeof(float));
    P.ct = fc_alloc(ctn);
    if (!P.in_place)
        ay = fc_alloc(fc_size_mul3(fc_size_mul3(d->groups, P.kgp, P.npix), sizeof(float), 1));
    if (!P.xs || !P.ct || (!P.in_place && !ay)) {
        status = FC_ENOMEM;
        goto done;
    }
    memset(P.xs + xsn, 0, 64 * sizeof(float)); /* read past the last run, dropped */
    if (!P.in_place)
        P.a = ay;

    /* Items (part, panel, unit chunk): chunks enough for 4 per thread, then shared out by cost
     * (width x units x pixel blocks), contiguous ranges in this order. */
    int64_t nuc = 1;
    while (P.parts * P.npan * nuc < 4 * team && nuc < P.units)
        nuc++;
    double total = 0;
    for (int64_t j = 0; j < P.npan; j++)
        total += (double)P.pan_w[j];
    total *= nuc * P.parts;

#pragma omp parallel num_threads(team)
    {
        const int64_t nfill = d->groups * d->n * P.rows;
#pragma omp for schedule(static) nowait
        for (int64_t v = 0; v < nfill; v++)
            fill_row(&P, x, v / (d->n * P.rows), v / P.rows % d->n, v % P.rows);
        if (!P.in_place) {
#pragma omp for schedule(static) nowait
            for (int64_t v = 0; v < d->groups * P.kgp; v++)
                fill_a(&P, dy, ay, v / P.kgp, v % P.kgp);
        }
#pragma omp barrier
        /* This thread's items: cumulative width in [tid, tid + 1) * total / team. */
        const int tid = FC_THREAD_ID();
#ifdef _OPENMP
        const int nt = omp_get_num_threads();
#else
        const int nt = 1;
#endif
        /* Per part, this thread's items (a contiguous run) in groups whose tiles fit in about
         * 512 KB of L2, each group block by block: the block's rows of xs then stay in L2 from
         * one panel to the next (panel by panel, the first B sliver of each came from memory:
         * measured 3x slower than the next ones). */
        const int64_t per_part = P.npan * nuc;
        const int64_t grp = FC_MAX(1, (512 * 1024) / ((P.units + nuc - 1) / nuc * P.mr * P.nr * 4));
        for (int64_t h = 0; h < P.parts; h++) {
            int64_t lo = per_part, hi = 0;
            double acc = total * h / P.parts;
            for (int64_t it = 0; it < per_part; it++) {
                const double mid = acc + 0.5 * P.pan_w[it / nuc];
                acc += P.pan_w[it / nuc];
                if (mid >= total * tid / nt && mid < total * (tid + 1) / nt)
                    lo = FC_MIN(lo, it), hi = it + 1;
            }
            for (int64_t i0 = lo; i0 < hi; i0 += grp)
                for (int64_t b = P.nblk * h / P.parts; b < P.nblk * (h + 1) / P.parts; b++)
                    for (int64_t it = i0; it < FC_MIN(hi, i0 + grp); it++)
                        run_block(&P, it / nuc, P.units * (it % nuc) / nuc, P.units * (it % nuc + 1) / nuc, h, b);
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t v = 0; v < P.units * P.npan; v++)
            store_tile(&P, v / P.npan, v % P.npan, dw);
    }
done:
    free(P.xs);
    free(P.ct);
    free(ay);
    free(tabs);
    free(P.colmap);
    free(P.pixoff);
    return status;
}
