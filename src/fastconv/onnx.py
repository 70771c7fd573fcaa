"""Load an ONNX CNN into a fastconv ``Graph``: ``fastconv.onnx.load(path_or_model)``.

Needs the optional ``onnx`` package (``pip install onnx``).  Opsets 7 and up; the ops CNN exports
use: Conv (group, dilation, auto_pad, asymmetric pads), BatchNormalization, MaxPool, AveragePool,
GlobalAveragePool/GlobalMaxPool, Relu, Clip, LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish,
Add/Sub/Mul/Div/Sum, Concat, Gemm/MatMul, Flatten/Reshape, Dropout, Identity, LRN, Softmax,
Transpose, Pad (constant), ReduceMean, and the shape arithmetic exporters emit around a reshape
(Shape, Gather, Unsqueeze, Squeeze, Constant, Cast).  Convolutions, batch norms and Gemm layers
whose weights are initialisers become fastconv layers named after their weights (``fc.weight`` ->
``fc``), so a torch export's ``state_dict()`` names come back.  Any other op is an
``UnsupportedOpError`` naming it and its node.

>>> import fastconv.onnx                       # doctest: +SKIP
>>> model = fastconv.onnx.load("resnet18.onnx").to_backend("c").fuse()   # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np

from . import nn
from .graph import Graph, Node, Ref, UnsupportedOpError
from .nn.module import Module
from .nn.shape import reduce_to

SUPPORTED = (
    "Conv, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Relu, Clip, "
    "LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish, Add, Sub, Mul, Div, Sum, Concat, Gemm, MatMul, "
    "Flatten, Reshape, Dropout, Identity, LRN, Softmax, Transpose, Pad, ReduceMean, Shape, Gather, "
    "Unsqueeze, Squeeze, Constant, Cast"
)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("fastconv.onnx needs the onnx package: pip install onnx") from None
    return onnx


# -- small layers with ONNX semantics -----------------------------------------------------------
# Each has the backward a training graph needs (fastconv.nn.shape's conventions): one gradient per
# forward argument, None for shapes, axes and indices.


class _ReshapeBack(Module):
    """A layer that only rearranges its input: the gradient is the output's, in the input's shape."""

    def _keep_shape(self, x):
        self._save(shape=np.shape(x))

    def backward(self, grad_output):
        return np.asarray(grad_output).reshape(self._saved_for_backward()["shape"])


class _SamePad(Module):
    """auto_pad SAME_UPPER/SAME_LOWER: pad so that out = ceil(in / stride), computed from the input."""

    def __init__(self, kernel, stride, dilation, upper, value=0.0):
        super().__init__()
        self.kernel, self.stride, self.dilation, self.upper, self.value = kernel, stride, dilation, upper, value

    def forward(self, x):
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel, self.stride, self.dilation):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            pads.append((total - small, small) if not self.upper else (small, total - small))
        (t, b), (left, r) = pads
        pad = nn.Pad((left, r, t, b), self.value)
        y = pad(x)
        self._save(pad=pad)
        return y

    def backward(self, grad_output):
        return self._saved_for_backward()["pad"].backward(grad_output)


class _Flatten(_ReshapeBack):
    """ONNX Flatten: a 2-D array, the dimensions before ``axis`` merged into rows."""

    def __init__(self, axis=1):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        self._keep_shape(x)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)


class _Reshape(_ReshapeBack):
    """ONNX Reshape: 0 copies the input's dimension (unless allowzero), -1 is inferred."""

    def __init__(self, allowzero=0):
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x, shape):
        shape = [int(s) for s in np.asarray(shape).reshape(-1)]
        if not self.allowzero:
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        self._keep_shape(x)
        return np.ascontiguousarray(x).reshape(shape)


class _Shape(Module):
    def forward(self, x):
        return np.array(np.shape(x), np.int64)


class _Gather(Module):
    def __init__(self, axis=0):
        super().__init__()
        self.axis = axis

    def forward(self, x, indices):
        x, indices = np.asarray(x), np.asarray(indices, np.int64)
        self._save(shape=x.shape, dtype=x.dtype, indices=indices)
        return np.take(x, indices, axis=self.axis)

    def backward(self, grad_output):
        s = self._saved_for_backward()
        gx = np.zeros(s["shape"], s["dtype"])
        axis = self.axis % len(s["shape"])
        moved = np.moveaxis(gx, axis, 0)  # a view: scatter the rows gathered, summing repeats
        g = np.asarray(grad_output).reshape(*s["shape"][:axis], *s["indices"].shape, *s["shape"][axis + 1 :])
        g = np.moveaxis(g.reshape(*s["shape"][:axis], -1, *s["shape"][axis + 1 :]), axis, 0)
        np.add.at(moved, s["indices"].reshape(-1) % s["shape"][axis], g)
        return gx


