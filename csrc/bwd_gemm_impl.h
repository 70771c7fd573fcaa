/* A packed, register-blocked GEMM for the convolution backward kernels, C += A B, one dtype per
 * inclusion (T, V: a 64-byte vector of T, VL its lanes, FN(name) the suffix).  Single-threaded:
 * the callers split their work (images) over threads, each with its own packing buffers.
 *
 * A (M x K) and B (K x N) are read through strides, element (i, p) of A at a[i*rsa + p*csa],
 * so the transposed operands of backward (weight^T, im2col columns^T) need no copy: packing
 * gathers KC x MR slivers of A and KC x NR slivers of B into contiguous, aligned panels, and
 * the microkernel runs MR x NR tiles (2 vectors wide) from them with MR*2 vector accumulators.
 * C is row-major with leading dimension ldc and is added to.
 */

#ifndef FC_BWD_MR
#define FC_BWD_MR 8
#define FC_BWD_KC 256
#define FC_BWD_MC 128
#define FC_BWD_NC 1536
#endif
#define MR FC_BWD_MR
#define NR (2 * VL)
#define KC FC_BWD_KC
#define MC FC_BWD_MC
#define NC FC_BWD_NC

/* Scratch one gemm call needs, in elements of T: the A block and the B block. */
static inline size_t FN(gemm_scratch)(void) {
    return (size_t)MC * KC + (size_t)NC * KC;
}

static inline void FN(pack_a)(int64_t mc, int64_t kc, const T *a, int64_t rsa, int64_t csa, T *restrict ap) {
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int64_t mr = FC_MIN(MR, mc - i0);
        for (int64_t p = 0; p < kc; p++) {
            for (int64_t i = 0; i < mr; i++)
                ap[p * MR + i] = a[(i0 + i) * rsa + p * csa];
            for (int64_t i = mr; i < MR; i++)
                ap[p * MR + i] = 0;
        }
        ap += MR * kc;
    }
}

static inline void FN(pack_b)(int64_t nc, int64_t kc, const T *b, int64_t rsb, int64_t csb, T *restrict bp) {
    for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        int64_t nr = FC_MIN(NR, nc - j0);
        if (csb == 1 && nr == NR) {
            for (int64_t p = 0; p < kc; p++)
                memcpy(bp + p * NR, b + p * rsb + j0, NR * sizeof(T));
        } else if (rsb == 1) {
            /* Columns contiguous along p (im2col columns^T): read each column once, in order. */
            for (int64_t j = 0; j < nr; j++) {
                const T *col = b + (j0 + j) * csb;
                for (int64_t p = 0; p < kc; p++)
                    bp[p * NR + j] = col[p];
            }
            for (int64_t p = 0; p < kc; p++)
                for (int64_t j = nr; j < NR; j++)
                    bp[p * NR + j] = 0;
        } else {
            for (int64_t p = 0; p < kc; p++) {
                for (int64_t j = 0; j < nr; j++)
                    bp[p * NR + j] = b[p * rsb + (j0 + j) * csb];
                for (int64_t j = nr; j < NR; j++)
                    bp[p * NR + j] = 0;
            }
        }
        bp += NR * kc;
    }
}

/* B as the im2col columns^T of `m` images, never materialised: B(p, j) with p = (image, output
 * pixel) and j = (c, tap r, tap s) is the input value that tap reads, 0 in the padding.
 * Packing reads the input (cache-resident per image) instead of a large column buffer. */
typedef struct {
    const fc_conv2d_desc *d;
    const T *x;           /* the first image's first channel of this group */
    int64_t img_stride;   /* elements between images */
    int64_t ohw;
} FN(cols_src);

