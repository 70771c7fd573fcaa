"""Shared plumbing of the backward ops, the same for every backend.

Padding modes other than zeros: the forward pads the input with copies of its own border
(reflect, replicate) or of its far side (circular) and then convolves with zero padding.  The
gradient of that copy is a sum: every padded cell hands its gradient back to the input cell it
was copied from.  So a backend computes the zero-padding gradient of the padded input, and
``fold_padding`` adds each padded row and column onto its source.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

_NP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def zero_padded(p):
    """The problem the kernels see: p itself, or, for padding modes, p on the explicitly padded input."""
    if p.padding_mode == "zeros":
        return p
    pt, pb, pl, pr = p.padding
    return replace(p, h=p.h + pt + pb, w=p.w + pl + pr, padding=(0, 0, 0, 0), padding_mode="zeros")


def pad_input(p, x: np.ndarray) -> np.ndarray:
    """x padded as the forward pads it (x itself for zero padding: the kernels pad on the fly)."""
    if p.padding_mode == "zeros":
        return x
    pt, pb, pl, pr = p.padding
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode=_NP_PAD_MODE[p.padding_mode])


def _sources(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each index of a padded axis, the input index its value was copied from."""
    i = np.arange(-before, n + after)
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= n, 2 * (n - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    return i % n  # circular


def fold_padding(p, grad_padded: np.ndarray) -> np.ndarray:
    """The gradient w.r.t. the unpadded input from the gradient w.r.t. the padded one."""
    if p.padding_mode == "zeros":
        return grad_padded
    pt, pb, pl, pr = p.padding
    rows = np.zeros((p.n, p.c, p.h, grad_padded.shape[3]), grad_padded.dtype)
    np.add.at(rows, (slice(None), slice(None), _sources(p.h, pt, pb, p.padding_mode)), grad_padded)
    out = np.zeros(p.input_shape, grad_padded.dtype)
    np.add.at(out, (slice(None), slice(None), slice(None), _sources(p.w, pl, pr, p.padding_mode)), rows)
    return out


def as_ncl(p, a: np.ndarray) -> np.ndarray:
    """A batch-norm array viewed as (n, c, l), whatever its spatial dimensions."""
    return a.reshape(p.n, p.c, p.l)


def empty_batch_norm_grads(p, x: np.ndarray):
    """Batch norm's gradients when no value was normalised (an empty batch): all zeros, as torch,
    whatever NaN the empty batch's statistics hold."""
    return np.zeros(x.shape, p.dtype), np.zeros(p.c, p.dtype), np.zeros(p.c, p.dtype)
