/* Max, average and adaptive average pooling, written once for T = float and T = double
 * (pool.c includes it twice).  torch's rules, as problem.py states them.
 *
 * Max and average pooling are separable, so each output row is made in two vectorisable
 * passes: a vertical pass reduces the window's rows (only those inside the input: padding is
 * -inf for max, 0 for sums) into a scratch row padded on both sides, then a horizontal pass
 * reduces kw (strided) columns of that scratch row per output column.  Each input row is read
 * about kh/stride_h times, from cache, and no inner loop tests for padding.
 */

/* The padded scratch row holds every column any window of the row reaches -- unless that is far
 * wider than the input and output rows (huge padding or dilation around a small output): then
 * the row is just the input's width and the horizontal pass clips each window's taps to it
 * (returns 0 for that case and sets *len to w). */
static int FN(pool_row_len)(const fc_pool2d_desc *d, int64_t *len) {
    int64_t padded = FC_MAX(d->w + d->pad_w, (d->ow - 1) * d->stride_w + (d->kw - 1) * d->dil_w + 1);
    if ((double)padded > 4.0 * ((double)d->w + d->ow) + 4096) {
        *len = d->w;
        return 0;
    }
    *len = padded;
    return 1;
}

/* Scratch for `team` threads of `floats` elements each (SIZE_MAX: a size that overflowed); NULL
 * when it cannot be had. */
static char *FN(pool_scratch)(int team, size_t floats, size_t *slice) {
    size_t total;
    *slice = fc_slice(fc_size_mul3(floats, sizeof(T), 1));
    if (*slice == SIZE_MAX || fc_size_mul((size_t)team, *slice, &total))
        return NULL;
    return fc_alloc(total);
}

/* NaN-propagating max, as torch: a NaN anywhere in the window wins. */
#define FC_NANMAX(best, v) (((v) > (best) || (v) != (v)) ? (v) : (best))

FC_CLONES
static void FN(max_rows)(T *restrict acc, const T *restrict row, int64_t w) {
    for (int64_t j = 0; j < w; j++)
        acc[j] = FC_NANMAX(acc[j], row[j]);
}

FC_CLONES
static void FN(fill_row)(T *restrict row, T value, int64_t n) {
    for (int64_t j = 0; j < n; j++)
        row[j] = value;
}

/* even[j] = buf[2 j], odd[j] = buf[2 j + 1] for j < n (vector deinterleaving shuffles). */
FC_CLONES
static void FN(deinterleave)(T *restrict even, T *restrict odd, const T *restrict buf, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        even[j] = buf[2 * j];
        odd[j] = buf[2 * j + 1];
    }
}

/* out[j] = max(buf[2 j], buf[2 j + 1], buf[2 j + 2]) for j < ow: ResNet's 3x3 stride-2 pool.  The
 * taps are deinterleaved into two unit-stride rows first (tmp: 2 (ow + 1) elements): with the
 * NaN test, the strided taps compiled to scalar code, and a ResNet-50's max pool took 0.31 ms at
 * batch 1 on 2 threads of an AMD EPYC (AVX-512). */
FC_CLONES
static void FN(max_cols_3s2)(T *restrict out, const T *restrict buf, int64_t ow, T *restrict tmp) {
    T *even = tmp, *odd = tmp + ow + 1;
    FN(deinterleave)(even, odd, buf, ow);
    even[ow] = buf[2 * ow];
    for (int64_t j = 0; j < ow; j++) {
        T m = FC_NANMAX(even[j], odd[j]);
        out[j] = FC_NANMAX(m, even[j + 1]);
    }
}

FC_CLONES
static void FN(max_cols)(T *restrict out, const T *restrict buf, int64_t ow, int64_t kw, int64_t sw, int64_t dw) {
    for (int64_t j = 0; j < ow; j++)
        out[j] = buf[j * sw];
    for (int64_t s = 1; s < kw; s++)
        for (int64_t j = 0; j < ow; j++)
            out[j] = FC_NANMAX(out[j], buf[j * sw + s * dw]);
}

