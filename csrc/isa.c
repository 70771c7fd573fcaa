/* Per-instruction-set kernel configurations, as BLIS and XNNPACK keep them: one table per ISA
 * naming its GEMM microkernel, tile and reduction block, chosen once at first use.
 *
 * Each tile is designed for its register file: AVX-512 (32 zmm) keeps 8 channels x 48 pixels
 * (24 accumulators), AVX2 (16 ymm) 6 channels x 16 pixels (12 accumulators, 2 B vectors, one
 * broadcast: MLAS's and BLIS's shape), the portable kernel 4 x 16 in plain C.  Small output
 * planes with many channels take the other orientation (kvec): output channels along the
 * vectors, pixels broadcast -- 7 pixels x 64 channels on AVX-512 (28 accumulators), 4 x 24 on
 * AVX2 (12), 4 x 16 in plain C.  The x86 GEMM kernels also come in a variant that reads the
 * weights pre-packed (fc_f32_gemm_weights, made once by compiled plans); the portable table reads
 * them in place only, and so takes no pre-packed weights.  Compiled plans keep activations
 * channel-blocked between layers and run the channel-vector tile on them (conv_blocked_f32.c):
 * AVX-512 4 pixels x 64 channels where a row is a multiple of 4 pixels long (56, 28), else
 * 7 x 48 (14, 7; 21 and 25 registers); AVX2 4 x 24; the portable loop 4 x 16.  With pre-packed weights, panels of 1-4
 * columns run the narrow kernel (8-lane vectors of a step's weights, gemm_f32_narrow.c), and
 * full 1x1-like tiles write their epilogue from the registers (gemm_store). */
#include "fc_internal.h"

#if FC_X86
static void store_avx512(const float *c, int64_t ldc, int64_t rows, int64_t len, const float *bias,
                         const float *res, float *out, int64_t ldo, int relu) {
    (void)ldc; /* always FC_NR: the AVX-512 tile is the widest */
    fc_f32_tile_store_avx512(c, rows, len, bias, res, out, ldo, relu);
}

static const fc_isa_config CONFIG_AVX512 = {
    .level = FC_AVX512, .isa = "avx512", .mr = 8, .nr = 48, .kc = 192, .conv_kc = 1024,
    .gemm = fc_f32_gemm_kernels_avx512,
    .gemm_packed = fc_f32_gemm_kernels_packed_avx512,
    .narrow = fc_f32_gemm_narrow_8,
    .gemm_store = fc_f32_gemm_store_avx512,
    .gemm_tail = fc_f32_gemm_tail_avx512,
    .store = store_avx512,
    .gemm_name = "conv2d f32 gemm 8x48 avx512",
    .gemm_packed_name = "conv2d f32 gemm 8x48 avx512, weights pre-packed",
    .gemm_narrow_name = "conv2d f32 gemm 8x48 avx512, weights pre-packed, last panels on the narrow 8-lane kernel",
    .gemm_tail_name = "conv2d f32 gemm 8x48 avx512, weights pre-packed, last 1-4 columns in the full tile's pass",
    .winograd_name = "conv2d f32 winograd F(4x4,3x3) gemm 8x48 avx512",
    .winograd_blocked_name = "conv2d f32 winograd F(4x4,3x3) gemm 8x48 avx512, blocked activations",
    .winograd_channels_name =
        "conv2d f32 winograd F(4x4,3x3) gemm 8x48 avx512, blocked activations, channels in vectors",
    .direct_name = "conv2d f32 direct avx512",
    .kvec = fc_f32_kvec_7x4_avx512, .kvec_p = 7, .kvec_v = 4, .kvec_lanes = 16,
    .kvec_pack = fc_f32_kvec_pack_avx512, .kvec_auto_pixels = 0, /* no measured win yet: see conv_kvec_f32.c */
    .kvec_name = "conv2d f32 kvec 7x64 avx512",
    /* 4 x 4 vectors (1x1 filters on rows of a multiple of 4 pixels; 3x3 ones take 7 x 3, whose
     * weights block fits L1: tile_of): 8 loads per 16 FMAs.  14 x 2 (16 loads per 28) had been
     * picked one layer at a time; in whole networks it lost 5-8% (ResNet-50 batch 8 142 -> 132
     * ms, batch 1 21.5 -> 19.7, alternated in one process) and slowed most when the host was
     * busy. */
    .blocked = fc_f32_blocked_7x4_avx512, .blocked_tiles = {{4, 4}, {7, 3}},
    .blocked_steps = 128, /* 128 x 3-4 vectors x 64 bytes: 24-32 KB (256 slowed the 1x1 layers of few outputs) */
    /* 1x1 layers measured apart on an AMD EPYC Zen 4 (ResNet-50 Winograd plans, alternated in
     * one process, batch 8): 512 and 1024 steps 1.01-1.02x the time, 64 1.02x, so AVX2's long
     * blocks (below) stay AVX2's.  The 7 x 48 tile on every row length and AVX2's tail split
     * (group_vectors) were within 1-2% there too.  A 3x3 filter's block is one 16-channel block
     * (144 steps, 27-36 KB) at any setting below 288 steps, so 64 and 256 changed nothing; cut by
     * filter rows (48 steps, each pass over a row of tiles) the 3x3 layers ran 1.07-1.12x the
     * time (eager calls on this kernel, alternated in one process). */
    .blocked_steps_1x1 = 128,
    .blocked_name = "conv2d f32 blocked 4x64 / 7x48 avx512",
    /* Eager 3x3 calls on the blocked kernel, 1x1 ones on the GEMM.  AMD EPYC Zen 4, ResNet-50's
     * 3x3 layers, alternated in one process with the GEMM, 2 threads, conversions and workspace
     * included (after FC_TILE_LOOP): batch 8 0.76-0.93x the GEMM's time on all seven (two runs),
     * batch 1 0.91-1.00x on the five up to 256 channels (two runs), but the 512-channel ones at
     * 7x7 (9.4 MB of weights packed per call for 49 output pixels) 0.98-1.05x and 0.98-1.26x:
     * those stay on the GEMM (reuse 32: their c * r * s is 94 times the output pixels, the
     * others' at most 12).  1x1 layers ran 1.01-1.25x the GEMM's time on this route at batch 1. */
    .eager_blocked = 1,
    .eager_blocked_1x1 = 0,
    .eager_blocked_reuse = 32,
    .blocked_eager_name = "conv2d f32 blocked 4x64 / 7x48 avx512, NCHW converted at the call",
};

