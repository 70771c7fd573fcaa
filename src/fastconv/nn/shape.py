"""Layers that combine or reshape arrays, for graphs converted from torch or ONNX.

They follow NumPy's (= torch's) broadcasting and indexing rules; dimension arguments are torch's
(negative counts from the end).  None holds parameters, so they run the same on every backend.

Training: ``backward(grad_output)`` returns one gradient per argument of ``forward`` (a tuple when
forward takes several; None for an argument that is a number, a shape or an index, or that the
output does not depend on), a list for a list argument (``Concat``), and takes a tuple of
gradients (None for an unused piece) where forward returns a tuple (``Chunk``, ``Split``).  A
gradient that broadcasting spread is summed back to its argument's shape (``reduce_to``).
"""

from __future__ import annotations

import operator

import numpy as np

from .._args import as_bool, as_int
from .module import Module

#: The binary operators an ``Elementwise`` layer computes, by name (torch's and Python's).
BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.true_divide,
    "floordiv": np.floor_divide,
    "pow": np.power,
    "max": np.maximum,
    "min": np.minimum,
}

_PYTHON = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "floordiv": operator.floordiv,
    "pow": operator.pow,
    "max": max,
    "min": min,
}


def reduce_to(g, shape):
    """``g`` summed over the dimensions broadcasting added or stretched, to ``shape``."""
    g = np.asarray(g)
    shape = tuple(shape)
    if g.shape == shape:
        return g
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True).reshape(shape) if stretched else g.reshape(shape)


