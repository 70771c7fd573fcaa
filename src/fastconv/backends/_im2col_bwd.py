"""The im2col backend's backward ops: the forward's lowering run in reverse.

Backward-data of a convolution is a GEMM into columns, ``cols = weight_g^T @ dy_g`` (one column
per output pixel, one row per (c, r, s) tap), then col2im: each tap's row block is added back
onto the strided window of the padded input gradient it was gathered from.  Backward-weight is
the forward's GEMM with the pixels as the reduction: ``dw_g = dy_g @ cols^T`` summed over
images.  Both run images in parallel on Python threads with single-threaded BLAS; the weight
gradient's sum over images is per thread, added at the end, so no two threads write one array.

Pooling backward scatters each tap's share onto the same strided views its forward read.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Adaptive pooling's backward adds each bin's share with one NumPy slice per bin: the naive
# formula is already vectorised over (n, c), so im2col uses it as is.
from .naive import adaptive_avg_pool2d_bwd_data  # noqa: F401
from ._bwd_common import as_ncl, empty_batch_norm_grads, fold_padding, pad_input, zero_padded
from .im2col import _chunks, _overhang, _padded_local, _avg_divisors, _parallel, _zero_padded


def _tap(a: np.ndarray, r0: int, s0: int, oh: int, ow: int, sh: int, sw: int) -> np.ndarray:
    """The strided view of a's last two axes holding tap (r0, s0) of every window."""
    return a[..., r0 : r0 + sh * (oh - 1) + 1 : sh, s0 : s0 + sw * (ow - 1) + 1 : sw]


def _windows(xp: np.ndarray, q) -> np.ndarray:
    """(cg, r, s, oh, ow) view of padded planes xp (cg, Hp, Wp): element [c, r, s, i, j] is the
    input value tap (r, s) of window (i, j) reads."""
    (sh, sw), (dh, dw) = q.stride, q.dilation
    cs, hs, ws = xp.strides
    return as_strided(
        xp, (xp.shape[0], q.r, q.s, q.oh, q.ow), (cs, hs * dh, ws * dw, hs * sh, ws * sw), writeable=False
    )


def conv2d_bwd_data(p, grad_output, weight):
    q = zero_padded(p)
    pt, pb, pl, pr = q.padding
    hp, wp = q.h + pt + pb, q.w + pl + pr
    gxp = np.zeros((q.n, q.c, hp, wp), p.dtype)
    # weight_g^T: (cg * r * s, kg), one per group; the GEMM's left operand.
    wt = [weight[g * q.kg : (g + 1) * q.kg].reshape(q.kg, -1).T for g in range(q.groups)]
    (sh, sw), (dh, dw) = q.stride, q.dilation

    def work(part):
        for n in part:
            for g in range(q.groups):
                gy = grad_output[n, g * q.kg : (g + 1) * q.kg].reshape(q.kg, q.oh * q.ow)
                with np.errstate(invalid="ignore"):  # inf gradients: inf * 0 and inf - inf are torch's NaN
                    cols = (wt[g] @ gy).reshape(q.cg, q.r, q.s, q.oh, q.ow)
                    target = gxp[n, g * q.cg : (g + 1) * q.cg]
                    for r in range(q.r):
                        for s in range(q.s):
                            _tap(target, r * dh, s * dw, q.oh, q.ow, sh, sw)[...] += cols[:, r, s]

    _parallel(work, list(range(q.n)), blas=True)
    gx = np.ascontiguousarray(gxp[:, :, pt : pt + q.h, pl : pl + q.w])
    return fold_padding(p, gx)


def conv2d_bwd_weight(p, x, grad_output):
    q = zero_padded(p)
    xp = _zero_padded(pad_input(p, x).reshape(q.n * q.c, q.h, q.w), q.padding)
    xp = xp.reshape(q.n, q.c, *xp.shape[1:])
    images = list(range(q.n))
    parts = [images[t :: max(1, min(len(images), _threads()))] for t in range(max(1, min(len(images), _threads())))]
    partial = [np.zeros((q.groups, q.kg, q.cg * q.r * q.s), p.dtype) for _ in parts]

    def work(todo):
        for t in todo:
            acc = partial[t]
            for n in parts[t]:
                for g in range(q.groups):
                    cols = _windows(xp[n, g * q.cg : (g + 1) * q.cg], q).reshape(q.cg * q.r * q.s, q.oh * q.ow)
                    gy = grad_output[n, g * q.kg : (g + 1) * q.kg].reshape(q.kg, q.oh * q.ow)
                    with np.errstate(invalid="ignore"):  # inf inputs: inf - inf is torch's NaN, not a fault
                        acc[g] += gy @ cols.T

    _parallel(work, list(range(len(parts))), blas=True)
    gw = np.sum(partial, axis=0, dtype=p.dtype).reshape(q.weight_shape)
    gb = grad_output.sum(axis=(0, 2, 3), dtype=np.float64).astype(p.dtype) if p.bias else None
    return gw, gb


