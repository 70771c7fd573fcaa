/* Helpers shared by the kernel files; not part of the Python contract (that is fastconv.h). */
#ifndef FC_INTERNAL_H
#define FC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "fastconv.h"

#ifdef _OPENMP
#include <omp.h>
#define FC_THREAD_ID() omp_get_thread_num()
#define FC_THREAD_COUNT() omp_get_num_threads()
#else
#define FC_THREAD_ID() 0
#define FC_THREAD_COUNT() 1
#endif

/* Portable loops compiled once per instruction set and picked at load time (GCC/Clang ifunc), so
 * auto-vectorised code uses AVX-512 or AVX2+FMA where the CPU has them without -march=native
 * and still runs on any x86-64.  Other compilers and architectures get the one plain version. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FC_NO_CLONES) && !defined(FC_NO_X86)
#define FC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FC_CLONES
#endif

/* -DFC_NO_X86 builds the portable code only, as on other architectures (to test that build). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(FC_NO_X86)
#define FC_X86 1
#else
#define FC_X86 0
#endif

/* The epilogue's activation of one value, as torch.nn.functional computes it.  Every comparison
 * with NaN is false, so each branch passes NaN through; silu(-inf) and hardswish(-inf) are
 * -inf * 0 = NaN, as torch's; the sigmoid takes exp of a non-positive argument only. */
#define FC_DEFINE_ACT(T, NAME, EXP, ABS)                                                               \
    static inline T NAME(T v, int act, T a, T b) {                                                     \
        T e;                                                                                           \
        switch (act) {                                                                                 \
        case FC_ACT_RELU:                                                                              \
            return v < 0 ? (T)0 : v;                                                                   \
        case FC_ACT_RELU6:                                                                             \
            return v < 0 ? (T)0 : (v > 6 ? (T)6 : v);                                                  \
        case FC_ACT_HARDTANH:                                                                          \
            return v < a ? a : (v > b ? b : v);                                                        \
        case FC_ACT_LEAKY_RELU:                                                                        \
            return v > 0 ? v : v * a;                                                                  \
        case FC_ACT_SIGMOID:                                                                           \
            e = EXP(-ABS(v));                                                                          \
            return v >= 0 ? 1 / (1 + e) : e / (1 + e);                                                 \
        case FC_ACT_SILU:                                                                              \
            e = EXP(-ABS(v));                                                                          \
            return v * (v >= 0 ? 1 / (1 + e) : e / (1 + e));                                           \
        case FC_ACT_HARDSWISH:                                                                         \
            e = v + 3;                                                                                 \
            e = e < 0 ? (T)0 : (e > 6 ? (T)6 : e);                                                     \
            return v != v ? v : v * e / 6;                                                             \
        default:                                                                                       \
            return v;                                                                                  \
        }                                                                                              \
    }
FC_DEFINE_ACT(float, fc_act_f32, expf, fabsf)
FC_DEFINE_ACT(double, fc_act_f64, exp, fabs)
#define fc_act(v, act, a, b) _Generic((v), float: fc_act_f32, double: fc_act_f64)(v, act, a, b)

/* y[0:n] = act(y[0:n]) in place (activation.c): the epilogue's row loop. */
void fc_act_row_f32(float *y, int64_t n, int act, float a, float b);
void fc_act_row_f64(double *y, int64_t n, int act, double a, double b);
#define fc_act_row(y, n, act, a, b) _Generic((y), float *: fc_act_row_f32, double *: fc_act_row_f64)(y, n, act, a, b)

/* The activation a convolution descriptor asks for (`act`, else the older `relu` flag). */
static inline int fc_conv_act(const fc_conv2d_desc *d) {
    return d->act ? d->act : (d->relu ? FC_ACT_RELU : FC_ACT_NONE);
}

