"""fastconv ``Graph`` -> torch.fx ``GraphModule``: the reverse of ``from_torch``'s graph path.

Layers at names become torch layers at the same names (so ``state_dict()`` keys match); node-owned
ops become torch functions; a fused convolution becomes conv, add and relu again.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn as tnn

from .. import nn as fnn
from ..graph import Graph, _Container, _map
from ..nn.module import Module


def _function(layer):
    """(torch callable, extra args, extra kwargs) computing a parameter-free fastconv layer."""
    t = type(layer)
    simple = {
        fnn.ReLU: F.relu,
        fnn.ReLU6: F.relu6,
        fnn.Sigmoid: torch.sigmoid,
        fnn.Tanh: torch.tanh,
        fnn.SiLU: F.silu,
        fnn.Hardswish: F.hardswish,
        fnn.Hardsigmoid: F.hardsigmoid,
        fnn.Identity: torch.nn.Identity(),
        fnn.Neg: operator.neg,
    }
    if t in simple:
        return simple[t], (), {}
    if t is fnn.Hardtanh:
        return torch.clamp, (), {"min": layer.min_val, "max": layer.max_val}
    if t is fnn.LeakyReLU:
        return F.leaky_relu, (layer.negative_slope,), {}
    if t is fnn.Softmax:
        return F.softmax, (), {"dim": layer.dim}
    if isinstance(layer, fnn.Elementwise) and layer.op in ("add", "sub", "mul", "div", "floordiv"):
        op = getattr(operator, {"div": "truediv"}.get(layer.op, layer.op))
        if layer.alpha not in (None, 1):
            return (lambda a, b, _alpha=layer.alpha, _op=op: _op(a, b * _alpha)), (), {}
        return op, (), {}
    if t is fnn.Concat:
        return torch.cat, (), {"dim": layer.dim}
    if t is fnn.Mean:
        return torch.mean, (), {"dim": layer.dim, "keepdim": layer.keepdim}
    if t is fnn.Permute:
        return torch.permute, (layer.dims,), {}
    if t is fnn.Transpose:
        return torch.transpose, (layer.dim0, layer.dim1), {}
    if t is fnn.Chunk:
        return torch.chunk, (layer.chunks, layer.dim), {}
    if t is fnn.Pad:
        return F.pad, (layer.pads,), {"value": layer.value}
    if t is fnn.Dropout:
        return F.dropout, (layer.p,), {"training": layer.always}
    if t is fnn.AdaptiveMaxPool2d:
        return F.adaptive_max_pool2d, (layer.output_size,), {}
    if t is fnn.AdaptiveAvgPool2d:
        return F.adaptive_avg_pool2d, (layer.output_size,), {}
    if t is fnn.MaxPool2d:
        return F.max_pool2d, (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode), {}
    if t is fnn.AvgPool2d:
        return (
            F.avg_pool2d,
            (
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.ceil_mode,
                layer.count_include_pad,
                layer.divisor_override,
            ),
            {},
        )
    if t is fnn.Flatten:
        return torch.flatten, (layer.start_dim, layer.end_dim), {}
    if t is fnn.LocalResponseNorm:
        return F.local_response_norm, (layer.size, layer.alpha, layer.beta, layer.k), {}
    if t is fnn.FunctionalConv2d:
        return F.conv2d, (layer.stride, layer.padding, layer.dilation, layer.groups), {}
    if t is fnn.FunctionalLinear and layer.transpose_weight and layer.alpha == layer.beta == 1.0:
        return F.linear, (), {}
    return None


def _reshape(x, *shape):
    return torch.reshape(x, tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else shape)


def _size(x, dim=None):
    return tuple(x.shape) if dim is None else x.shape[dim]


torch.fx.wrap("_reshape")


def graph_to_torch(g: Graph, leaf_to_torch):
    root = tnn.Module()
    for path, m in Module.named_modules(g):  # the name tree only, not the node-owned layers
        if not path:
            continue
        *parents, leaf = path.split(".")
        owner = root.get_submodule(".".join(parents)) if parents else root
        if isinstance(m, _Container):
            owner.add_module(leaf, tnn.Module())
            for name, a in m._parameters.items():
                getattr(owner, leaf).register_parameter(name, tnn.Parameter(torch.from_numpy(np.array(a))))
            for name, a in m._buffers.items():
                getattr(owner, leaf).register_buffer(name, torch.from_numpy(np.array(a)))
            continue
        owner.add_module(leaf, leaf_to_torch(m, path))
    for name, a in g._parameters.items():
        root.register_parameter(name, tnn.Parameter(torch.from_numpy(np.array(a))))
    for name, a in g._buffers.items():
        root.register_buffer(name, torch.from_numpy(np.array(a)))

    fg = torch.fx.Graph()
    env = {}

    def val(v):
        return _map(v, lambda r: env[r.name])

    for node in g.nodes:
        if node.op == "input":
            env[node.name] = fg.placeholder(node.name)
        elif node.op == "attr":
            env[node.name] = fg.get_attr(node.target)
        elif node.op == "output":
            fg.output(val(node.args[0]))
        elif node.target is not None:
            kwargs = dict(node.kwargs)
            residual, activation = kwargs.pop("residual", None), kwargs.pop("activation", None)
            out = fg.call_module(node.target, val(node.args), val(kwargs))
            if residual is not None:
                out = fg.call_function(operator.add, (out, val(residual)))
            if activation is not None:  # "relu", or a tuple (name, *params) from fuse()
                name, params = (activation, ()) if isinstance(activation, str) else (activation[0], activation[1:])
                out = fg.call_function(getattr(F, name), (out, *params))
            env[node.name] = out
        else:
            layer = node.layer
            if type(layer) is fnn.Reshape:
                fn, extra, kw = _reshape, (), {}
            elif type(layer) is fnn.Size:
                fn, extra, kw = _size, (layer.dim,), {}
            elif type(layer) is fnn.GetItem:
                fn, extra, kw = operator.getitem, (), {}
            else:
                found = _function(layer)
                if found is None:
                    raise TypeError(f"to_torch: no torch equivalent for node {node.name!r} ({type(layer).__name__})")
                fn, extra, kw = found
            if isinstance(fn, tnn.Module):
                env[node.name] = val(node.args)[0]
                continue
            env[node.name] = fg.call_function(fn, tuple(val(node.args)) + extra, {**val(node.kwargs), **kw})
    gm = torch.fx.GraphModule(root, fg, class_name="ConvertedGraph")
    return gm.train(g.training)
