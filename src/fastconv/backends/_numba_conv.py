"""Numba convolution kernels: direct convolution on a channels-last copy of the input.

Why channels-last: in an (H, W*C) row of the padded input, the terms one output pixel takes from
kernel row r -- all (s, c) of its window -- are one contiguous run, and so are the matching
weights once repacked to (K, R, S*C).  The innermost loop is then a dot product, which LLVM
vectorises with its accumulators held in vector registers.  A tile of 4 output pixels x 4 output
channels shares every load: 8 loads feed 16 multiply-adds, so the FMA units, not the load ports,
set the pace.  Each call repacks the input (zero padding included) and the weights once.

Shape classes with their own kernel:

- dense (any groups, stride, dilation): the dot products above, one per kernel row (one per
  tap when the kernel is dilated along the width), for long kernel rows (S*C >= MIN_RUN);
- windows (short kernel rows: the 3-channel stem, 64- and 128-channel 3x3): each dot product
  ends with a sum across vector lanes, too costly once per short kernel row, so each output
  row's windows are first gathered into a contiguous (OW, R*S*C) block (im2col, one row at a
  time, in cache) and the dot products run over whole windows;
- 1x1 without padding: a matrix product; the pixels it reads (strided ones subsampled) are
  packed channels-last as one long row, which the dense kernel takes in cache-sized blocks;
- depthwise (one input channel per group): no channel sum to vectorise, so it stays NCHW and
  vectorises along the image, one kernel tap at a time.

The epilogue ``act(conv + bias + residual)`` is applied as each tile is stored.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba_jit import inline, kernel

#: Output pixels x output channels of one register tile.
TILE_PIXELS = 4
TILE_CHANNELS = 4
#: Output-channel tiles one task walks through, reusing the input rows it has in cache.
TILES_PER_TASK = 4
#: Input channels the repacking transposes at a time (their rows' pages stay in the TLB).
CHANNEL_BLOCK = 32
#: Below this many contiguous terms per kernel row, gather whole windows first (see above):
#: summing vector accumulators across lanes once per kernel row costs too much on short rows.
MIN_RUN = 512
#: Weights one windows task keeps in cache (a part of a core's L2).
WEIGHT_BYTES = 512 * 1024


# -- repacking ---------------------------------------------------------------------------------


@inline
def _pack_input_row(x, groups, pt, pl, xh, task):
    """Row ``task`` of xh: xh[n, g, pt + h, (pl + w) * Cg + c] = x[n, g * Cg + c, h, w], zero padding."""
    _, c_all, h, w = x.shape
    _, _, hp, _ = xh.shape
    cg = c_all // groups
    row = task % hp
    g = (task // hp) % groups
    n = task // (hp * groups)
    out = xh[n, g, row]
    out[:] = 0
    ih = row - pt
    if ih >= 0 and ih < h:
        # A block of channels at a time, pixel by pixel: the block's input rows stay in L1
        # (and their pages in the TLB) while the 16 pixels of each cache line are read.
        for c0 in range(g * cg, (g + 1) * cg, CHANNEL_BLOCK):
            c1 = min(c0 + CHANNEL_BLOCK, (g + 1) * cg)
            planes = x[n, c0:c1]
            for iw in range(w):
                dst = out[(pl + iw) * cg + c0 - g * cg :]
                for c in range(c1 - c0):
                    dst[c] = planes[c, ih, iw]


@inline
def _pack_weight_row(weight, groups, wt, task):
    """Row ``task`` of wt: wt[g, k, (r * S + s) * Cg + c] = weight[g * Kg + k, c, r, s]; the rest
    of wt is zero (rows k >= Kg, and the row tail past R*S*Cg)."""
    k_all, cg, r_, s_ = weight.shape
    kg_padded = wt.shape[1]
    kg = k_all // groups
    k = task % kg_padded
    g = task // kg_padded
    out = wt[g, k]
    out[:] = 0
    if k < kg:
        # Tap by tap, writing contiguously; the reads stride through the (cached) source row.
        src = weight[g * kg + k].reshape(cg, r_ * s_)
        for tap in range(r_ * s_):
            dst = out[tap * cg : (tap + 1) * cg]
            for c in range(cg):
                dst[c] = src[c, tap]


@kernel
def _pack(x, weight, groups, pt, pl, xh, wt):
    """Repack the input (channels last, zero-padded) and the weights in one parallel pass:
    every parallel region costs a wake-up of the worker threads."""
    rows = xh.shape[0] * xh.shape[1] * xh.shape[2]
    for task in prange(rows + wt.shape[0] * wt.shape[1]):
        if task < rows:
            _pack_input_row(x, groups, pt, pl, xh, task)
        else:
            _pack_weight_row(weight, groups, wt, task - rows)


@kernel
def _pack_pixels(x, groups, sh, sw, xh):
    """For 1x1 kernels: xh[n, g, 0, (i * OW + j) * Cg + c] = x[n, g * Cg + c, i * sh, j * sw].

    The pixels a strided 1x1 convolution reads, channels last, as one long row: the convolution
    is then a matrix product, run by the dense kernel at stride 1.
    """
    n_, c_all, h, w = x.shape
    cg = c_all // groups
    oh, ow = (h - 1) // sh + 1, (w - 1) // sw + 1
    for task in prange(n_ * groups * oh):
        i = task % oh
        g = (task // oh) % groups
        n = task // (oh * groups)
        out = xh[n, g, 0, i * ow * cg : (i + 1) * ow * cg]
        for c0 in range(g * cg, (g + 1) * cg, CHANNEL_BLOCK):  # as in _pack_input_row
            c1 = min(c0 + CHANNEL_BLOCK, (g + 1) * cg)
            planes = x[n, c0:c1]
            for j in range(ow):
                dst = out[j * cg + c0 - g * cg :]
                for c in range(c1 - c0):
                    dst[c] = planes[c, i * sh, j * sw]


# -- the 4 x 4 register tile -------------------------------------------------------------------


@inline
def _dot4x4(x0, x1, x2, x3, w0, w1, w2, w3, length, acc):
    """acc + the 16 dot products of 4 input runs (pixels) with 4 weight runs (output channels).

    acc[4 * p + q] belongs to pixel p and channel q.  LLVM vectorises the loop with one vector
    accumulator per product: 8 loads feed 16 multiply-adds.
    """
    (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33) = acc
    for t in range(length):
        u0, u1, u2, u3 = x0[t], x1[t], x2[t], x3[t]
        v0, v1, v2, v3 = w0[t], w1[t], w2[t], w3[t]
        a00 += u0 * v0
        a01 += u0 * v1
        a02 += u0 * v2
        a03 += u0 * v3
        a10 += u1 * v0
        a11 += u1 * v1
        a12 += u1 * v2
        a13 += u1 * v3
        a20 += u2 * v0
        a21 += u2 * v1
        a22 += u2 * v2
        a23 += u2 * v3
        a30 += u3 * v0
        a31 += u3 * v1
        a32 += u3 * v2
        a33 += u3 * v3
    return (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)


@inline
def _zeros16(zero):
    return (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)


@inline
def _store4x4(y, bias, res, n, k0, valid_k, i, j0, valid_j, acc, has_res, relu):
    """The tile's outputs y[n, k0 + q, i, j0 + p] = act(acc + bias + residual), for the first
    ``valid_k`` channels and ``valid_j`` pixels; relu keeps NaN."""
    for q in range(min(valid_k, TILE_CHANNELS)):
        k = k0 + q
        for p in range(min(valid_j, TILE_PIXELS)):
            v = acc[TILE_CHANNELS * p + q] + bias[k]
            if has_res:
                v += res[n, k, i, j0 + p]
            if relu and v < 0:
                y[n, k, i, j0 + p] = 0
            else:
                y[n, k, i, j0 + p] = v


# -- dense and grouped convolution -------------------------------------------------------------


@kernel
def _conv_dense(xh, wt, bias, res, y, cg, r_, s_, sh, sw, dh, dw, block, tiles_per_task, weights_outer, has_res, relu):
    """y = conv(x, w) from the packed input xh (N, G, Hp, Wp*Cg) and weights wt (G, Kgp, R*S*Cg).

    One task: an image, a group, an output row, ``block`` output columns of it and
    ``tiles_per_task`` output-channel tiles.  Consecutive tasks (one thread's share) keep either
    their weights (``weights_outer``: big weights, small images) or their input block in cache.
    """
    n_, groups, _, _ = xh.shape
    kg_padded = wt.shape[1]
    _, k_all, oh, ow = y.shape
    kg = k_all // groups
    # A dot product runs along (s, c) of one kernel row; with width dilation only along c.
    runs = r_ if dw == 1 else r_ * s_
    length = s_ * cg if dw == 1 else cg
    tiles = kg_padded // TILE_CHANNELS
    chunks = (tiles + tiles_per_task - 1) // tiles_per_task
    blocks = (ow + block - 1) // block
    places = oh * blocks  # (row, column block) pairs
    zero = np.zeros(1, y.dtype)[0]
    for task in prange(n_ * groups * chunks * places):
        if weights_outer:
            place, chunk = task % places, (task // places) % chunks
        else:
            chunk, place = task % chunks, (task // chunks) % places
        g = (task // (chunks * places)) % groups
        n = task // (chunks * places * groups)
        i, col0 = place // blocks, (place % blocks) * block
        for tile in range(chunk * tiles_per_task, min(tiles, (chunk + 1) * tiles_per_task)):
            k0 = tile * TILE_CHANNELS
            w_k = wt[g, k0 : k0 + TILE_CHANNELS]
            for j0 in range(col0, min(col0 + block, ow), TILE_PIXELS):
                # A last tile short of pixels recomputes the last column instead of branching.
                j1, j2, j3 = min(j0 + 1, ow - 1), min(j0 + 2, ow - 1), min(j0 + 3, ow - 1)
                acc = _zeros16(zero)
                for run in range(runs):
                    r, s = (run, 0) if dw == 1 else (run // s_, run % s_)
                    row = xh[n, g, i * sh + r * dh]
                    c0 = (j0 * sw + s * dw) * cg
                    c1 = (j1 * sw + s * dw) * cg
                    c2 = (j2 * sw + s * dw) * cg
                    c3 = (j3 * sw + s * dw) * cg
                    o = (r * s_ + s) * cg
                    acc = _dot4x4(
                        row[c0 : c0 + length],
                        row[c1 : c1 + length],
                        row[c2 : c2 + length],
                        row[c3 : c3 + length],
                        w_k[0, o : o + length],
                        w_k[1, o : o + length],
                        w_k[2, o : o + length],
                        w_k[3, o : o + length],
                        length,
                        acc,
                    )
                _store4x4(y, bias, res, n, g * kg + k0, kg - k0, i, j0, ow - j0, acc, has_res, relu)


@kernel
def _conv_windows(xh, wt, bias, res, y, cg, r_, s_, sh, sw, dh, dw, k_chunk, has_res, relu):
    """Same result as _conv_dense: gather each output row's windows into a contiguous
    (OW, R*S*Cg) block, then one dot product per window and output channel.  Each product runs
    over a whole window, so its vector accumulators are summed across lanes once per window,
    not once per kernel row.  The block's rows (and wt's) are padded with zeros to whole
    vectors, so no dot product has a scalar tail.

    One task: an image, a group, an output row and ``k_chunk`` output channels (all of them
    unless the weights would not stay in cache; the rows then run inside a chunk).
    """
    n_, groups, _, _ = xh.shape
    kg_padded, row_len = wt.shape[1], wt.shape[2]
    _, k_all, oh, ow = y.shape
    kg = k_all // groups
    run = s_ * cg
    chunks = (kg_padded + k_chunk - 1) // k_chunk
    zero = np.zeros(1, y.dtype)[0]
    for task in prange(n_ * groups * chunks * oh):
        i = task % oh
        chunk = (task // oh) % chunks
        g = (task // (oh * chunks)) % groups
        n = task // (oh * chunks * groups)
        windows = np.zeros((ow, row_len), y.dtype)
        for j in range(ow):
            for r in range(r_):
                row = xh[n, g, i * sh + r * dh]
                if dw == 1:  # the kernel row's (s, c) are one run of the input row
                    src = j * sw * cg
                    windows[j, r * run : (r + 1) * run] = row[src : src + run]
                else:
                    for s in range(s_):
                        src = (j * sw + s * dw) * cg
                        dst = (r * s_ + s) * cg
                        windows[j, dst : dst + cg] = row[src : src + cg]
        for k0 in range(chunk * k_chunk, min(kg_padded, (chunk + 1) * k_chunk), TILE_CHANNELS):
            w_k = wt[g, k0 : k0 + TILE_CHANNELS]
            for j0 in range(0, ow, TILE_PIXELS):
                j1, j2, j3 = min(j0 + 1, ow - 1), min(j0 + 2, ow - 1), min(j0 + 3, ow - 1)
                acc = _dot4x4(
                    windows[j0],
                    windows[j1],
                    windows[j2],
                    windows[j3],
                    w_k[0],
                    w_k[1],
                    w_k[2],
                    w_k[3],
                    row_len,
                    _zeros16(zero),
                )
                _store4x4(y, bias, res, n, g * kg + k0, kg - k0, i, j0, ow - j0, acc, has_res, relu)


# -- depthwise convolution ---------------------------------------------------------------------


@inline
def _depthwise_flat(src, taps, oh, ow, pt, pl, dh, dw, acc):
    """Stride 1: acc[i * pitch + j] = output (i, j), for pitch = the padded row width.

    In a zero-padded copy of the plane, tap (r, s) of output (i, j) is cell i * pitch + j +
    (r * dh * pitch + s * dw): every tap is one long contiguous multiply-add over the whole
    plane (the columns j >= ow in between are computed and ignored).
    """
    h, w = src.shape
    r_, s_ = taps.shape
    pitch = ow + (s_ - 1) * dw
    padded = np.zeros((oh + (r_ - 1) * dh) * pitch, acc.dtype)
    for ih in range(h):
        padded[(ih + pt) * pitch + pl : (ih + pt) * pitch + pl + w] = src[ih]
    count = (oh - 1) * pitch + ow
    acc[:count] = 0
    for r in range(r_):
        for s in range(s_):
            wv = taps[r, s]
            off = r * dh * pitch + s * dw
            cells = padded[off : off + count]
            for q in range(count):
                acc[q] += wv * cells[q]
    return pitch


@inline
def _depthwise_rows(src, taps, oh, ow, sh, sw, pt, pl, dh, dw, acc):
    """Any stride: acc[i * ow + j] = output (i, j), a row and a tap at a time; the padding is
    never materialised (for each tap, the columns whose input cell exists are one range)."""
    h, w = src.shape
    r_, s_ = taps.shape
    acc[: oh * ow] = 0
    for i in range(oh):
        out = acc[i * ow : (i + 1) * ow]
        for r in range(r_):
            ih = i * sh + r * dh - pt
            if ih < 0 or ih >= h:
                continue
            row = src[ih]
            for s in range(s_):
                off = s * dw - pl
                j_lo = 0 if off >= 0 else (sw - 1 - off) // sw
                j_hi = min(ow, (w - 1 - off) // sw + 1)
                if j_hi <= j_lo:
                    continue
                # Slices indexed from 0: numba then needs no negative-index fix-up, and LLVM
                # vectorises the loop.
                dst = out[j_lo:j_hi]
                cells = row[j_lo * sw + off : (j_hi - 1) * sw + off + 1 : sw]
                wv = taps[r, s]
                for t in range(j_hi - j_lo):
                    dst[t] += wv * cells[t]
    return ow


@kernel
def _conv_depthwise(x, weight, bias, res, y, sh, sw, pt, pl, dh, dw, has_res, relu):
    """y[n, k] = sum over taps of weight[k, 0, r, s] * x[n, k // m] window, m = K / C.

    One task: an output plane, accumulated in a cached buffer one tap at a time, so the inner
    loop runs along contiguous memory.
    """
    n_, c_all, _, _ = x.shape
    k_all, _, r_, s_ = weight.shape
    _, _, oh, ow = y.shape
    m = k_all // c_all
    size = oh * (ow + (s_ - 1) * dw)
    for plane in prange(n_ * k_all):
        n, k = plane // k_all, plane % k_all
        acc = np.empty(size, y.dtype)
        if sh == 1 and sw == 1:
            pitch = _depthwise_flat(x[n, k // m], weight[k, 0], oh, ow, pt, pl, dh, dw, acc)
        else:
            pitch = _depthwise_rows(x[n, k // m], weight[k, 0], oh, ow, sh, sw, pt, pl, dh, dw, acc)
        b = bias[k]
        for i in range(oh):
            out, row = y[n, k, i], acc[i * pitch : i * pitch + ow]
            if has_res:
                extra = res[n, k, i]
                for j in range(ow):
                    row[j] += extra[j]
            for j in range(ow):
                v = row[j] + b
                if relu and v < 0:  # NaN stays
                    out[j] = 0
                else:
                    out[j] = v


# -- entry point -------------------------------------------------------------------------------

#: Output columns per task when an output row is long (a 1x1 convolution's single row).
BLOCK_PIXELS = 48
#: Vector length the windows kernel pads its rows to.
VECTOR = 16


def _frozen(a: np.ndarray) -> np.ndarray:
    """Packed arrays reach the kernels read-only, like the caller's (one numba type each)."""
    a.flags.writeable = False
    return a


def conv2d(p, x, weight, bias, res, has_res, relu):
    """Run problem ``p``; bias and res are always arrays (zeros / a dummy when absent)."""
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = p.stride, p.dilation, p.padding
    y = np.empty(p.output_shape, p.dtype)
    if p.depthwise:
        _conv_depthwise(x, weight, bias, res, y, sh, sw, pt, pl, dh, dw, has_res, relu)
        return y
    kg_padded = -(-p.kg // TILE_CHANNELS) * TILE_CHANNELS
    run = p.s * p.cg if dw == 1 else p.cg
    if p.r * p.s > 1 and run < MIN_RUN:
        row_len = -(-p.cg * p.r * p.s // VECTOR) * VECTOR
        xh = np.empty((p.n, p.groups, p.h + pt + pb, (p.w + pl + pr) * p.cg), p.dtype)
        wt = np.empty((p.groups, kg_padded, row_len), p.dtype)
        _pack(x, weight, p.groups, pt, pl, xh, wt)
        item = np.dtype(p.dtype).itemsize
        k_chunk = max(TILE_CHANNELS, WEIGHT_BYTES // (row_len * item) // TILE_CHANNELS * TILE_CHANNELS)
        _conv_windows(_frozen(xh), _frozen(wt), bias, res, y, p.cg, p.r, p.s, sh, sw, dh, dw, k_chunk, has_res, relu)
        return y
    out = y
    if p.r * p.s == 1 and not any(p.padding):
        # A 1x1 convolution is a matrix product: the pixels it reads as one long row.  Its
        # weights are already in the packed layout, short of the zero rows of a last tile.
        wt = weight.reshape(p.groups, p.kg, p.cg)
        if kg_padded != p.kg:
            wt = np.zeros((p.groups, kg_padded, p.cg), p.dtype)
            wt[:, : p.kg] = weight.reshape(p.groups, p.kg, p.cg)
            wt = _frozen(wt)
        xh = np.empty((p.n, p.groups, 1, p.oh * p.ow * p.cg), p.dtype)
        _pack_pixels(x, p.groups, sh, sw, xh)
        out = y.reshape(p.n, p.k, 1, p.oh * p.ow)
        sh = sw = 1
    else:
        xh = np.empty((p.n, p.groups, p.h + pt + pb, (p.w + pl + pr) * p.cg), p.dtype)
        wt = np.empty((p.groups, kg_padded, p.cg * p.r * p.s), p.dtype)
        _pack(x, weight, p.groups, pt, pl, xh, wt)
        wt = _frozen(wt)
    ow = out.shape[3]
    block = ow if ow <= 2 * BLOCK_PIXELS else BLOCK_PIXELS
    tiles_per_task = TILES_PER_TASK
    # Weights first when one task's weights outweigh its input rows: they then stay in cache
    # while the rows stream past.
    weights_outer = tiles_per_task * TILE_CHANNELS * p.r * p.s > block * p.r
    _conv_dense(
        _frozen(xh),
        wt,
        bias,
        res,
        out,
        p.cg,
        p.r,
        p.s,
        sh,
        sw,
        dh,
        dw,
        block,
        tiles_per_task,
        weights_outer,
        has_res,
        relu,
    )
    return y
