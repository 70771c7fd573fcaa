"""Numba backward kernels.  Every parallel loop owns what it writes: conv backward-data runs one
task per input plane (n, c), gathering from every output channel of its group; backward-weight
one task per weight slice (k, c), summing over the images; pooling one task per plane; batch
norm one per channel.  So no two threads ever add into the same element, and no locks or
per-thread copies are needed.

Within a task the loops run along output rows over the column range whose tap lies inside the
input (computed up front), so the innermost loop has no bounds test and vectorises.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._bwd_common import as_ncl, empty_batch_norm_grads, fold_padding, pad_input, zero_padded
from ._numba_jit import kernel


@kernel
def _conv_bwd_data(gy, w, gx, groups, sh, sw, pt, pl, dh, dw):
    n_, c_all, h, wd = gx.shape
    _, k_all, oh, ow = gy.shape
    cg, kg, r_, s_ = c_all // groups, k_all // groups, w.shape[2], w.shape[3]
    for task in prange(n_ * c_all):
        n, c = task // c_all, task % c_all
        g, cl = c // cg, c % cg
        dst = gx[n, c]
        dst[:, :] = 0
        for k in range(g * kg, (g + 1) * kg):
            src = gy[n, k]
            for r in range(r_):
                for s in range(s_):
                    wv = w[k, cl, r, s]
                    off = s * dw - pl
                    j_lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    j_hi = min(ow, (wd - 1 - off) // sw + 1)
                    for i in range(oh):
                        ih = i * sh - pt + r * dh
                        if ih < 0 or ih >= h:
                            continue
                        row, out = src[i], dst[ih]
                        for j in range(j_lo, j_hi):
                            out[j * sw + off] += wv * row[j]


@kernel
def _conv_bwd_weight(x, gy, gw, groups, sh, sw, pt, pl, dh, dw, nonfinite):
    """nonfinite[k]: whether gy[:, k] holds a NaN or inf; padded taps are skipped, so for those
    channels the taps that fall on the padding are checked apart (padding is zeros, and a NaN or
    inf gradient meeting one makes NaN, as in torch)."""
    n_, c_all, h, wd = x.shape
    _, k_all, oh, ow = gy.shape
    cg, kg, r_, s_ = c_all // groups, k_all // groups, gw.shape[2], gw.shape[3]
    for task in prange(k_all * cg):
        k, cl = task // cg, task % cg
        c = (k // kg) * cg + cl
        for r in range(r_):
            for s in range(s_):
                off = s * dw - pl
                j_lo = 0 if off >= 0 else (sw - 1 - off) // sw
                j_hi = min(ow, (wd - 1 - off) // sw + 1)
                acc = 0.0
                for n in range(n_):
                    for i in range(oh):
                        ih = i * sh - pt + r * dh
                        if ih < 0 or ih >= h:
                            continue
                        row, cells = gy[n, k, i], x[n, c, ih]
                        for j in range(j_lo, j_hi):
                            acc += row[j] * cells[j * sw + off]
                if nonfinite[k]:
                    for n in range(n_):
                        for i in range(oh):
                            ih = i * sh - pt + r * dh
                            for j in range(ow):
                                padded = ih < 0 or ih >= h or j < j_lo or j >= j_hi
                                if padded and not np.isfinite(gy[n, k, i, j]):
                                    acc = np.nan
                gw[k, cl, r, s] = acc


@kernel
def _max_pool_bwd(x, gy, gx, kh, kw, sh, sw, ph, pw, dh, dw):
    n_, c_all, h, w = x.shape
    _, _, oh, ow = gy.shape
    for plane in prange(n_ * c_all):
        n, c = plane // c_all, plane % c_all
        src, g, dst = x[n, c], gy[n, c], gx[n, c]
        dst[:, :] = 0
        for i in range(oh):
            h0 = i * sh - ph
            while h0 < 0:
                h0 += dh
            h1 = min(i * sh - ph + (kh - 1) * dh + 1, h)
            for j in range(ow):
                w0 = j * sw - pw
                while w0 < 0:
                    w0 += dw
                w1 = min(j * sw - pw + (kw - 1) * dw + 1, w)
                if h0 >= h1 or w0 >= w1:  # dilation steps over the input: every tap is padding
                    continue
                # torch's scan: from the first tap inside the input, every larger value and every NaN.
                bi, bj, best = h0, w0, -np.inf
                for ih in range(h0, h1, dh):
                    for iw in range(w0, w1, dw):
                        v = src[ih, iw]
                        if v > best or v != v:
                            bi, bj, best = ih, iw, v
                dst[bi, bj] += g[i, j]


@kernel
def _avg_pool_bwd(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    n_, c_all, h, w = gx.shape
    _, _, oh, ow = gy.shape
    for plane in prange(n_ * c_all):
        n, c = plane // c_all, plane % c_all
        g, dst = gy[n, c], gx[n, c]
        dst[:, :] = 0
        for i in range(oh):
            h0 = i * sh - ph
            h1 = min(h0 + kh, h + ph)
            a0, a1 = max(h0, 0), min(h1, h)
            for j in range(ow):
                w0 = j * sw - pw
                w1 = min(w0 + kw, w + pw)
                b0, b1 = max(w0, 0), min(w1, w)
                if divisor_override != 0:
                    div = divisor_override
                elif count_include_pad:
                    div = (h1 - h0) * (w1 - w0)
                else:
                    div = (a1 - a0) * (b1 - b0)
                if a1 <= a0 or b1 <= b0:
                    continue
                share = g[i, j] / div
                for ih in range(a0, a1):
                    for iw in range(b0, b1):
                        dst[ih, iw] += share


@kernel
def _adaptive_avg_pool_bwd(gy, gx):
    n_, c_all, h, w = gx.shape
    _, _, oh, ow = gy.shape
    for plane in prange(n_ * c_all):
        n, c = plane // c_all, plane % c_all
        g, dst = gy[n, c], gx[n, c]
        dst[:, :] = 0
        for i in range(oh):
            h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            for j in range(ow):
                w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
                share = g[i, j] / (h1 - h0) / (w1 - w0)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        dst[ih, iw] += share


@kernel
def _batch_norm_bwd(x, gy, mean, var, weight, eps, training, gx, gw, gb):
    n_, c_all, l_ = x.shape
    count = n_ * l_
    for c in prange(c_all):
        m, inv_std = mean[c], 1.0 / math.sqrt(var[c] + eps)
        sdy, sdyx = 0.0, 0.0
        for n in range(n_):
            for i in range(l_):
                d = np.float64(gy[n, c, i])
                sdy += d
                sdyx += d * (np.float64(x[n, c, i]) - m)
        gb[c], gw[c] = sdy, sdyx * inv_std
        scale = weight[c] * inv_std
        shift = sdy / count if training and count > 0 else 0.0
        slope = sdyx * inv_std * inv_std / count if training and count > 0 else 0.0
        for n in range(n_):
            for i in range(l_):
                if training:
                    gx[n, c, i] = scale * (gy[n, c, i] - shift - (np.float64(x[n, c, i]) - m) * slope)
                else:  # eval: the statistics are constants, x does not enter (inf x: no NaN)
                    gx[n, c, i] = scale * gy[n, c, i]


@kernel
def _relu_bwd(y, gy, gx):
    for i in prange(y.size):
        gx[i] = 0 if y[i] <= 0 else gy[i]  # NaN: not <= 0, the gradient passes (torch)


def conv2d_bwd_data(p, grad_output, weight):
    q = zero_padded(p)
    gx = np.empty(q.input_shape, p.dtype)
    _conv_bwd_data(grad_output, weight, gx, q.groups, *q.stride, q.padding[0], q.padding[2], *q.dilation)
    return fold_padding(p, gx)


def conv2d_bwd_weight(p, x, grad_output):
    q = zero_padded(p)
    gw = np.empty(q.weight_shape, p.dtype)
    xp = np.ascontiguousarray(pad_input(p, x))
    nonfinite = ~np.isfinite(grad_output).all(axis=(0, 2, 3))
    _conv_bwd_weight(xp, grad_output, gw, q.groups, *q.stride, q.padding[0], q.padding[2], *q.dilation, nonfinite)
    gb = grad_output.sum(axis=(0, 2, 3), dtype=np.float64).astype(p.dtype) if p.bias else None
    return gw, gb


def max_pool2d_bwd_data(p, x, grad_output):
    gx = np.empty(p.input_shape, p.dtype)
    _max_pool_bwd(x, grad_output, gx, *p.kernel, *p.stride, *p.padding, *p.dilation)
    return gx


def avg_pool2d_bwd_data(p, grad_output):
    gx = np.empty(p.input_shape, p.dtype)
    _avg_pool_bwd(grad_output, gx, *p.kernel, *p.stride, *p.padding, p.count_include_pad, p.divisor_override or 0)
    return gx


def adaptive_avg_pool2d_bwd_data(p, grad_output):
    gx = np.empty(p.input_shape, p.dtype)
    if p.oh == 0 or p.ow == 0:
        gx[...] = 0
        return gx
    _adaptive_avg_pool_bwd(grad_output, gx)
    return gx


def batch_norm_bwd_data(p, x, grad_output, mean, var, weight):
    if p.count == 0:
        return empty_batch_norm_grads(p, x)
    x3, gy = np.ascontiguousarray(as_ncl(p, x)), np.ascontiguousarray(as_ncl(p, grad_output))
    gx = np.empty(x3.shape, p.dtype)
    gw, gb = np.empty(p.c), np.empty(p.c)
    stats = [np.ascontiguousarray(a, np.float64) for a in (mean, var, weight)]
    _batch_norm_bwd(x3, gy, *stats, float(p.eps), bool(p.training), gx, gw, gb)
    return gx.reshape(x.shape), gw.astype(p.dtype), gb.astype(p.dtype)


def relu_bwd_data(p, output, grad_output):
    gx = np.empty(p.shape, p.dtype)
    _relu_bwd(np.ascontiguousarray(output).reshape(-1), np.ascontiguousarray(grad_output).reshape(-1), gx.reshape(-1))
    return gx
