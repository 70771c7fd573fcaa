"""torch model -> fastconv ``Graph`` by torch.fx symbolic tracing.

Every node of the traced graph becomes a graph node: torch.nn layers (``call_module``) become the
matching fastconv layers at the same dotted names, with their weights; functions
(``F.relu``, ``torch.cat``, ``operator.add`` ...) and tensor methods (``x.view``, ``x.mean``)
become parameter-free layers; tensors the forward reads directly (``self.scale``) become
parameters at their names.  Anything else is an ``UnsupportedOpError`` naming the op, the node
and the source line.
"""

from __future__ import annotations

import operator
import os

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn as tnn

from .. import nn as fnn
from ..graph import Graph, Node, Ref, UnsupportedOpError
from .torch import _leaf_from_torch

_PATCHED_HINT = (
    "To run such a model on fastconv's kernels anyway, keep it in torch: "
    "`with fastconv.interop.torch.patched(model): model(x)` routes its Conv2d, BatchNorm2d and "
    "pooling layers through fastconv and leaves the rest to torch."
)


# -- torch.nn layers --------------------------------------------------------------------------


def _hardtanh(m):
    return fnn.Hardtanh(m.min_val, m.max_val)


_LEAVES = {
    tnn.ReLU6: lambda m: fnn.ReLU6(),
    tnn.Hardtanh: _hardtanh,
    tnn.LeakyReLU: lambda m: fnn.LeakyReLU(m.negative_slope),
    tnn.Sigmoid: lambda m: fnn.Sigmoid(),
    tnn.Tanh: lambda m: fnn.Tanh(),
    tnn.SiLU: lambda m: fnn.SiLU(),
    tnn.Hardswish: lambda m: fnn.Hardswish(),
    tnn.Hardsigmoid: lambda m: fnn.Hardsigmoid(),
    tnn.Softmax: lambda m: fnn.Softmax(m.dim),
    tnn.Dropout: lambda m: fnn.Dropout(m.p),
    tnn.Dropout2d: lambda m: fnn.Dropout(m.p, channels=True),
    tnn.AdaptiveMaxPool2d: lambda m: fnn.AdaptiveMaxPool2d(m.output_size, m.return_indices),
    tnn.LocalResponseNorm: lambda m: fnn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k),
}


def _convert_leaf(m, path):
    layer = _leaf_from_torch(m, path)
    if layer is None and type(m) in _LEAVES:
        layer = _LEAVES[type(m)](m)
    if layer is None:
        return None
    if m.state_dict():
        layer.load_state_dict(m.state_dict())
    layer.__dict__["training"] = bool(m.training)
    return layer


# -- functions and methods -------------------------------------------------------------------
# Each converter takes torch's arguments (tensors as fx nodes) and returns (layer, args, kwargs):
# the layer is called with args/kwargs whose nodes become the graph's inputs.


def _unary(layer_factory):
    def convert(input, *args, **kwargs):
        return layer_factory(*args, **kwargs), (input,), {}

    return convert


def _no_inplace(factory):
    def make(*args, inplace=False, **kwargs):
        return factory(*args, **kwargs)

    return make


def _binary(op):
    def convert(input, other, *, alpha=None, out=None):
        return fnn.Elementwise(op, alpha), (input, other), {}

    return convert


def _reversed(op):
    def convert(input, other):
        return fnn.Elementwise(op), (other, input), {}

    return convert


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise ValueError("return_indices=True is not supported: fastconv's max_pool2d returns values only")
    return fnn.MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode=ceil_mode), (input,), {}


def _avg_pool2d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    return fnn.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), (input,), {}


def _adaptive_max(input, output_size, return_indices=False):
    return fnn.AdaptiveMaxPool2d(output_size, return_indices), (input,), {}


def _dropout(input, p=0.5, training=True, inplace=False):
    return fnn.Dropout(p, always=training), (input,), {}


def _flatten(input, start_dim=0, end_dim=-1):
    return fnn.Flatten(start_dim, end_dim), (input,), {}


def _method_flatten(input, start_dim=0, end_dim=-1):
    return _flatten(input, start_dim, end_dim)


def _cat(tensors, dim=0, *, out=None):
    return fnn.Concat(dim), (list(tensors),), {}


def _reshape(input, *shape):
    return fnn.Reshape(), (input, *shape), {}