def _array(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


def _result(a, b, out):
    """torch's type promotion for the common cases: a float array keeps its dtype against a number."""
    for v in (a, b):
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not isinstance(out, np.ndarray):
            return np.asarray(out, v.dtype)
    if isinstance(out, np.ndarray):
        arrays = [v for v in (a, b) if isinstance(v, np.ndarray) and v.ndim > 0 and v.dtype.kind == "f"]
        if arrays and out.dtype != arrays[0].dtype and all(v.dtype == arrays[0].dtype for v in arrays):
            return out.astype(arrays[0].dtype)
    return out


class Elementwise(Module):
    """``a <op> b`` for two arrays (or an array and a number), broadcasting; ``op`` in ``BINARY``."""

    def __init__(self, op: str, alpha=None):
        super().__init__()
        if op not in BINARY:
            raise ValueError(f"op must be one of {sorted(BINARY)}, got op={op!r}")
        self.op, self.alpha = op, alpha

    def forward(self, a, b):
        if self.alpha is not None and self.alpha != 1:  # torch.add(a, b, alpha=...)
            b = b * self.alpha
        if not isinstance(a, np.ndarray) and not isinstance(b, np.ndarray):  # sizes: Python arithmetic
            return _PYTHON[self.op](a, b)
        out = _result(a, b, BINARY[self.op](a, b))
        keep = self.op not in ("add", "sub")  # the others' gradients read the operands (pow also the output)
        self._save(
            a=a if keep else None,
            b=b if keep else None,
            shapes=(np.shape(a), np.shape(b)),
            floats=(_array(a), _array(b)),
            out=out if self.op == "pow" else None,
        )
        return out

    def backward(self, grad_output):
        """(grad_a, grad_b); None for an operand that is a number or not a float array."""
        s = self._saved_for_backward()
        a, b, g = s["a"], s["b"], np.asarray(grad_output)
        op = self.op
        if op == "add":
            ga, gb = g, g
        elif op == "sub":
            ga, gb = g, -g
        elif op == "mul":
            ga, gb = g * b, g * a
        elif op == "div":
            ga, gb = g / b, -g * a / (b * b)
        elif op == "pow":  # d(a^b)/da = b a^(b-1); d/db = a^b ln a (torch: 0 where a == 0 and b >= 0)
            ga = g * b * np.power(a, b - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = g * s["out"] * np.where((np.asarray(a) == 0) & (np.asarray(b) >= 0), 0, np.log(a))
        elif op in ("max", "min"):  # ties share the gradient, as torch's maximum/minimum do
            first = (a > b) if op == "max" else (a < b)
            tie = np.asarray(a == b)
            ga = g * np.where(first, 1.0, np.where(tie, 0.5, 0.0))
            gb = g * np.where(first, 0.0, np.where(tie, 0.5, 1.0))
        else:  # floordiv: piecewise constant
            ga, gb = np.zeros_like(g), np.zeros_like(g)
        if self.alpha is not None and self.alpha != 1:
            gb = gb * self.alpha
        return tuple(
            reduce_to(gi, shape).astype(g.dtype, copy=False) if is_float else None
            for gi, shape, is_float in zip((ga, gb), s["shapes"], s["floats"])
        )

    def extra_repr(self):
        return repr(self.op)


class Add(Elementwise):
    def __init__(self):
        super().__init__("add")


class Mul(Elementwise):
    def __init__(self):
        super().__init__("mul")


class Sum(Module):
    """The elementwise sum of any number of arrays (ONNX Sum), broadcasting."""

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        self._save(shapes=[np.shape(x) for x in xs], floats=[_array(x) for x in xs])
        return out

    def backward(self, grad_output):
        s = self._saved_for_backward()
        return tuple(reduce_to(grad_output, sh) if f else None for sh, f in zip(s["shapes"], s["floats"]))


class Neg(Module):
    def forward(self, x):
        self._save()
        return -x

    def backward(self, grad_output):
        self._saved_for_backward()
        return -np.asarray(grad_output)


class Concat(Module):
    """Join arrays along ``dim``, as torch.cat (``forward`` takes the arrays as one list)."""

    def __init__(self, dim=0):
        super().__init__()
        self.dim = as_int(dim, "dim")

    def forward(self, tensors):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise TypeError("Concat expects a non-empty list of arrays")
        arrays = [np.asarray(t) for t in tensors]
        self._save(sizes=[a.shape[self.dim] for a in arrays])
        return np.concatenate(arrays, axis=self.dim)

    def backward(self, grad_output):
        """A list: the slice of the gradient each array filled."""
        sizes = self._saved_for_backward()["sizes"]
        return [np.ascontiguousarray(p) for p in np.split(np.asarray(grad_output), np.cumsum(sizes)[:-1], self.dim)]

    def extra_repr(self):
        return f"dim={self.dim}"


class Mean(Module):
    """The mean over ``dim`` (an int, a tuple, or None: every dimension), as torch.mean."""

    def __init__(self, dim=None, keepdim=False):
        super().__init__()
        self.dim = (
            None
            if dim is None
            else (as_int(dim, "dim") if not isinstance(dim, (list, tuple)) else tuple(as_int(d, "dim") for d in dim))
        )
        self.keepdim = as_bool(keepdim, "keepdim")

    def forward(self, x):
        x = np.asarray(x)
        self._save(shape=x.shape)
        return np.asarray(np.mean(x, axis=self.dim, keepdims=self.keepdim), dtype=x.dtype)

    def backward(self, grad_output):
        """Each input element's share: the gradient spread evenly over what was averaged."""
        shape = self._saved_for_backward()["shape"]
        g = np.asarray(grad_output)
        dims = range(len(shape)) if self.dim is None else (self.dim if isinstance(self.dim, tuple) else (self.dim,))
        dims = sorted(d % len(shape) for d in dims) if shape else []
        if not self.keepdim:
            for d in dims:
                g = np.expand_dims(g, d)
        count = int(np.prod([shape[d] for d in dims])) if dims else 1
        return np.broadcast_to(g / g.dtype.type(max(count, 1)), shape).copy()

    def extra_repr(self):
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Reshape(Module):
    """``x.reshape(*shape)`` (one -1 allowed), as torch's view/reshape; the shape may come at call time."""

    def __init__(self, shape=None):
        super().__init__()
        self.shape = None if shape is None else tuple(int(s) for s in shape)

    def forward(self, x, *shape):
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = tuple(shape[0])
        shape = shape or self.shape
        if shape is None:
            raise ValueError("Reshape: no target shape")
        x = np.asarray(x)
        self._save(shape=x.shape)
        return x.reshape(tuple(int(s) for s in shape))

    def backward(self, grad_output):
        """The gradient in the input's shape (shape arguments given at call time have none)."""
        return np.asarray(grad_output).reshape(self._saved_for_backward()["shape"])

    def extra_repr(self):
        return "" if self.shape is None else f"shape={self.shape}"


class Permute(Module):
    """Reorder dimensions, as torch.permute / ONNX Transpose (``dims`` None: reverse them)."""

    def __init__(self, dims=None):
        super().__init__()
        self.dims = None if dims is None else tuple(as_int(d, "dims") for d in dims)

    def forward(self, x):
        self._save(ndim=np.ndim(x))
        return np.ascontiguousarray(np.transpose(x, self.dims))

    def backward(self, grad_output):
        ndim = self._saved_for_backward()["ndim"]
        dims = tuple(range(ndim))[::-1] if self.dims is None else tuple(d % ndim for d in self.dims)
        return np.ascontiguousarray(np.transpose(grad_output, np.argsort(dims)))

    def extra_repr(self):
        return f"dims={self.dims}"


class Transpose(Module):
    """Swap two dimensions, as torch.transpose."""

    def __init__(self, dim0, dim1):
        super().__init__()
        self.dim0, self.dim1 = as_int(dim0, "dim0"), as_int(dim1, "dim1")

    def forward(self, x):
        self._save()
        return np.ascontiguousarray(np.swapaxes(x, self.dim0, self.dim1))

    def backward(self, grad_output):
        self._saved_for_backward()
        return np.ascontiguousarray(np.swapaxes(grad_output, self.dim0, self.dim1))


class Size(Module):
    """``x.size(dim)`` / ``x.shape``: a shape, or one of its entries, as Python ints."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = None if dim is None else as_int(dim, "dim")

    def forward(self, x):
        shape = tuple(np.shape(x))
        return shape if self.dim is None else shape[self.dim]


class GetItem(Module):
    """``x[index]``: indexing an array (NumPy's basic indexing is torch's) or a tuple of outputs."""

    def forward(self, x, index):
        if isinstance(x, np.ndarray):
            self._save(shape=x.shape, dtype=x.dtype, index=index, pieces=None)
            return np.ascontiguousarray(x[index])
        self._save(shape=None, index=index, pieces=len(x) if isinstance(x, (tuple, list)) else None)
        return x[index]

    def backward(self, grad_output):
        """The gradient scattered back to where ``x[index]`` came from (summed where indices repeat);
        for a tuple ``x``, ``(pieces, None)``: x's gradient is a tuple, None for the pieces not taken."""
        s = self._saved_for_backward()
        if s["shape"] is None:
            if s["pieces"] is None:
                return None
            pieces = [None] * s["pieces"]
            pieces[s["index"]] = grad_output
            return tuple(pieces), None
        gx = np.zeros(s["shape"], np.asarray(grad_output).dtype)
        np.add.at(gx, s["index"], grad_output)
        return gx


class Chunk(Module):
    """Split ``x`` into ``chunks`` pieces along ``dim``, each ceil(size / chunks) long, as torch.chunk."""

    def __init__(self, chunks, dim=0):
        super().__init__()
        self.chunks, self.dim = as_int(chunks, "chunks"), as_int(dim, "dim")

    def forward(self, x):
        size = x.shape[self.dim]
        step = -(-size // self.chunks)
        self._save(shape=x.shape, dtype=x.dtype, sizes=[min(step, size - i) for i in range(0, size, step)])
        return tuple(
            np.ascontiguousarray(np.take(x, range(i, min(i + step, size)), axis=self.dim)) for i in range(0, size, step)
        )

    def backward(self, grad_output):
        return _join(self._saved_for_backward(), grad_output, self.dim)


def _join(saved, grads, dim):
    """The gradient of a split: the pieces' gradients side by side (zeros for a piece not used)."""
    gx = np.zeros(saved["shape"], saved["dtype"])
    bounds = np.concatenate([[0], np.cumsum(saved["sizes"])])
    for g, lo, hi in zip(grads, bounds[:-1], bounds[1:]):
        if g is not None:
            index = [slice(None)] * gx.ndim
            index[dim] = slice(int(lo), int(hi))
            gx[tuple(index)] = g
    return gx


class Split(Module):
    """Split ``x`` along ``dim`` into pieces of the given sizes (ONNX Split, torch.split with a list)."""

    def __init__(self, sizes, dim=0):
        super().__init__()
        self.sizes, self.dim = tuple(int(s) for s in sizes), as_int(dim, "dim")

    def forward(self, x):
        bounds = np.cumsum(self.sizes)[:-1]
        self._save(shape=x.shape, dtype=x.dtype, sizes=self.sizes)
        return tuple(np.ascontiguousarray(p) for p in np.split(x, bounds, axis=self.dim))

    def backward(self, grad_output):
        return _join(self._saved_for_backward(), grad_output, self.dim)


class Pad(Module):
    """Constant padding, ``pads`` as torch.nn.functional.pad: (last dim's before, after, next dim's ...)."""

    def __init__(self, pads, value=0.0):
        super().__init__()
        self.pads, self.value = tuple(int(p) for p in pads), float(value)

    def forward(self, x):
        x = np.asarray(x)
        widths = [(0, 0)] * x.ndim
        for i in range(len(self.pads) // 2):
            widths[x.ndim - 1 - i] = (self.pads[2 * i], self.pads[2 * i + 1])
        self._save(shape=x.shape, widths=widths)
        if any(a < 0 or b < 0 for a, b in widths):  # negative padding crops
            index = tuple(slice(-a if a < 0 else None, b if b < 0 else None) for a, b in widths)
            x = x[index]
            widths = [(max(a, 0), max(b, 0)) for a, b in widths]
        return np.pad(x, widths, constant_values=self.value)

    def backward(self, grad_output):
        """The padded output's inner part; zeros where the forward cropped."""
        s = self._saved_for_backward()
        g = np.asarray(grad_output)
        inner = tuple(slice(max(a, 0), g.shape[i] - max(b, 0)) for i, (a, b) in enumerate(s["widths"]))
        g = g[inner]
        return np.pad(g, [(max(-a, 0), max(-b, 0)) for a, b in s["widths"]])

    def extra_repr(self):
        return f"pads={self.pads}, value={self.value}"