/* Before a microkernel's loops over its tile (pixels, vectors, rows): unrolled in full, so that
 * every accumulator a[i][j] has a constant index and stays in a register for the whole call.
 * Left as loops, GCC kept the accumulator array on the stack outside the reduction loop --
 * stored after zeroing, reloaded before the loop, stored after it, then loaded and stored again
 * by each step of the epilogue: 90-230 vector moves through the stack per call (objdump of the
 * AVX-512 and AVX2 blocked kernels, the 8 x 48 GEMM, the narrow kernel, the stem's tiles, the
 * backward-data GEMM), 0-10 with the loops unrolled.
 * AMD EPYC Zen 4, AVX-512: the blocked 4 x 64 tile alone in L1 on one thread 92-100 -> 106-108
 * GFLOP/s over a 64-channel reduction, 105-106 -> 111 over 128; whole Winograd plans on 2
 * threads, the old and new builds alternated in separate processes, ResNet-50 36.4-36.5 ->
 * 34.8-35.2 ms at batch 1 and 272-277 -> 260-267 ms at batch 8, ResNet-18 13.0-13.2 -> 12.7 ms at
 * batch 1, outputs bit for bit the same; backward data (`fastconv bench --suite resnet50
 * --direction bwd_data`, batch 8, best of two runs each) 0.71-1.02x the time, geometric mean 0.92. */
#define FC_TILE_LOOP _Pragma("GCC unroll 8")

#define FC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FC_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Vectors are 64 bytes; aligning scratch buffers to that keeps every vector load in one line. */
#define FC_ALIGN 64

/* Checked size arithmetic for every buffer size: *out = a * b (or a + b); nonzero, and *out =
 * SIZE_MAX, when the result does not fit in size_t.  A wrapped size would allocate a small
 * buffer that the kernel then overruns; SIZE_MAX makes fc_alloc fail instead (FC_ENOMEM). */
static inline int fc_size_mul(size_t a, size_t b, size_t *out) {
#if defined(__GNUC__) || defined(__clang__)
    if (__builtin_mul_overflow(a, b, out)) {
#else
    if (a && b > SIZE_MAX / a) {
#endif
        *out = SIZE_MAX;
        return 1;
    }
#if !(defined(__GNUC__) || defined(__clang__))
    *out = a * b;
#endif
    return 0;
}

static inline int fc_size_add(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) {
        *out = SIZE_MAX;
        return 1;
    }
    *out = a + b;
    return 0;
}

/* a * b * c, saturating at SIZE_MAX (overflow of either product saturates the result). */
static inline size_t fc_size_mul3(size_t a, size_t b, size_t c) {
    size_t ab, abc;
    if (fc_size_mul(a, b, &ab) || fc_size_mul(ab, c, &abc))
        return SIZE_MAX;
    return abc;
}

static inline void *fc_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes > SIZE_MAX / 2) /* no machine has it; also keeps the rounding below from wrapping */
        return NULL;
    /* Round up: aligned_alloc wants a multiple of the alignment; never ask for 0 bytes. */
    size_t rounded = (bytes + FC_ALIGN - 1) / FC_ALIGN * FC_ALIGN;
    if (posix_memalign(&p, FC_ALIGN, rounded ? rounded : FC_ALIGN) != 0)
        return NULL;
    return p;
}

/* Per-thread slices of one scratch allocation start 128 bytes apart (two cache lines, the
 * adjacent-line prefetcher's pair): threads writing neighbouring slices would otherwise share a
 * line, and bounce it between cores on every write (measured: 2 threads slower than 1). */
static inline size_t fc_slice(size_t bytes) {
    if (bytes > SIZE_MAX / 2)
        return SIZE_MAX; /* saturates: the caller's fc_size_mul and fc_alloc then fail */
    return (bytes + 127) / 128 * 128;
}

/* Threads worth starting for `work` units of about `grain` units each: waking a thread costs
 * microseconds, so tiny calls stay on the calling thread. */
static inline int fc_team(int nthreads, int64_t work, int64_t grain) {
    int64_t useful = grain > 0 ? work / grain : work;
    if (useful < 1)
        useful = 1;
    if (nthreads < 1)
        nthreads = 1;
    return useful < nthreads ? (int)useful : nthreads;
}

/* Output columns [lo, hi) whose tap at offset `off` (input column = o * stride + off) lands in
 * [0, n): the part of a row that needs no padding checks. */
static inline void fc_valid_range(int64_t n, int64_t out, int64_t stride, int64_t off,
                                  int64_t *lo, int64_t *hi) {
    int64_t a = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int64_t b = n - 1 - off < 0 ? 0 : (n - 1 - off) / stride + 1;
    *lo = FC_MIN(a, out);
    *hi = FC_MAX(FC_MIN(b, out), *lo);
}

