"""Model definitions on fastconv.nn layers, with torchvision's parameter names.

>>> from fastconv import models
>>> model = models.resnet50(num_classes=10)
>>> "layer1.0.downsample.0.weight" in model.state_dict()
True
"""

from .resnet import (
    ARCHS,
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    wide_resnet50_2,
    wide_resnet101_2,
)

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "ARCHS",
]
