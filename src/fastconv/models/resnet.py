"""ResNets with torchvision's structure and parameter names, so its state_dict() loads unchanged.

ResNet v1.5 (He et al. 2016, with the downsampling stride on the 3x3 convolution of the
bottleneck, as torchvision): a 7x7/2 stem, a 3x3/2 max pool, four stages of residual blocks
(``layer1`` .. ``layer4``, blocks ``0`` .. ``n-1``), global average pooling and ``fc``.

Names follow torchvision exactly: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``;
each block ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0`` (1x1 conv) ``/.1`` (batch norm).

Each convolution + batch norm [+ skip connection] [+ relu] runs through :func:`conv_bn`.  After
``model.eval().fuse()`` the batch norms are folded into the convolutions and every such group
becomes one convolution call whose epilogue adds the skip connection and applies the ReLU.

Training: each block keeps its groups' outputs (relu's gradient needs their sign) and its
backward runs the groups in reverse, adding the skip connection's gradient to the input's.
"""

from __future__ import annotations

import numpy as np

from .. import grad, nn
from ..nn import init
from ..nn.module import as_float_dtype

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "conv_bn",
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


def conv_bn(conv: nn.Conv2d, bn, x, relu: nn.ReLU | None = None, residual=None):
    """``relu(bn(conv(x)) + residual)``, each part optional; one fused conv2d call once bn is folded."""
    if isinstance(bn, nn.Identity):  # fuse() folded the batch norm into conv
        return conv(x, residual=residual, activation=None if relu is None else "relu")
    y = bn(conv(x))
    if residual is not None:
        y += residual  # y is a fresh array (NumPy or on the device); the caller's residual is left alone
    return y if relu is None else relu(y)


def conv_bn_backward(
    conv: nn.Conv2d, bn, grad_output, relu: nn.ReLU | None = None, output=None, residual: bool = False
):
    """The gradients of :func:`conv_bn` given its ``output``: (grad of x, grad of residual or None)."""
    if isinstance(bn, nn.Identity):  # one fused convolution did relu and the residual
        g = conv.backward(grad_output)
        return g if residual else (g, None)
    g = grad_output if relu is None else grad.relu_input(output, grad_output, backend=relu.backend)
    return conv.backward(bn.backward(g)), (g if residual else None)


def _skip_backward(block, grad_x, grad_identity):
    """A block input's gradient: through the convolutions plus through the skip connection."""
    if block.downsample is not None:
        grad_identity = block.downsample.backward(grad_identity)
    return grad_x + grad_identity


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
    )


def conv1x1(in_planes, out_planes, stride=1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a skip connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock only supports groups=1 and base_width=64, got groups={groups}, base_width={base_width}"
            )
        if dilation > 1:
            raise ValueError(f"BasicBlock does not support dilation > 1, got dilation={dilation}")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_bn(self.conv1, self.bn1, x, self.relu)
        y = conv_bn(self.conv2, self.bn2, out, self.relu, residual=identity)
        self._save(out=out, y=y)
        return y

    def backward(self, grad_output):
        saved = self._saved_for_backward()
        g, g_identity = conv_bn_backward(self.conv2, self.bn2, grad_output, self.relu, saved["y"], residual=True)
        gx, _ = conv_bn_backward(self.conv1, self.bn1, g, self.relu, saved["out"])
        return _skip_backward(self, gx, g_identity)

    def fusable_pairs(self):
        return [("conv1", "bn1"), ("conv2", "bn2")]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4, and a skip connection."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out1 = conv_bn(self.conv1, self.bn1, x, self.relu)
        out2 = conv_bn(self.conv2, self.bn2, out1, self.relu)
        y = conv_bn(self.conv3, self.bn3, out2, self.relu, residual=identity)
        self._save(out1=out1, out2=out2, y=y)
        return y

    def backward(self, grad_output):
        saved = self._saved_for_backward()
        g, g_identity = conv_bn_backward(self.conv3, self.bn3, grad_output, self.relu, saved["y"], residual=True)
        g, _ = conv_bn_backward(self.conv2, self.bn2, g, self.relu, saved["out2"])
        gx, _ = conv_bn_backward(self.conv1, self.bn1, g, self.relu, saved["out1"])
        return _skip_backward(self, gx, g_identity)

    def fusable_pairs(self):
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]