/* Instruction-set levels for the hand-written float32 kernels. */
enum fc_level { FC_GENERIC = 0, FC_AVX2 = 1, FC_AVX512 = 2 };
int fc_level(void);

/* The float32 GEMM microkernels: C[mr][nr] (+)= A[mr][kc] B[kc][nr], mr output channels x nr
 * output pixels, the tile of the instruction set's kernel (isa.c).  Row i of A starts at
 * a + i * lda (the weights themselves); row p of B at b + boff[p] (a packed panel or a window
 * of the input itself).  C is a contiguous mr x nr tile (row stride nr).  Variant NV computes
 * only the first NV * 16 columns (tail panels); kernels whose nr is 16 have only NV = 1.
 * FC_MR x FC_NR is the largest tile of any instruction set (AVX-512's), which sizes buffers. */
#define FC_MR 8
#define FC_NR 48
typedef void (*fc_ukernel_fn)(int64_t kc, const float *a, int64_t lda, const float *b,
                              const int64_t *boff, float *c, int accumulate);
/* out[i * ldo + j] = act(c[i * ldc + j] + bias[i] + res[i * ldo + j]), i < rows, j < len: one
 * contiguous output run of a finished tile, bias/res may be NULL. */
typedef void (*fc_store_fn)(const float *c, int64_t ldc, int64_t rows, int64_t len, const float *bias,
                            const float *res, float *out, int64_t ldo, int relu);

/* Narrow panels on pre-packed weights (gemm_f32_narrow.c): for nmb weight blocks, a + m * astride
 * being block m's packed weights at the block's first step and c + m * cstride its accumulators
 * ([col][8] floats), acc[col][i] (+)= sum over p < kc of a_m[p * mr + i] * b[boff[p] + col], for
 * nc <= FC_NARROW_COLS columns. */
#define FC_NARROW_COLS 4

/* The narrow kernel's sums of ncols columns ([col][8]) into a tile's layout ([row][nr]), mr rows. */
static inline void fc_narrow_to_tile(const float *cols, int64_t ncols, int64_t mr, int64_t nr, float *tile) {
    for (int64_t i = 0; i < mr; i++)
        for (int64_t col = 0; col < ncols; col++)
            tile[i * nr + col] = cols[col * 8 + i];
}
typedef void (*fc_narrow_fn)(int64_t kc, int64_t nmb, int64_t nc, const float *a, int64_t astride,
                             const float *b, const int64_t *boff, float *c, int64_t cstride, int accumulate);

/* A full-width tile's last reduction block with the epilogue fused, written straight to the
 * output (gemm_f32_avx512.c, gemm_f32_avx2_6x16.c): C as fc_ukernel_fn (c: the partial sums when accumulate), then
 * out[i * ldo + j] = act(acc[i][j] + bias[i] + res[i * ldo + j]) for every row and column of
 * the tile, act relu or none; bias and res may be NULL. */
typedef void (*fc_gemm_store_fn)(int prefetch_b, int apacked, int64_t kc, const float *a, int64_t lda,
                                 const float *b, const int64_t *boff, const float *c, int accumulate, float *out,
                                 int64_t ldo, const float *bias, const float *res, int relu);

/* A full-width tile plus a tail of nt <= FC_NARROW_COLS more columns (gemm_f32_avx512.c), weights
 * pre-packed: C as fc_ukernel_fn with a packed A, and ct[u * 8 + i] (+)= sum over p < kc of
 * a[p * mr + i] * bt[boff_t[p] + u] -- the narrow kernel's sums for the tail, computed in the same
 * pass while the weights are in registers. */
typedef void (*fc_gemm_tail_fn)(int prefetch_b, int64_t kc, const float *a, const float *b, const int64_t *boff,
                                float *c, int accumulate, int64_t nt, const float *bt, const int64_t *boff_t,
                                float *ct);

/* One instruction set's kernel configuration (isa.c): the GEMM microkernel, its tile and the
 * reduction block it wants, its fused epilogue, and the names FASTCONV_VERBOSE reports. */