static const fc_ukernel_fn GEMM_AVX2[2][3] = {{fc_f32_gemm_6x16_avx2, NULL, NULL},
                                              {fc_f32_gemm_6x16_prefetch_avx2, NULL, NULL}};

static const fc_ukernel_fn GEMM_PACKED_AVX2[2][3] = {{fc_f32_gemm_6x16_packed_avx2, NULL, NULL},
                                                     {fc_f32_gemm_6x16_prefetch_packed_avx2, NULL, NULL}};

static const fc_isa_config CONFIG_AVX2 = {
    /* A 16-column panel is the larger operand of a step (64 bytes against 24 of weights): it
     * stays in L1 (256 rows, 16 KB) while the weight blocks stream from L2, as BLIS keeps its B
     * micro-panel.  Against weight blocks of 512 rows in L1 and the panels streaming: eager layers
     * 0.91-0.92x the time (geometric mean of 11 ResNet-50 layers, alternated in one process, AMD
     * EPYC Zen 3, 2 threads; 1x1 layers 0.77-0.96x, 3x3 level). */
    .level = FC_AVX2, .isa = "avx2", .mr = 6, .nr = 16, .kc = 256, .conv_kc = 256,
    .gemm = GEMM_AVX2,
    .gemm_panel_outer = 1,
    .gemm_packed = GEMM_PACKED_AVX2,
    .narrow = fc_f32_gemm_narrow_6,
    .gemm_pack = fc_f32_gemm_pack6_avx2,
    .gemm_store = fc_f32_gemm_store_avx2,
    .store = fc_f32_tile_store_avx2,
    .gemm_name = "conv2d f32 gemm 6x16 avx2",
    .gemm_packed_name = "conv2d f32 gemm 6x16 avx2, weights pre-packed",
    .gemm_narrow_name = "conv2d f32 gemm 6x16 avx2, weights pre-packed, last panels on the narrow 8-lane kernel",
    .gemm_task_name = "conv2d f32 gemm 6x16 avx2, weights packed per task",
    .winograd_name = "conv2d f32 winograd F(4x4,3x3) gemm 6x16 avx2",
    .winograd_blocked_name = "conv2d f32 winograd F(4x4,3x3) gemm 6x16 avx2, blocked activations",
    .winograd_channels_name =
        "conv2d f32 winograd F(4x4,3x3) gemm 6x16 avx2, blocked activations, channels in vectors",
    .direct_name = "conv2d f32 direct avx2",
    .kvec = fc_f32_kvec_4x3_avx2, .kvec_p = 4, .kvec_v = 3, .kvec_lanes = 8,
    .kvec_pack = fc_f32_kvec_pack_avx2,
    .kvec_pack_to = fc_f32_kvec_pack_to_avx2,
    .kvec_name = "conv2d f32 kvec 4x24 avx2",
    .blocked = fc_f32_blocked_4x3_avx2, .blocked_tiles = {{4, 3}, {4, 3}},
    /* 256 x 3 vectors x 32 bytes = 24 KB, the bytes AVX-512 keeps: 128 steps ran 0.6-6% slower
     * in four whole-network alternations on a Zen 3 (ResNet-18 b1, ResNet-50 b1 and b8). */
    .blocked_steps = 256,
    /* 1x1 layers: 1024 channels a block, where 256 cut a 2048-channel reduction into 8 passes,
     * each reloading every tile's partial sums from the output.  Alternated in one process,
     * ResNet-50 plans: the 7x7 and 14x14 1x1 layers alone 0.87-0.97x the time at batch 8,
     * 0.89-0.98x at batch 1 (0.90-0.95x in sequence on the 7x7 ones); whole passes 0.97-0.99x at
     * batch 8, 0.99x at batch 1.  The weights of a block (96 KB) then stream from L2. */
    .blocked_steps_1x1 = 1024,
    /* 16 output vectors as 3+3+3+3+2+2, not 3+3+3+3+3+1 (group_vectors).  Alternated with the 3+1
     * split in separate processes, eager calls, 2 threads: 3x3 128 -> 128 at 28x28 and stride 2
     * at 56x56 0.89-0.98x the time at batch 1 and 0.94-0.99x at batch 8; 5x5 192 -> 32 at 28x28
     * (3 + 1 vectors -> 2 + 2) 0.87-0.89x at both; the 512-channel 3x3 layers (64 vectors)
     * level. */
    .blocked_split_tail = 1,
    .blocked_name = "conv2d f32 blocked 4x24 avx2",
    .eager_blocked = 1, /* measured: fc_f32_eager_blocked_wanted */
    .eager_blocked_1x1 = 1,
    .eager_blocked_reuse = 0,
    .blocked_eager_name = "conv2d f32 blocked 4x24 avx2, NCHW converted at the call",
};
#endif