static inline void FN(pack_b_cols)(int64_t nc, int64_t kc, int64_t j0, int64_t p0, int64_t n_all,
                                   const FN(cols_src) *src, T *restrict bp) {
    const fc_conv2d_desc *d = src->d;
    int64_t rs = d->r * d->s;
    for (int64_t jb = 0; jb < nc; jb += NR) {
        int64_t nr = FC_MIN(NR, nc - jb);
        for (int64_t jj = 0; jj < NR; jj++) {
            int64_t j = j0 + jb + jj;
            if (jj >= nr || j >= n_all) {
                for (int64_t p = 0; p < kc; p++)
                    bp[p * NR + jj] = 0;
                continue;
            }
            int64_t c = j / rs, rr = (j / d->s) % d->r, ss = j % d->s;
            int64_t off_w = ss * d->dil_w - d->pad_left;
            int64_t b = p0 / src->ohw, pix = p0 % src->ohw, oy = pix / d->ow, ox = pix % d->ow;
            for (int64_t q = 0; q < kc;) {
                int64_t len = FC_MIN(d->ow - ox, kc - q);
                int64_t iy = oy * d->stride_h - d->pad_top + rr * d->dil_h;
                T *out = bp + q * NR + jj;
                if (iy < 0 || iy >= d->h) {
                    for (int64_t t = 0; t < len; t++)
                        out[t * NR] = 0;
                } else {
                    const T *row = src->x + b * src->img_stride + (c * d->h + iy) * d->w;
                    for (int64_t t = 0; t < len; t++) {
                        int64_t ix = (ox + t) * d->stride_w + off_w;
                        out[t * NR] = ix >= 0 && ix < d->w ? row[ix] : 0;
                    }
                }
                q += len;
                ox += len;
                if (ox == d->ow) {
                    ox = 0;
                    if (++oy == d->oh) {
                        oy = 0;
                        b++;
                    }
                }
            }
        }
        bp += NR * kc;
    }
}

/* ct[MR][NR] = sum over p of ap[p][MR] (outer) bp[p][NR]. */
static inline void FN(micro)(int64_t kc, const T *restrict ap, const T *restrict bp, T *restrict ct) {
    V acc[MR][2];
    FC_TILE_LOOP for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = (V){0};
    for (int64_t p = 0; p < kc; p++) {
        V b0 = *(const V *)(bp + p * NR), b1 = *(const V *)(bp + p * NR + VL);
        FC_TILE_LOOP for (int i = 0; i < MR; i++) {
            V a = ap[p * MR + i] - (V){0}; /* broadcast (x - 0 is x: folds to a broadcast load) */
            acc[i][0] += a * b0;
            acc[i][1] += a * b1;
        }
    }
    FC_TILE_LOOP for (int i = 0; i < MR; i++) {
        *(V *)(ct + i * NR) = acc[i][0];
        *(V *)(ct + i * NR + VL) = acc[i][1];
    }
}

/* C[M][N] (ldc) += A B.  `scratch` holds FN(gemm_scratch)() elements, 64-byte aligned.  B is
 * (b, rsb, csb), or, when `cols` is not NULL, the im2col columns^T it describes. */
FC_CLONES static void FN(gemm)(int64_t m, int64_t n, int64_t k, const T *a, int64_t rsa, int64_t csa,
                               const T *b, int64_t rsb, int64_t csb, const FN(cols_src) *cols, T *c,
                               int64_t ldc, T *scratch) {
    T *ap = scratch, *bp = scratch + (size_t)MC * KC;
    T ct[MR * NR] __attribute__((aligned(64)));
    for (int64_t jc = 0; jc < n; jc += NC) {
        int64_t nc = FC_MIN(NC, n - jc);
        for (int64_t pc = 0; pc < k; pc += KC) {
            int64_t kc = FC_MIN(KC, k - pc);
            if (cols)
                FN(pack_b_cols)(nc, kc, jc, pc, n, cols, bp);
            else
                FN(pack_b)(nc, kc, b + pc * rsb + jc * csb, rsb, csb, bp);
            for (int64_t ic = 0; ic < m; ic += MC) {
                int64_t mc = FC_MIN(MC, m - ic);
                FN(pack_a)(mc, kc, a + ic * rsa + pc * csa, rsa, csa, ap);
                for (int64_t j0 = 0; j0 < nc; j0 += NR) {
                    int64_t nr = FC_MIN(NR, nc - j0);
                    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
                        int64_t mr = FC_MIN(MR, mc - i0);
                        FN(micro)(kc, ap + i0 * kc, bp + j0 * kc, ct);
                        T *cc = c + (ic + i0) * ldc + jc + j0;
                        for (int64_t i = 0; i < mr; i++)
                            for (int64_t j = 0; j < nr; j++)
                                cc[i * ldc + j] += ct[i * NR + j];
                    }
                }
            }
        }
    }
}

#undef MR
#undef NR
#undef KC
#undef MC
#undef NC