/* The channel-vector convolution microkernel (conv_kvec_f32.c): acc[i][j] (+)= sum over steps p
 * of x[xoff[p] + i] * w[j * wstride + p * lanes + lane], np <= kvec_p output pixels (consecutive
 * in one row) x nv <= kvec_v vectors of `lanes` output channels; acc rows are ldacc floats apart. */
typedef void (*fc_kvec_fn)(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                           const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate);

/* dst[p * lanes + l] = l < rows ? w[l * ldw + p] : 0, p < steps: weight rows into channel vectors. */
typedef void (*fc_kvec_pack_fn)(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst);
/* dst[off[p] + l] = w[l * ldw + p], l < lanes, p < steps: whole vectors of weight rows into lanes,
 * each step's vector stored where off says (the blocked kernel's weights, conv_blocked_f32.c). */
typedef void (*fc_kvec_pack_to_fn)(const float *w, int64_t ldw, int64_t steps, const int64_t *off, float *dst);

/* The same tile on channel-blocked activations (conv_blocked_f32.c, conv_blocked_ukernel_impl.h):
 * over taps t and their lanes channels c, pixel i reads x[xoff[t] + i * xpix + c]; the sums of
 * pixel i, vector j live at y[i * lanes + j * yvec]; weights are w[((t * lanes + c) * nv + j) *
 * lanes + lane]; mode: FC_BL_ACCUMULATE, FC_BL_FINISH (epilogue). */
#define FC_BL_ACCUMULATE 1
#define FC_BL_FINISH 2
typedef void (*fc_blocked_fn)(int64_t np, int64_t nv, int64_t taps, const float *x, const int64_t *xoff,
                              int64_t xpix, const float *w, float *y, int64_t yvec, int mode, const float *bias,
                              const float *res, int64_t rvec, int relu);

typedef struct fc_isa_config {
    int level;                 /* enum fc_level */
    const char *isa;           /* "avx512", "avx2", "generic" */
    int mr, nr;                /* the microkernel's tile: output channels x pixels */
    int kc;                    /* reduction rows per block (L1-resident A slice): Winograd, backward */
    int conv_kc;               /* the forward GEMM's longest reduction block (conv_gemm_f32.c) */
    const fc_ukernel_fn (*gemm)[3]; /* [prefetch B][NV - 1]; NULL beyond nr / 16 */
    const fc_ukernel_fn (*gemm_packed)[3]; /* the same reading A pre-packed, [p][mr]; NULL: none */
    int gemm_panel_outer;      /* 1: a task's B panel stays in L1 while its weight blocks pass;
                                  0: a weight block stays while its panels pass */
    fc_narrow_fn narrow;       /* panels of <= FC_NARROW_COLS columns on pre-packed A; NULL: none */
    fc_gemm_store_fn gemm_store; /* full tiles' last block, epilogue fused; NULL: none */
    fc_gemm_tail_fn gemm_tail; /* a full tile and the narrow panel after it in one pass; NULL: none */
    fc_kvec_pack_fn gemm_pack; /* eager calls: each task packs its weight blocks ([p][mr], mr lanes)
                                  and runs gemm_packed; NULL: eager calls read the weights in place */
    fc_store_fn store;
    const char *gemm_name;     /* e.g. "conv2d f32 gemm 6x16 avx2" */
    const char *gemm_packed_name; /* the same with pre-packed weights */
    const char *gemm_narrow_name; /* ... whose last panels of <= FC_NARROW_COLS columns ran `narrow` */
    const char *gemm_tail_name; /* ... whose last panels rode on the full panels before them */
    const char *gemm_task_name; /* an eager call's, weights packed per task (gemm_pack) */
    const char *winograd_name;
    const char *winograd_blocked_name; /* the same on channel-blocked activations */
    const char *winograd_channels_name; /* ... with the channels in the vectors (conv_winograd_f32.c) */
    const char *direct_name;
    fc_kvec_fn kvec;           /* output channels along the vectors, pixels broadcast */
    int kvec_p, kvec_v, kvec_lanes; /* its tile: pixels x vectors of lanes channels */
    fc_kvec_pack_fn kvec_pack; /* NULL: the portable loop */
    fc_kvec_pack_to_fn kvec_pack_to; /* NULL: kvec_pack through a small buffer */
    int kvec_auto_pixels;      /* "auto" takes kvec up to this many output pixels per plane (0: never) */
    const char *kvec_name;     /* e.g. "conv2d f32 kvec 7x4x16 avx512" */
    fc_blocked_fn blocked;     /* the channel-vector tile on blocked activations (compiled plans) */
    int blocked_tiles[2][2];   /* its {pixels, vectors}: [0] for rows a multiple of [0][0], else [1] */
    int blocked_steps;         /* reduction steps (channel x tap) per block: its weights stay in L1 */
    int blocked_steps_1x1;     /* the same for 1x1 filters (see isa.c) */
    int blocked_split_tail;    /* a last group of one vector shares the group before it (conv_blocked_f32.c) */
    const char *blocked_name;  /* e.g. "conv2d f32 blocked avx512" */
    int eager_blocked;         /* "auto" runs eager NCHW calls with filter taps on it (fc_f32_eager_blocked_wanted) */
    int eager_blocked_1x1;     /* ... and 1x1 ones of many input channels and few output pixels */
    int eager_blocked_reuse;   /* ... but not where c * r * s exceeds this many times the output
                                * pixels (weights that outweigh their output; 0: no limit) */
    const char *blocked_eager_name; /* ... and names them so */
} fc_isa_config;

