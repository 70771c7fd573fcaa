/* Internals of the float32 GEMM convolution shared by conv_gemm_f32.c (plan, tasks, driver)
 * and conv_panels_f32.c (where the B panels come from).  Not part of the Python contract. */
#ifndef CONV_GEMM_F32_H
#define CONV_GEMM_F32_H

#include "fc_internal.h"

#define MAX_SEGS (FC_NR + 1) /* a panel's runs: at most one per column, +1 (FC_NR >= nr) */

typedef struct {
    int64_t j0, len, n, oh, ow0; /* panel columns [j0, j0 + len) = output pixels (n, oh, ow0 + i) */
} seg_t;

typedef struct {
    const fc_conv2d_desc *d;
    const float *x;
    int64_t cg, kg, crs, mblocks, ohw, kcb;
    int direct;
    const float *src;        /* direct: where B rows live (x itself or the phase planes) */
    int64_t src_img, src_chan; /* direct: floats per image and per channel in src */
    int64_t wq;              /* direct: virtual row width */
    int64_t img_cols;        /* direct: virtual pixels per image; packed: real pixels in the batch */
    int64_t ppi, npanels;    /* panels per image (direct) and in all */
    int64_t head;            /* direct: columns of each image's first, short panel (0: none), so
                                that the others start on a cache line (see conv_gemm_f32.c) */
    int64_t *off;            /* direct: [crs] offset of B row p from a panel's first pixel */
    const float *w;          /* weights (k, cg, r, s): full 8-channel blocks are read in place */
    const float *apack;      /* or NULL: the weights pre-packed, [groups][mblocks][crs][mr] */
    float *atail;            /* [groups][MR][crs]: each group's last, partial 8-channel block */
    float *gpack;            /* packed: [npanels][crs][NR], every panel gathered once per call */
    const int64_t *poff;     /* [max(crs, kcb)]: p * NR, the row offsets of a packed block */
    const fc_isa_config *cfg; /* the microkernel, its tile and epilogue */
    int64_t mr, nr;           /* its tile */
    int tails;                /* narrow panels ride on the full panel before them (gemm_tail) */
    int tpack;                /* or each task packs its weight blocks per reduction block (eager calls; 2: forced) */
} plan_t;


typedef struct {
    int64_t nb, hq, wq;      /* used column phases; phase plane size */
    int64_t arow[64], bcol[64]; /* index of row phase a / column phase b among the used ones, or -1 */
    int64_t rowphases[64], colphases[64], na;
} phases_t;

int fc_stride_phases(const fc_conv2d_desc *d, phases_t *ph);
void fc_f32_panel_range(const plan_t *P, int64_t idx, int64_t *n, int64_t *q0, int64_t *ncols);
int64_t fc_f32_panel_segments(const plan_t *P, int64_t idx, seg_t *segs, int64_t *ncols_out);
int64_t fc_f32_merge_segments(const fc_conv2d_desc *d, seg_t *segs, int64_t nseg);
void fc_f32_pack_panel(const plan_t *P, int64_t g, const seg_t *segs, int64_t nsegs, int64_t ncols,
                       int64_t cols, int64_t k0, int64_t k1, float *bpack);
void fc_f32_fill_phase_plane(const plan_t *P, const phases_t *ph, int64_t n, int64_t c, float *dst);

static inline int64_t round16(int64_t v) {
    return (v + 15) / 16 * 16;
}

#endif
