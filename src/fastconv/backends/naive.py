"""The specification: every op written as its formula, one output element at a time.

Read this module to know what an op means; every other backend is tested to agree with torch,
and this one is what "agree" looks like in plain Python.  Indices outside the input are the
padding: zero for convolution and average pooling, -inf for max pooling.  Pooling simply skips
them; convolution multiplies the zeros, as torch does (0 * NaN and 0 * inf are NaN).  Sums over
channels use ``np.dot`` on float64 copies, which keeps the reference accurate and small problems
fast enough to test; everything else is scalar Python.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import ops
from ..problem import ACTIVATIONS, adaptive_bins
from . import refuse_algorithm
from ._bwd_common import as_ncl, fold_padding, pad_input, zero_padded

NAME = "naive"
DEVICES = ("cpu",)
ALGORITHMS = {"conv2d": ("direct", "winograd")}
FUSED_EPILOGUE = True
FUSED_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a)

#: Python-level loop iterations above which the naive backend refuses (about ten seconds).
MAX_STEPS = 5_000_000


def available():
    return True, ""


def supports(p):
    why = refuse_algorithm(p, ALGORITHMS, NAME)
    if why:
        return why
    steps = ops.get(p).steps(p)  # the formula's loop count, from the op table
    if steps > MAX_STEPS:
        return f"too large for plain Python loops ({steps:,} steps > {MAX_STEPS:,})"
    return None


def conv2d(p, x, weight, bias, residual):
    """y[n,k,i,j] = act(bias[k] + residual[n,k,i,j]
                        + sum_{c,r,s} x[n, g*Cg + c, i*sh - pt + r*dh, j*sw - pl + s*dw] * w[k,c,r,s])

    where g = k // Kg is the group of output channel k and (c, r, s) runs over its Cg input
    channels and the kernel taps.  ``algorithm="winograd"`` computes the same sum through
    Winograd's transforms (``_winograd_conv2d``).
    """
    if p.algorithm == "winograd":
        return _winograd_conv2d(p, x, weight, bias, residual)
    x, weight = x.astype(np.float64), weight.astype(np.float64)
    (sh, sw), (dh, dw), (pt, _, pl, _) = p.stride, p.dilation, p.padding
    y = np.empty(p.output_shape, np.float64)
    zeros = np.zeros(p.cg)
    for n in range(p.n):
        for k in range(p.k):
            g = k // p.kg
            xg = x[n, g * p.cg : (g + 1) * p.cg]  # the input channels output channel k sees
            for i in range(p.oh):
                for j in range(p.ow):
                    total = 0.0 if bias is None else float(bias[k])
                    for r in range(p.r):
                        for s in range(p.s):
                            ih, iw = i * sh - pt + r * dh, j * sw - pl + s * dw
                            # Padding is zeros that multiply like any input: a NaN or inf weight
                            # on a padded tap makes NaN, as in torch.
                            xv = xg[:, ih, iw] if 0 <= ih < p.h and 0 <= iw < p.w else zeros
                            with np.errstate(invalid="ignore"):  # 0 * inf is NaN, as in torch
                                total += float(np.dot(xv, weight[k, :, r, s]))  # sum over c
                    if residual is not None:
                        total += float(residual[n, k, i, j])
                    y[n, k, i, j] = activate(p.activation, p.activation_params, total)
    return y.astype(p.dtype)


# Winograd F(4x4, 3x3) (Lavin & Gray 2016): a 4x4 block of outputs of a 3x3 convolution is
#   Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A
# where d_c is the 6x6 input tile under the block, g_c the 3x3 filter of channel c and *
# multiplies element by element: 36 multiplies per channel instead of 4 * 4 * 9 = 144.  The
# matrices come from polynomial interpolation at the points 0, 1, -1, 2, -2 and infinity.
WINOGRAD_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
WINOGRAD_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
WINOGRAD_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64
)


def _winograd_conv2d(p, x, weight, bias, residual):
    """conv2d for a 3x3 stride-1 kernel, one 4x4 output block at a time, by the formula above."""
    m = 4
    pt, _, pl, _ = p.padding
    rows, cols = -(-p.oh // m), -(-p.ow // m)  # blocks down and across (the last may overhang)
    # The zero-padded input, large enough for every block's 6x6 tile.
    xp = np.zeros((p.n, p.c, rows * m + 2, cols * m + 2))
    hh, ww = min(p.h, rows * m + 2 - pt), min(p.w, cols * m + 2 - pl)
    xp[:, :, pt : pt + hh, pl : pl + ww] = x[:, :, :hh, :ww]
    # Filters transformed once: u[k, c] = G g G^T.
    u = np.empty((p.k, p.cg, 6, 6))
    for k in range(p.k):
        for c in range(p.cg):
            u[k, c] = WINOGRAD_G @ weight[k, c].astype(np.float64) @ WINOGRAD_G.T
    y = np.empty(p.output_shape, np.float64)
    for n in range(p.n):
        for k in range(p.k):
            g = k // p.kg
            for bi in range(rows):
                for bj in range(cols):
                    i0, j0 = bi * m, bj * m
                    total = np.zeros((6, 6))
                    for c in range(p.cg):
                        d = xp[n, g * p.cg + c, i0 : i0 + 6, j0 : j0 + 6]
                        total += u[k, c] * (WINOGRAD_BT @ d @ WINOGRAD_BT.T)
                    block = WINOGRAD_AT @ total @ WINOGRAD_AT.T
                    h, w = min(m, p.oh - i0), min(m, p.ow - j0)  # the overhang is dropped
                    y[n, k, i0 : i0 + h, j0 : j0 + w] = block[:h, :w]
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    if residual is not None:
        y += residual
    if p.activation is not None:
        y = np.array([activate(p.activation, p.activation_params, v) for v in y.ravel().tolist()]).reshape(y.shape)
    return y.astype(p.dtype)


def _window_max(plane, taps):
    """(max, (ih, iw) where it is) over the window's taps inside the input, as torch scans them:
    row-major, a later value wins only if strictly greater or NaN (so the first of equal maxima
    and the last NaN); a window of -inf keeps its first tap."""
    best, where = -math.inf, None  # -inf: the padding's value
    for ih, iw in taps:
        v = plane[ih][iw]
        if where is None or v > best or v != v:  # v != v: NaN propagates, as in torch
            best, where = v, (ih, iw)
    return best, where


def _pool_taps(p, i, j):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    rows = [i * sh - ph + r * dh for r in range(kh)]
    cols = [j * sw - pw + s * dw for s in range(kw)]
    return [(ih, iw) for ih in rows if 0 <= ih < p.h for iw in cols if 0 <= iw < p.w]


def max_pool2d(p, x):
    """y[n,c,i,j] = max over taps (r, s) of x[n, c, i*sh - ph + r*dh, j*sw - pw + s*dw]; NaN wins."""
    return max_pool2d_with_indices(p, x)[0]


def max_pool2d_with_indices(p, x):
    """max_pool2d's y, and idx[n,c,i,j] = ih * W + iw of the tap y[n,c,i,j] came from."""
    xs = x.tolist()
    y = np.empty(p.output_shape, p.dtype)
    idx = np.empty(p.output_shape, np.int64)
    for n in range(p.n):
        for c in range(p.c):
            for i in range(p.oh):
                for j in range(p.ow):
                    taps = _pool_taps(p, i, j)
                    if taps:
                        y[n, c, i, j], (ih, iw) = _window_max(xs[n][c], taps)
                    else:  # padding and dilation can leave a window no tap inside the input
                        y[n, c, i, j], (ih, iw) = -math.inf, _first_tap_past_padding(p, i, j)
                    idx[n, c, i, j] = ih * p.w + iw
    return y, idx


