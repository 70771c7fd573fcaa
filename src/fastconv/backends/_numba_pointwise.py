"""Numba kernels that touch each element once or twice: batch norm (statistics and the affine map) and relu.

All memory-bound: each loop streams contiguous memory and vectorises; the work is split over
(image, channel) rows so every thread streams its own rows.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._numba_jit import kernel


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