class ResNet(nn.Module):
    """torchvision.models.ResNet's constructor, structure, names and initialisation.

    >>> import numpy as np
    >>> from fastconv.models import resnet18
    >>> model = resnet18(num_classes=10).eval()
    >>> model(np.zeros((1, 3, 32, 32), np.float32)).shape
    (1, 10)
    """

    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        zero_init_residual=False,
        groups=1,
        width_per_group=64,
        replace_stride_with_dilation=None,
        dtype=None,
    ):
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be BasicBlock or Bottleneck, got {block!r}")
        if not isinstance(layers, (list, tuple)) or len(layers) != 4:
            raise ValueError(f"layers must be 4 block counts, one per stage, got layers={layers!r}")
        layers = [_positive(n, "layers") for n in layers]
        num_classes = _positive(num_classes, "num_classes")
        groups = _positive(groups, "groups")
        width_per_group = _positive(width_per_group, "width_per_group")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                f"replace_stride_with_dilation should be None or a 3-element tuple, "
                f"got {replace_stride_with_dilation!r}"
            )
        dtype = as_float_dtype(dtype)
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight = init.kaiming_normal_fan_out(m.weight.shape, np.float32)
        if zero_init_residual:  # each block starts as the identity map
            for m in self.modules():
                last = (
                    getattr(m, "bn3", None)
                    if isinstance(m, Bottleneck)
                    else getattr(m, "bn2", None)
                    if isinstance(m, BasicBlock)
                    else None
                )
                if last is not None:
                    last.weight = np.zeros_like(last.weight)
        if dtype != np.float32:
            self.astype(dtype)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(self.inplanes, planes, groups=self.groups, base_width=self.base_width, dilation=self.dilation)
            )
        return nn.Sequential(*layers)

    def forward(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"ResNet expects a batch of images (N, 3, H, W), got shape {getattr(x, 'shape', x)}")
        stem = conv_bn(self.conv1, self.bn1, x, self.relu)
        x = self.maxpool(stem)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        self._save(stem=stem, pooled_shape=x.shape)
        return self.fc(x.reshape(x.shape[0], -1))

    def backward(self, grad_output):
        saved = self._saved_for_backward()
        g = self.fc.backward(grad_output).reshape(saved["pooled_shape"])
        g = self.avgpool.backward(g)
        for stage in (self.layer4, self.layer3, self.layer2, self.layer1):
            g = stage.backward(g)
        g = self.maxpool.backward(g)
        return conv_bn_backward(self.conv1, self.bn1, g, self.relu, saved["stem"])[0]

    def fusable_pairs(self):
        return [("conv1", "bn1")]


def _positive(v, name):
    from .._args import as_int

    v = as_int(v, name)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {name}={v}")
    return v


def resnet18(**kwargs) -> ResNet:
    """ResNet-18: BasicBlock x [2, 2, 2, 2]; kwargs as ResNet (num_classes=1000, ...)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34: BasicBlock x [3, 4, 6, 3]."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 v1.5: Bottleneck x [3, 4, 6, 3]."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 v1.5: Bottleneck x [3, 4, 23, 3]."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152 v1.5: Bottleneck x [3, 8, 36, 3]."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d: grouped 3x3 convolutions (32 groups of width 4 per 64 planes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


def resnext101_32x8d(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8, **kwargs)


def wide_resnet50_2(**kwargs) -> ResNet:
    """Wide ResNet-50-2: bottlenecks twice as wide inside."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128, **kwargs)


def wide_resnet101_2(**kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], width_per_group=128, **kwargs)


#: Every architecture by torchvision's name.
ARCHS = {
    f.__name__: f
    for f in (
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
}