/* out[j] = max of the window's taps that land in the row acc[0, w) (-inf when none do). */
static void FN(max_cols_clipped)(T *restrict out, const T *restrict acc, const fc_pool2d_desc *d) {
    for (int64_t j = 0; j < d->ow; j++) {
        int64_t start = j * d->stride_w - d->pad_w, s0, s1;
        fc_valid_range(d->w, d->kw, d->dil_w, start, &s0, &s1);
        T m = -(T)INFINITY;
        for (int64_t s = s0; s < s1; s++)
            m = FC_NANMAX(m, acc[start + s * d->dil_w]);
        out[j] = m;
    }
}

#ifdef FC_POOL_SIMD_F32
/* float32 max pooling 3 wide, stride 2, left padding 1 along the rows (ResNet's stem pool), any
 * window down the columns, in one pass per output row: the window's input rows are max-ed in
 * registers, 32 columns at a time, and the result is deinterleaved into even and odd columns
 * for the horizontal taps -- no scratch rows, no per-row calls of small ifunc-dispatched loops.
 * Each call makes a run of rows of one plane.  ResNet's stem pool, (1, 64, 112, 112), AMD EPYC
 * Zen 5 (AVX-512): the C call alone 118 -> 36 us on 2 threads, 227 -> 66-72 us on one (the
 * scratch-row passes before it); a horizontal-first order would shuffle every input row, not
 * every output row: twice the permutes.
 *
 * vmaxps returns its second operand when either is NaN, so it can drop a NaN: the kernels also
 * test every input vector for NaN (one compare per pair of vectors; 20 % of the time with the
 * plane in L2) and stop at a row that holds one, which the caller redoes with the exact scalar
 * rule (FC_NANMAX).  vrangeps does not help: it drops NaNs too (measured). */
#if FC_X86
#include <immintrin.h>

/* The first n of 16 lanes (none for n <= 0). */
static inline __mmask16 pool_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* 16 outputs from 32 columns src[0, 32) of the n rows src + r * step (m0, m1: the columns of each
 * half inside the row, the rest load as -inf), as pool_f32_max_row_3s2p1_avx512 below describes;
 * *prev carries the odd columns to the next block, *nan collects the lanes that held a NaN. */
__attribute__((always_inline, target("avx512f"))) static inline __m512
pool_f32_max_block_avx512(const float *src, int64_t step, int64_t n, __mmask16 m0, __mmask16 m1, __m512 *prev,
                          __mmask16 *nan) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 lo = _mm512_mask_loadu_ps(ninf, m0, src), hi = _mm512_mask_loadu_ps(ninf, m1, src + 16);
    __mmask16 bad = _mm512_cmp_ps_mask(lo, hi, _CMP_UNORD_Q);
    for (int64_t r = 1; r < n; r++) {
        __m512 a = _mm512_mask_loadu_ps(ninf, m0, src + r * step);
        __m512 b = _mm512_mask_loadu_ps(ninf, m1, src + r * step + 16);
        bad |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
        lo = _mm512_max_ps(lo, a);
        hi = _mm512_max_ps(hi, b);
    }
    *nan |= bad;
    __m512 e = _mm512_permutex2var_ps(lo, even, hi), o = _mm512_permutex2var_ps(lo, odd, hi);
    __m512 s = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(o), _mm512_castps_si512(*prev), 15));
    *prev = o;
    return _mm512_max_ps(_mm512_max_ps(e, o), s);
}

/* out[j] = max over the n rows src + r * step of columns 2j - 1, 2j, 2j + 1, j < ow, columns
 * outside [0, w) being -inf.  With a block of 32 columns deinterleaved into even lanes E (column
 * 2j) and odd lanes O (2j + 1), out = max(E, O, O shifted one lane up), the lane shifted in being
 * the previous block's last odd column (-inf left of column 0: the padding).  Columns at or past
 * w load as -inf (masked loads): the right padding and ceil mode's overhang.  Returns whether
 * any input was NaN. */
__attribute__((always_inline, target("avx512f"))) static inline int
pool_f32_max_row_3s2p1_avx512(float *out, const float *src, int64_t step, int64_t n, int64_t w, int64_t ow) {
    __m512 prev = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    int64_t j = 0;
    for (; j + 16 <= ow && 2 * j + 32 <= w; j += 16) /* whole blocks */
        _mm512_storeu_ps(out + j, pool_f32_max_block_avx512(src + 2 * j, step, n, 0xFFFF, 0xFFFF, &prev, &nan));
    for (; j < ow; j += 16) {
        __m512 m = pool_f32_max_block_avx512(src + 2 * j, step, n, pool_mask16(w - 2 * j), pool_mask16(w - 2 * j - 16),
                                             &prev, &nan);
        _mm512_mask_storeu_ps(out + j, pool_mask16(ow - j), m);
    }
    return nan != 0;
}

