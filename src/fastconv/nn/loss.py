"""Cross-entropy loss and its gradient, as torch.nn.CrossEntropyLoss for class-index targets.

With ``p = softmax(logits)`` and ``q`` the target distribution (one-hot, or smoothed:
``(1 - eps) * one_hot + eps / C``), the loss of one sample is ``-sum(q * log p)`` and its
gradient with respect to the logits is ``p - q``; the mean reduction divides both by N.

>>> import numpy as np
>>> from fastconv import nn
>>> loss = nn.CrossEntropyLoss()
>>> float(loss(np.zeros((2, 4)), np.array([0, 3])).round(4))       # log(4)
1.3863
>>> loss.backward()
array([[-0.375,  0.125,  0.125,  0.125],
       [ 0.125,  0.125,  0.125, -0.375]])
"""

from __future__ import annotations

import numpy as np

from .._args import as_float, as_float_array
from .module import Module

_REDUCTIONS = ("mean", "sum", "none")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)  # exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _targets(target, n: int, classes: int) -> np.ndarray:
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold class indices (integers), got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"target must have shape ({n},) for logits of shape ({n}, {classes}), got {t.shape}")
    if n and (t.min() < 0 or t.max() >= classes):
        raise ValueError(f"target must lie in [0, {classes - 1}], got values from {t.min()} to {t.max()}")
    return t.astype(np.intp)


def _distribution(t: np.ndarray, classes: int, smoothing: float, dtype) -> np.ndarray:
    q = np.full((t.size, classes), smoothing / classes, dtype)
    q[np.arange(t.size), t] += 1.0 - smoothing
    return q


class CrossEntropyLoss(Module):
    """``loss = criterion(logits, target)`` for logits (N, C) and class indices (N,); then
    ``criterion.backward()`` is the gradient with respect to the logits."""

    def __init__(self, reduction="mean", label_smoothing=0.0):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got reduction={reduction!r}")
        self.reduction = reduction
        self.label_smoothing = as_float(label_smoothing, "label_smoothing")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got label_smoothing={label_smoothing!r}")

    def forward(self, input, target):
        x = as_float_array(input, "input")
        if x.ndim != 2:
            raise ValueError(f"input must be logits of shape (N, C), got shape {tuple(x.shape)}")
        n, classes = x.shape
        t = _targets(target, n, classes)
        log_p = _log_softmax(x)
        q = _distribution(t, classes, self.label_smoothing, x.dtype)
        losses = -(q * log_p).sum(axis=1)
        # Kept in every mode: the loss is where backward starts, and it holds only (N, C) arrays.
        self.__dict__["_saved"] = {"p": np.exp(log_p), "q": q}
        if self.reduction == "none":
            return losses
        total = losses.sum()
        return total / n if self.reduction == "mean" and n else total

    def backward(self, grad_output=1.0):
        """d(loss)/d(logits), times ``grad_output`` (a scalar, or one value per sample for "none")."""
        saved = self._saved_for_backward()
        g = saved["p"] - saved["q"]
        scale = np.asarray(grad_output, g.dtype)
        if self.reduction == "none":
            return g * scale.reshape(-1, 1) if scale.ndim else g * scale
        if self.reduction == "mean" and len(g):
            scale = scale / len(g)
        return g * scale

    def extra_repr(self):
        return f"reduction={self.reduction!r}" + (
            f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        )


def cross_entropy(input, target, reduction="mean", label_smoothing=0.0):
    """The loss alone, as torch.nn.functional.cross_entropy (class-index targets)."""
    return CrossEntropyLoss(reduction, label_smoothing)(input, target)