static const fc_ukernel_fn GEMM_GENERIC[2][3] = {{fc_f32_gemm_4x16_generic, NULL, NULL},
                                                 {fc_f32_gemm_4x16_generic, NULL, NULL}};

static const fc_isa_config CONFIG_GENERIC = {
    .level = FC_GENERIC, .isa = "generic", .mr = 4, .nr = 16, .kc = 128, .conv_kc = 128,
    .gemm = GEMM_GENERIC,
    .store = fc_f32_tile_store_generic,
    .gemm_name = "conv2d f32 gemm 4x16 generic",
    .winograd_name = "conv2d f32 winograd F(4x4,3x3) gemm 4x16 generic",
    .winograd_blocked_name = "conv2d f32 winograd F(4x4,3x3) gemm 4x16 generic, blocked activations",
    .winograd_channels_name =
        "conv2d f32 winograd F(4x4,3x3) gemm 4x16 generic, blocked activations, channels in vectors",
    .direct_name = "conv2d f32 direct generic",
    .kvec = fc_f32_kvec_4x2_generic, .kvec_p = 4, .kvec_v = 2, .kvec_lanes = 8,
    .kvec_name = "conv2d f32 kvec 4x16 generic",
    .blocked = fc_f32_blocked_4x2_generic, .blocked_tiles = {{4, 2}, {4, 2}},
    .blocked_steps = 128,
    .blocked_steps_1x1 = 128,
    .blocked_name = "conv2d f32 blocked 4x16 generic",
    .blocked_eager_name = "conv2d f32 blocked 4x16 generic, NCHW converted at the call",
};

/* The table is picked once; a data race on first use is benign (every thread computes the
 * same pointer). */
static const fc_isa_config *volatile chosen;

const fc_isa_config *fc_config(void) {
    const fc_isa_config *cfg = chosen;
    if (cfg)
        return cfg;
    switch (fc_level()) {
#if FC_X86
    case FC_AVX512:
        cfg = &CONFIG_AVX512;
        break;
    case FC_AVX2:
        cfg = &CONFIG_AVX2;
        break;
#endif
    default:
        cfg = &CONFIG_GENERIC;
    }
    chosen = cfg;
    return cfg;
}
