/* Where the float32 GEMM convolution's B operand comes from (see conv_gemm_f32.c): the output
 * pixels of each nr-wide panel (as runs of output rows), the im2col gather of packed panels,
 * and the zero-padded, stride-split planes that direct panels read in place. */
#include "conv_gemm_f32.h"

void fc_f32_panel_range(const plan_t *P, int64_t idx, int64_t *n, int64_t *q0, int64_t *ncols) {
    if (P->direct) {
        const int64_t j = idx % P->ppi;
        *n = idx / P->ppi;
        *q0 = P->head && j > 0 ? P->head + (j - 1) * P->nr : j * P->nr;
        *ncols = FC_MIN(P->head && j == 0 ? P->head : P->nr, P->img_cols - *q0);
    } else {
        *n = 0;
        *q0 = idx * P->nr;
        *ncols = FC_MIN(P->nr, P->img_cols - *q0);
    }
}

/* The output runs a panel's columns map to.  Direct panels skip the discarded columns. */
int64_t fc_f32_panel_segments(const plan_t *P, int64_t idx, seg_t *segs, int64_t *ncols_out) {
    const fc_conv2d_desc *d = P->d;
    int64_t n, q0, ncols, count = 0;
    fc_f32_panel_range(P, idx, &n, &q0, &ncols);
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
int64_t fc_f32_merge_segments(const fc_conv2d_desc *d, seg_t *segs, int64_t nseg) {
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

/* Gather B rows [k0, k1) of a panel into bpack, P->nr floats a row: each output run of the
 * panel is a contiguous run of the B source (padding is already in the phase planes), so a
 * row is a few memcpy's.  Columns past the panel's end are zeroed up to `cols`. */
void fc_f32_pack_panel(const plan_t *P, int64_t g, const seg_t *segs, int64_t nsegs, int64_t ncols,
                       int64_t cols, int64_t k0, int64_t k1, float *bpack) {
    const float *base = P->src + (size_t)g * P->cg * P->src_chan;
    for (int64_t p = k0; p < k1; p++) {
        float *row = bpack + (p - k0) * P->nr;
        for (int64_t t = 0; t < nsegs; t++) {
            const seg_t *sg = &segs[t];
            const float *run = base + (size_t)sg->n * P->src_img + P->off[p] + sg->oh * P->wq + sg->ow0;
            memcpy(row + sg->j0, run, (size_t)sg->len * sizeof(float));
        }
        for (int64_t j = ncols; j < cols; j++)
            row[j] = 0.0f;
    }
}

/* out[j] = in[j * stride] for j < n.  Compiled per instruction set (stride 2 becomes vector
 * deinterleaving shuffles); a scalar loop here cost 13 % of a stride-2 3x3 convolution. */
FC_CLONES
static void strided_copy(float *restrict out, const float *restrict in, int64_t n, int64_t stride) {
    if (stride == 2) {
        for (int64_t j = 0; j < n; j++)
            out[j] = in[2 * j];
    } else {
        for (int64_t j = 0; j < n; j++)
            out[j] = in[j * stride];
    }
}

/* Zero-padded, stride-split planes: plane (a, b) of channel c holds padded-input pixels
 * (i * sh + a, j * sw + b), so every tap's window of virtual pixels is contiguous. */
void fc_f32_fill_phase_plane(const plan_t *P, const phases_t *ph, int64_t n, int64_t c, float *dst) {
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
                if (hi > lo) {
                    if (d->stride_w == 1)
                        memcpy(orow + lo, xrow + (lo + off), (size_t)(hi - lo) * sizeof(float));
                    else
                        strided_copy(orow + lo, xrow + (lo * d->stride_w + off), hi - lo, d->stride_w);
                }
                memset(orow + hi, 0, (size_t)(ph->wq - hi) * sizeof(float));
            }
        }
}
