"""Numba pooling kernels: max, average and adaptive average, one task per image plane.

Max and average pooling work an output row at a time, one window tap at a time: for a tap the
output columns whose cell lies inside the input are one range, computed up front, so the inner
loop has no bounds test and vectorises along the row.  Padding is never materialised: max pooling
starts from -inf (the padding's value), average pooling from 0.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba_jit import kernel


@kernel
def _max_pool(x, y, kh, kw, sh, sw, ph, pw, dh, dw):
    n_, c_all, h, w = x.shape
    _, _, oh, ow = y.shape
    for plane in prange(n_ * c_all):
        src, dst = x[plane // c_all, plane % c_all], y[plane // c_all, plane % c_all]
        for i in range(oh):
            out = dst[i]
            out[:] = -np.inf
            for r in range(kh):
                ih = i * sh - ph + r * dh
                if ih < 0 or ih >= h:
                    continue
                row = src[ih]
                for s in range(kw):
                    off = s * dw - pw
                    # Columns j whose cell j*sw + off lies in [0, w).
                    j_lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    j_hi = min(ow, (w - 1 - off) // sw + 1)
                    if j_hi <= j_lo:
                        continue
                    # Slices indexed from 0: no negative-index fix-up, so LLVM vectorises.
                    part = out[j_lo:j_hi]
                    cells = row[j_lo * sw + off : (j_hi - 1) * sw + off + 1 : sw]
                    for t in range(j_hi - j_lo):
                        v, best = cells[t], part[t]
                        # v != v: a NaN wins and then stays (NaN > x is false), as in torch.
                        part[t] = v if (v > best or v != v) else best


@kernel
def _avg_pool(x, y, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override):
    """divisor_override 0 means none (0 is not a valid override)."""
    n_, c_all, h, w = x.shape
    _, _, oh, ow = y.shape
    for plane in prange(n_ * c_all):
        src, dst = x[plane // c_all, plane % c_all], y[plane // c_all, plane % c_all]
        for i in range(oh):
            out = dst[i]
            out[:] = 0
            h0 = i * sh - ph
            for ih in range(max(h0, 0), min(h0 + kh, h)):
                row = src[ih]
                for s in range(kw):
                    off = s - pw
                    j_lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    j_hi = min(ow, (w - 1 - off) // sw + 1)
                    if j_hi <= j_lo:
                        continue
                    part = out[j_lo:j_hi]  # as in _max_pool
                    cells = row[j_lo * sw + off : (j_hi - 1) * sw + off + 1 : sw]
                    for t in range(j_hi - j_lo):
                        part[t] += cells[t]
            # torch's divisor: the window clipped to the padded input (a ceil-mode overhang
            # never counts), and to the input itself without count_include_pad.
            h1 = min(h0 + kh, h + ph)
            rows = (h1 - h0) if count_include_pad else (min(h1, h) - max(h0, 0))
            for j in range(ow):
                w0 = j * sw - pw
                w1 = min(w0 + kw, w + pw)
                cols = (w1 - w0) if count_include_pad else (min(w1, w) - max(w0, 0))
                divisor = divisor_override if divisor_override != 0 else rows * cols
                out[j] /= divisor


@kernel
def _adaptive_avg_pool(x, y, h, w, oh, ow):
    """x (planes, H*W), y (planes, OH*OW): output bin (i, j) averages rows floor(i*H/OH) ..
    ceil((i+1)*H/OH) (exclusive), and the same for columns."""
    for plane in prange(x.shape[0]):
        src, dst = x[plane], y[plane]
        for i in range(oh):
            h0, h1 = (i * h) // oh, ((i + 1) * h + oh - 1) // oh
            for j in range(ow):
                w0, w1 = (j * w) // ow, ((j + 1) * w + ow - 1) // ow
                total = 0.0  # float64, whatever the input's dtype
                if w0 == 0 and w1 == w:  # whole rows (global pooling): one contiguous run
                    cells = src[h0 * w : h1 * w]
                    for t in range((h1 - h0) * w):
                        total += cells[t]
                else:
                    for ih in range(h0, h1):
                        cells = src[ih * w + w0 : ih * w + w1]
                        for t in range(w1 - w0):
                            total += cells[t]
                dst[i * ow + j] = total / ((h1 - h0) * (w1 - w0))


@kernel
def _max_pool_indices(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """Each output's window scanned row-major as torch scans it: a later tap wins when strictly
    greater or NaN; the first tap inside the input is where an all -inf window's max is."""
    n_, c_all, h, w = x.shape
    _, _, oh, ow = y.shape
    for plane in prange(n_ * c_all):
        src = x[plane // c_all, plane % c_all]
        dst, where = y[plane // c_all, plane % c_all], idx[plane // c_all, plane % c_all]
        for i in range(oh):
            top = i * sh - ph
            r0 = 0 if top >= 0 else (-top + dh - 1) // dh
            for j in range(ow):
                left = j * sw - pw
                s0 = 0 if left >= 0 else (-left + dw - 1) // dw
                best = -np.inf
                at = (top + r0 * dh) * w + left + s0 * dw
                for r in range(r0, kh):
                    ih = top + r * dh
                    if ih >= h:
                        break
                    for s in range(s0, kw):
                        iw = left + s * dw
                        if iw >= w:
                            break
                        v = src[ih, iw]
                        if v > best or v != v:
                            best = v
                            at = ih * w + iw
                dst[i, j] = best
                where[i, j] = at


@kernel
def _adaptive_max_pool(x, y, idx, h, w, oh, ow):
    """x (planes, H*W), y and idx (planes, OH*OW): each bin (adaptive_avg_pool2d's) scanned as
    _max_pool_indices scans a window."""
    for plane in prange(x.shape[0]):
        src = x[plane]
        for i in range(oh):
            h0, h1 = (i * h) // oh, ((i + 1) * h + oh - 1) // oh
            for j in range(ow):
                w0, w1 = (j * w) // ow, ((j + 1) * w + ow - 1) // ow
                best = -np.inf
                at = h0 * w + w0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = src[ih * w + iw]
                        if v > best or v != v:
                            best = v
                            at = ih * w + iw
                y[plane, i * ow + j] = best
                idx[plane, i * ow + j] = at


def adaptive_max_pool2d(p, x):
    y = np.empty(p.output_shape, p.dtype)
    idx = np.empty(p.output_shape, np.int64)
    _adaptive_max_pool(
        x.reshape(p.n * p.c, p.h * p.w),
        y.reshape(p.n * p.c, p.oh * p.ow),
        idx.reshape(p.n * p.c, p.oh * p.ow),
        p.h,
        p.w,
        p.oh,
        p.ow,
    )
    return (y, idx) if p.return_indices else y


def max_pool2d_with_indices(p, x):
    y = np.empty(p.output_shape, p.dtype)
    idx = np.empty(p.output_shape, np.int64)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    _max_pool_indices(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw)
    return y, idx


def max_pool2d(p, x):
    y = np.empty(p.output_shape, p.dtype)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    _max_pool(x, y, kh, kw, sh, sw, ph, pw, dh, dw)
    return y


def avg_pool2d(p, x):
    y = np.empty(p.output_shape, p.dtype)
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    _avg_pool(x, y, kh, kw, sh, sw, ph, pw, p.count_include_pad, p.divisor_override or 0)
    return y


def adaptive_avg_pool2d(p, x):
    y = np.empty(p.output_shape, p.dtype)
    _adaptive_avg_pool(x.reshape(p.n * p.c, p.h * p.w), y.reshape(p.n * p.c, p.oh * p.ow), p.h, p.w, p.oh, p.ow)
    return y
