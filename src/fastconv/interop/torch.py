"""torch <-> fastconv: convert models, or run a torch model's layers through fastconv.

``from_torch(module)``
    A fastconv copy (same names, weights and train/eval modes) of a torch model: a Sequential of
    Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ReLU, Linear, Flatten and
    Identity, or a torchvision ResNet (or ResNeXt / wide ResNet), keeps its module tree; any other
    CNN is traced into a ``fastconv.graph.Graph`` (``fastconv.interop.fx``).  An op without a
    fastconv equivalent is an ``UnsupportedOpError`` naming it.
``to_torch(module)``
    The reverse: a plain torch model with the same state_dict (a torch.fx GraphModule for a Graph).
``patch(module, backend=None)`` / ``unpatch(module)`` / ``with patched(module, backend):``
    Keep the torch model but route its Conv2d, BatchNorm2d and pooling layers through fastconv's
    functional API on ``backend``; inference only (under ``torch.no_grad()``), on the CPU.

>>> import torch, numpy as np
>>> from fastconv.interop.torch import from_torch, patch, unpatch
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
>>> x = torch.randn(1, 3, 8, 8)
>>> np.allclose(from_torch(net)(x.numpy()), net(x).detach().numpy(), atol=1e-5)
True
>>> with torch.no_grad():
...     y = patch(net, backend="im2col")(x)
>>> unpatch(net) is net
True
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn as tnn

from .. import api
from .. import nn as fnn
from ..models import resnet as fresnet
from ..nn.module import check_backend
from . import _torch_models

# -- torch -> fastconv -------------------------------------------------------------------------


def _dtype(m, path) -> str | None:
    for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
        if t.is_floating_point():
            if t.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"from_torch: layer {path} has dtype {t.dtype}; fastconv supports float32 and float64")
            return str(t.dtype).removeprefix("torch.")
    return None


def _leaf_from_torch(m, path):
    dt = _dtype(m, path)
    t = type(m)
    if t is tnn.Conv2d:
        return fnn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            dtype=dt,
        )
    if t is tnn.BatchNorm2d:
        return fnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, dtype=dt)
    if t is tnn.MaxPool2d:
        if m.return_indices:
            raise TypeError(
                f"from_torch: layer {path} (MaxPool2d) has return_indices=True, which fastconv does not support"
            )
        return fnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
    if t is tnn.AvgPool2d:
        return fnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
    if t is tnn.AdaptiveAvgPool2d:
        return fnn.AdaptiveAvgPool2d(m.output_size)
    if t is tnn.ReLU:
        return fnn.ReLU(m.inplace)
    if t is tnn.Linear:
        return fnn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dt)
    if t is tnn.Flatten:
        return fnn.Flatten(m.start_dim, m.end_dim)
    if t is tnn.Identity:
        return fnn.Identity()
    return None


#: torchvision's ResNet classes, recognised by name and by the children they must have.
_RESNET_PARTS = {
    "ResNet": (
        fresnet.ResNet,
        {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"},
        ("inplanes", "dilation", "groups", "base_width"),
    ),
    "BasicBlock": (fresnet.BasicBlock, {"conv1", "bn1", "relu", "conv2", "bn2"}, ("stride",)),
    "Bottleneck": (fresnet.Bottleneck, {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"}, ("stride",)),
}

SUPPORTED = (
    "Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ReLU, Linear, Flatten, Identity, "
    "Sequential and torchvision's ResNet/BasicBlock/Bottleneck"
)


class _NotStructural(TypeError):
    """The model is not a tree of the layers above: it converts through the graph instead."""


def _unsupported(m, path, why=""):
    kind = f"{type(m).__module__}.{type(m).__qualname__}"
    return _NotStructural(f"from_torch: unsupported layer {path!r} ({kind}){why}; fastconv converts {SUPPORTED}")


def _from_torch(m, path):
    if not isinstance(m, tnn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(m).__name__} at {path!r}")
    leaf = _leaf_from_torch(m, path)
    if leaf is not None:
        leaf.load_state_dict(m.state_dict())
    elif type(m) is tnn.Sequential:
        leaf = fnn.Sequential(
            OrderedDict((name, _from_torch(child, f"{path}.{name}")) for name, child in m.named_children())
        )
    elif type(m).__name__ in _RESNET_PARTS:
        cls, required, attrs = _RESNET_PARTS[type(m).__name__]
        names = {name for name, _ in m.named_children()}
        if not required <= names or not names <= required | {"downsample"}:
            raise _unsupported(m, path, f": children {sorted(names)} are not torchvision's {sorted(required)}")
        leaf = cls.__new__(cls)
        fnn.Module.__init__(leaf)
        for attr in attrs:
            if hasattr(m, attr):
                setattr(leaf, attr, getattr(m, attr))
        if cls is not fresnet.ResNet:
            leaf.downsample = None
        for name, child in m.named_children():
            setattr(leaf, name, _from_torch(child, f"{path}.{name}"))
        if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
            raise _unsupported(m, path, ": it holds its own parameters")
    else:
        raise _unsupported(m, path)
    leaf.__dict__["training"] = bool(m.training)
    return leaf


def from_torch(module, backend: str | None = None, *, graph: bool | None = None, example_inputs=None):
    """A fastconv model equal to the torch ``module``: same names, weights and train/eval modes.

    A ``Sequential`` of the layers above or a torchvision ResNet becomes the same module tree
    (``fastconv.nn.Sequential``, ``fastconv.models.ResNet``); any other model (or every model,
    with ``graph=True``) is traced with torch.fx into a ``fastconv.graph.Graph`` of fastconv ops
    (see ``fastconv.interop.fx``); where torch.fx cannot trace the forward, ``example_inputs`` (a
    tuple of tensors) lets torch.export run it once instead.  ``backend`` (optional) is set for the
    whole converted model.
    """
    if not isinstance(module, tnn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    model = None
    with torch.no_grad():
        if not graph:
            try:
                model = _from_torch(module, type(module).__name__)
            except _NotStructural:
                if graph is False:
                    raise
        if model is None:
            from .fx import TraceError, graph_from_torch

            try:
                model = graph_from_torch(module)
            except TraceError:
                if example_inputs is None:
                    raise
                from ._export import graph_from_export

                model = graph_from_export(module, example_inputs)
    return model.to_backend(backend) if backend is not None else model


# -- fastconv -> torch -------------------------------------------------------------------------


def _torch_dtype(m):
    for a in m._parameters.values():
        if a is not None:
            return torch.float64 if a.dtype == np.float64 else torch.float32
    return None


def _leaf_to_torch(m):
    t, dt = type(m), _torch_dtype(m)
    if t is fnn.Conv2d:
        return tnn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            dtype=dt,
        )
    if t is fnn.BatchNorm2d:
        return tnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, dtype=dt)
    if t is fnn.MaxPool2d:
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
    if t is fnn.AvgPool2d:
        return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
    if t is fnn.AdaptiveAvgPool2d:
        return tnn.AdaptiveAvgPool2d(m.output_size)
    if t is fnn.ReLU:
        return tnn.ReLU(m.inplace)
    if t is fnn.Linear:
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dt)
    if t is fnn.Flatten:
        return tnn.Flatten(m.start_dim, m.end_dim)
    if t is fnn.Identity:
        return tnn.Identity()
    return None


def _graph_leaf_to_torch(m, path):
    """A layer of a Graph as a torch layer (the activations and the rest of fx's table included)."""
    out = _leaf_to_torch(m)
    if out is None:
        reverse = {
            fnn.ReLU6: lambda: tnn.ReLU6(),
            fnn.Sigmoid: tnn.Sigmoid,
            fnn.Tanh: tnn.Tanh,
            fnn.SiLU: tnn.SiLU,
            fnn.Hardswish: tnn.Hardswish,
            fnn.Hardsigmoid: tnn.Hardsigmoid,
            fnn.Hardtanh: lambda: tnn.Hardtanh(m.min_val, m.max_val),
            fnn.LeakyReLU: lambda: tnn.LeakyReLU(m.negative_slope),
            fnn.Softmax: lambda: tnn.Softmax(m.dim),
            fnn.Dropout: lambda: tnn.Dropout(m.p),
            fnn.AdaptiveMaxPool2d: lambda: tnn.AdaptiveMaxPool2d(m.output_size),
            fnn.LocalResponseNorm: lambda: tnn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k),
        }
        if type(m) not in reverse:
            raise TypeError(f"to_torch: no torch equivalent for layer {path!r} ({type(m).__name__})")
        return reverse[type(m)]().train(m.training)
    out.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    return out.train(m.training)


