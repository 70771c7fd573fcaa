/* The body of the channel-blocked convolution microkernel (conv_blocked_f32.c), included once per
 * instruction set after conv_kvec_ukernel_impl.h, whose vector macros it uses (KV_VEC, KV_LANES,
 * KV_ZERO, KV_LOAD, KV_STORE, KV_SET1, KV_FMA, KV_TARGET) and three more: BL_PMAX x BL_VMAX,
 * the largest tile, and KV_RELU(v), max(v, 0) lane by lane with NaN kept (torch's relu).
 *
 * Activations are channel-blocked: KV_LANES channels of one pixel are one vector, so a tile of np
 * output pixels (consecutive in one row) x nv vectors of output channels reads, over its taps t
 * (an input channel block at one r, s; xoff[t] its offset) and their channels c < KV_LANES,
 *   acc[i][j] (+)= x[xoff[t] + i * xpix + c] * w[((t * KV_LANES + c) * nv + j) * KV_LANES + lane]
 * and is stored straight into the blocked output: pixel i, vector j at y + i * KV_LANES + j * yvec.
 * Unlike the NCHW kernel beside it nothing is transposed on the way out, and the weights of a step
 * (all nv vectors) are one contiguous run: one sequential stream per task.
 *
 * mode: FC_BL_ACCUMULATE adds to the sums already in y (a later reduction block); FC_BL_FINISH
 * applies the epilogue on the way out (the last block): + bias[j * KV_LANES + lane] (bias may be
 * NULL), + res[i * KV_LANES + j * rvec] (res may be NULL), then relu when asked. */

/* The channel loop unrolled by 4: 1x1 layers 0.88-0.92x -> 0.93-0.97x of the GEMM alone (by 16:
 * 0.8-0.9x, the larger loop body spilling more).  An instruction set may ask for another factor
 * by defining BL_UNROLL before including this file. */
#ifndef BL_UNROLL
#define BL_UNROLL _Pragma("GCC unroll 4")
#endif

KV_TARGET __attribute__((always_inline)) static inline void
bl_body(const int np, const int nv, int64_t taps, const float *restrict x, const int64_t *restrict xoff,
        int64_t xpix, const float *restrict w, float *restrict y, int64_t yvec, int mode, const float *bias,
        const float *res, int64_t rvec, int relu) {
    KV_VEC a[BL_PMAX][BL_VMAX];
    FC_TILE_LOOP for (int i = 0; i < np; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            a[i][j] = (mode & FC_BL_ACCUMULATE) ? KV_LOAD(y + i * KV_LANES + j * yvec) : KV_ZERO();
    /* One tap (input channel block, r, s) per iteration: its KV_LANES steps unrolled, so that
     * each pixel's inputs are one pointer plus constant offsets and the weights one pointer
     * plus constant offsets (the loop, the offset table and the address arithmetic are paid
     * once per KV_LANES steps: 1x1 layers ran at 0.86-0.91x of the GEMM with a step per
     * iteration). */
    for (int64_t t = 0; t < taps; t++, w += KV_LANES * nv * KV_LANES) {
        const float *restrict xp[BL_PMAX];
        FC_TILE_LOOP for (int i = 0; i < np; i++)
            xp[i] = x + xoff[t] + i * xpix;
        BL_UNROLL
        for (int c = 0; c < KV_LANES; c++) {
            KV_VEC wv[BL_VMAX];
            FC_TILE_LOOP for (int j = 0; j < nv; j++)
                wv[j] = KV_LOAD(w + (c * nv + j) * KV_LANES);
            FC_TILE_LOOP for (int i = 0; i < np; i++) {
                KV_VEC b = KV_SET1(xp[i][c]);
                FC_TILE_LOOP for (int j = 0; j < nv; j++)
                    a[i][j] = KV_FMA(b, wv[j], a[i][j]);
            }
        }
    }
    if (mode & FC_BL_FINISH) {
        FC_TILE_LOOP for (int j = 0; j < nv; j++) {
            if (bias) {
                KV_VEC bv = KV_LOAD(bias + j * KV_LANES);
                FC_TILE_LOOP for (int i = 0; i < np; i++)
                    a[i][j] = a[i][j] + bv;
            }
            if (res)
                FC_TILE_LOOP for (int i = 0; i < np; i++)
                    a[i][j] = a[i][j] + KV_LOAD(res + i * KV_LANES + j * rvec);
            if (relu)
                FC_TILE_LOOP for (int i = 0; i < np; i++)
                    a[i][j] = KV_RELU(a[i][j]);
        }
    }
    FC_TILE_LOOP for (int i = 0; i < np; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            KV_STORE(y + i * KV_LANES + j * yvec, a[i][j]);
}

#define BL_ARGS                                                                                        \
    int64_t taps, const float *x, const int64_t *xoff, int64_t xpix, const float *w, float *y,        \
        int64_t yvec, int mode, const float *bias, const float *res, int64_t rvec, int relu
#define BL_FN(NP, NV)                                                                                  \
    KV_TARGET static void bl_##NP##x##NV(BL_ARGS) {                                                    \
        bl_body(NP, NV, taps, x, xoff, xpix, w, y, yvec, mode, bias, res, rvec, relu);                 \
    }