/* The same on AVX2, 8 outputs from 16 columns: even and odd columns gathered by an in-lane shuffle
 * and a 64-bit permute, the odd lanes rotated one up with the previous block's last odd column
 * blended in.  ResNet-50's stem pool at batch 1, AMD EPYC Zen 3, 2 threads: an eager call 230 ->
 * 140 us against the scratch-row passes before it.  The row's last, partial block loads with
 * masks (-inf past w) and stores with a mask; whole blocks use plain stores, as masked stores
 * are slow on AMD (see conv_fewc_f32.c). */
__attribute__((always_inline, target("avx2,fma"))) static inline __m256
pool_f32_max_block_avx2(const float *src, int64_t step, int64_t n, int64_t cols, __m256 *prev, __m256 *nan) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)FC_MIN(cols, 16)), lanes);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)FC_MIN(cols, 16) - 8), lanes);
    __m256 lo = ninf, hi = ninf, bad = _mm256_setzero_ps();
    for (int64_t r = 0; r < n; r++) {
        const float *row = src + r * step;
        __m256 a, b;
        if (cols >= 16) {
            a = _mm256_loadu_ps(row);
            b = _mm256_loadu_ps(row + 8);
        } else {
            a = _mm256_blendv_ps(ninf, _mm256_maskload_ps(row, m0), _mm256_castsi256_ps(m0));
            b = _mm256_blendv_ps(ninf, _mm256_maskload_ps(row + 8, m1), _mm256_castsi256_ps(m1));
        }
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
        lo = _mm256_max_ps(lo, a);
        hi = _mm256_max_ps(hi, b);
    }
    *nan = _mm256_or_ps(*nan, bad);
    /* in-lane: [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6]; the 64-bit permute puts lo before hi */
    __m256 e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    __m256 o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
    const __m256i up = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
    __m256 s = _mm256_blend_ps(_mm256_permutevar8x32_ps(o, up), _mm256_permutevar8x32_ps(*prev, up), 0x01);
    *prev = o;
    return _mm256_max_ps(_mm256_max_ps(e, o), s);
}

__attribute__((always_inline, target("avx2,fma"))) static inline int
pool_f32_max_row_3s2p1_avx2(float *out, const float *src, int64_t step, int64_t n, int64_t w, int64_t ow) {
    __m256 prev = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= ow && 2 * j + 16 <= w; j += 8) /* whole blocks */
        _mm256_storeu_ps(out + j, pool_f32_max_block_avx2(src + 2 * j, step, n, 16, &prev, &nan));
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (; j < ow; j += 8) {
        __m256 m = pool_f32_max_block_avx2(src + 2 * j, step, n, w - 2 * j, &prev, &nan);
        _mm256_maskstore_ps(out + j, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)FC_MIN(ow - j, 8)), lanes), m);
    }
    return _mm256_movemask_ps(nan) != 0;
}

/* Output rows [i, i1) of one plane (out: the plane's output); returns the first row it could
 * not make exactly (a NaN in its window, or no window row inside the input), i1 when none.  One
 * body for both instruction sets: ROW is the row kernel (a macro, as each body is compiled for its
 * own target).  Locals: with -fno-strict-aliasing every store to out would reload d's fields. */
#define POOL_F32_MAX_ROWS_3S2P1(ROW)                                                                            \
    const int64_t h = d->h, w = d->w, ow = d->ow, kh = d->kh, sh = d->stride_h, ph = d->pad_h, dh = d->dil_h; \
    for (; i < i1; i++) {                                                                                       \
        int64_t top = i * sh - ph, r0 = 0, r1 = kh;                                                             \
        if (top < 0 || top + (kh - 1) * dh >= h) /* the window leaves the input: divisions */                  \
            fc_valid_range(h, kh, dh, top, &r0, &r1);                                                           \
        const float *src = plane + (top + r0 * dh) * w;                                                         \
        int nan;                                                                                                \
        if (r1 - r0 == 3) /* the common case, unrolled */                                                       \
            nan = ROW(out + i * ow, src, dh * w, 3, w, ow);                                                     \
        else if (r1 > r0)                                                                                       \
            nan = ROW(out + i * ow, src, dh * w, r1 - r0, w, ow);                                               \
        else                                                                                                    \
            nan = 1;                                                                                            \
        if (nan)                                                                                                \
            return i;                                                                                           \
    }                                                                                                           \
    return i1;

