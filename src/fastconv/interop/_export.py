"""torch model -> fastconv ``Graph`` through torch.export, for forwards torch.fx cannot trace
symbolically (Python control flow on shapes, ``len(x)``, loops over sizes): the model runs once on
example inputs and its ATen ops are converted.  Convolutions, batch norms and linear layers whose
weights are the model's own parameters become fastconv layers at their torch names, so the graph
fuses and keeps torch's ``state_dict()`` keys.
"""

from __future__ import annotations

import torch
from torch import nn as tnn

from .. import nn as fnn
from ..graph import Graph, Node, Ref, UnsupportedOpError
from . import fx

aten = torch.ops.aten


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else path


def _table():
    f = fx._FUNCTIONS
    t = {
        aten.relu.default: fx._relu,
        aten.relu_.default: fx._relu,
        aten.relu6.default: f[torch.nn.functional.relu6],
        aten.hardtanh.default: f[torch.nn.functional.hardtanh],
        aten.hardtanh_.default: f[torch.nn.functional.hardtanh],
        aten.leaky_relu.default: f[torch.nn.functional.leaky_relu],
        aten.leaky_relu_.default: f[torch.nn.functional.leaky_relu],
        aten.sigmoid.default: f[torch.sigmoid],
        aten.sigmoid_.default: f[torch.sigmoid],
        aten.tanh.default: f[torch.tanh],
        aten.silu.default: f[torch.nn.functional.silu],
        aten.silu_.default: f[torch.nn.functional.silu],
        aten.hardswish.default: f[torch.nn.functional.hardswish],
        aten.hardswish_.default: f[torch.nn.functional.hardswish],
        aten.hardsigmoid.default: f[torch.nn.functional.hardsigmoid],
        aten.softmax.int: fx._softmax,
        aten.clamp.default: fx._clamp,
        aten.max_pool2d.default: fx._max_pool2d,
        aten.avg_pool2d.default: fx._avg_pool2d,
        aten.adaptive_avg_pool2d.default: f[torch.nn.functional.adaptive_avg_pool2d],
        aten.dropout.default: fx._dropout,
        aten.dropout_.default: fx._dropout,
        aten.flatten.using_ints: fx._flatten,
        aten.view.default: fx._reshape,
        aten.reshape.default: fx._reshape,
        aten._unsafe_view.default: fx._reshape,
        aten.cat.default: fx._cat,
        aten.mean.dim: fx._mean,
        aten.permute.default: fx._permute,
        aten.transpose.int: f[torch.transpose],
        aten.chunk.default: fx._chunk,
        aten.contiguous.default: fx._identity,
        aten.clone.default: fx._identity,
        aten.add.Tensor: fx._binary("add"),
        aten.add_.Tensor: fx._binary("add"),
        aten.sub.Tensor: fx._binary("sub"),
        aten.mul.Tensor: fx._binary("mul"),
        aten.mul_.Tensor: fx._binary("mul"),
        aten.div.Tensor: fx._binary("div"),
        aten.add.Scalar: fx._binary("add"),
        aten.mul.Scalar: fx._binary("mul"),
        aten.sym_size.int: fx._size,
    }
    import operator

    t[operator.getitem] = f[operator.getitem]
    return t


def graph_from_export(module, example_inputs) -> Graph:
    """The fastconv Graph of ``module`` exported with ``torch.export`` on ``example_inputs`` (a tuple)."""
    try:
        gm = torch.export.export(module, tuple(example_inputs)).module()
    except Exception as exc:
        raise UnsupportedOpError(
            f"from_torch: torch.export cannot export {type(module).__name__} either: "
            f"{type(exc).__name__}: {str(exc)[:500]}. {fx._PATCHED_HINT}"
        ) from exc
    table = _table()
    g = Graph()
    tensors: dict[str, tuple[str, torch.Tensor]] = {}  # get_attr node -> (path, tensor)
    emitted: set[str] = set()

    def to_ref(v):
        if not isinstance(v, torch.fx.Node):
            return v
        if v.name in tensors and v.name not in emitted:  # a weight read by a plain op: a graph array
            path, tensor = tensors[v.name]
            g.add_array(path, tensor.detach().numpy().copy(), isinstance(tensor, tnn.Parameter))
            g.nodes.append(Node(v.name, "attr", target=path))
            emitted.add(v.name)
        return Ref(v.name)

    def refs(value):
        return torch.fx.node.map_aggregate(value, to_ref)

    def param(v):
        return tensors.get(v.name) if isinstance(v, torch.fx.Node) else None

    for node in gm.graph.nodes:
        src = fx.source_line(node)
        if node.op == "placeholder":
            g.nodes.append(Node(node.name, "input"))
        elif (node.op == "call_module" and node.target == "_guards_fn") or "assert" in str(node.target):
            continue  # export's checks of the input shapes: nothing to compute
        elif node.op == "get_attr":
            tensors[node.name] = (node.target, fx._fetch_attr(gm, node.target))
        elif node.op == "call_function":
            layer_path = _layer(g, node, param)
            if layer_path is not None:
                g.nodes.append(Node(node.name, "call", (refs(node.args[0]),), target=layer_path, source=src))
                continue
            convert = table.get(node.target) if fx._hashable(node.target) else None
            if convert is None:
                raise fx._error(node, str(node.target))
            try:
                layer, args, kwargs = convert(*node.args, **node.kwargs)
            except (TypeError, ValueError) as exc:
                raise fx._error(node, str(node.target), f" ({exc})") from None
            layer.__dict__["training"] = bool(module.training)
            g.nodes.append(Node(node.name, "call", refs(tuple(args)), refs(kwargs), layer=layer, source=src))
        elif node.op == "output":
            out = node.args[0]
            g.nodes.append(
                Node(node.name, "output", (refs(out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out),))
            )
        else:
            raise fx._error(node, f"{node.op} {node.target}")
    g.train(module.training)
    return g


def _layer(g, node, param):
    """conv2d / batch_norm / linear on the model's own parameters: a fastconv layer at their name."""
    a = list(node.args) + [None] * 9
    if node.target == aten.conv2d.default and param(a[1]) and (a[2] is None or param(a[2])):
        (wpath, w), bias = param(a[1]), param(a[2])
        stride, padding, dilation, groups = (a[3] or 1), (a[4] or 0), (a[5] or 1), (a[6] or 1)
        layer = fnn.Conv2d(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride,
            padding,
            dilation,
            groups,
            bias=bias is not None,
            dtype=str(w.dtype).removeprefix("torch."),
        )
        state = {"weight": w} if bias is None else {"weight": w, "bias": bias[1]}
    elif node.target == aten.batch_norm.default and all(param(v) for v in a[1:5]):
        (wpath, w), bias, mean, var = (param(v) for v in a[1:5])
        layer = fnn.BatchNorm2d(w.shape[0], eps=a[7], momentum=a[6], dtype=str(w.dtype).removeprefix("torch."))
        layer.train(bool(a[5]))
        state = {"weight": w, "bias": bias[1], "running_mean": mean[1], "running_var": var[1]}
        if not a[5]:
            layer.__dict__["training"] = False
    elif node.target == aten.linear.default and param(a[1]) and (a[2] is None or param(a[2])):
        (wpath, w), bias = param(a[1]), param(a[2])
        layer = fnn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=str(w.dtype).removeprefix("torch."))
        state = {"weight": w} if bias is None else {"weight": w, "bias": bias[1]}
    else:
        return None
    path = _parent(wpath)
    layer.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    g.add_module(path, layer)
    return path
