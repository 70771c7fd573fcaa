/* The body of the channel-vector convolution microkernel (conv_kvec_f32.c), included once per
 * instruction set with its vector type and operations:
 *   KV_VEC, KV_LANES, KV_ZERO(), KV_LOAD(p), KV_STORE(p, v), KV_SET1(f), KV_FMA(a, b, c) = a * b + c,
 *   KV_TARGET (the function attribute), KV_PMAX x KV_VMAX (the largest tile).
 *
 * acc[i][j] (+)= sum over steps p of x[xoff[p] + i] * w[j * wstride + p * KV_LANES + lane]:
 * np consecutive output pixels (one output row, unit stride in the phase planes) x nv vectors of
 * output channels.  Per step: nv weight vectors loaded, np input values broadcast, np * nv FMAs. */

KV_TARGET __attribute__((always_inline)) static inline void
kv_body(const int np, const int nv, int64_t steps, const float *restrict x, const int64_t *restrict xoff,
        const float *restrict w, int64_t wstride, float *restrict acc, int64_t ldacc, int accumulate) {
    KV_VEC a[KV_PMAX][KV_VMAX];
    FC_TILE_LOOP for (int i = 0; i < np; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            a[i][j] = accumulate ? KV_LOAD(acc + i * ldacc + j * KV_LANES) : KV_ZERO();
    for (int64_t p = 0; p < steps; p++) {
        const float *restrict xp = x + xoff[p];
        KV_VEC wv[KV_VMAX];
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            wv[j] = KV_LOAD(w + j * wstride + p * KV_LANES);
        FC_TILE_LOOP for (int i = 0; i < np; i++) {
            KV_VEC b = KV_SET1(xp[i]);
            FC_TILE_LOOP for (int j = 0; j < nv; j++)
                a[i][j] = KV_FMA(b, wv[j], a[i][j]);
        }
    }
    FC_TILE_LOOP for (int i = 0; i < np; i++)
        FC_TILE_LOOP for (int j = 0; j < nv; j++)
            KV_STORE(acc + i * ldacc + j * KV_LANES, a[i][j]);
}

#define KV_ARGS                                                                                        \
    int64_t steps, const float *x, const int64_t *xoff, const float *w, int64_t wstride, float *acc,  \
        int64_t ldacc, int accumulate
#define KV_FN(NP, NV)                                                                                  \
    KV_TARGET static void kv_##NP##x##NV(KV_ARGS) {                                                    \
        kv_body(NP, NV, steps, x, xoff, w, wstride, acc, ldacc, accumulate);                           \
    }
