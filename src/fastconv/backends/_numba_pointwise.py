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
def _normalize(x, mean, scale, shift, y):
    """y = (x - mean[c]) * scale[c] + shift[c], with float64 per-channel constants."""
    n_, c_all, l_ = x.shape
    for task in prange(n_ * c_all):
        n, c = task // c_all, task % c_all
        src, dst = x[n, c], y[n, c]
        m, a, b = mean[c], scale[c], shift[c]
        for t in range(l_):
            dst[t] = (src[t] - m) * a + b


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
    with np.errstate(divide="ignore", invalid="ignore"):  # var + eps == 0 gives inf, as in torch
        scale = weight.astype(np.float64) / np.sqrt(v + p.eps)
    y = np.empty(x.shape, p.dtype)
    _normalize(x, m, scale, bias.astype(np.float64), y)
    return y, mean, var


def relu(p, x):
    flat = x.reshape(-1)
    y = np.empty(flat.shape, p.dtype)
    _relu(flat, y)
    return y.reshape(x.shape)