def _first_tap_past_padding(p, i, j):
    """Where torch says the max of a window with no tap inside the input is: the window's first
    row and first column at index 0 or later (for such a window, past the input's end)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    ih = next(i * sh - ph + r * dh for r in range(kh) if i * sh - ph + r * dh >= 0)
    iw = next(j * sw - pw + s * dw for s in range(kw) if j * sw - pw + s * dw >= 0)
    return ih, iw


def adaptive_max_pool2d(p, x):
    """y[n,c,i,j] = max of x[n, c, bin_i, bin_j] (bins as adaptive_avg_pool2d's); with
    p.return_indices also where it is, as max_pool2d_with_indices."""
    xs = x.tolist()
    rows, cols = adaptive_bins(p.h, p.oh), adaptive_bins(p.w, p.ow)
    y = np.empty(p.output_shape, p.dtype)
    idx = np.empty(p.output_shape, np.int64)
    for n in range(p.n):
        for c in range(p.c):
            for i, (h0, h1) in enumerate(rows):
                for j, (w0, w1) in enumerate(cols):
                    taps = [(ih, iw) for ih in range(h0, h1) for iw in range(w0, w1)]
                    y[n, c, i, j], (ih, iw) = _window_max(xs[n][c], taps)
                    idx[n, c, i, j] = ih * p.w + iw
    return (y, idx) if p.return_indices else y


def avg_pool2d(p, x):
    """y[n,c,i,j] = sum of x over the window's cells inside the input / p.divisor(i, j)."""
    xs = x.tolist()
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    y = np.empty(p.output_shape, p.dtype)
    for n in range(p.n):
        for c in range(p.c):
            plane = xs[n][c]
            for i in range(p.oh):
                for j in range(p.ow):
                    total = 0.0
                    for ih in range(max(i * sh - ph, 0), min(i * sh - ph + kh, p.h)):
                        for iw in range(max(j * sw - pw, 0), min(j * sw - pw + kw, p.w)):
                            total += plane[ih][iw]
                    y[n, c, i, j] = total / p.divisor(i, j)
    return y


def adaptive_avg_pool2d(p, x):
    """y[n,c,i,j] = mean of x[n, c, bin_i, bin_j], bin i = [floor(i*H/OH), ceil((i+1)*H/OH))."""
    xs = x.tolist()
    rows, cols = adaptive_bins(p.h, p.oh), adaptive_bins(p.w, p.ow)
    y = np.empty(p.output_shape, p.dtype)
    for n in range(p.n):
        for c in range(p.c):
            plane = xs[n][c]
            for i, (h0, h1) in enumerate(rows):
                for j, (w0, w1) in enumerate(cols):
                    total = sum(plane[ih][iw] for ih in range(h0, h1) for iw in range(w0, w1))
                    y[n, c, i, j] = total / ((h1 - h0) * (w1 - w0))
    return y


def batch_norm(p, x, mean, var, weight, bias):
    """y[:, c] = (x[:, c] - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c].

    In training mode mean and var are the channel's own: the average and the biased variance
    of its N*L values.  Written as torch evaluates it, ``x * scale + (bias - mean * scale)`` with
    ``scale = weight / sqrt(var + eps)``: the same values up to rounding, and the same NaN when
    var + eps is 0 (eval mode allows eps=0).
    """
    y = np.empty(x.shape, p.dtype)
    if p.training:
        mean, var = np.empty(p.c), np.empty(p.c)
    for c in range(p.c):
        values = x[:, c, :].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # var + eps == 0, inf - inf: NaN
            if p.training:
                mean[c] = values.mean()
                var[c] = ((values - mean[c]) ** 2).mean()
            scale = np.float64(weight[c]) / np.sqrt(np.float64(var[c]) + p.eps)
            y[:, c, :] = values * scale + (bias[c] - mean[c] * scale)
    return y, mean, var


def relu(p, x):
    """y = x if x > 0 else 0, elementwise; NaN stays NaN."""
    values = [0.0 if v < 0 else v for v in x.ravel().tolist()]
    return np.array(values, dtype=p.dtype).reshape(x.shape)


def _sigmoid(v: float) -> float:
    # exp of a non-positive argument only: no overflow for large |v|
    e = math.exp(-abs(v)) if v == v else v
    return 1 / (1 + e) if v >= 0 else e / (1 + e)


def activate(kind, params, v: float) -> float:
    """One value through activation ``kind`` (None: unchanged), as torch.nn.functional writes it.

    Comparisons with NaN are false, so each branch below passes NaN through.
    """
    if kind is None:
        return v
    if kind == "relu":
        return 0.0 if v < 0 else v
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else params
        return lo if v < lo else hi if v > hi else v
    if kind == "leaky_relu":
        return v if v > 0 else v * params[0]
    if kind == "sigmoid":
        return _sigmoid(v)
    if kind == "silu":
        return v * _sigmoid(v)  # -inf * 0: NaN, as torch
    if kind == "hardswish":
        return v * min(max(v + 3, 0.0), 6.0) / 6 if v == v else v  # -inf * 0: NaN, as torch
    raise ValueError(f"unknown activation {kind!r}")


def activation(p, x):
    """y = activate(p.kind, p.params, x) elementwise."""
    values = [activate(p.kind, p.params, v) for v in x.ravel().tolist()]
    return np.array(values, dtype=p.dtype).reshape(x.shape)


def linear(p, x, weight, bias):
    """y[..., o] = bias[o] + sum_i x[..., i] * weight[o, i]."""
    rows = x.reshape(p.rows, p.in_features).astype(np.float64)
    w = weight.astype(np.float64)
    y = np.empty((p.rows, p.out_features), np.float64)
    for m in range(p.rows):
        for o in range(p.out_features):
            total = 0.0 if bias is None else float(bias[o])
            with np.errstate(invalid="ignore"):  # inf * 0, inf - inf: NaN, as torch
                for i in range(p.in_features):
                    total += rows[m, i] * w[o, i]
            y[m, o] = total
    return y.astype(p.dtype).reshape(p.output_shape)


# -- backward: each gradient as the chain rule writes it --------------------------------------
# Every forward term y[o] += a * b hands dy[o] * b to a's gradient and dy[o] * a to b's; the
# loops below are the forward's loops with that one line changed.


def _quiet_ieee(fn):
    """fn with NumPy's floating-point warnings off: inf and NaN inputs, or a variance of zero, give
    inf and NaN (inf - inf is NaN, 1 / 0 is inf) quietly, as torch's do."""

    @functools.wraps(fn)
    def run(*args):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args)

    return run