/* The configuration of the instruction set this process uses: the CPU's best, capped by
 * FASTCONV_ISA (read once, at first use). */
const fc_isa_config *fc_config(void);

extern const fc_ukernel_fn fc_f32_gemm_kernels_avx512[2][3];
extern const fc_ukernel_fn fc_f32_gemm_kernels_packed_avx512[2][3];
void fc_f32_gemm_narrow_8(int64_t kc, int64_t nmb, int64_t nc, const float *a, int64_t astride, const float *b,
                          const int64_t *boff, float *c, int64_t cstride, int accumulate);
void fc_f32_gemm_narrow_6(int64_t kc, int64_t nmb, int64_t nc, const float *a, int64_t astride, const float *b,
                          const int64_t *boff, float *c, int64_t cstride, int accumulate);
void fc_f32_gemm_tail_avx512(int prefetch_b, int64_t kc, const float *a, const float *b, const int64_t *boff,
                             float *c, int accumulate, int64_t nt, const float *bt, const int64_t *boff_t,
                             float *ct);
void fc_f32_gemm_store_avx512(int prefetch_b, int apacked, int64_t kc, const float *a, int64_t lda, const float *b,
                              const int64_t *boff, const float *c, int accumulate, float *out, int64_t ldo,
                              const float *bias, const float *res, int relu);
void fc_f32_tile_store_avx512(const float *c, int64_t rows, int64_t len, const float *bias,
                              const float *res, float *out, int64_t ldo, int relu);
void fc_f32_gemm_6x16_avx2(int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff,
                           float *c, int accumulate);
void fc_f32_gemm_6x16_prefetch_avx2(int64_t kc, const float *a, int64_t lda, const float *b,
                                    const int64_t *boff, float *c, int accumulate);
void fc_f32_gemm_6x16_packed_avx2(int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff,
                                  float *c, int accumulate);
void fc_f32_gemm_6x16_prefetch_packed_avx2(int64_t kc, const float *a, int64_t lda, const float *b,
                                           const int64_t *boff, float *c, int accumulate);
void fc_f32_tile_store_avx2(const float *c, int64_t ldc, int64_t rows, int64_t len, const float *bias,
                            const float *res, float *out, int64_t ldo, int relu);
void fc_f32_gemm_pack6_avx2(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst);
void fc_f32_kvec_pack_avx2(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst);
void fc_f32_kvec_pack_to_avx2(const float *w, int64_t ldw, int64_t steps, const int64_t *off, float *dst);
void fc_f32_gemm_store_avx2(int prefetch_b, int apacked, int64_t kc, const float *a, int64_t lda, const float *b,
                            const int64_t *boff, const float *c, int accumulate, float *out, int64_t ldo,
                            const float *bias, const float *res, int relu);
