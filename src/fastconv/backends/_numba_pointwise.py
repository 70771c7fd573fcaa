"""Numba kernels that touch each element once or twice: batch norm (statistics and the affine map),
relu and the other activations.

All memory-bound: each loop streams contiguous memory and vectorises; the work is split over
(image, channel) rows so every thread streams its own rows.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._numba_jit import inline, kernel

#: problem.ACTIVATION_PARAMS's kinds besides relu, as the integer the kernel switches on.
ACTIVATION_CODES = {"relu6": 2, "leaky_relu": 3, "hardtanh": 4, "sigmoid": 5, "silu": 6, "hardswish": 7}


@inline
def _sigmoid(v):
    e = np.exp(-np.abs(v))  # exp of a non-positive argument only: no overflow
    return 1 / (1 + e) if v >= 0 else e / (1 + e)


@inline
def _act(v, code, a, b):
    """torch.nn.functional's formulas; comparisons with NaN are false, so NaN passes through."""
    if code == 2:
        return 0 if v < 0 else (6 if v > 6 else v)
    if code == 4:
        return a if v < a else (b if v > b else v)
    if code == 3:
        return v if v > 0 else v * a
    if code == 5:
        return _sigmoid(v)
    if code == 6:
        return v * _sigmoid(v)
    t = v + 3
    t = 0 if t < 0 else (6 if t > 6 else t)
    return v if v != v else v * t / 6


@kernel
def _activation(x, y, code, a, b):
    for i in prange(x.size):
        y[i] = _act(x[i], code, a, b)


@kernel
def _channel_stats(x, mean, var):
    """Per channel of x (N, C, L): the mean and the biased variance, in float64, in two passes
    (a one-pass sum of squares loses the variance when the mean is large)."""
    n_, c_all, l_ = x.shape
    count = n_ * l_
    for c in prange(c_all):
        total = 0.0
        for n in range(n_):
            row = x[n, c]
            for t in range(l_):
                total += row[t]
        m = total / count
        squares = 0.0
        for n in range(n_):
            row = x[n, c]
            for t in range(l_):
                d = row[t] - m
                squares += d * d
        mean[c] = m
        var[c] = squares / count


@kernel
def _normalize(x, scale, shift, y):
    """y = x * scale[c] + shift[c]: one multiply-add per element, in the input's dtype."""
    n_, c_all, l_ = x.shape
    for task in prange(n_ * c_all):
        n, c = task // c_all, task % c_all
        src, dst = x[n, c], y[n, c]
        a, b = scale[c], shift[c]
        for t in range(l_):
            dst[t] = src[t] * a + b


@kernel
def _relu(x, y):
    for t in prange(x.size):
        v = x[t]
        # Written as a test of v < 0 so that NaN (for which it is false) passes through.
        if v < 0:
            y[t] = 0
        else:
            y[t] = v


def batch_norm(p, x, mean, var, weight, bias):
    """x (N, C, L); mean/var are the running statistics (eval) or None (training)."""
    if p.training:
        mean, var = np.empty(p.c), np.empty(p.c)
        _channel_stats(x, mean, var)
        m, v = mean, var
    else:
        m, v = mean.astype(np.float64), var.astype(np.float64)
    # torch's folding, with its constants computed in float64: scale = weight / sqrt(var + eps),
    # shift = bias - mean * scale (so var + eps == 0 gives torch's inf/NaN).
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = weight.astype(np.float64) / np.sqrt(v + p.eps)
        shift = bias.astype(np.float64) - m * scale
    y = np.empty(x.shape, p.dtype)
    _normalize(x, scale.astype(p.dtype), shift.astype(p.dtype), y)
    return y, mean, var


def relu(p, x):
    flat = x.reshape(-1)
    y = np.empty(flat.shape, p.dtype)
    _relu(flat, y)
    return y.reshape(x.shape)


def activation(p, x):
    flat = x.reshape(-1)
    y = np.empty(flat.shape, p.dtype)
    params = (*p.params, 0.0, 0.0)
    t = flat.dtype.type
    _activation(flat, y, ACTIVATION_CODES[p.kind], t(params[0]), t(params[1]))
    return y.reshape(x.shape)