@_quiet_ieee
def conv2d_bwd_data(p, grad_output, weight):
    """dx[n, g*Cg + c, ih, iw] = sum over (k in group g, i, j, r, s) with ih = i*sh - pt + r*dh,
    iw = j*sw - pl + s*dw of dy[n,k,i,j] * w[k,c,r,s]."""
    q = zero_padded(p)
    gy, weight = grad_output.astype(np.float64), weight.astype(np.float64)
    (sh, sw), (dh, dw), (pt, _, pl, _) = q.stride, q.dilation, q.padding
    gx = np.zeros(q.input_shape, np.float64)
    for n in range(q.n):
        for k in range(q.k):
            g = k // q.kg
            gxg = gx[n, g * q.cg : (g + 1) * q.cg]  # the input channels output channel k saw
            for i in range(q.oh):
                for j in range(q.ow):
                    for r in range(q.r):
                        ih = i * sh - pt + r * dh
                        if not 0 <= ih < q.h:
                            continue
                        for s in range(q.s):
                            iw = j * sw - pl + s * dw
                            if 0 <= iw < q.w:
                                gxg[:, ih, iw] += gy[n, k, i, j] * weight[k, :, r, s]
    return fold_padding(p, gx).astype(p.dtype)


@_quiet_ieee
def conv2d_bwd_weight(p, x, grad_output):
    """dw[k,c,r,s] = sum over (n, i, j) of dy[n,k,i,j] * x[n, g*Cg + c, i*sh - pt + r*dh, j*sw - pl + s*dw];
    dbias[k] = sum over (n, i, j) of dy[n,k,i,j]."""
    q = zero_padded(p)
    x, gy = pad_input(p, x).astype(np.float64), grad_output.astype(np.float64)
    (sh, sw), (dh, dw), (pt, _, pl, _) = q.stride, q.dilation, q.padding
    gw = np.zeros(q.weight_shape, np.float64)
    zeros = np.zeros(q.cg)
    for n in range(q.n):
        for k in range(q.k):
            g = k // q.kg
            xg = x[n, g * q.cg : (g + 1) * q.cg]
            for i in range(q.oh):
                for j in range(q.ow):
                    for r in range(q.r):
                        for s in range(q.s):
                            ih, iw = i * sh - pt + r * dh, j * sw - pl + s * dw
                            # Padding is zeros that multiply like any input: a NaN or inf gradient
                            # meeting a padded tap makes NaN, as in torch.
                            xv = xg[:, ih, iw] if 0 <= ih < q.h and 0 <= iw < q.w else zeros
                            gw[k, :, r, s] += gy[n, k, i, j] * xv
    gb = gy.sum(axis=(0, 2, 3)).astype(p.dtype) if p.bias else None
    return gw.astype(p.dtype), gb


