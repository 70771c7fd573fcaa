"""im2col + GEMM: convolution lowered to matrix products on NumPy's BLAS.

The classic lowering: gather every receptive field into a column (im2col), so that the
convolution of one group is ``weight (Kg, Cg*R*S) @ cols (Cg*R*S, pixels)``.  The windows are a
strided view of the zero-padded input; only the copy into ``cols`` touches memory.

Speed comes from blocking, not from one huge GEMM: the output pixels are cut into blocks whose
``cols`` fit in a core's L2 cache, and each of ``get_num_threads()`` Python threads gathers a
block and multiplies it with single-threaded BLAS (NumPy releases the GIL in both).  Gathering
then runs in parallel and in cache, where one big gather would run on one core from memory.
Small images are grouped into one block so a GEMM still has enough columns to amortise
reading the weights; when there are fewer blocks than threads the output channels are split.

Depthwise convolutions (one input channel per group) skip the GEMM -- a 1 x R*S matrix product
per channel is all overhead -- and accumulate the taps directly.  Pooling, batch norm and relu
are vectorised NumPy on window views, split over image planes across the same threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import arrays, threads
from . import refuse_algorithm, refuse_padded_copy

NAME = "im2col"
DEVICES = ("cpu",)
ALGORITHMS = {"conv2d": ("gemm",)}
FUSED_EPILOGUE = True

#: Bytes of ``cols`` one block gathers: about half of a core's L2, so the GEMM reads it from cache.
BLOCK_BYTES = 512 * 1024
#: Fewer output pixels per GEMM than this and re-reading the weights dominates the block...
MIN_BLOCK_PIXELS = 192
#: ...but to give every thread a block of a small batch, blocks may shrink to this many.
MIN_SPLIT_PIXELS = 64


def available():
    return True, ""


#: Pooling loops over the window's taps in Python (one vectorised step each): past this many a
#: call would run for hours (a 2**31-wide window: forever).
MAX_POOL_TAPS = 1 << 20


def supports(p):
    if p.op in ("max_pool2d", "avg_pool2d") and p.kernel[0] * p.kernel[1] > MAX_POOL_TAPS:
        return f"the pooling window has {p.kernel[0] * p.kernel[1]:,} taps; im2col loops over taps in Python"
    return refuse_algorithm(p, ALGORITHMS, NAME) or refuse_padded_copy(p, "im2col")


# -- threads -----------------------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_size = 0
_lock = threading.Lock()


def _pool(n: int) -> ThreadPoolExecutor:
    global _executor, _executor_size
    with _lock:
        if _executor is None or _executor_size != n:
            # The old pool is dropped, not shut down: a call on another thread may still be
            # submitting to it.  Its idle workers exit once the last reference goes.
            _executor = ThreadPoolExecutor(n, thread_name_prefix="fastconv-im2col")
            _executor_size = n
        return _executor


def _after_fork_in_child() -> None:
    """A forked child inherits the pool object but none of its worker threads, and maybe a lock
    some other thread held at the fork: start from nothing."""
    global _executor, _executor_size, _lock
    _executor, _executor_size = None, 0
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _parallel(work, items: list, blas: bool = False) -> None:
    """work(part) for round-robin parts of ``items``, one part per thread.

    ``blas``: the work calls BLAS, which must then stay single-threaded under our threads.
    """
    n = min(threads.get_num_threads(), len(items))
    with threads.single_threaded_blas() if blas else contextlib.nullcontext():
        if n <= 1:
            work(items)
            return
        pool = _pool(threads.get_num_threads())
        futures = [pool.submit(work, items[t::n]) for t in range(n)]
        for f in futures:
            f.result()


#: Elements below which splitting work over threads costs more than it saves.
MIN_CHUNK_ELEMENTS = 1 << 15


def _chunks(count: int, unit: int = 1) -> list[tuple[int, int]]:
    """Ranges over ``count`` units of ``unit`` elements: about four per thread, none tiny."""
    pieces = max(1, min(count, 4 * threads.get_num_threads(), count * unit // MIN_CHUNK_ELEMENTS))
    edges = [count * t // pieces for t in range(pieces + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _zero_padded(x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """x (P, H, W) with zero rows/columns added (top, bottom, left, right).

    np.zeros maps zero pages lazily, so only the interior copy costs time; it runs in parallel.
    """
    pt, pb, pl, pr = pads
    if not any(pads):
        return x
    planes, h, w = x.shape
    out = np.zeros((planes, h + pt + pb, w + pl + pr), x.dtype)

    def work(part):
        for a, b in part:
            out[a:b, pt : pt + h, pl : pl + w] = x[a:b]

    _parallel(work, _chunks(planes, h * w))
    return out


def _view(a: np.ndarray, shape) -> np.ndarray:
    """``a`` reshaped without a copy -- a silent copy would make a GEMM write its result nowhere."""
    v = a.reshape(shape)
    if v.size and not np.may_share_memory(v, a):
        raise AssertionError(f"im2col: reshape of {a.shape} to {shape} would copy")
    return v


# -- convolution -------------------------------------------------------------------------------


def _balanced(count: int, pieces: int, nthreads: int) -> int:
    """``pieces`` rounded up so that few pieces still share out evenly over the threads."""
    return min(count, -(-max(1, pieces) // nthreads) * nthreads)


def _blocks(p) -> list[tuple[int, int, int, int, int, int]]:
    """(n0, n1, i0, i1, k0, k1): images, output rows and output channels (within a group) of a task."""
    item = np.dtype(p.dtype).itemsize
    nthreads = threads.get_num_threads()
    pixels = max(MIN_BLOCK_PIXELS, BLOCK_BYTES // (p.groups * p.reduction * item))
    per_image = p.oh * p.ow
    if p.n * per_image < nthreads * pixels:  # a small batch: smaller blocks, one per thread at least
        pixels = max(MIN_SPLIT_PIXELS, p.n * per_image // nthreads)
    if per_image >= pixels:
        # Even row chunks: a one-row remainder would be a GEMM too thin to be efficient.
        chunks = -(-_balanced(p.n * p.oh, p.n * (per_image // pixels), nthreads) // p.n)
        edges = [p.oh * t // chunks for t in range(chunks + 1)]
        units = [(n, n + 1, i0, i1) for n in range(p.n) for i0, i1 in zip(edges[:-1], edges[1:]) if i1 > i0]
    else:
        groups_of_images = _balanced(p.n, -(-p.n // max(1, pixels // per_image)), nthreads)
        edges = [p.n * t // groups_of_images for t in range(groups_of_images + 1)]
        units = [(n0, n1, 0, p.oh) for n0, n1 in zip(edges[:-1], edges[1:]) if n1 > n0]
    # Still fewer blocks than threads (a tiny image at batch 1): split the output channels too.
    splits = max(1, min(-(-nthreads // len(units)), p.kg // 16))
    edges = [p.kg * s // splits for s in range(splits + 1)]
    return [(*u, k0, k1) for u in units for k0, k1 in zip(edges[:-1], edges[1:])]


def conv2d(p, x, weight, bias, residual):
    if p.cg == 1 and p.groups > 1:
        return _depthwise(p, x, weight, bias, residual)
    g_, cg, kg = p.groups, p.cg, p.kg
    (sh, sw), (dh, dw) = p.stride, p.dilation
    crs = cg * p.r * p.s
    xp = _zero_padded(x.reshape(p.n * p.c, p.h, p.w), p.padding)
    xp = xp.reshape(p.n, p.c, *xp.shape[1:])
    sn, sc, sy, sx = xp.strides
    # windows[n, g, c, r, s, i, j] = xp[n, g*Cg + c, i*sh + r*dh, j*sw + s*dw]
    windows = as_strided(
        xp, (p.n, g_, cg, p.r, p.s, p.oh, p.ow), (sn, cg * sc, sc, dh * sy, dw * sx, sh * sy, sw * sx), writeable=False
    )
    wmat = weight.reshape(g_, kg, crs)
    bias_gk = None if bias is None else bias.reshape(g_, kg)
    # A 1x1, stride-1, unpadded convolution needs no gather: each image already is the matrix.
    direct = p.r == p.s == 1 and p.stride == (1, 1) and not any(p.padding)
    y = np.empty(p.output_shape, p.dtype)
    y_g = y.reshape(p.n, g_, kg, p.oh, p.ow)
    res_g = None if residual is None else residual.reshape(p.n, g_, kg, p.oh, p.ow)
    blocks = _blocks(p)
    biggest = max((n1 - n0) * (i1 - i0) for n0, n1, i0, i1, _, _ in blocks) * p.ow

    def work(part):
        cols_buf = np.empty(g_ * crs * biggest, p.dtype)
        out_buf = np.empty(g_ * kg * biggest, p.dtype)
        for n0, n1, i0, i1, k0, k1 in part:
            nb, rows, kk = n1 - n0, i1 - i0, k1 - k0
            pixels = nb * rows * p.ow
            if direct and nb == 1:
                cols = x[n0].reshape(g_, cg, p.h * p.w)[:, :, i0 * p.w : i1 * p.w]
            else:
                cols = cols_buf[: g_ * crs * pixels].reshape(g_, cg, p.r, p.s, nb, rows, p.ow)
                np.copyto(cols, windows[n0:n1, :, :, :, :, i0:i1].transpose(1, 2, 3, 4, 0, 5, 6))
                cols = cols.reshape(g_, crs, pixels)
            if nb == 1:  # one image: the GEMM writes straight into the output's rows
                out = _view(y_g[n0, :, k0:k1, i0:i1], (g_, kk, pixels))
            else:  # several small images: (channels, images, pixels) is transposed on the way out
                out = out_buf[: g_ * kk * pixels].reshape(g_, kk, pixels)
            with np.errstate(invalid="ignore"):  # inf * 0 (a padded tap) is torch's NaN, not a fault
                np.matmul(wmat[:, k0:k1], cols, out=out)
            out = _view(out, (g_, kk, nb, rows, p.ow))
            # The epilogue runs on the block while it is still in cache.
            if bias_gk is not None:
                out += bias_gk[:, k0:k1, None, None, None]
            if res_g is not None:
                out += res_g[n0:n1, :, k0:k1, i0:i1].transpose(1, 2, 0, 3, 4)
            if p.activation == "relu":
                np.maximum(out, 0, out=out)
            if nb > 1:
                y_g[n0:n1, :, k0:k1, i0:i1] = out.transpose(2, 0, 1, 3, 4)

    _parallel(work, blocks, blas=True)
    return y


def _depthwise(p, x, weight, bias, residual):
    """One input channel per group: y[n, g*m + q] = sum over taps of w[g*m + q, 0, r, s] * x[n, g] window."""
    m = p.kg  # channel multiplier
    (sh, sw), (dh, dw) = p.stride, p.dilation
    planes = p.n * p.c
    xp = _zero_padded(x.reshape(planes, p.h, p.w), p.padding)
    taps = weight.reshape(p.c, m, p.r * p.s)
    y = np.empty(p.output_shape, p.dtype)
    y_pm = y.reshape(planes, m, p.oh, p.ow)
    res_pm = None if residual is None else residual.reshape(planes, m, p.oh, p.ow)
    bias_cm = None if bias is None else bias.reshape(p.c, m)

    def work(part):
        for a, b in part:
            chan = np.arange(a, b) % p.c  # the channel of each plane
            w_planes = taps[chan][..., None, None]  # (planes, m, taps, 1, 1)
            acc = np.zeros((b - a, m, p.oh, p.ow), p.dtype)
            term = np.empty_like(acc)
            for r in range(p.r):
                for s in range(p.s):
                    window = xp[
                        a:b, r * dh : r * dh + sh * (p.oh - 1) + 1 : sh, s * dw : s * dw + sw * (p.ow - 1) + 1 : sw
                    ]
                    with np.errstate(invalid="ignore"):  # inf * 0 (a padded tap) is torch's NaN
                        np.multiply(w_planes[:, :, r * p.s + s], window[:, None], out=term)
                        acc += term
            if bias_cm is not None:
                acc += bias_cm[chan][:, :, None, None]
            if res_pm is not None:
                acc += res_pm[a:b]
            if p.activation == "relu":
                np.maximum(acc, 0, out=acc)
            y_pm[a:b] = acc

    # Planes per task: the accumulator and the product stay in L2 across all the taps' passes.
    per = max(1, (128 << 10) // (m * p.oh * p.ow * x.itemsize))
    _parallel(work, [(a, min(a + per, planes)) for a in range(0, planes, per)])
    return y


# -- pooling -----------------------------------------------------------------------------------


def _pool_taps(p, xp: np.ndarray):
    """The (kh*kw) strided views of padded planes xp whose [i, j] is tap (r, s) of window (i, j)."""
    (kh, kw), (sh, sw), (dh, dw) = p.kernel, p.stride, p.dilation
    for r in range(kh):
        for s in range(kw):
            yield xp[:, r * dh : r * dh + sh * (p.oh - 1) + 1 : sh, s * dw : s * dw + sw * (p.ow - 1) + 1 : sw]


def _overhang(p) -> tuple[int, int]:
    """Extra bottom/right cells a ceil-mode last window reaches past the padding."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    eh = max(0, (p.oh - 1) * sh + (kh - 1) * dh + 1 - (p.h + 2 * ph))
    ew = max(0, (p.ow - 1) * sw + (kw - 1) * dw + 1 - (p.w + 2 * pw))
    return eh, ew