__attribute__((target("avx2,fma"))) static int64_t
pool_f32_max_rows_3s2p1_avx2(const fc_pool2d_desc *d, const float *plane, float *out, int64_t i, int64_t i1) {
    POOL_F32_MAX_ROWS_3S2P1(pool_f32_max_row_3s2p1_avx2)
}

__attribute__((target("avx512f"))) static int64_t
pool_f32_max_rows_3s2p1_avx512(const fc_pool2d_desc *d, const float *plane, float *out, int64_t i, int64_t i1) {
    POOL_F32_MAX_ROWS_3S2P1(pool_f32_max_row_3s2p1_avx512)
}
#endif

/* Which kernel above takes d (an enum fc_level), 0 for none. */
static int pool_f32_max_simd_level(const fc_pool2d_desc *d) {
#if FC_X86
    if (d->kw == 3 && d->stride_w == 2 && d->pad_w == 1 && d->dil_w == 1 && fc_level() >= FC_AVX2)
        return fc_level() >= FC_AVX512 ? FC_AVX512 : FC_AVX2;
#else
    (void)d;
#endif
    return 0;
}

static int64_t pool_f32_max_rows_simd(int level, const fc_pool2d_desc *d, const float *plane, float *out,
                                      int64_t i, int64_t i1) {
#if FC_X86
    if (level == FC_AVX512)
        return pool_f32_max_rows_3s2p1_avx512(d, plane, out, i, i1);
    if (level == FC_AVX2)
        return pool_f32_max_rows_3s2p1_avx2(d, plane, out, i, i1);
#else
    (void)level, (void)d, (void)plane, (void)out, (void)i1;
#endif
    return i;
}
#endif

/* Output row i of plane p, by the separable passes (buf: the thread's scratch, len floats of
 * padded row then, for taps3s2, the 2 (ow + 1) deinterleaved taps). */
