"""Numba-CUDA kernels: convolution (direct and implicit GEMM), pooling, batch norm, relu.

Every kernel takes device arrays in (N, C, H, W) order and writes a fresh output.  Elementwise and
pooling kernels use grid-stride loops, so any size runs with a bounded grid.  Padding is never
materialised: ``_src`` maps a padded coordinate to the input one (or -1 for a zero), which is
also how the reflect / replicate / circular modes run on the device without a padded copy.

The implicit GEMM sees convolution as ``Y[k, pixel] = sum_q W[k, q] * X_col[q, pixel]`` per group,
with q = (channel, kernel row, kernel column).  A block of TY x TX threads computes a BM x BN tile
of Y; each step stages a BK-deep slice of W and of the (never stored) im2col matrix in shared
memory, gathering the latter straight from the input, and every thread accumulates a
(BM / TY) x (BN / TX) sub-tile in registers.  The tile shape is a factory argument: the simulator
tests run the same code on small tiles.
"""

from __future__ import annotations

import math

from numba import cuda, float32, float64

PAD_MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}
NUMBA_TYPES = {"float32": float32, "float64": float64}


@cuda.jit(device=True, inline=True)
def _src(i, size, mode):
    """Input index of padded coordinate ``i`` (in [-pad, size + pad)), or -1 for a zero."""
    if i >= 0 and i < size:
        return i
    if mode == 0:
        return -1
    if mode == 1:  # reflect, without repeating the edge (padding < size)
        return -i if i < 0 else 2 * (size - 1) - i
    if mode == 2:  # replicate the edge
        return 0 if i < 0 else size - 1
    return i + size if i < 0 else i - size  # circular (padding <= size)


# -- convolution ---------------------------------------------------------------------------------


