"""Random initialisation with torch's default distributions, from one seedable generator.

The distributions (not the random streams) match torch: a layer built here has weights of the
same scale as its torch twin, which is what a forward pass on random weights needs.
"""

from __future__ import annotations

import math

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Reseed the generator every fastconv layer draws its initial weights from.

    >>> from fastconv import nn
    >>> nn.init.manual_seed(0); a = nn.Linear(2, 2).weight
    >>> nn.init.manual_seed(0); b = nn.Linear(2, 2).weight
    >>> bool((a == b).all())
    True
    """
    global _rng
    _rng = np.random.default_rng(seed)


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs feeding one output: in_features, or in_channels/groups x kernel height x width."""
    return shape[1] * math.prod(shape[2:])


def fan_out(shape: tuple[int, ...]) -> int:
    return shape[0] * math.prod(shape[2:])


def uniform(shape, bound: float, dtype) -> np.ndarray:
    return _rng.uniform(-bound, bound, shape).astype(dtype)


def default_weight(shape, dtype) -> np.ndarray:
    """torch's Conv2d/Linear default, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1.0 / math.sqrt(max(1, fan_in(shape))), dtype)


def default_bias(weight_shape, dtype) -> np.ndarray:
    return uniform(weight_shape[0], 1.0 / math.sqrt(max(1, fan_in(weight_shape))), dtype)


def kaiming_normal_fan_out(shape, dtype) -> np.ndarray:
    """N(0, 2/fan_out): torchvision's ResNet convolutions (mode="fan_out", nonlinearity="relu")."""
    return (_rng.standard_normal(shape) * math.sqrt(2.0 / fan_out(shape))).astype(dtype)