static void FN(max_pool_row)(const fc_pool2d_desc *d, const T *x, T *y, int64_t p, int64_t i, T *buf,
                             int64_t len, int padded, int taps3s2) {
    const T *plane = x + (size_t)p * d->h * d->w;
    int64_t r0, r1;
    FN(fill_row)(buf, -(T)INFINITY, len);
    T *acc = padded ? buf + d->pad_w : buf;
    /* Only the window rows inside the input: padding rows are -inf. */
    int64_t top = i * d->stride_h - d->pad_h;
    fc_valid_range(d->h, d->kh, d->dil_h, top, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        FN(max_rows)(acc, plane + (top + r * d->dil_h) * d->w, d->w);
    T *out = y + ((size_t)p * d->oh + i) * d->ow;
    if (taps3s2)
        FN(max_cols_3s2)(out, buf, d->ow, buf + len);
    else if (padded)
        FN(max_cols)(out, buf, d->ow, d->kw, d->stride_w, d->dil_w);
    else
        FN(max_cols_clipped)(out, acc, d);
}

/* Output rows [t, t1) of the planes x (t: plane * oh + row), into y, on the calling thread.  simd:
 * the SIMD kernel's level (0: none; float32 only), buf: the thread's scratch (max_pool_row). */
static void FN(max_pool_span)(const fc_pool2d_desc *d, const T *x, T *y, int64_t t, int64_t t1, T *buf,
                              int64_t len, int padded, int taps3s2, int simd) {
#ifdef FC_POOL_SIMD_F32
    if (simd) {
        while (t < t1) { /* one plane's run of rows per kernel call */
            int64_t p = t / d->oh, i = t % d->oh, i1 = FC_MIN(d->oh, i + (t1 - t));
            const T *plane = x + (size_t)p * d->h * d->w;
            T *out = y + (size_t)p * d->oh * d->ow;
            while (i < i1) {
                /* The kernel stops at a row holding a NaN: that row is redone exactly. */
                int64_t stop = FN(max_rows_simd)(simd, d, plane, out, i, i1);
                if (stop < i1)
                    FN(max_pool_row)(d, x, y, p, stop++, buf, len, padded, taps3s2);
                t += stop - i;
                i = stop;
            }
        }
        return;
    }
#else
    (void)simd;
#endif
    for (; t < t1; t++)
        FN(max_pool_row)(d, x, y, t / d->oh, t % d->oh, buf, len, padded, taps3s2);
}

/* The scratch max_pool_span needs per thread (floats), and its other arguments. */
static size_t FN(max_pool_setup)(const fc_pool2d_desc *d, int64_t *len, int *padded, int *taps3s2, int *simd) {
    *padded = FN(pool_row_len)(d, len);
    *taps3s2 = *padded && d->kw == 3 && d->stride_w == 2 && d->dil_w == 1;
    size_t floats = (size_t)*len; /* the padded row, then the 3x3/2 path's even and odd rows */
    if (*taps3s2) /* saturates at SIZE_MAX on overflow, which pool_scratch refuses */
        fc_size_add(floats, fc_size_mul3((size_t)d->ow + 1, 2, 1), &floats);
#ifdef FC_POOL_SIMD_F32
    *simd = FN(max_simd_level)(d);
#else
    *simd = 0;
#endif
    return floats;
}

int FN(max_pool2d)(const fc_pool2d_desc *d, const T *x, T *y, int nthreads) {
    const int64_t planes = d->n * d->c;
    int64_t len;
    int padded, taps3s2, simd;
    const size_t floats = FN(max_pool_setup)(d, &len, &padded, &taps3s2, &simd);
    int team = fc_team(nthreads, planes * d->oh * d->ow * FC_MIN(d->kh, d->h) * FC_MIN(d->kw, d->w), 1 << 15);
    size_t slice;
    char *scratch = FN(pool_scratch)(team, floats, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        /* The thread's share of the planes * oh output rows, as schedule(static) would cut it. */
        T *buf = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        int nth = FC_THREAD_COUNT(), tid = FC_THREAD_ID();
        int64_t rows = planes * d->oh;
        FN(max_pool_span)(d, x, y, rows * tid / nth, rows * (tid + 1) / nth, buf, len, padded, taps3s2, simd);
    }
    free(scratch);
    return FC_OK;
}

FC_CLONES
static void FN(add_rows)(T *restrict acc, const T *restrict row, int64_t w) {
    for (int64_t j = 0; j < w; j++)
        acc[j] += row[j];
}

/* Cells of window [start, start + k) counted by the divisor along one dimension: with
 * count_include_pad the padded cells count but the ceil-mode overhang past the padding does not. */
static inline int64_t FN(pool_count)(int64_t start, int64_t k, int64_t n, int64_t pad, int include_pad) {
    int64_t end = FC_MIN(start + k, n + pad);
    if (!include_pad) {
        start = FC_MAX(start, 0);
        end = FC_MIN(end, n);
    }
    return end - start;
}

int FN(avg_pool2d)(const fc_pool2d_desc *d, const T *x, T *y, int nthreads) {
    const int64_t planes = d->n * d->c;
    int64_t len;
    const int padded = FN(pool_row_len)(d, &len);
    int team = fc_team(nthreads, planes * d->oh * d->ow * FC_MIN(d->kh, d->h) * FC_MIN(d->kw, d->w), 1 << 15);
    /* Per thread: the scratch row, then the ow horizontal divisor factors. */
    size_t slice;
    size_t floats;
    fc_size_add((size_t)len, (size_t)d->ow, &floats); /* saturates: pool_scratch refuses it */
    char *scratch = FN(pool_scratch)(team, floats, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        T *buf = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        T *wcount = buf + len;
        for (int64_t j = 0; j < d->ow; j++)
            wcount[j] = (T)FN(pool_count)(j * d->stride_w - d->pad_w, d->kw, d->w, d->pad_w, d->count_include_pad);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < planes * d->oh; t++) {
            int64_t p = t / d->oh, i = t % d->oh;
            const T *plane = x + (size_t)p * d->h * d->w;
            memset(buf, 0, (size_t)len * sizeof(T));
            T *acc = padded ? buf + d->pad_w : buf;
            int64_t top = i * d->stride_h - d->pad_h, r0, r1;
            fc_valid_range(d->h, d->kh, 1, top, &r0, &r1);
            for (int64_t r = r0; r < r1; r++)
                FN(add_rows)(acc, plane + (top + r) * d->w, d->w);
            T *out = y + ((size_t)p * d->oh + i) * d->ow;
            for (int64_t j = 0; j < d->ow; j++) {
                T sum = 0;
                if (padded) {
                    for (int64_t s = 0; s < d->kw; s++)
                        sum += buf[j * d->stride_w + s];
                } else { /* only the taps inside the row: padding adds zeros */
                    int64_t start = j * d->stride_w - d->pad_w, s0, s1;
                    fc_valid_range(d->w, d->kw, 1, start, &s0, &s1);
                    for (int64_t s = s0; s < s1; s++)
                        sum += acc[start + s];
                }
                out[j] = sum;
            }
            if (d->divisor_override) {
                T div = (T)d->divisor_override;
                for (int64_t j = 0; j < d->ow; j++)
                    out[j] /= div;
            } else {
                T hcount = (T)FN(pool_count)(i * d->stride_h - d->pad_h, d->kh, d->h, d->pad_h, d->count_include_pad);
                for (int64_t j = 0; j < d->ow; j++)
                    out[j] /= hcount * wcount[j];
            }
        }
    }
    free(scratch);
    return FC_OK;
}