def _threads() -> int:
    from .. import threads

    return threads.get_num_threads()


def _first_valid(out: int, k: int, stride: int, pad: int, dil: int, n: int) -> np.ndarray:
    """Per window along one axis, the first tap that lands inside the input."""
    start = np.arange(out) * stride - pad
    first = np.zeros(out, np.int64)
    for t in range(k - 1, -1, -1):
        pos = start + t * dil
        first = np.where((pos >= 0) & (pos < n), t, first)
    return first


def max_pool2d_bwd_data(p, x, grad_output):
    """The gradient goes where torch's forward scan settles: the first strict max, or the last NaN,
    or (all -inf) the window's first tap inside the input."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    eh, ew = _overhang(p)
    planes, gy = x.reshape(p.n * p.c, p.h, p.w), grad_output.reshape(p.n * p.c, p.oh, p.ow)
    fallback = _first_valid(p.oh, kh, sh, ph, dh, p.h)[:, None] * kw + _first_valid(p.ow, kw, sw, pw, dw, p.w)[None, :]
    gx = np.empty((p.n * p.c, p.h, p.w), p.dtype)

    def work(part):
        for a, b in part:
            xp = _padded_local(planes[a:b], (ph, ph + eh, pw, pw + ew), -np.inf)
            best = np.full((b - a, p.oh, p.ow), -np.inf, p.dtype)
            where = np.full((b - a, p.oh, p.ow), -1, np.int64)
            for t in range(kh * kw):
                v = _tap(xp, (t // kw) * dh, (t % kw) * dw, p.oh, p.ow, sh, sw)
                take = (v > best) | np.isnan(v)
                best[take], where[take] = v[take], t
            where = np.where(where < 0, fallback, where)
            gp = np.zeros(xp.shape, p.dtype)
            for t in range(kh * kw):
                _tap(gp, (t // kw) * dh, (t % kw) * dw, p.oh, p.ow, sh, sw)[...] += np.where(where == t, gy[a:b], 0)
            gx[a:b] = gp[:, ph : ph + p.h, pw : pw + p.w]

    _parallel(work, _chunks(p.n * p.c, p.h * p.w * kh * kw))
    return gx.reshape(p.input_shape)


def avg_pool2d_bwd_data(p, grad_output):
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding
    eh, ew = _overhang(p)
    share = grad_output.reshape(p.n * p.c, p.oh, p.ow) / _avg_divisors(p)
    gx = np.empty((p.n * p.c, p.h, p.w), p.dtype)

    def work(part):
        for a, b in part:
            gp = np.zeros((b - a, p.h + 2 * ph + eh, p.w + 2 * pw + ew), np.float64)
            for r in range(kh):
                for s in range(kw):
                    _tap(gp, r, s, p.oh, p.ow, sh, sw)[...] += share[a:b]
            gx[a:b] = gp[:, ph : ph + p.h, pw : pw + p.w]

    _parallel(work, _chunks(p.n * p.c, p.h * p.w * kh * kw))
    return gx.reshape(p.input_shape)


def batch_norm_bwd_data(p, x, grad_output, mean, var, weight):
    if p.count == 0:
        return empty_batch_norm_grads(p, x)
    x3, gy = as_ncl(p, x), as_ncl(p, grad_output)
    mean, var, weight = (np.asarray(a, np.float64) for a in (mean, var, weight))
    # var + eps == 0, inf or NaN inputs: torch's inf and NaN, not warnings.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv_std = 1.0 / np.sqrt(var + p.eps)
        gb = gy.sum(axis=(0, 2), dtype=np.float64)
        # sum dy * xhat with xhat made first: the one-pass inv_std * (sum dy * x - mean * sum dy)
        # turns an inf gradient into inf - inf = NaN where torch has inf.
        xhat = (x3 - mean[None, :, None]) * inv_std[None, :, None]
        gw = np.einsum("ncl,ncl->c", gy, xhat, dtype=np.float64)
        scale = (weight * inv_std)[None, :, None]
        if p.training and p.count:
            gx = scale * (gy - (gb / p.count)[None, :, None] - xhat * (gw / p.count)[None, :, None])
        else:
            gx = gy * scale
    return gx.astype(p.dtype).reshape(x.shape), gw.astype(p.dtype), gb.astype(p.dtype)


def relu_bwd_data(p, output, grad_output):
    return np.where(output <= 0, np.zeros((), p.dtype), grad_output).astype(p.dtype)