def max_pool2d_bwd_data(p, x, grad_output):
    """dx[the window's arg max] += dy[n,c,i,j]: the first tap holding the max in (r, s) order, or
    the last NaN (the forward's scan takes every NaN it meets), or the first tap inside the input
    when every value is -inf."""
    xs = x.tolist()
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    gx = np.zeros(p.input_shape, np.float64)
    for n in range(p.n):
        for c in range(p.c):
            plane = xs[n][c]
            for i in range(p.oh):
                for j in range(p.ow):
                    best, where = -math.inf, None
                    for r in range(kh):
                        ih = i * sh - ph + r * dh
                        if not 0 <= ih < p.h:
                            continue
                        for s in range(kw):
                            iw = j * sw - pw + s * dw
                            if 0 <= iw < p.w:
                                v = plane[ih][iw]
                                if where is None or v > best or v != v:
                                    best, where = v, (ih, iw)
                    if where is not None:  # else every tap is padding: nothing flows back
                        gx[n, c][where] += grad_output[n, c, i, j]
    return gx.astype(p.dtype)


def avg_pool2d_bwd_data(p, grad_output):
    """dx[cells of window (i, j) inside the input] += dy[n,c,i,j] / p.divisor(i, j)."""
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    gx = np.zeros(p.input_shape, np.float64)
    for i in range(p.oh):
        for j in range(p.ow):
            h0, w0 = max(i * sh - ph, 0), max(j * sw - pw, 0)
            h1, w1 = min(i * sh - ph + kh, p.h), min(j * sw - pw + kw, p.w)
            gx[:, :, h0:h1, w0:w1] += grad_output[:, :, i : i + 1, j : j + 1] / p.divisor(i, j)
    return gx.astype(p.dtype)