/* Bin i of n cells into `out` bins: [floor(i*n/out), ceil((i+1)*n/out)). */
static inline void FN(bin)(int64_t i, int64_t n, int64_t out, int64_t *a, int64_t *b) {
    *a = i * n / out;
    *b = ((i + 1) * n + out - 1) / out;
}

/* The sum of n contiguous values in 8 interleaved partial sums, which the compiler keeps in
 * vector registers (a single running sum is a chain of dependent adds it may not reorder). */
static T FN(run_sum)(const T *restrict x, int64_t n) {
    T part[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            part[k] += x[i + k];
    for (int k = 0; i < n; i++, k++)
        part[k] += x[i];
    return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
}

int FN(adaptive_avg_pool2d)(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                            const T *x, T *y, int nthreads) {
    if (planes < 0 || h < 1 || w < 1 || oh < 0 || ow < 0)
        return FC_EINVAL;
    int team = fc_team(nthreads, planes * (h * w + oh * ow), 1 << 15);
    /* Global pooling, a classifier's head: each plane is one run.  Row by row through the row-sum
     * buffer, 2048 planes of 7x7 at batch 8 took 400-420 us on 2 threads (AMD EPYC Zen 3; torch
     * 84-93); as runs, 100-110 us (batch 1: 73-78 -> 32-36 us, torch 26-30). */
    if (oh == 1 && ow == 1) {
        #pragma omp parallel for num_threads(team) schedule(static)
        for (int64_t p = 0; p < planes; p++)
            y[p] = FN(run_sum)(x + (size_t)p * h * w, h * w) / (T)(h * w);
        return FC_OK;
    }
    size_t slice;
    char *scratch = FN(pool_scratch)(team, (size_t)w, &slice);
    if (!scratch)
        return FC_ENOMEM;
    #pragma omp parallel num_threads(team)
    {
        T *rowsum = (T *)(scratch + (size_t)FC_THREAD_ID() * slice);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < planes * oh; t++) {
            int64_t p = t / oh, i = t % oh, h0, h1;
            FN(bin)(i, h, oh, &h0, &h1);
            const T *plane = x + (size_t)p * h * w;
            memset(rowsum, 0, (size_t)w * sizeof(T));
            for (int64_t ih = h0; ih < h1; ih++)
                FN(add_rows)(rowsum, plane + ih * w, w);
            T *out = y + ((size_t)p * oh + i) * ow;
            for (int64_t j = 0; j < ow; j++) {
                int64_t w0, w1;
                FN(bin)(j, w, ow, &w0, &w1);
                T sum = 0;
                for (int64_t iw = w0; iw < w1; iw++)
                    sum += rowsum[iw];
                out[j] = sum / (T)((h1 - h0) * (w1 - w0));
            }
        }
    }
    free(scratch);
    return FC_OK;
}
