"""Elementwise activations CNNs use, as torch.nn's layers.

ReLU itself is in ``layers``.  Hardtanh, ReLU6, LeakyReLU, Sigmoid, SiLU and Hardswish call the
functional API (fastconv.relu6, ...), so they run on the selected backend's kernels; Tanh,
Hardsigmoid and Softmax are NumPy.  ``inplace=True`` writes into the input and returns it when
the input is a writable float32/float64 array, as torch does; otherwise the result is a new array.

Training: each layer's forward keeps what its gradient needs (its input -- a copy when the forward
writes in place -- or its output) and ``backward`` applies torch's derivative through
``fastconv.grad`` (``hardtanh_input``, ``silu_input``, ...), kinks included.
"""

from __future__ import annotations

import numpy as np

from .. import api, grad
from .._args import as_bool, as_float, as_float_array, as_int
from ..grad import _grad
from .layers import _numpy_view, writable_float
from .module import Module


def _inplace(layer, x) -> bool:
    return layer.inplace and writable_float(_numpy_view(x))


def _float(x):
    return as_float_array(x, "input")


def _kept(layer, x):
    """The input for backward when this forward keeps state (else None): a copy if the forward is
    about to overwrite it."""
    if not layer.keeps_for_backward():
        return None
    x = np.asarray(_numpy_view(x))
    return x.copy() if _inplace(layer, x) else x


def _g(grad_output, like):
    return _grad(grad_output, like.shape, like.dtype)


class Hardtanh(Module):
    """``clip(x, min_val, max_val)``, as torch.nn.Hardtanh (either bound may be None: unbounded)."""

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        self.min_val = None if min_val is None else as_float(min_val, "min_val")
        self.max_val = None if max_val is None else as_float(max_val, "max_val")
        if self.min_val is not None and self.max_val is not None and self.max_val < self.min_val:
            raise ValueError(f"max_val must be at least min_val, got min_val={min_val}, max_val={max_val}")
        self.inplace = as_bool(inplace, "inplace")

    def forward(self, x):
        lo = -np.inf if self.min_val is None else self.min_val
        hi = np.inf if self.max_val is None else self.max_val
        self._save(input=_kept(self, x), bounds=(lo, hi))
        if (lo, hi) == (0.0, 6.0):
            return api.relu6(x, _inplace(self, x), backend=self.backend)
        return api.hardtanh(x, lo, hi, _inplace(self, x), backend=self.backend)

    def backward(self, grad_output):
        saved = self._saved_for_backward()
        return grad.hardtanh_input(saved["input"], grad_output, *saved["bounds"])

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class ReLU6(Hardtanh):
    """``min(max(x, 0), 6)``, as torch.nn.ReLU6."""

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)


class LeakyReLU(Module):
    """``x if x >= 0 else negative_slope * x``, as torch.nn.LeakyReLU."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = as_float(negative_slope, "negative_slope")
        self.inplace = as_bool(inplace, "inplace")

    def forward(self, x):
        self._save(input=_kept(self, x))
        return api.leaky_relu(x, self.negative_slope, _inplace(self, x), backend=self.backend)

    def backward(self, grad_output):
        return grad.leaky_relu_input(self._saved_for_backward()["input"], grad_output, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """``1 / (1 + exp(-x))``, as torch.nn.Sigmoid."""

    def forward(self, x):
        y = api.sigmoid(x, backend=self.backend)
        self._save(output=_numpy_view(y))
        return y

    def backward(self, grad_output):
        return grad.sigmoid_input(self._saved_for_backward()["output"], grad_output)


class Tanh(Module):
    """``tanh(x)``, as torch.nn.Tanh."""

    def forward(self, x):
        y = np.tanh(_float(x))
        self._save(output=y)
        return y

    def backward(self, grad_output):
        y = self._saved_for_backward()["output"]
        return _g(grad_output, y) * (1 - y * y)


class SiLU(Module):
    """``x * sigmoid(x)`` (swish), as torch.nn.SiLU."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = as_bool(inplace, "inplace")

    def forward(self, x):
        self._save(input=_kept(self, x))
        return api.silu(x, _inplace(self, x), backend=self.backend)

    def backward(self, grad_output):
        return grad.silu_input(self._saved_for_backward()["input"], grad_output)


class Hardsigmoid(Module):
    """``clip(x / 6 + 1/2, 0, 1)``, as torch.nn.Hardsigmoid."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = as_bool(inplace, "inplace")

    def forward(self, x):
        x = _float(x)
        self._save(inside=((x > -3) & (x < 3)) if self.keeps_for_backward() else None)
        return np.clip(x + x.dtype.type(3), 0, 6) / x.dtype.type(6)

    def backward(self, grad_output):
        inside = self._saved_for_backward()["inside"]
        g = _grad(grad_output, inside.shape, None)
        return np.where(inside, g / g.dtype.type(6), g.dtype.type(0))


class Hardswish(Module):
    """``x * clip(x + 3, 0, 6) / 6``, as torch.nn.Hardswish."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = as_bool(inplace, "inplace")

    def forward(self, x):
        self._save(input=_kept(self, x))
        return api.hardswish(x, _inplace(self, x), backend=self.backend)

    def backward(self, grad_output):
        return grad.hardswish_input(self._saved_for_backward()["input"], grad_output)


class Softmax(Module):
    """``exp(x) / sum(exp(x))`` along ``dim``, as torch.nn.Softmax (the max is subtracted first)."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = None if dim is None else as_int(dim, "dim")

    def forward(self, x):
        x = _float(x)
        dim = self.dim
        if dim is None:  # torch's legacy choice for an implicit dim
            dim = 0 if x.ndim in (0, 1, 3) else 1
        e = np.exp(x - np.max(x, axis=dim, keepdims=True))
        y = e / np.sum(e, axis=dim, keepdims=True)
        self._save(output=y, dim=dim)
        return y

    def backward(self, grad_output):
        saved = self._saved_for_backward()
        y = saved["output"]
        g = _g(grad_output, y)
        return y * (g - np.sum(g * y, axis=saved["dim"], keepdims=True))

    def extra_repr(self):
        return f"dim={self.dim}"
