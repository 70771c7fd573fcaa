/* What the CPU offers (run-time instruction-set dispatch) and its measured FMA peak. */
#include <time.h>

#include "fc_internal.h"

#if FC_X86
#include <immintrin.h>
#endif

/* FASTCONV_ISA=avx2|generic caps the level, so an AVX-512 machine tests and measures its other
 * kernels.  Read once, at first use: the kernel tables must not change under a running program. */
static int fc_level_cap(void) {
    const char *cap = getenv("FASTCONV_ISA");
    if (cap && !strcmp(cap, "generic"))
        return FC_GENERIC;
    if (cap && !strcmp(cap, "avx2"))
        return FC_AVX2;
    return FC_AVX512;
}

static int fc_level_cpu(void) {
#if FC_X86
    /* __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0). */
    if (__builtin_cpu_supports("avx512f"))
        return FC_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FC_AVX2;
#endif
    return FC_GENERIC;
}

int fc_level(void) {
    static volatile int level = -1; /* a race on first use is benign: every thread computes the same */
    if (level < 0) {
        int cpu = fc_level_cpu(), cap = fc_level_cap();
        level = cpu < cap ? cpu : cap;
    }
    return level;
}

const char *fc_isa(void) {
    return fc_config()->isa;
}

int fc_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Independent FMA chains, enough of them to cover the FMA latency on both pipes; the result is
 * returned so the compiler cannot drop the loop.  Returns FLOPs done. */
#define FC_CHAINS 24
#if FC_X86
__attribute__((target("avx512f"))) static double fma_loop_avx512(int64_t iters, float *sink) {
    __m512 acc[FC_CHAINS], b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
    for (int i = 0; i < FC_CHAINS; i++)
        acc[i] = _mm512_set1_ps((float)i);
    for (int64_t t = 0; t < iters; t++) {
        #pragma GCC unroll 24
        for (int i = 0; i < FC_CHAINS; i++)
            acc[i] = _mm512_fmadd_ps(acc[i], b, c);
    }
    __m512 s = acc[0];
    for (int i = 1; i < FC_CHAINS; i++)
        s = _mm512_add_ps(s, acc[i]);
    *sink = _mm512_reduce_add_ps(s);
    return 2.0 * 16 * FC_CHAINS * (double)iters;
}

__attribute__((target("avx2,fma"))) static double fma_loop_avx2(int64_t iters, float *sink) {
    __m256 acc[FC_CHAINS / 2], b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
    for (int i = 0; i < FC_CHAINS / 2; i++)
        acc[i] = _mm256_set1_ps((float)i);
    for (int64_t t = 0; t < iters; t++) {
        #pragma GCC unroll 12
        for (int i = 0; i < FC_CHAINS / 2; i++)
            acc[i] = _mm256_fmadd_ps(acc[i], b, c);
    }
    float out[8];
    __m256 s = acc[0];
    for (int i = 1; i < FC_CHAINS / 2; i++)
        s = _mm256_add_ps(s, acc[i]);
    _mm256_storeu_ps(out, s);
    *sink = out[0];
    return 2.0 * 8 * (FC_CHAINS / 2) * (double)iters;
}
#endif

static double fma_loop_generic(int64_t iters, float *sink) {
    float acc[64];
    for (int i = 0; i < 64; i++)
        acc[i] = (float)i;
    for (int64_t t = 0; t < iters; t++)
        for (int i = 0; i < 64; i++)
            acc[i] = acc[i] * 0.999f + 1e-3f;
    float s = 0;
    for (int i = 0; i < 64; i++)
        s += acc[i];
    *sink = s;
    return 2.0 * 64 * (double)iters;
}

static double fma_loop(int level, int64_t iters, float *sink) {
#if FC_X86
    if (level == FC_AVX512)
        return fma_loop_avx512(iters, sink);
    if (level == FC_AVX2)
        return fma_loop_avx2(iters, sink);
#endif
    (void)level;
    return fma_loop_generic(iters, sink);
}

/* The summed FMA rate of team threads, each timing its own loops for at least `seconds`. */
static double team_rate(int level, int team, double seconds, float *sink) {
    double total = 0;
    #pragma omp parallel num_threads(team) reduction(+ : total)
    {
        float mine = 0;
        fma_loop(level, 20000, &mine); /* warm up: clock ramps to its AVX frequency */
        double t0 = now(), dt, flops = 0;
        do {
            flops += fma_loop(level, 50000, &mine);
            dt = now() - t0;
        } while (dt < seconds);
        total += flops / dt * 1e-9;
        #pragma omp atomic
        *sink += mine;
    }
    return total;
}

/* Two passes, the second one timed for 20 ms per thread.  In a fresh process other thread pools
 * may still spin on the cores (OpenBLAS's, woken as the package sets its thread count, for
 * tens of ms): the first call then reads low (an AMD EPYC Zen 4, 2 threads: 129-211 GFLOP/s of
 * 235; 222-235 with OPENBLAS_NUM_THREADS=1).  A fixed count of iterations had lasted 1-3 ms, so
 * the benchmarks' best of three calls all fell inside that window, and the peak cache kept 117
 * GFLOP/s; calls of 30 ms each let the later ones see free cores. */
double fc_peak_gflops(int nthreads) {
    int level = fc_level(), team = nthreads < 1 ? 1 : nthreads;
    float sink = 0;
    team_rate(level, team, 0.01, &sink);
    double total = team_rate(level, team, 0.02, &sink);
    return sink == 12345.0f ? total + 1e-9 : total; /* keep `sink` alive */
}