@cuda.jit
def conv_direct(x, w, bias, res, y, sh, sw, pt, pl, dh, dw, groups, mode, has_res, do_relu):
    """One thread per output element; the whole reduction in a register."""
    n_, _, h, wd = x.shape
    k_, cg, r_, s_ = w.shape
    _, _, oh, ow = y.shape
    kg = k_ // groups
    total = n_ * k_ * oh * ow
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        ox = t % ow
        q = t // ow
        oy = q % oh
        q //= oh
        k = q % k_
        n = q // k_
        c0 = (k // kg) * cg
        acc = bias[k]
        for ci in range(cg):
            for ry in range(r_):
                iy = _src(oy * sh - pt + ry * dh, h, mode)
                if iy < 0:
                    continue
                for sx in range(s_):
                    ix = _src(ox * sw - pl + sx * dw, wd, mode)
                    if ix >= 0:
                        acc += x[n, c0 + ci, iy, ix] * w[k, ci, ry, sx]
        if has_res:
            acc += res[n, k, oy, ox]
        # Tested as acc < 0 so that NaN passes through, as torch.relu does.
        if do_relu and acc < 0:
            y[n, k, oy, ox] = 0
        else:
            y[n, k, oy, ox] = acc


_gemm_cache: dict = {}


def conv_gemm(dtype: str, tile: tuple[int, int, int, int, int]):
    """The implicit-GEMM kernel for ``dtype`` and tile (BM, BN, BK, TY, TX), compiled once each."""
    key = (dtype, tile)
    if key not in _gemm_cache:
        _gemm_cache[key] = _make_gemm(NUMBA_TYPES[dtype], *tile)
    return _gemm_cache[key]


def _make_gemm(nbtype, BM, BN, BK, TY, TX):
    TM, TN = BM // TY, BN // TX
    NT = TY * TX

    @cuda.jit
    def kernel(x, w, bias, res, y, sh, sw, pt, pl, dh, dw, groups, mode, has_res, do_relu):
        a_tile = cuda.shared.array((BK, BM), nbtype)  # a_tile[q, m] = W[m0 + m, k0 + q]
        b_tile = cuda.shared.array((BK, BN), nbtype)  # b_tile[q, j] = X_col[k0 + q, j0 + j]
        acc = cuda.local.array((TM, TN), nbtype)
        n_, _, h, wd = x.shape
        k_, cg, r_, s_ = w.shape
        _, _, oh, ow = y.shape
        kg = k_ // groups
        g = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        j0 = cuda.blockIdx.x * BN
        ty = cuda.threadIdx.y
        tx = cuda.threadIdx.x
        tid = ty * TX + tx
        rs = r_ * s_
        depth = cg * rs
        plane = oh * ow
        pixels = n_ * plane
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        for k0 in range(0, depth, BK):
            # W is read along q (contiguous in memory) by neighbouring threads.
            for e in range(tid, BM * BK, NT):
                q = e % BK
                m = e // BK
                gm = m0 + m
                gq = k0 + q
                if gm < kg and gq < depth:
                    rem = gq % rs
                    a_tile[q, m] = w[g * kg + gm, gq // rs, rem // s_, rem % s_]
                else:
                    a_tile[q, m] = 0
            # The im2col slice, gathered from x: neighbouring threads read neighbouring pixels.
            for e in range(tid, BN * BK, NT):
                j = e % BN
                q = e // BN
                gj = j0 + j
                gq = k0 + q
                b_tile[q, j] = 0
                if gj < pixels and gq < depth:
                    rem = gq % rs
                    img = gj // plane
                    pix = gj % plane
                    iy = _src((pix // ow) * sh - pt + (rem // s_) * dh, h, mode)
                    ix = _src((pix % ow) * sw - pl + (rem % s_) * dw, wd, mode)
                    if iy >= 0 and ix >= 0:
                        b_tile[q, j] = x[img, g * cg + gq // rs, iy, ix]
            cuda.syncthreads()
            for q in range(BK):
                for i in range(TM):
                    a = a_tile[q, ty * TM + i]
                    for j in range(TN):
                        acc[i, j] += a * b_tile[q, tx + j * TX]
            cuda.syncthreads()
        for i in range(TM):
            gm = m0 + ty * TM + i
            if gm >= kg:
                continue
            k = g * kg + gm
            for j in range(TN):
                gj = j0 + tx + j * TX
                if gj >= pixels:
                    continue
                img = gj // plane
                pix = gj % plane
                oy = pix // ow
                ox = pix % ow
                v = acc[i, j] + bias[k]
                if has_res:
                    v += res[img, k, oy, ox]
                if do_relu and v < 0:
                    y[img, k, oy, ox] = 0
                else:
                    y[img, k, oy, ox] = v

    return kernel


# -- pooling -------------------------------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def _nchw(t, c_, oh, ow):
    """Output element t of an (n, c, oh, ow) array as its four indices (grid-stride pooling)."""
    plane = t // (ow * oh)
    return plane // c_, plane % c_, (t // ow) % oh, t % ow


@cuda.jit
def max_pool(x, y, kh, kw, sh, sw, ph, pw, dh, dw):
    n_, c_, h, wd = x.shape
    _, _, oh, ow = y.shape
    for t in range(cuda.grid(1), n_ * c_ * oh * ow, cuda.gridsize(1)):
        n, c, i, j = _nchw(t, c_, oh, ow)
        m = -math.inf
        for r in range(kh):
            iy = i * sh - ph + r * dh
            if iy < 0 or iy >= h:
                continue
            for s in range(kw):
                ix = j * sw - pw + s * dw
                if ix >= 0 and ix < wd:
                    v = x[n, c, iy, ix]
                    if v > m or v != v:  # NaN wins and stays
                        m = v
                        if v != v:
                            break
        y[n, c, i, j] = m


@cuda.jit
def avg_pool(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    n_, c_, h, wd = x.shape
    _, _, oh, ow = y.shape
    for t in range(cuda.grid(1), n_ * c_ * oh * ow, cuda.gridsize(1)):
        n, c, i, j = _nchw(t, c_, oh, ow)
        h0 = i * sh - ph
        w0 = j * sw - pw
        # The window clipped to the padded input (ceil mode may hang past it), then to the input.
        h1 = min(h0 + kh, h + ph)
        w1 = min(w0 + kw, wd + pw)
        ha, hb = max(h0, 0), min(h1, h)
        wa, wb = max(w0, 0), min(w1, wd)
        acc = 0.0  # float64 sums: pooling is memory-bound, the precision is free
        for iy in range(ha, hb):
            for ix in range(wa, wb):
                acc += x[n, c, iy, ix]
        if divisor_override != 0:
            d = divisor_override
        elif count_include_pad:
            d = (h1 - h0) * (w1 - w0)
        else:
            d = (hb - ha) * (wb - wa)
        y[n, c, i, j] = acc / d


@cuda.jit
def adaptive_avg_pool(x, y):
    n_, c_, h, wd = x.shape
    _, _, oh, ow = y.shape
    for t in range(cuda.grid(1), n_ * c_ * oh * ow, cuda.gridsize(1)):
        n, c, i, j = _nchw(t, c_, oh, ow)
        ha, hb = (i * h) // oh, ((i + 1) * h + oh - 1) // oh
        wa, wb = (j * wd) // ow, ((j + 1) * wd + ow - 1) // ow
        acc = 0.0  # float64 sums: pooling is memory-bound, the precision is free
        for iy in range(ha, hb):
            for ix in range(wa, wb):
                acc += x[n, c, iy, ix]
        y[n, c, i, j] = acc / ((hb - ha) * (wb - wa))


# -- batch norm and relu -------------------------------------------------------------------------

STATS_THREADS = 256


def channel_stats(threads: int):
    """Per channel of x (N, C, L): mean and biased variance in float64, two passes (one block per
    channel; a one-pass sum of squares loses the variance when the mean is large)."""
    key = ("stats", threads)
    if key not in _gemm_cache:
        _gemm_cache[key] = _make_stats(threads)
    return _gemm_cache[key]


def _make_stats(NT):
    @cuda.jit
    def kernel(x, mean, var):
        part = cuda.shared.array(NT, float64)
        n_, _, l_ = x.shape
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        count = n_ * l_
        total = 0.0
        for e in range(tid, count, NT):
            total += x[e // l_, c, e % l_]
        part[tid] = total
        cuda.syncthreads()
        half = NT // 2
        while half > 0:
            if tid < half:
                part[tid] += part[tid + half]
            cuda.syncthreads()
            half //= 2
        m = part[0] / count
        cuda.syncthreads()
        squares = 0.0
        for e in range(tid, count, NT):
            d = x[e // l_, c, e % l_] - m
            squares += d * d
        part[tid] = squares
        cuda.syncthreads()
        half = NT // 2
        while half > 0:
            if tid < half:
                part[tid] += part[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            mean[c] = m
            var[c] = part[0] / count

    return kernel


@cuda.jit
def normalize(x, scale, shift, y):
    """y = x * scale[c] + shift[c] on flat (N * C * L) arrays: one multiply-add in the input dtype."""
    c_ = scale.shape[0]
    l_ = x.shape[2]
    n_ = x.shape[0]
    for t in range(cuda.grid(1), n_ * c_ * l_, cuda.gridsize(1)):
        c = (t // l_) % c_
        n = t // (l_ * c_)
        e = t % l_
        y[n, c, e] = x[n, c, e] * scale[c] + shift[c]


@cuda.jit
def relu(x, y):
    for t in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[t]
        if v < 0:
            y[t] = 0
        else:
            y[t] = v
