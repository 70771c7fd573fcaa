"""Folding an eval-mode batch norm into the convolution before it.

In eval mode batch norm is an affine map per channel, ``y = x * scale + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``, so
``bn(conv(x))`` equals a convolution with weights ``w * scale`` (per output channel) and bias
``b * scale + shift``: one pass over the data instead of two.  The arithmetic is done in float64
and rounded once, so the fused model stays within float32 rounding of the unfused one.
"""

from __future__ import annotations

import numpy as np


def fold_batch_norm(conv, bn, name: str = "batch norm") -> None:
    """Fold ``bn`` into ``conv``'s weight and bias, in place (``bn`` itself is left unchanged)."""
    from .layers import BatchNorm2d, Conv2d

    if not isinstance(conv, Conv2d) or not isinstance(bn, BatchNorm2d):
        raise TypeError(
            f"fuse: {name}: expected a Conv2d followed by a BatchNorm2d, "
            f"got {type(conv).__name__} and {type(bn).__name__}"
        )
    if bn.training:
        raise ValueError(
            f"fuse: {name} is in training mode; fuse() folds the running statistics, so call model.eval() first"
        )
    if bn.running_mean is None:
        raise ValueError(
            f"fuse: {name} has track_running_stats=False: it always normalises with "
            f"batch statistics, which cannot be folded into weights"
        )
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"fuse: {name} has {bn.num_features} features but the convolution before it "
            f"has {conv.out_channels} output channels"
        )
    dtype = conv.weight.dtype
    mean = bn.running_mean.astype(np.float64)
    scale = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    shift = -mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight
        shift = shift * bn.weight + bn.bias
    bias = np.zeros(conv.out_channels) if conv.bias is None else conv.bias.astype(np.float64)
    conv.weight = (conv.weight.astype(np.float64) * scale[:, None, None, None]).astype(dtype)
    conv.bias = (bias * scale + shift).astype(dtype)