class _Unsqueeze(_ReshapeBack):
    def __init__(self, axes=None):
        super().__init__()
        self.axes = axes

    def forward(self, x, axes=None):
        axes = [int(a) for a in np.asarray(self.axes if axes is None else axes).reshape(-1)]
        x = np.asarray(x)
        self._keep_shape(x)
        nd = x.ndim + len(axes)
        return np.expand_dims(x, tuple(a + nd if a < 0 else a for a in axes))


class _Squeeze(_ReshapeBack):
    def __init__(self, axes=None):
        super().__init__()
        self.axes = axes

    def forward(self, x, axes=None):
        axes = self.axes if axes is None else axes
        x = np.asarray(x)
        self._keep_shape(x)
        return np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in np.asarray(axes).reshape(-1)))


class _MatMul(Module):
    def forward(self, a, b):
        self._save(a=np.asarray(a), b=np.asarray(b))
        return np.matmul(a, b)

    def backward(self, grad_output):
        s = self._saved_for_backward()
        a, b, g = s["a"], s["b"], np.asarray(grad_output)
        # vectors are matrices of one row (a) or one column (b) for the products, then squeezed back
        a2, b2 = (a[None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
        g2 = g.reshape(*np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]), a2.shape[-2], b2.shape[-1])
        ga = reduce_to(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        gb = reduce_to(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


class _Cast(Module):
    _TYPES = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64, 9: np.bool_}

    def __init__(self, to):
        super().__init__()
        if to not in self._TYPES:
            raise ValueError(f"Cast to ONNX type {to} is not supported")
        self.to = to

    def forward(self, x):
        x = np.asarray(x)
        self._save(dtype=x.dtype)
        return x.astype(self._TYPES[self.to])

    def backward(self, grad_output):
        dtype = self._saved_for_backward()["dtype"]
        return np.asarray(grad_output).astype(dtype) if dtype.kind == "f" else None


class _Softmax(Module):
    """Softmax before opset 13: over the input flattened to 2-D at ``axis``."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        softmax = nn.Softmax(1)
        softmax.__dict__["training"] = self.keeps_for_backward()
        y = softmax(flat).reshape(x.shape)
        self._save(softmax=softmax, shape=flat.shape)
        return y

    def backward(self, grad_output):
        s = self._saved_for_backward()
        g = np.asarray(grad_output)
        return s["softmax"].backward(g.reshape(s["shape"])).reshape(g.shape)


# -- the loader --------------------------------------------------------------------------------


class _Loader:
    def __init__(self, model):
        onnx = _onnx()
        self.numpy_helper = onnx.numpy_helper
        self.helper = onnx.helper
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 7)
        self.graph = Graph()
        self.consts: dict[str, np.ndarray] = {}
        self.defined: set[str] = set()
        self.modules: set[str] = set()
        self.model = model

    # values
    def const(self, name, node, what):
        if name not in self.consts:
            raise self.error(node, f" (its {what} must be a constant or initialiser)")
        return self.consts[name]

    def ref(self, name):
        """A node input for the ONNX value ``name``: another node's output, or a constant's array."""
        if name == "":
            return None
        if name in self.defined:
            return Ref(name)
        if name in self.consts:
            return self.consts[name]
        raise ValueError(f"ONNX value {name!r} is used before it is defined")

    def error(self, node, why=""):
        return UnsupportedOpError(
            f"onnx.load: unsupported op {node.op_type} (domain {node.domain or 'ai.onnx'}, opset {self.opset}) in "
            f"node {node.name or node.output[0]!r}{why}. fastconv converts {SUPPORTED}."
        )

    def emit(self, node, layer, args, target=None, kwargs=None):
        name = node.output[0]
        if target is not None:
            self.graph.nodes.append(Node(name, "call", tuple(args), kwargs or {}, target=target, source=node.name))
        else:
            self.graph.nodes.append(Node(name, "call", tuple(args), kwargs or {}, layer=layer, source=node.name))
        self.defined.add(name)

    def module_path(self, weight_name, node):
        base = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else f"{node.op_type}_{node.output[0]}"
        path = _path(base)
        while path in self.modules:
            path += "_"
        self.modules.add(path)
        return path

    def load(self) -> Graph:
        g = self.model.graph
        for init in g.initializer:
            self.consts[init.name] = self.numpy_helper.to_array(init).copy()
        init_names = set(self.consts)
        for inp in g.input:
            if inp.name not in init_names:
                self.graph.nodes.append(Node(inp.name, "input"))
                self.defined.add(inp.name)
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                raise self.error(node)
            convert = getattr(self, f"op_{node.op_type}", None)
            if convert is None:
                raise self.error(node)
            attrs = {a.name: self.helper.get_attribute_value(a) for a in node.attribute}
            try:
                convert(node, attrs)
            except UnsupportedOpError:
                raise
            except (TypeError, ValueError, KeyError) as exc:
                raise self.error(node, f" ({exc})") from None
        outputs = tuple(self.ref(o.name) for o in g.output)
        self.graph.nodes.append(Node("output", "output", (outputs[0] if len(outputs) == 1 else outputs,)))
        self.graph.eval()
        return self.graph

    # -- ops ---------------------------------------------------------------------------------------
    def _spatial(self, node, attrs, kernel):
        stride = tuple(attrs.get("strides", (1, 1)))
        dilation = tuple(attrs.get("dilations", (1, 1)))
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if len(kernel) != 2:
            raise self.error(node, f" ({len(kernel)}-D: fastconv runs 2-D ops)")
        return stride, dilation, pads, auto

    def _pre_pad(self, node, x, kernel, stride, dilation, pads, auto, value=0.0):
        """(input, symmetric padding, whether a padding node was added) for SAME or asymmetric pads."""
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            name = node.output[0] + ":pad"
            self.graph.nodes.append(
                Node(name, "call", (x,), layer=_SamePad(kernel, stride, dilation, auto == "SAME_UPPER", value))
            )
            return Ref(name), (0, 0), True
        if auto == "VALID":
            return x, (0, 0), False
        t, left, b, r = pads
        if (t, left) == (b, r) and t <= kernel[0] // 2 and left <= kernel[1] // 2:
            return x, (t, left), False
        name = node.output[0] + ":pad"
        self.graph.nodes.append(Node(name, "call", (x,), layer=nn.Pad((left, r, t, b), value)))
        return Ref(name), (0, 0), True

    def op_Conv(self, node, attrs):
        x, w_name = node.input[0], node.input[1]
        b_name = node.input[2] if len(node.input) > 2 else ""
        w = self.consts.get(w_name)
        kernel = tuple(attrs.get("kernel_shape", w.shape[2:] if w is not None else ()))
        stride, dilation, pads, auto = self._spatial(node, attrs, kernel)
        xin, padding, _ = self._pre_pad(node, self.ref(x), kernel, stride, dilation, pads, auto)
        group = int(attrs.get("group", 1))
        if w is None or (b_name and b_name not in self.consts):
            self.emit(
                node, nn.FunctionalConv2d(stride, padding, dilation, group), (xin, self.ref(w_name), self.ref(b_name))
            )
            return
        conv = nn.Conv2d(
            w.shape[1] * group, w.shape[0], kernel, stride, padding, dilation, group, bias=bool(b_name), dtype=w.dtype
        )
        conv.weight = w
        if b_name:
            conv.bias = self.consts[b_name]
        path = self.module_path(w_name, node)
        self.graph.add_module(path, conv)
        self.emit(node, None, (xin,), target=path)

    def op_BatchNormalization(self, node, attrs):
        names = node.input[1:5]
        if any(n not in self.consts for n in names) or attrs.get("training_mode", 0):
            raise self.error(node, " (inference form with constant statistics only)")
        scale, bias, mean, var = (self.consts[n] for n in names)
        bn = nn.BatchNorm2d(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)), dtype=scale.dtype)
        bn.weight, bn.bias, bn.running_mean, bn.running_var = scale, bias, mean, var
        bn.eval()
        path = self.module_path(names[0], node)
        self.graph.add_module(path, bn)
        self.emit(node, None, (self.ref(node.input[0]),), target=path)

    def _pool(self, node, attrs, kind):
        kernel = tuple(attrs["kernel_shape"])
        stride, dilation, pads, auto = self._spatial(node, attrs, kernel)
        if len(node.output) > 1 and node.output[1]:
            raise self.error(node, " (the Indices output is not supported)")
        ceil = bool(attrs.get("ceil_mode", 0))
        x, padding, padded = self._pre_pad(
            node, self.ref(node.input[0]), kernel, stride, dilation, pads, auto, value=-np.inf if kind == "max" else 0.0
        )
        if kind == "max":
            layer = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)
        else:
            include = bool(attrs.get("count_include_pad", 0))
            if padded and not include:
                raise self.error(node, " (asymmetric padding without count_include_pad)")
            layer = nn.AvgPool2d(kernel, stride, padding, ceil, include)
        self.emit(node, layer, (x,))

    def op_MaxPool(self, node, attrs):
        self._pool(node, attrs, "max")

    def op_AveragePool(self, node, attrs):
        self._pool(node, attrs, "avg")

    def op_GlobalAveragePool(self, node, attrs):
        self.emit(node, nn.AdaptiveAvgPool2d(1), (self.ref(node.input[0]),))

    def op_GlobalMaxPool(self, node, attrs):
        self.emit(node, nn.AdaptiveMaxPool2d(1), (self.ref(node.input[0]),))

    def _unary(self, node, layer):
        self.emit(node, layer, (self.ref(node.input[0]),))

    def op_Relu(self, node, attrs):
        self._unary(node, nn.ReLU())

    def op_Clip(self, node, attrs):
        if self.opset < 11:
            lo, hi = attrs.get("min"), attrs.get("max")
        else:
            bounds = [
                float(self.const(n, node, "min/max")) if n else None for n in (list(node.input[1:3]) + ["", ""])[:2]
            ]
            lo, hi = bounds
        self._unary(node, nn.Hardtanh(lo, hi))

    def op_LeakyRelu(self, node, attrs):
        self._unary(node, nn.LeakyReLU(attrs.get("alpha", 0.01)))

    def op_Sigmoid(self, node, attrs):
        self._unary(node, nn.Sigmoid())

    def op_Tanh(self, node, attrs):
        self._unary(node, nn.Tanh())

    def op_HardSwish(self, node, attrs):
        self._unary(node, nn.Hardswish())

    def op_HardSigmoid(self, node, attrs):
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        if not (np.isclose(alpha, 1 / 6) and np.isclose(beta, 0.5)):
            raise self.error(node, f" (alpha={alpha}, beta={beta}: only torch's 1/6, 1/2)")
        self._unary(node, nn.Hardsigmoid())

    def op_Identity(self, node, attrs):
        self._unary(node, nn.Identity())

    def op_Dropout(self, node, attrs):
        if len(node.output) > 1 and node.output[1]:
            raise self.error(node, " (the mask output is not supported)")
        self._unary(node, nn.Identity())

    def op_LRN(self, node, attrs):
        size = int(attrs["size"])
        if size % 2 == 0:
            raise self.error(node, " (an even size: its window differs from torch's LocalResponseNorm)")
        self._unary(
            node, nn.LocalResponseNorm(size, attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0))
        )

    def op_Softmax(self, node, attrs):
        axis = int(attrs.get("axis", 1 if self.opset < 13 else -1))
        self._unary(node, nn.Softmax(axis) if self.opset >= 13 else _Softmax(axis))

    def op_Transpose(self, node, attrs):
        self._unary(node, nn.Permute(attrs.get("perm")))

    def op_Flatten(self, node, attrs):
        self._unary(node, _Flatten(int(attrs.get("axis", 1))))

    def _binary(self, node, op):
        self.emit(node, nn.Elementwise(op), (self.ref(node.input[0]), self.ref(node.input[1])))

    def op_Add(self, node, attrs):
        self._binary(node, "add")

    def op_Sub(self, node, attrs):
        self._binary(node, "sub")

    def op_Mul(self, node, attrs):
        self._binary(node, "mul")

    def op_Div(self, node, attrs):
        self._binary(node, "div")

    def op_Sum(self, node, attrs):
        self.emit(node, nn.Sum(), [self.ref(n) for n in node.input])

    def op_Concat(self, node, attrs):
        self.emit(node, nn.Concat(int(attrs["axis"])), ([self.ref(n) for n in node.input],))

    def op_MatMul(self, node, attrs):
        self.emit(node, _MatMul(), (self.ref(node.input[0]), self.ref(node.input[1])))

    def op_Gemm(self, node, attrs):
        if attrs.get("transA", 0):
            raise self.error(node, " (transA=1)")
        alpha, beta, trans_b = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0)), attrs.get("transB", 0)
        w_name = node.input[1]
        b_name = node.input[2] if len(node.input) > 2 else ""
        w = self.consts.get(w_name)
        if (
            w is not None
            and trans_b
            and alpha == 1.0
            and beta == 1.0
            and (not b_name or b_name in self.consts)
            and (not b_name or self.consts[b_name].shape == (w.shape[0],))
        ):
            fc = nn.Linear(w.shape[1], w.shape[0], bias=bool(b_name), dtype=w.dtype)
            fc.weight = w
            if b_name:
                fc.bias = self.consts[b_name]
            path = self.module_path(w_name, node)
            self.graph.add_module(path, fc)
            self.emit(node, None, (self.ref(node.input[0]),), target=path)
            return
        self.emit(
            node,
            nn.FunctionalLinear(bool(trans_b), alpha, beta),
            (self.ref(node.input[0]), self.ref(w_name), self.ref(b_name)),
        )

    def op_Reshape(self, node, attrs):
        shape = attrs.get("shape") if self.opset < 5 else None
        self.emit(
            node,
            _Reshape(int(attrs.get("allowzero", 0))),
            (self.ref(node.input[0]), shape if shape is not None else self.ref(node.input[1])),
        )

    def op_Pad(self, node, attrs):
        mode = attrs.get("mode", b"constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
            raise self.error(node, f" (mode {mode!r}: constant padding only)")
        if self.opset < 11:
            pads, value = attrs["pads"], attrs.get("value", 0.0)
        else:
            pads = self.const(node.input[1], node, "pads")
            value = self.const(node.input[2], node, "value") if len(node.input) > 2 and node.input[2] else 0.0
            if len(node.input) > 3 and node.input[3]:
                raise self.error(node, " (the axes input is not supported)")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        n = len(pads) // 2
        torch_pads = []
        for d in reversed(range(n)):
            torch_pads += [pads[d], pads[d + n]]
        self._unary(node, nn.Pad(tuple(torch_pads), float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0))

    def op_ReduceMean(self, node, attrs):
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1], node, "axes").tolist()
        keep = bool(attrs.get("keepdims", 1))
        self._unary(node, nn.Mean(None if axes is None else tuple(int(a) for a in axes), keep))

    def op_Shape(self, node, attrs):
        self._unary(node, _Shape())

    def op_Gather(self, node, attrs):
        self.emit(node, _Gather(int(attrs.get("axis", 0))), (self.ref(node.input[0]), self.ref(node.input[1])))

    def op_Unsqueeze(self, node, attrs):
        axes = attrs.get("axes")
        args = [self.ref(node.input[0])] + ([self.ref(node.input[1])] if axes is None else [])
        self.emit(node, _Unsqueeze(axes), args)

    def op_Squeeze(self, node, attrs):
        axes = attrs.get("axes")
        args = [self.ref(node.input[0])] + (
            [self.ref(node.input[1])] if axes is None and len(node.input) > 1 and node.input[1] else []
        )
        self.emit(node, _Squeeze(axes), args)

    def op_Cast(self, node, attrs):
        self._unary(node, _Cast(int(attrs["to"])))

    def op_Constant(self, node, attrs):
        if "value" in attrs:
            value = self.numpy_helper.to_array(attrs["value"])
        elif "value_float" in attrs or "value_int" in attrs:
            value = np.array(attrs.get("value_float", attrs.get("value_int")))
        elif "value_ints" in attrs or "value_floats" in attrs:
            value = np.array(attrs.get("value_ints", attrs.get("value_floats")))
        else:
            raise self.error(node, f" (attributes {sorted(attrs)})")
        self.consts[node.output[0]] = value.copy()


def _path(name: str) -> str:
    """An ONNX value name as a dotted module path: torch's ``layer1.0.conv1`` stays; others are cleaned."""
    parts = [p for p in name.split(".") if p]
    clean = ["".join(ch if ch.isalnum() or ch == "_" else "_" for ch in p) or "_" for p in parts]
    return ".".join(clean) or "_"


def load(path_or_model) -> Graph:
    """A fastconv ``Graph`` (eval mode) from an ONNX file path, bytes, or an ``onnx.ModelProto``."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError  # onnx's own dependency

    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    elif isinstance(path_or_model, (str, os.PathLike, bytes, bytearray)):
        try:
            if isinstance(path_or_model, (bytes, bytearray)):
                model = onnx.load_from_string(bytes(path_or_model))
            else:
                model = onnx.load(os.fspath(path_or_model))
        except DecodeError as exc:  # protobuf's way of saying "not an ONNX model"
            raise ValueError(f"onnx.load: path_or_model is not an ONNX model ({exc})") from None
    else:
        raise TypeError(f"onnx.load expects a path, bytes or an onnx.ModelProto, got {type(path_or_model).__name__}")
    if not model.graph.output:  # any bytes protobuf reads as nothing, an empty file among them
        raise ValueError("onnx.load: path_or_model holds no graph outputs (an empty model, or not an ONNX file)")
    return _Loader(model).load()