_TORCH_PARTS = {
    fresnet.ResNet: _torch_models.ResNet,
    fresnet.BasicBlock: _torch_models.BasicBlock,
    fresnet.Bottleneck: _torch_models.Bottleneck,
}


def _to_torch(m, path):
    out = _leaf_to_torch(m)
    if out is not None:
        out.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    elif type(m) is fnn.Sequential:
        out = tnn.Sequential(OrderedDict((name, _to_torch(c, f"{path}.{name}")) for name, c in m.named_children()))
    elif type(m) in _TORCH_PARTS:
        out = _TORCH_PARTS[type(m)]()
        for name, child in m.named_children():
            setattr(out, name, _to_torch(child, f"{path}.{name}"))
    else:
        raise TypeError(f"to_torch: no torch equivalent for layer {path!r} ({type(m).__name__})")
    return out.train(m.training)


def to_torch(module):
    """A torch model with the fastconv ``module``'s structure, state_dict and train/eval modes.

    A ``Graph`` becomes a torch.fx ``GraphModule`` with the same layer names.
    """
    if not isinstance(module, fnn.Module):
        raise TypeError(f"to_torch expects a fastconv.nn.Module, got {type(module).__name__}")
    from ..graph import Graph

    if isinstance(module, Graph):
        from ._graph_to_torch import graph_to_torch

        return graph_to_torch(module, _graph_leaf_to_torch)
    return _to_torch(module, type(module).__name__)