def _mean(input, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        raise ValueError("mean(dtype=...) is not supported")
    return fnn.Mean(dim, keepdim), (input,), {}


def _size(input, dim=None):
    return fnn.Size(dim), (input,), {}


def _getattr(obj, name):
    if name != "shape":
        raise ValueError(f"attribute {name!r} of a tensor is not supported (only .shape)")
    return fnn.Size(), (obj,), {}


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return fnn.FunctionalConv2d(stride, padding, dilation, groups), (input, weight, bias), {}


def _linear(input, weight, bias=None):
    return fnn.FunctionalLinear(), (input, weight, bias), {}


def _softmax(input, dim=None, _stacklevel=3, dtype=None):
    return fnn.Softmax(dim), (input,), {}


def _clamp(input, min=None, max=None):
    return fnn.Hardtanh(min, max), (input,), {}


def _permute(input, *dims):
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
    return fnn.Permute(dims), (input,), {}


def _chunk(input, chunks, dim=0):
    return fnn.Chunk(chunks, dim), (input,), {}


def _identity(input, *args, **kwargs):
    return fnn.Identity(), (input,), {}


def _stochastic_depth(input, p, mode, training=True):
    if training:
        raise ValueError("stochastic depth in training mode is random per sample; convert the model in eval mode")
    return fnn.Identity(), (input,), {}


#: Functions of other libraries, by qualified name (they are not imported here).
_BY_NAME = {"torchvision.ops.stochastic_depth.stochastic_depth": _stochastic_depth}

_relu = _unary(_no_inplace(fnn.ReLU))
_FUNCTIONS = {
    F.relu: _relu,
    torch.relu: _relu,
    torch.relu_: _relu,
    F.relu_: _relu,
    F.relu6: _unary(_no_inplace(fnn.ReLU6)),
    F.leaky_relu: _unary(_no_inplace(fnn.LeakyReLU)),
    F.hardtanh: _unary(_no_inplace(fnn.Hardtanh)),
    torch.sigmoid: _unary(fnn.Sigmoid),
    F.sigmoid: _unary(fnn.Sigmoid),
    torch.tanh: _unary(fnn.Tanh),
    F.tanh: _unary(fnn.Tanh),
    F.silu: _unary(_no_inplace(fnn.SiLU)),
    F.hardswish: _unary(_no_inplace(fnn.Hardswish)),
    F.hardsigmoid: _unary(_no_inplace(fnn.Hardsigmoid)),
    F.softmax: _softmax,
    torch.softmax: _softmax,
    torch.clamp: _clamp,
    torch.clip: _clamp,
    F.max_pool2d: _max_pool2d,
    F.avg_pool2d: _avg_pool2d,
    torch.max_pool2d: _max_pool2d,
    F.adaptive_avg_pool2d: lambda input, output_size: (fnn.AdaptiveAvgPool2d(output_size), (input,), {}),
    F.adaptive_max_pool2d: _adaptive_max,
    F.dropout: _dropout,
    F.dropout2d: _dropout,
    F.conv2d: _conv2d,
    F.linear: _linear,
    torch.flatten: _flatten,
    torch.cat: _cat,
    torch.concat: _cat,
    torch.concatenate: _cat,
    torch.reshape: lambda input, shape: _reshape(input, shape),
    torch.mean: _mean,
    torch.permute: _permute,
    torch.chunk: _chunk,
    torch.transpose: lambda input, dim0, dim1: (fnn.Transpose(dim0, dim1), (input,), {}),
    torch.add: _binary("add"),
    torch.sub: _binary("sub"),
    torch.mul: _binary("mul"),
    torch.div: _binary("div"),
    operator.add: _binary("add"),
    operator.iadd: _binary("add"),
    operator.sub: _binary("sub"),
    operator.isub: _binary("sub"),
    operator.mul: _binary("mul"),
    operator.imul: _binary("mul"),
    operator.truediv: _binary("div"),
    operator.itruediv: _binary("div"),
    operator.floordiv: _binary("floordiv"),
    operator.neg: lambda input: (fnn.Neg(), (input,), {}),
    operator.getitem: lambda obj, index: (fnn.GetItem(), (obj, index), {}),
    getattr: _getattr,
}
_METHODS = {
    "relu": _relu,
    "relu_": _relu,
    "sigmoid": _unary(fnn.Sigmoid),
    "sigmoid_": _unary(fnn.Sigmoid),
    "tanh": _unary(fnn.Tanh),
    "softmax": _softmax,
    "clamp": _clamp,
    "clamp_": _clamp,
    "clip": _clamp,
    "add": _binary("add"),
    "add_": _binary("add"),
    "sub": _binary("sub"),
    "mul": _binary("mul"),
    "mul_": _binary("mul"),
    "div": _binary("div"),
    "__radd__": _reversed("add"),
    "__rmul__": _reversed("mul"),
    "__rsub__": _reversed("sub"),
    "view": _reshape,
    "reshape": _reshape,
    "flatten": _method_flatten,
    "mean": _mean,
    "size": _size,
    "permute": _permute,
    "transpose": lambda input, dim0, dim1: (fnn.Transpose(dim0, dim1), (input,), {}),
    "chunk": _chunk,
    "contiguous": _identity,
    "clone": _identity,
    "detach": _identity,
}


def _describe_target(node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_module":
        return t
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or repr(t)
    if mod in ("_operator", "operator"):
        mod = "operator"
    return f"{mod}.{name}" if mod else name


def source_line(node) -> str:
    """'file.py:LINE: code' of the forward line that made ``node`` (the innermost frame outside torch)."""
    trace = node.stack_trace or node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    torch_dir = os.path.dirname(torch.__file__)
    for i in range(len(lines) - 1, -1, -1):
        parts = lines[i].split('"')
        if not lines[i].startswith("File ") or len(parts) < 3 or parts[1].startswith(torch_dir):
            continue
        lineno = lines[i].split(", line ")[-1].split(",")[0] if ", line " in lines[i] else "?"
        code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
        return f"{parts[1]}:{lineno}: {code}".rstrip(": ")
    return ""


def _error(node, what, why=""):
    src = source_line(node)
    at = f" at {src}" if src else ""
    return UnsupportedOpError(
        f"from_torch: unsupported op {what} in node {node.name!r}{at}{why}. "
        f"fastconv converts {SUPPORTED_SUMMARY}. {_PATCHED_HINT}"
    )


SUPPORTED_SUMMARY = (
    "Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d, AdaptiveAvg/MaxPool2d, Linear, Flatten, "
    "Identity, Dropout, LocalResponseNorm, ReLU, ReLU6, LeakyReLU, Hardtanh, Sigmoid, Tanh, "
    "SiLU, Hardswish, Hardsigmoid, Softmax and their functional forms, F.conv2d, F.linear, "
    "+ - * /, torch.cat, view/reshape/flatten, mean, permute/transpose, chunk, size and indexing"
)


class _Tracer(torch.fx.Tracer):
    def __init__(self):
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m, qualname):
        # torch.nn's layers stay whole (they map to fastconv layers); containers and user classes are traced
        return type(m) is not tnn.Sequential and super().is_leaf_module(m, qualname)


class TraceError(UnsupportedOpError):
    """torch.fx cannot trace the forward symbolically."""


def trace(module):
    """The torch.fx graph of ``module`` (with source lines recorded)."""
    tracer = _Tracer()
    try:
        return tracer.trace(module)
    except Exception as exc:  # data-dependent control flow, unsupported Python in forward
        raise TraceError(
            f"from_torch: torch.fx cannot trace {type(module).__name__}: {type(exc).__name__}: {exc}. "
            f"Passing example inputs (from_torch(model, example_inputs=(x,))) converts it through "
            f"torch.export instead, unless the control flow depends on tensor values. {_PATCHED_HINT}"
        ) from exc


def graph_from_torch(module) -> Graph:
    """The fastconv Graph of a torch ``module`` (its train/eval mode and weights included)."""
    fx_graph = trace(module)
    g = Graph()
    names: dict[str, str] = {}
    seen_modules: dict[str, bool] = {}
    submodules = dict(module.named_modules())

    def to_ref(v):
        return Ref(names[v.name]) if isinstance(v, torch.fx.Node) else v

    def refs(value):
        return torch.fx.node.map_aggregate(value, to_ref)

    for node in fx_graph.nodes:
        names[node.name] = node.name
        src = source_line(node)
        if node.op == "placeholder":
            g.nodes.append(Node(node.name, "input"))
        elif node.op == "get_attr":
            value = _fetch_attr(module, node.target)
            if not isinstance(value, torch.Tensor):
                raise _error(node, f"attribute {node.target!r} of type {type(value).__name__}")
            try:
                g._get_array(node.target)
            except KeyError:
                g.add_array(node.target, value.detach().numpy().copy(), isinstance(value, tnn.Parameter))
            g.nodes.append(Node(node.name, "attr", target=node.target, source=src))
        elif node.op == "call_module":
            m = submodules[node.target]
            if node.target not in seen_modules:
                layer = _convert_leaf(m, node.target)
                if layer is None:
                    raise _error(node, f"layer {type(m).__module__}.{type(m).__qualname__} ({node.target!r})")
                if isinstance(m, tnn.MaxPool2d) and m.return_indices:
                    raise _error(node, "MaxPool2d(return_indices=True)")
                g.add_module(node.target, layer)
                seen_modules[node.target] = True
            g.nodes.append(Node(node.name, "call", refs(node.args), refs(node.kwargs), target=node.target, source=src))
        elif node.op in ("call_function", "call_method"):
            table = _FUNCTIONS if node.op == "call_function" else _METHODS
            convert = table.get(node.target) if node.op == "call_method" or _hashable(node.target) else None
            if convert is None and node.op == "call_function":
                convert = _BY_NAME.get(_describe_target(node))
            if convert is None:
                raise _error(node, _describe_target(node))
            try:
                layer, args, kwargs = convert(*node.args, **node.kwargs)
            except (TypeError, ValueError) as exc:
                raise _error(node, _describe_target(node), f" ({exc})") from None
            layer.__dict__["training"] = bool(module.training)
            g.nodes.append(Node(node.name, "call", refs(tuple(args)), refs(kwargs), layer=layer, source=src))
        elif node.op == "output":
            g.nodes.append(Node(node.name, "output", (refs(node.args[0]),)))
    for path, m in g.named_modules():
        if path in submodules:  # the name tree's levels keep the source modules' modes
            m.__dict__["training"] = bool(submodules[path].training)
    return g


def _hashable(obj) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _fetch_attr(module, target: str):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
