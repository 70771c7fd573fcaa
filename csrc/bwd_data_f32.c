/* float32 backward-data on the forward's GEMM microkernels (the per-ISA tables of isa.c):
 * per group, cols (c*r*s x pixels) = weight^T (c*r*s x kg) dy (kg x pixels), each finished
 * tile of cols added straight onto the input cells its taps read (col2im), never stored whole.
 *
 * A is weight^T, transposed once per call (rows padded to a multiple of mr); B rows are dy's
 * channels over the pixels of every image, copied once into [group][kg][n*oh*ow] so that a
 * panel of nr pixels may span images and is read in place.  A task is mr channels of one group:
 * its r*s A blocks (mr*r*s rows: whole channels) meet each pixel panel while the panel's B
 * sliver sits in L1, and its tiles are added into those channels' dx planes, which no other
 * task writes: no atomics, no partial sums, the same result at any thread count.
 *
 * Scratch, in floats (checked, allocated up front): groups * crsp * kg for weight^T (crsp =
 * ceil(cg / mr) * mr * r*s), groups * kg * n*oh*ow + 48 for dy, and per thread r*s * mr * nr
 * tiles; plus kc int64 row offsets and n*oh*ow / nr + 1 panel start pixels.
 */
#include "fc_internal.h"

typedef struct {
    const fc_conv2d_desc *d;
    const fc_isa_config *cfg;
    int64_t mr, nr, cg, kg, rs, crs, crsp, pall, npanels;
    const float *wt; /* [g][crsp][kg] */
    const float *dyc; /* [g][kg][pall] */
    const int64_t *boff;
} dplan_t;

/* dx planes of channels [c0, c0 + rows) of group g += the tiles of one panel (pixels j0 ...). */
static void scatter(const dplan_t *P, const float *tiles, int64_t g, int64_t c0, int64_t rows, int64_t j0,
                    int64_t ncols, float *dx) {
    const fc_conv2d_desc *d = P->d;
    const int64_t ohw = d->oh * d->ow, tile = P->mr * P->nr;
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

static void run_task(const dplan_t *P, int64_t g, int64_t cb, float *tiles, float *dx) {
    const int64_t c0 = cb * P->mr, rows = FC_MIN(P->mr, P->cg - c0), tile = P->mr * P->nr, kc = P->cfg->kc;
    const float *a0 = P->wt + ((size_t)g * P->crsp + c0 * P->rs) * P->kg;
    for (int64_t pi = 0; pi < P->npanels; pi++) {
        const int64_t j0 = pi * P->nr, ncols = FC_MIN(P->nr, P->pall - j0), nv = (ncols + 15) / 16;
        const float *b0 = P->dyc + (size_t)g * P->kg * P->pall + j0;
        for (int64_t k0 = 0; k0 < P->kg; k0 += kc) {
            const int64_t kk = FC_MIN(kc, P->kg - k0);
            for (int64_t blk = 0; blk < P->rs; blk++)
                P->cfg->gemm[blk == 0][nv - 1](kk, a0 + (size_t)blk * P->mr * P->kg + k0, P->kg,
                                               b0 + (size_t)k0 * P->pall, P->boff, tiles + blk * tile, k0 > 0);
        }
        scatter(P, tiles, g, c0, rows, j0, ncols, dx);
    }
}

int fc_f32_conv2d_bwd_data_gemm(const fc_conv2d_desc *d, const float *dy, const float *w, float *dx, int nthreads) {
    dplan_t P = {.d = d, .cfg = fc_config()};
    P.mr = P.cfg->mr;
    P.nr = P.cfg->nr;
    P.cg = d->c / d->groups;
    P.kg = d->k / d->groups;
    P.rs = d->r * d->s;
    P.crs = P.cg * P.rs;
    const int64_t ncb = (P.cg + P.mr - 1) / P.mr;
    P.crsp = ncb * P.mr * P.rs;
    P.pall = d->n * d->oh * d->ow;
    P.npanels = (P.pall + P.nr - 1) / P.nr;
    if (d->n < 1 || P.nr % 16 || P.nr > 48)
        return FC_EUNSUPPORTED;
    const int64_t tasks = d->groups * ncb;
    int team = fc_team(nthreads, tasks, 1);
    const size_t tslice = fc_slice(fc_size_mul3(P.rs * P.mr, P.nr, sizeof(float)));
    size_t tbytes, dyfloats;
    fc_size_mul(tslice, (size_t)team, &tbytes);
    fc_size_add(fc_size_mul3(d->groups, P.kg, P.pall), 48, &dyfloats);
    float *wt = fc_alloc(fc_size_mul3(fc_size_mul3(d->groups, P.crsp, P.kg), sizeof(float), 1));
    float *dyc = fc_alloc(fc_size_mul3(dyfloats, sizeof(float), 1));
    char *tb = fc_alloc(tbytes);
    int64_t *boff = fc_alloc(fc_size_mul3(P.cfg->kc, sizeof(int64_t), 1));
    int status = FC_OK;
    if (!wt || !dyc || !tb || !boff) {
        status = FC_ENOMEM;
        goto done;
    }
    for (int64_t p = 0; p < P.cfg->kc; p++)
        boff[p] = p * P.pall;
    P.wt = wt;
    P.dyc = dyc;
    P.boff = boff;
    const int64_t ohw = d->oh * d->ow;
#pragma omp parallel num_threads(team)
    {
        /* weight^T: row c*rs + t of group g (zero rows past cg) holds w[g*kg + k][c][t] over k. */
#pragma omp for schedule(static) nowait
        for (int64_t row = 0; row < d->groups * P.crsp; row++) {
            const int64_t g = row / P.crsp, rho = row % P.crsp;
            float *out = wt + (size_t)row * P.kg;
            if (rho >= P.crs)
                memset(out, 0, (size_t)P.kg * sizeof(float));
            else
                for (int64_t k = 0; k < P.kg; k++)
                    out[k] = w[((size_t)g * P.kg + k) * P.crs + rho];
        }
#pragma omp for schedule(static) nowait
        for (int64_t v = 0; v < d->k * d->n; v++) { /* dy channel (g, k) of image n */
            const int64_t ch = v / d->n, n = v % d->n, g = ch / P.kg, k = ch % P.kg;
            memcpy(dyc + ((size_t)g * P.kg + k) * P.pall + n * ohw, dy + ((size_t)n * d->k + ch) * ohw,
                   (size_t)ohw * sizeof(float));
        }
#pragma omp for schedule(static)
        for (int64_t v = 0; v < d->n * d->c; v++)
            memset(dx + (size_t)v * d->h * d->w, 0, (size_t)(d->h * d->w) * sizeof(float));
#pragma omp single
        memset(dyc + (size_t)d->groups * P.kg * P.pall, 0, 48 * sizeof(float));
        float *tiles = (float *)(tb + tslice * (size_t)FC_THREAD_ID());
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++)
            run_task(&P, t / ncb, t % ncb, tiles, dx);
    }
done:
    free(wt);
    free(dyc);
    free(tb);
    free(boff);
    return status;
}
