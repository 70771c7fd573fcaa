"""More torch.nn layers for converted graphs: dropout, adaptive max pooling, local response
normalisation, and convolution / linear layers whose weights arrive as inputs (torch's functional
``F.conv2d(x, self.w)``, ONNX initialisers).
"""

from __future__ import annotations

import numpy as np

from .. import api, grad
from .._args import as_bool, as_float, as_float_array, as_int
from ..threads import apply_blas
from .module import Module
from .shape import reduce_to


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode (scaling the rest by 1/(1-p)); the
    identity in eval mode, as torch.nn.Dropout.  ``always`` drops in eval mode too (torch's
    ``F.dropout(x, training=True)``); ``channels`` drops whole (n, c) planes, as torch.nn.Dropout2d."""

    def __init__(self, p=0.5, inplace=False, always=False, channels=False):
        super().__init__()
        self.p = as_float(p, "p")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got p={p}")
        self.inplace = as_bool(inplace, "inplace")
        self.always = as_bool(always, "always")
        self.channels = as_bool(channels, "channels")

    def forward(self, x):
        if not (self.training or self.always) or self.p == 0.0:
            self._save(scale=None)
            return x
        x = np.asarray(x)
        shape = x.shape[:2] + (1,) * (x.ndim - 2) if self.channels and x.ndim >= 3 else x.shape
        # the kept elements, already scaled: forward and backward multiply by the same array
        scale = (np.random.default_rng().random(shape) >= self.p) * x.dtype.type(
            0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        )
        self._save(scale=scale.astype(x.dtype))
        return (x * scale).astype(x.dtype, copy=False)

    def backward(self, grad_output):
        scale = self._saved_for_backward()["scale"]
        return grad_output if scale is None else (np.asarray(grad_output) * scale).astype(scale.dtype, copy=False)

    def extra_repr(self):
        return f"p={self.p}" + (", channels=True" if self.channels else "")


class AdaptiveMaxPool2d(Module):
    """Max pooling to a fixed output size, as torch.nn.AdaptiveMaxPool2d; with ``return_indices``
    it returns ``(output, indices)`` as torch does."""

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.return_indices = as_bool(return_indices, "return_indices")
        sizes = output_size if isinstance(output_size, (list, tuple)) else (output_size, output_size)
        if len(sizes) != 2:
            raise ValueError(f"output_size must be an int or a pair, got output_size={output_size!r}")
        for s in sizes:
            if s is not None and as_int(s, "output_size") <= 0:
                raise ValueError(f"output_size must be positive, got output_size={output_size!r}")
        self.output_size = output_size

    def forward(self, x):
        keep = self.keeps_for_backward()
        out = api.adaptive_max_pool2d(x, self.output_size, self.return_indices or keep, backend=self.backend)
        self._save(shape=np.shape(x), indices=out[1] if keep else None)
        return out if self.return_indices or not keep else out[0]

    def backward(self, grad_output):
        """The gradient to each bin's arg max (the index the forward returned), summed where bins overlap."""
        saved = self._saved_for_backward()
        return grad._scatter_to_indices(saved["shape"], saved["indices"], grad_output)


class LocalResponseNorm(Module):
    """``x / (k + alpha/size * sum of x^2 over size neighbouring channels)^beta``, as torch.nn.LocalResponseNorm."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = as_int(size, "size")
        if self.size <= 0:
            raise ValueError(f"size must be positive, got size={size}")
        self.alpha, self.beta, self.k = as_float(alpha, "alpha"), as_float(beta, "beta"), as_float(k, "k")

    def forward(self, x):
        x = as_float_array(x, "input")
        sq = x.astype(np.float64) ** 2
        c = x.shape[1]
        # the window of channel i spans i - size//2 .. i + (size-1)//2, zeros beyond the edges
        before, after = self.size // 2, (self.size - 1) // 2
        cum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
        lo = np.clip(np.arange(c) - before, 0, c)
        hi = np.clip(np.arange(c) + after + 1, 0, c)
        window = cum[:, hi] - cum[:, lo]
        return (x / (self.k + self.alpha / self.size * window) ** self.beta).astype(x.dtype)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class FunctionalConv2d(Module):
    """``conv2d(x, weight, bias)`` with the weight and bias given at call time (torch's F.conv2d)."""

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x, weight, bias=None):
        y = api.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups, backend=self.backend)
        self._save(input=x, weight=weight, bias=bias is not None)
        return y

    def backward(self, grad_output):
        """(grad_input, grad_weight, grad_bias or None): one per argument of forward."""
        saved = self._saved_for_backward()
        x, w = as_float_array(saved["input"], "input"), as_float_array(saved["weight"], "weight")
        common = (self.stride, self.padding, self.dilation, self.groups)
        gw, gb = grad._conv2d_weight_bias(x, w.shape, grad_output, *common, saved["bias"], self.backend)
        gx = grad.conv2d_input(x.shape, w, grad_output, *common, backend=self.backend)
        return gx, gw, gb


class FunctionalLinear(Module):
    """``x @ weight.T + bias`` with the weight and bias given at call time (torch's F.linear, ONNX Gemm)."""

    def __init__(self, transpose_weight=True, alpha=1.0, beta=1.0):
        super().__init__()
        self.transpose_weight, self.alpha, self.beta = transpose_weight, float(alpha), float(beta)

    def forward(self, x, weight, bias=None):
        x = as_float_array(x, "input")
        w = as_float_array(weight, "weight", like=x.dtype)
        apply_blas()
        y = x @ (w.T if self.transpose_weight else w)
        if self.alpha != 1.0:
            y *= x.dtype.type(self.alpha)
        if bias is not None:
            b = np.asarray(bias, x.dtype)
            y = y + (b if self.beta == 1.0 else b * x.dtype.type(self.beta))
        self._save(input=x, weight=w, bias_shape=None if bias is None else np.shape(bias))
        return y

    def backward(self, grad_output):
        """(grad_input, grad_weight, grad_bias or None): one per argument of forward."""
        saved = self._saved_for_backward()
        x, w = saved["input"], saved["weight"]
        g = as_float_array(grad_output, "grad_output", like=x.dtype)
        if self.alpha != 1.0:
            g = g * x.dtype.type(self.alpha)
        apply_blas()
        gx = g @ (w if self.transpose_weight else w.T)
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gw = g2.T @ x2 if self.transpose_weight else x2.T @ g2
        gb = None
        if saved["bias_shape"] is not None:
            gb = reduce_to(np.asarray(grad_output, x.dtype) * x.dtype.type(self.beta), saved["bias_shape"])
        return gx, gw, gb