# -- patching ----------------------------------------------------------------------------------


def _np(t, what):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; fastconv runs on the CPU")
    return t.detach().numpy()


def _conv(m, x, backend):
    return api.conv2d(
        _np(x, "input"),
        _np(m.weight, "weight"),
        _np(m.bias, "bias"),
        m.stride,
        m.padding,
        m.dilation,
        m.groups,
        padding_mode=m.padding_mode,
        backend=backend,
    )


def _batch_norm(m, x, backend):
    if x.dim() != 4:
        raise ValueError(f"expected 4D input (got {x.dim()}D input)")
    momentum = m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(m.num_batches_tracked)
    use_running = not m.training or m.track_running_stats
    mean = _np(m.running_mean, "running_mean") if use_running else None
    var = _np(m.running_var, "running_var") if use_running else None
    # The running statistics are NumPy views of the buffers: a training step updates them in place.
    return api.batch_norm(
        _np(x, "input"),
        mean,
        var,
        _np(m.weight, "weight"),
        _np(m.bias, "bias"),
        training=m.training or mean is None,
        momentum=0.0 if momentum is None else momentum,
        eps=m.eps,
        backend=backend,
    )


def _max_pool(m, x, backend):
    return api.max_pool2d(_np(x, "input"), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, backend=backend)


def _avg_pool(m, x, backend):
    return api.avg_pool2d(
        _np(x, "input"),
        m.kernel_size,
        m.stride,
        m.padding,
        m.ceil_mode,
        m.count_include_pad,
        m.divisor_override,
        backend=backend,
    )


def _adaptive_pool(m, x, backend):
    return api.adaptive_avg_pool2d(_np(x, "input"), m.output_size, backend=backend)


_PATCHERS = {
    tnn.Conv2d: _conv,
    tnn.BatchNorm2d: _batch_norm,
    tnn.MaxPool2d: _max_pool,
    tnn.AvgPool2d: _avg_pool,
    tnn.AdaptiveAvgPool2d: _adaptive_pool,
}
_SAVED = "_fastconv_saved_forward"


def _patched_forward(m, name, fn, backend):
    kind = type(m).__name__

    def forward(x):
        if torch.is_grad_enabled() and (
            getattr(x, "requires_grad", False) or any(p.requires_grad for p in m.parameters(recurse=False))
        ):
            raise RuntimeError(
                f"{kind} {name!r} runs through fastconv, which has no backward pass: "
                f"run the model under torch.no_grad() or torch.inference_mode()"
            )
        try:
            return torch.from_numpy(fn(m, x, backend))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"fastconv-patched {kind} {name!r}: {exc}") from None

    return forward


def patch(module, backend: str | None = None):
    """Run ``module``'s Conv2d, BatchNorm2d and pooling layers through fastconv on ``backend``.

    The model stays a torch model: other layers, the skip connections and the control flow are
    torch's.  Weights are read at each call, so later changes are seen.  Inference only: calls
    must run under ``torch.no_grad()``.  Patching again changes the backend.  Returns ``module``.
    """
    if not isinstance(module, tnn.Module):
        raise TypeError(f"patch expects a torch.nn.Module, got {type(module).__name__}")
    backend = check_backend(backend)
    for name, m in module.named_modules():
        fn = _PATCHERS.get(type(m))
        if fn is None:
            continue
        if fn is _max_pool and m.return_indices:
            raise ValueError(f"patch: {name!r} (MaxPool2d) has return_indices=True, which fastconv does not support")
        if _SAVED not in m.__dict__:
            m.__dict__[_SAVED] = m.__dict__.get("forward")
        m.forward = _patched_forward(m, name or type(m).__name__, fn, backend)
    return module


def unpatch(module):
    """Undo ``patch``: every layer of ``module`` runs on torch again.  Returns ``module``."""
    if not isinstance(module, tnn.Module):
        raise TypeError(f"unpatch expects a torch.nn.Module, got {type(module).__name__}")
    for m in module.modules():
        if _SAVED in m.__dict__:
            saved = m.__dict__.pop(_SAVED)
            if saved is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = saved
    return module


@contextlib.contextmanager
def patched(module, backend: str | None = None):
    """``patch`` for the duration of a ``with`` block, then ``unpatch``."""
    patch(module, backend)
    try:
        yield module
    finally:
        unpatch(module)
