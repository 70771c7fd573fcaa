"""Layers that combine or reshape arrays, for graphs converted from torch or ONNX.

They follow NumPy's (= torch's) broadcasting and indexing rules; dimension arguments are torch's
(negative counts from the end).  None holds parameters, so they run the same on every backend.
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
        return _result(a, b, BINARY[self.op](a, b))

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
        return out


class Neg(Module):
    def forward(self, x):
        return -x


class Concat(Module):
    """Join arrays along ``dim``, as torch.cat (``forward`` takes the arrays as one list)."""

    def __init__(self, dim=0):
        super().__init__()
        self.dim = as_int(dim, "dim")

    def forward(self, tensors):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise TypeError("Concat expects a non-empty list of arrays")
        return np.concatenate([np.asarray(t) for t in tensors], axis=self.dim)

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
        return np.asarray(np.mean(x, axis=self.dim, keepdims=self.keepdim), dtype=x.dtype)

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
        return np.asarray(x).reshape(tuple(int(s) for s in shape))

    def extra_repr(self):
        return "" if self.shape is None else f"shape={self.shape}"


class Permute(Module):
    """Reorder dimensions, as torch.permute / ONNX Transpose (``dims`` None: reverse them)."""

    def __init__(self, dims=None):
        super().__init__()
        self.dims = None if dims is None else tuple(as_int(d, "dims") for d in dims)

    def forward(self, x):
        return np.ascontiguousarray(np.transpose(x, self.dims))

    def extra_repr(self):
        return f"dims={self.dims}"


class Transpose(Module):
    """Swap two dimensions, as torch.transpose."""

    def __init__(self, dim0, dim1):
        super().__init__()
        self.dim0, self.dim1 = as_int(dim0, "dim0"), as_int(dim1, "dim1")

    def forward(self, x):
        return np.ascontiguousarray(np.swapaxes(x, self.dim0, self.dim1))


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
            return np.ascontiguousarray(x[index])
        return x[index]


class Chunk(Module):
    """Split ``x`` into ``chunks`` pieces along ``dim``, each ceil(size / chunks) long, as torch.chunk."""

    def __init__(self, chunks, dim=0):
        super().__init__()
        self.chunks, self.dim = as_int(chunks, "chunks"), as_int(dim, "dim")

    def forward(self, x):
        size = x.shape[self.dim]
        step = -(-size // self.chunks)
        return tuple(
            np.ascontiguousarray(np.take(x, range(i, min(i + step, size)), axis=self.dim)) for i in range(0, size, step)
        )


class Split(Module):
    """Split ``x`` along ``dim`` into pieces of the given sizes (ONNX Split, torch.split with a list)."""

    def __init__(self, sizes, dim=0):
        super().__init__()
        self.sizes, self.dim = tuple(int(s) for s in sizes), as_int(dim, "dim")

    def forward(self, x):
        bounds = np.cumsum(self.sizes)[:-1]
        return tuple(np.ascontiguousarray(p) for p in np.split(x, bounds, axis=self.dim))


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
        if any(a < 0 or b < 0 for a, b in widths):  # negative padding crops
            index = tuple(slice(-a if a < 0 else None, b if b < 0 else None) for a, b in widths)
            x = x[index]
            widths = [(max(a, 0), max(b, 0)) for a, b in widths]
        return np.pad(x, widths, constant_values=self.value)

    def extra_repr(self):
        return f"pads={self.pads}, value={self.value}"