def max_pool2d(p, x):
    planes = x.reshape(p.n * p.c, p.h, p.w)
    (ph, pw), (eh, ew) = p.padding, _overhang(p)
    y = np.empty((p.n * p.c, p.oh, p.ow), p.dtype)

    def work(part):
        for a, b in part:
            xp = _padded_local(planes[a:b], (ph, ph + eh, pw, pw + ew), -np.inf)
            taps = _pool_taps(p, xp)
            out = y[a:b]
            np.copyto(out, next(taps))
            for tap in taps:
                np.maximum(out, tap, out=out)  # np.maximum propagates NaN, like torch

    _parallel(work, _chunks(p.n * p.c, p.h * p.w))
    return y.reshape(p.output_shape)


def _first_inside(n_out: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """Per output position, the first tap coordinate inside the input (torch's initial arg max)."""
    start = np.arange(n_out) * stride - pad
    return np.where(start < 0, start + (-start + dil - 1) // dil * dil, start)


def max_pool2d_with_indices(p, x):
    """max_pool2d over the same padded window views, also tracking where each max is: a later tap
    replaces it when strictly greater or NaN, as torch's scan does (padding, -inf, never does)."""
    planes = x.reshape(p.n * p.c, p.h, p.w)
    (_, kw), (sh, sw), (ph, pw), (dh, dw) = p.kernel, p.stride, p.padding, p.dilation
    eh, ew = _overhang(p)
    y = np.empty((p.n * p.c, p.oh, p.ow), p.dtype)
    idx = np.empty((p.n * p.c, p.oh, p.ow), np.int64)
    rows0, cols0 = np.arange(p.oh) * sh - ph, np.arange(p.ow) * sw - pw
    first = _first_inside(p.oh, sh, ph, dh)[:, None] * p.w + _first_inside(p.ow, sw, pw, dw)[None, :]

    def work(part):
        for a, b in part:
            xp = _padded_local(planes[a:b], (ph, ph + eh, pw, pw + ew), -np.inf)
            out, where = y[a:b], idx[a:b]
            out[...] = -np.inf
            where[...] = first
            for t, tap in enumerate(_pool_taps(p, xp)):
                r, s = divmod(t, kw)
                better = (tap > out) | np.isnan(tap)
                np.copyto(out, tap, where=better)
                np.copyto(where, ((rows0 + r * dh)[:, None] * p.w + (cols0 + s * dw)[None, :]), where=better)

    _parallel(work, _chunks(p.n * p.c, p.h * p.w))
    return y.reshape(p.output_shape), idx.reshape(p.output_shape)


def _padded_local(x: np.ndarray, pads, value) -> np.ndarray:
    pt, pb, pl, pr = pads
    if not any(pads):
        return x
    out = np.full((x.shape[0], x.shape[1] + pt + pb, x.shape[2] + pl + pr), value, x.dtype)
    out[:, pt : pt + x.shape[1], pl : pl + x.shape[2]] = x
    return out


def _avg_divisors(p) -> np.ndarray:
    """p.divisor(i, j) for every output cell, as an (oh, ow) array."""
    if p.divisor_override is not None:
        return np.full((p.oh, p.ow), p.divisor_override, np.float64)
    (kh, kw), (sh, sw), (ph, pw) = p.kernel, p.stride, p.padding

    def counts(out, k, s, pad, n):
        start = np.arange(out) * s - pad
        end = np.minimum(start + k, n + pad)  # the ceil-mode overhang past the padding never counts
        if not p.count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        return end - start

    return np.outer(counts(p.oh, kh, sh, ph, p.h), counts(p.ow, kw, sw, pw, p.w)).astype(np.float64)


def avg_pool2d(p, x):
    planes = x.reshape(p.n * p.c, p.h, p.w)
    (ph, pw), (eh, ew) = p.padding, _overhang(p)
    inv = (1.0 / _avg_divisors(p)).astype(p.dtype)
    y = np.empty((p.n * p.c, p.oh, p.ow), p.dtype)

    def work(part):
        for a, b in part:
            xp = _padded_local(planes[a:b], (ph, ph + eh, pw, pw + ew), 0.0)
            out = y[a:b]
            out[...] = 0
            for tap in _pool_taps(p, xp):
                out += tap
            out *= inv

    _parallel(work, _chunks(p.n * p.c, p.h * p.w))
    return y.reshape(p.output_shape)


def _bins(n: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """adaptive_bins(n, out) as two arrays: bin i spans [lo[i], hi[i])."""
    i = np.arange(out, dtype=np.int64)
    return i * n // out, -(-(i + 1) * n // out)


def _bin_sums(a: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int) -> np.ndarray:
    """Sums of ``a`` over the (possibly overlapping) ranges [lo[i], hi[i]) along ``axis``.

    One reduceat over the interleaved starts and ends: every even result is a bin.  A zero slice
    appended along the axis makes an end equal to the axis length a valid index.
    """
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, 1)
    idx = np.stack([lo, hi], axis=1).reshape(-1)
    return np.add.reduceat(np.pad(a, pad), idx, axis=axis).take(np.arange(0, idx.size, 2), axis=axis)


def adaptive_avg_pool2d(p, x):
    planes = x.reshape(p.n * p.c, p.h, p.w)
    (h0, h1), (w0, w1) = _bins(p.h, p.oh), _bins(p.w, p.ow)
    counts = np.outer(h1 - h0, w1 - w0).astype(p.dtype)
    y = np.empty((p.n * p.c, p.oh, p.ow), p.dtype)

    def work(part):
        for a, b in part:
            # Sum each bin's rows, then each bin's columns: two vectorised reductions.
            sums = _bin_sums(_bin_sums(planes[a:b], h0, h1, axis=1), w0, w1, axis=2)
            np.divide(sums, counts, out=y[a:b])

    _parallel(work, _chunks(p.n * p.c, p.h * p.w + p.oh * p.ow))
    return y.reshape(p.output_shape)


def adaptive_max_pool2d(p, x):
    """One vectorised arg max per bin over all planes: the first max, or the last NaN (torch's scan)."""
    planes = x.reshape(p.n * p.c, p.h, p.w)
    (h0, h1), (w0, w1) = _bins(p.h, p.oh), _bins(p.w, p.ow)
    y = np.empty((p.n * p.c, p.oh, p.ow), p.dtype)
    idx = np.empty((p.n * p.c, p.oh, p.ow), np.int64)

    def work(part):
        for a, b in part:
            for i in range(p.oh):
                for j in range(p.ow):
                    bw = w1[j] - w0[j]
                    cells = planes[a:b, h0[i] : h1[i], w0[j] : w1[j]].reshape(b - a, -1)
                    nan = np.isnan(cells)
                    last_nan = cells.shape[1] - 1 - np.argmax(nan[:, ::-1], axis=1)
                    at = np.where(nan.any(axis=1), last_nan, np.argmax(cells, axis=1))
                    y[a:b, i, j] = np.take_along_axis(cells, at[:, None], axis=1)[:, 0]
                    idx[a:b, i, j] = (h0[i] + at // bw) * p.w + w0[j] + at % bw

    _parallel(work, _chunks(p.n * p.c, p.h * p.w))
    y, idx = y.reshape(p.output_shape), idx.reshape(p.output_shape)
    return (y, idx) if p.return_indices else y


# -- batch norm, activations, linear -----------------------------------------------------------


def batch_norm(p, x, mean, var, weight, bias):
    if p.training:
        # float64 statistics, as torch accumulates them; two passes for a stable variance.
        mean = np.empty(p.c)
        var = np.empty(p.c)

        def stats(part):
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in a channel: torch's NaN
                for a, b in part:
                    chunk = x[:, a:b].astype(np.float64)
                    mean[a:b] = chunk.mean(axis=(0, 2))
                    var[a:b] = ((chunk - mean[a:b, None]) ** 2).mean(axis=(0, 2))

        _parallel(stats, _chunks(p.c, p.n * p.l))
    with np.errstate(divide="ignore", invalid="ignore"):  # var + eps == 0: torch's NaN
        scale = (weight / np.sqrt(np.asarray(var, np.float64) + p.eps)).astype(p.dtype)
        shift = (bias - np.asarray(mean, np.float64) * scale).astype(p.dtype)
    y = np.empty(x.shape, p.dtype)

    def work(part):
        with np.errstate(invalid="ignore"):  # inf scale and shift (var + eps == 0) make torch's NaN
            for a, b in part:  # a range of channels, all images
                np.multiply(x[:, a:b], scale[a:b, None], out=y[:, a:b])
                y[:, a:b] += shift[a:b, None]

    _parallel(work, _chunks(p.c, p.n * p.l))
    return y, mean, var


def relu(p, x):
    flat = x.reshape(-1)
    y = np.empty_like(flat)

    def work(part):
        for a, b in part:
            np.maximum(flat[a:b], 0, out=y[a:b])  # keeps NaN, as torch.relu

    _parallel(work, _chunks(flat.size))
    return y.reshape(x.shape)


def activation(p, x):
    flat = x.reshape(-1)
    y = flat.copy()

    def work(part):
        with np.errstate(invalid="ignore", over="ignore"):  # -inf * 0 (silu, hardswish): torch's NaN
            for a, b in part:
                arrays.activation_(y[a:b], p.kind, p.params)

    _parallel(work, _chunks(flat.size))
    return y.reshape(x.shape)


def linear(p, x, weight, bias):
    x2 = x.reshape(p.rows, p.in_features)
    y = np.empty((p.rows, p.out_features), p.dtype)

    def work(part):
        with np.errstate(invalid="ignore", over="ignore"):  # inf * 0, inf - inf: NaN, as torch
            for a, b in part:
                np.matmul(x2[a:b], weight.T, out=y[a:b])
                if bias is not None:
                    y[a:b] += bias

    _parallel(work, _chunks(p.rows, max(1, p.in_features * p.out_features // 64)), blas=True)
    return y.reshape(p.output_shape)


# The backward functions live in their own module, which imports this one's helpers: bound last.
from . import _im2col_bwd  # noqa: E402

conv2d_bwd_data = _im2col_bwd.conv2d_bwd_data
conv2d_bwd_weight = _im2col_bwd.conv2d_bwd_weight
max_pool2d_bwd_data = _im2col_bwd.max_pool2d_bwd_data
avg_pool2d_bwd_data = _im2col_bwd.avg_pool2d_bwd_data
adaptive_avg_pool2d_bwd_data = _im2col_bwd.adaptive_avg_pool2d_bwd_data
batch_norm_bwd_data = _im2col_bwd.batch_norm_bwd_data
relu_bwd_data = _im2col_bwd.relu_bwd_data