void fc_f32_gemm_4x16_generic(int64_t kc, const float *a, int64_t lda, const float *b, const int64_t *boff,
                              float *c, int accumulate);
void fc_f32_tile_store_generic(const float *c, int64_t ldc, int64_t rows, int64_t len, const float *bias,
                               const float *res, float *out, int64_t ldo, int relu);

void fc_f32_kvec_7x4_avx512(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                            const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate);
void fc_f32_kvec_pack_avx512(const float *w, int64_t ldw, int64_t rows, int64_t steps, float *dst);
void fc_f32_kvec_4x3_avx2(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                          const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate);
void fc_f32_kvec_4x2_generic(int64_t np, int64_t nv, int64_t steps, const float *x, const int64_t *xoff,
                             const float *w, int64_t wstride, float *acc, int64_t ldacc, int accumulate);

void fc_f32_blocked_7x4_avx512(int64_t np, int64_t nv, int64_t taps, const float *x, const int64_t *xoff,
                               int64_t xpix, const float *w, float *y, int64_t yvec, int mode, const float *bias,
                               const float *res, int64_t rvec, int relu);
void fc_f32_blocked_4x3_avx2(int64_t np, int64_t nv, int64_t taps, const float *x, const int64_t *xoff,
                             int64_t xpix, const float *w, float *y, int64_t yvec, int mode, const float *bias,
                             const float *res, int64_t rvec, int relu);
void fc_f32_blocked_4x2_generic(int64_t np, int64_t nv, int64_t taps, const float *x, const int64_t *xoff,
                                int64_t xpix, const float *w, float *y, int64_t yvec, int mode, const float *bias,
                                const float *res, int64_t rvec, int relu);

/* Zero the border of each of the n * c / L planes of a blocked (n, c, h, w) activation with border
 * b (conv_blocked_f32.c). */
void fc_f32_blocked_zero_border(float *y, int64_t n, int64_t c, int64_t h, int64_t w, int64_t b, int nthreads);
/* Rows [i0, i1) of L = fc_f32_blocked_lanes() NCHW planes of h x w (nchw: the first) into one
 * blocked plane with border b, with the border cells those rows own zeroed (conv_blocked_f32.c). */
void fc_f32_rows_to_blocked(const float *nchw, float *blk, int64_t h, int64_t w, int64_t b, int64_t i0, int64_t i1);

/* float32 convolution through packed GEMM panels (conv_gemm_f32.c), with the microkernel of
 * fc_config(); FC_EUNSUPPORTED for shapes it does not take (absurd strides).  wpack: NULL, or
 * the weights as fc_f32_gemm_weights packed them (fc_f32_gemm_weights_size(d) > 0).  *kernel (when
 * not NULL) is set to the narrow variant's name when the narrow kernel took the last panels. */
int fc_f32_conv2d_gemm(const fc_conv2d_desc *d, const float *x, const float *w, const float *wpack,
                       const float *bias, const float *residual, float *y, int nthreads, const char **kernel);
/* The pre-packed weights of the GEMM (conv_gemm_f32.c): their size in floats (-1: too large), and
 * the packing. */
int64_t fc_f32_gemm_packed_floats(const fc_conv2d_desc *d);
void fc_f32_gemm_pack_weights(const fc_conv2d_desc *d, const float *w, float *out, int nthreads);
/* Whether fc_f32_conv2d_fewc takes d (its static rule). */
int fc_f32_fewc_wanted(const fc_conv2d_desc *d);
/* The same for few input channels on AVX-512 (conv_fewc_f32.c); FC_EUNSUPPORTED for problems it
 * leaves to fc_f32_conv2d_gemm; *kernel names it when it ran. */
int fc_f32_conv2d_fewc(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads, const char **kernel);
/* The channel-vector kernel (conv_kvec_f32.c), which fc_f32_conv2d_gemm hands the problems
 * fc_f32_kvec_wanted chooses (small output planes with many channels, or FASTCONV_F32_CONV=kvec). */
int fc_f32_kvec_wanted(const fc_conv2d_desc *d);
int fc_f32_conv2d_kvec(const fc_conv2d_desc *d, const float *x, const float *w, const float *bias,
                       const float *residual, float *y, int nthreads);

#endif
