"""Layer objects over NumPy parameters, with torch.nn's names, arguments and state_dict keys.

>>> import numpy as np
>>> from fastconv import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
>>> net(np.ones((1, 3, 8, 8), np.float32)).shape
(1, 2)
>>> sorted(net.state_dict())[:3]
['0.bias', '0.weight', '1.bias']
"""

from . import init
from .container import Sequential
from .layers import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Flatten, Identity, Linear, MaxPool2d, ReLU
from .loss import CrossEntropyLoss, cross_entropy
from .module import IncompatibleKeys, Module, enable_grad, no_grad
from .activations import Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, ReLU6, Sigmoid, SiLU, Softmax, Tanh
from .extra import AdaptiveMaxPool2d, Dropout, FunctionalConv2d, FunctionalLinear, LocalResponseNorm
from .shape import (
    Add,
    Chunk,
    Concat,
    Elementwise,
    GetItem,
    Mean,
    Mul,
    Neg,
    Pad,
    Permute,
    Reshape,
    Size,
    Split,
    Sum,
    Transpose,
)

__all__ = [
    "Module",
    "Sequential",
    "Conv2d",
    "BatchNorm2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ReLU",
    "Linear",
    "Flatten",
    "Identity",
    "IncompatibleKeys",
    "init",
    "CrossEntropyLoss",
    "cross_entropy",
    "enable_grad",
    "no_grad",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "LeakyReLU",
    "ReLU6",
    "Sigmoid",
    "SiLU",
    "Softmax",
    "Tanh",
    "AdaptiveMaxPool2d",
    "Dropout",
    "FunctionalConv2d",
    "FunctionalLinear",
    "LocalResponseNorm",
    "Add",
    "Chunk",
    "Concat",
    "Elementwise",
    "GetItem",
    "Mean",
    "Mul",
    "Neg",
    "Pad",
    "Permute",
    "Reshape",
    "Size",
    "Split",
    "Sum",
    "Transpose",
]
