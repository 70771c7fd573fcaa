/* AVX2 + FMA channel-vector convolution microkernel: 4 output pixels x 3 vectors of 8 output
 * channels (12 accumulators, 3 weight vectors and one broadcast: the 16 ymm registers).  Per
 * step 3 weight loads and 4 broadcasts feed 12 FMAs.  Smaller tiles get their own copies.
 * Called only when the CPU reports AVX2 and FMA. */
#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>

#define KV_VEC __m256
#define KV_LANES 8
#define KV_ZERO() _mm256_setzero_ps()
#define KV_LOAD(p) _mm256_loadu_ps(p)
#define KV_STORE(p, v) _mm256_storeu_ps(p, v)
#define KV_SET1(f) _mm256_set1_ps(f)
#define KV_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define KV_TARGET __attribute__((target("avx2,fma")))
#define KV_PMAX 4
#define KV_VMAX 3
#include "conv_kvec_ukernel_impl.h"

#define KV_ROW(NP) KV_FN(NP, 1) KV_FN(NP, 2) KV_FN(NP, 3)
KV_ROW(1) KV_ROW(2) KV_ROW(3) KV_ROW(4)
#define KV_ENTRY(NP) {kv_##NP##x1, kv_##NP##x2, kv_##NP##x3}
static void (*const TABLE[KV_PMAX][KV_VMAX])(KV_ARGS) = {KV_ENTRY(1), KV_ENTRY(2), KV_ENTRY(3), KV_ENTRY(4)};

void fc_f32_kvec_4x3_avx2(int64_t np, int64_t nv, KV_ARGS) {
    TABLE[np - 1][nv - 1](steps, x, xoff, w, wstride, acc, ldacc, accumulate);
}
#else
void fc_f32_kvec_4x3_avx2(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                          const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate) {
    (void)np, (void)nv, (void)steps, (void)x, (void)xoff, (void)w, (void)wstride, (void)acc, (void)ldacc,
        (void)accumulate;
}
#endif