def adaptive_avg_pool2d_bwd_data(p, grad_output):
    """dx[bin_i x bin_j] += dy[n,c,i,j] / |bin_i x bin_j|."""
    gx = np.zeros(p.input_shape, np.float64)
    for i, (h0, h1) in enumerate(adaptive_bins(p.h, p.oh)):
        for j, (w0, w1) in enumerate(adaptive_bins(p.w, p.ow)):
            gx[:, :, h0:h1, w0:w1] += grad_output[:, :, i : i + 1, j : j + 1] / ((h1 - h0) * (w1 - w0))
    return gx.astype(p.dtype)


@_quiet_ieee
def batch_norm_bwd_data(p, x, grad_output, mean, var, weight):
    """With xhat = (x - mean) / sqrt(var + eps), per channel over its N*L values:

    dbias = sum dy,  dweight = sum dy * xhat,
    eval:      dx = dy * weight / sqrt(var + eps)                (mean, var are constants)
    training:  dx = weight / sqrt(var + eps) * (dy - dbias / NL - xhat * dweight / NL)
               (mean and var depend on x: the two subtracted terms are their share)
    """
    x3, gy3 = as_ncl(p, x).astype(np.float64), as_ncl(p, grad_output).astype(np.float64)
    gx = np.empty(x3.shape, np.float64)
    gw, gb = np.empty(p.c, np.float64), np.empty(p.c, np.float64)
    count = p.count
    for c in range(p.c):
        inv_std = 1.0 / np.sqrt(np.float64(var[c]) + p.eps)
        xhat = (x3[:, c] - np.float64(mean[c])) * inv_std
        dy = gy3[:, c]
        gb[c], gw[c] = dy.sum(), (dy * xhat).sum()
        if p.training and count:
            gx[:, c] = np.float64(weight[c]) * inv_std * (dy - gb[c] / count - xhat * gw[c] / count)
        else:
            gx[:, c] = dy * np.float64(weight[c]) * inv_std
    return gx.reshape(x.shape).astype(p.dtype), gw.astype(p.dtype), gb.astype(p.dtype)


def relu_bwd_data(p, output, grad_output):
    """dx = dy where y > 0 (or y is NaN, as torch's threshold_backward), else 0."""
    values = [0.0 if y <= 0 else g for y, g in zip(output.ravel().tolist(), grad_output.ravel().tolist())]
    return np.array(values, dtype=p.dtype).reshape(output.shape)
