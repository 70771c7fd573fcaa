"""Layers with torch.nn's constructor arguments, defaults and parameter names, on NumPy arrays.

Each layer validates its constructor arguments (TypeError/ValueError naming the argument, as
torch does) and calls the functional API with ``backend=self.backend`` in ``__call__``: the
kernels live in the backends, never here.  Flatten and Identity are plain NumPy; Linear is a BLAS
GEMM except on the c backend (see Linear).

Each ``backward`` follows its ``forward``: it takes the gradient with respect to the forward's
output, adds the parameters' gradients (fastconv.grad on the layer's backend) and returns the
gradient with respect to the forward's input.
"""

from __future__ import annotations

import numpy as np

from .. import api, dispatch, grad
from .._device import CudaArray, device_linear, is_cuda_array
from .._args import as_bool, as_float, as_float_array, as_int, nonnegative_pair, positive_pair
from ..problem import (
    LinearProblem,
    require_algorithm,
    require_divisible,
    require_divisor,
    require_eps,
    require_nonnegative,
    require_padding_mode,
    require_padding_string,
    require_pool_padding,
    require_positive,
)
from ..threads import apply_blas
from . import init
from .module import Module, as_float_dtype


def _positive_int(v, name: str) -> int:
    v = as_int(v, name)
    require_positive(v, name)
    return v


def _check_device(device) -> None:
    if device is not None and str(device) != "cpu":
        raise ValueError(f"device: fastconv layers live on the CPU, got device={device!r}")


class Conv2d(Module):
    """2-D convolution layer, as torch.nn.Conv2d; weight (out, in/groups, kH, kW), bias (out,).

    ``layer(x, residual=None, activation=None)`` exposes conv2d's fused epilogue,
    ``act(conv(x) + bias + residual)``, which the ResNet blocks use for their skip connections.
    ``algorithm`` ("auto", "direct", "gemm", "winograd") is passed to every call (see
    fastconv.conv2d).

    >>> import numpy as np
    >>> from fastconv import nn
    >>> conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    >>> conv(np.zeros((1, 3, 5, 5), np.float32)).shape
    (1, 8, 5, 5)
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        algorithm="auto",
    ):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = positive_pair(kernel_size, "kernel_size")
        self.stride = positive_pair(stride, "stride")
        self.dilation = positive_pair(dilation, "dilation")
        self.groups = _positive_int(groups, "groups")
        require_divisible(self.in_channels, self.groups, "in_channels")
        require_divisible(self.out_channels, self.groups, "out_channels")
        if isinstance(padding, str):
            require_padding_string(padding, self.stride)
            self.padding = padding
        else:
            self.padding = nonnegative_pair(padding, "padding")
        require_padding_mode(padding_mode)
        self.padding_mode = padding_mode
        require_algorithm(algorithm)
        self.algorithm = algorithm
        bias = as_bool(bias, "bias")
        _check_device(device)
        dt = as_float_dtype(dtype)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.register_parameter("weight", init.default_weight(shape, dt))
        self.register_parameter("bias", init.default_bias(shape, dt) if bias else None)

    def forward(self, x, residual=None, activation=None):
        act_layer = None
        if activation not in (None, "relu") and self.keeps_for_backward():
            # Training: the activation's gradient needs its input, which the fused epilogue never
            # stores, so the activation runs as a layer of its own after the convolution (+ residual).
            act_layer, activation = _activation_layer(activation), None
        y = api.conv2d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            padding_mode=self.padding_mode,
            residual=residual,
            activation=activation,
            algorithm=self.algorithm,
            backend=self.backend,
        )
        if act_layer is not None:
            act_layer.__dict__["_backend"] = self._backend
            y = act_layer(y)
        # relu's gradient needs only its output's sign; the residual's is the pre-activation gradient.
        self._save(
            input=x,
            output=y if activation == "relu" else None,
            activation=act_layer,
            residual=residual is not None,
        )
        return y

    def backward(self, grad_output):
        """grad_input, or (grad_input, grad_residual) after a forward with a residual."""
        saved = self._saved_for_backward()
        g = grad_output
        if saved["output"] is not None:
            g = grad.relu_input(saved["output"], g, backend=self.backend)
        if saved["activation"] is not None:
            g = saved["activation"].backward(g)
        x, padding = np.asarray(saved["input"]), self.padding
        if self.padding_mode != "zeros":  # the forward convolved an explicitly padded copy
            x, pads = _pad_input(x, self.padding_mode, self.padding, self.kernel_size, self.dilation, self.stride)
            padding = 0
        common = (self.stride, padding, self.dilation, self.groups)
        gw, gb = grad._conv2d_weight_bias(x, self.weight.shape, g, *common, self.bias is not None, self.backend)
        self._add_grad("weight", gw)
        self._add_grad("bias", gb)
        gx = grad.conv2d_input(x.shape, self.weight, g, *common, backend=self.backend)
        if self.padding_mode != "zeros":
            gx = _unpad_grad(gx, self.padding_mode, pads)
        return (gx, np.asarray(g)) if saved["residual"] else gx

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s


class BatchNorm2d(Module):
    """Batch normalisation over channels of (N, C, H, W), as torch.nn.BatchNorm2d.

    Eval mode normalises with the running statistics.  Training mode normalises with the batch's
    own and updates the running statistics in place (``momentum=None``: a cumulative average over
    the ``num_batches_tracked`` batches seen), as torch does.
    """

    def __init__(
        self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None, dtype=None
    ):
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = as_float(eps, "eps")
        require_eps(self.eps)
        self.momentum = None if momentum is None else as_float(momentum, "momentum")
        self.affine = as_bool(affine, "affine")
        self.track_running_stats = as_bool(track_running_stats, "track_running_stats")
        _check_device(device)
        dt = as_float_dtype(dtype)
        c = self.num_features
        self.register_parameter("weight", np.ones(c, dt) if self.affine else None)
        self.register_parameter("bias", np.zeros(c, dt) if self.affine else None)
        track = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(c, dt) if track else None)
        self.register_buffer("running_var", np.ones(c, dt) if track else None)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64) if track else None)

    def forward(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"BatchNorm2d expects 4-D input (N, C, H, W), got {getattr(x, 'ndim', '?')}-D")
        counting = self.training and self.track_running_stats and self.num_batches_tracked is not None
        momentum = self.momentum
        if counting and momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked + 1)  # cumulative moving average
        y = api.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=self.training or self.running_mean is None,
            momentum=0.0 if momentum is None else momentum,
            eps=self.eps,
            backend=self.backend,
        )
        if counting:
            self.num_batches_tracked += 1
        batch_stats = self.training or self.running_mean is None
        self._save(
            input=x,
            batch_stats=batch_stats,
            mean=None if batch_stats else self.running_mean.copy(),
            var=None if batch_stats else self.running_var.copy(),
        )
        return y

    def backward(self, grad_output):
        saved = self._saved_for_backward()
        gx, gw, gb = grad.batch_norm_input(
            saved["input"],
            grad_output,
            saved["mean"],
            saved["var"],
            self.weight,
            training=saved["batch_stats"],
            eps=self.eps,
            backend=self.backend,
        )
        if self.affine:
            self._add_grad("weight", gw)
            self._add_grad("bias", gb)
        return gx

    def extra_repr(self):
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


def _pool_common(kernel_size, stride, padding):
    kernel = positive_pair(kernel_size, "kernel_size")
    if stride is not None and not (isinstance(stride, (list, tuple)) and len(stride) == 0):
        positive_pair(stride, "stride")
    require_pool_padding(kernel, nonnegative_pair(padding, "padding"))


class MaxPool2d(Module):
    """2-D max pooling, as torch.nn.MaxPool2d; with ``return_indices`` the forward returns
    ``(output, indices)`` (flat arg max per (n, c) plane, as torch)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        _pool_common(kernel_size, stride, padding)
        positive_pair(dilation, "dilation")
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices = as_bool(return_indices, "return_indices")
        self.ceil_mode = as_bool(ceil_mode, "ceil_mode")

    def forward(self, x):
        self._save(input=x)
        return api.max_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
            backend=self.backend,
        )

    def backward(self, grad_output):
        x = self._saved_for_backward()["input"]
        return grad.max_pool2d_input(
            x,
            grad_output,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            backend=self.backend,
        )

    def extra_repr(self):
        stride = self.kernel_size if self.stride is None else self.stride
        text = (
            f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )
        return text + (", return_indices=True" if self.return_indices else "")


class AvgPool2d(Module):
    """2-D average pooling, as torch.nn.AvgPool2d."""

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
    ):
        super().__init__()
        _pool_common(kernel_size, stride, padding)
        require_divisor(None if divisor_override is None else as_int(divisor_override, "divisor_override"))
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = as_bool(ceil_mode, "ceil_mode")
        self.count_include_pad = as_bool(count_include_pad, "count_include_pad")
        self.divisor_override = divisor_override

    def forward(self, x):
        y = api.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
            backend=self.backend,
        )
        self._save(shape=np.shape(x))
        return y

    def backward(self, grad_output):
        shape = self._saved_for_backward()["shape"]
        return grad.avg_pool2d_input(
            shape,
            grad_output,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
            backend=self.backend,
        )

    def extra_repr(self):
        stride = self.kernel_size if self.stride is None else self.stride
        return f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size (int, or pair whose None keeps the input's size)."""

    def __init__(self, output_size):
        super().__init__()
        sizes = output_size if isinstance(output_size, (list, tuple)) else (output_size,)
        if len(sizes) not in (1, 2):
            raise ValueError(f"output_size must be an int or a pair, got output_size={output_size!r}")
        require_nonnegative(tuple(as_int(s, "output_size") for s in sizes if s is not None), "output_size")
        self.output_size = output_size

    def forward(self, x):
        y = api.adaptive_avg_pool2d(x, self.output_size, backend=self.backend)
        self._save(shape=np.shape(x))
        return y

    def backward(self, grad_output):
        return grad.adaptive_avg_pool2d_input(self._saved_for_backward()["shape"], grad_output, backend=self.backend)

    def extra_repr(self):
        return f"output_size={self.output_size}"


def writable_float(x) -> bool:
    """Whether an ``inplace=True`` layer can write into ``x`` (a writable float32/float64 array)."""
    return isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.dtype.itemsize in (4, 8) and x.flags.writeable


class ReLU(Module):
    """max(x, 0) elementwise.  ``inplace=True`` writes into the input and returns it, as torch does,
    when the input is a writable float32/float64 array (or CPU tensor); any other input gets a new
    array (inputs that cannot be written are never modified)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = as_bool(inplace, "inplace")

    def forward(self, x):
        y = api.relu(x, self.inplace and writable_float(_numpy_view(x)), backend=self.backend)
        self._save(output=y)
        return y

    def backward(self, grad_output):
        return grad.relu_input(self._saved_for_backward()["output"], grad_output, backend=self.backend)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


def _activation_layer(activation):
    """The nn layer doing what conv2d's ``activation=`` argument does (a name or (name, *params))."""
    from . import activations

    name, params = api._activation_spec(activation)  # params in the layer's argument order
    layers = {
        "relu6": activations.ReLU6,
        "leaky_relu": activations.LeakyReLU,
        "hardtanh": activations.Hardtanh,
        "sigmoid": activations.Sigmoid,
        "silu": activations.SiLU,
        "hardswish": activations.Hardswish,
    }
    return layers[name](*params)


def _numpy_view(x):
    """A CPU torch tensor's NumPy view (what the API writes into), anything else as it is."""
    if (
        hasattr(x, "numpy")
        and type(x).__module__.startswith("torch")
        and getattr(x, "device", None) is not None
        and x.device.type == "cpu"
        and not x.requires_grad
    ):
        return x.numpy()
    return x


class Linear(Module):
    """``y = x @ weight.T + bias``, as torch.nn.Linear: a NumPy BLAS GEMM on fastconv's thread
    count, except where the c, numba or im2col backend runs the layer -- chosen for it
    (``to_backend``) or by the dispatcher (``use_backend``, ``set_backend``,
    ``FASTCONV_BACKEND``, or "auto" picking it, as it does for the convolutions around it).
    There a multi-threaded BLAS would keep its own thread pool beside those backends' threads,
    and each pool's idle threads spin while the other works: a ResNet-50 forward pass took twice
    as long with its fc on BLAS, a ResNet-18 left on "auto" 32 ms instead of 14.6
    (docs/results/inference.md).  So c runs float32 layers on its own GEMM, and numba's and
    im2col's linear run BLAS on one thread (im2col's under its own threads)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        bias = as_bool(bias, "bias")
        _check_device(device)
        dt = as_float_dtype(dtype)
        shape = (self.out_features, self.in_features)
        self.register_parameter("weight", init.default_weight(shape, dt))
        self.register_parameter("bias", init.default_bias(shape, dt) if bias else None)

    def forward(self, x):
        x = as_float_array(x, "input")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects input of shape (*, {self.in_features}), got {tuple(x.shape)}")
        w = as_float_array(self.weight, "weight", like=x.dtype)
        if isinstance(x, CudaArray):  # on the device: the array's own library multiplies
            return device_linear(x, w, None if self.bias is None else as_float_array(self.bias, "bias", like=x.dtype))
        name = self._backend_for(x)
        if (name == "c" and x.dtype == np.float32) or name in ("numba", "im2col"):
            b = None if self.bias is None else as_float_array(self.bias, "bias", like=x.dtype)
            y = api.linear(x.reshape(-1, self.in_features), w, b, backend=name).reshape(*x.shape[:-1], -1)
        else:
            apply_blas()  # the thread count fastconv.set_num_threads chose
            y = x @ w.T
            if self.bias is not None:
                y += as_float_array(self.bias, "bias", like=x.dtype)
        self._save(input=x)
        return y

    def _backend_for(self, x) -> str | None:
        """The backend the dispatcher would give this layer's ``x`` (see the class docstring)."""
        name = self.backend or dispatch.get_backend()
        if name == "auto":
            p = LinearProblem(
                tuple(x.shape[:-1]), self.in_features, self.out_features, self.bias is not None, x.dtype.name
            )
            try:
                name = dispatch.select(p)[0]
            except dispatch.BackendError:  # nothing can: BLAS answers, as before
                return None
        return name

    def backward(self, grad_output):
        x = self._saved_for_backward()["input"]
        g = as_float_array(grad_output, "grad_output", like=x.dtype)
        if g.shape != (*x.shape[:-1], self.out_features):
            raise ValueError(
                f"grad_output must have the output's shape {(*x.shape[:-1], self.out_features)}, got {tuple(g.shape)}"
            )
        apply_blas()
        g2, x2 = g.reshape(-1, self.out_features), x.reshape(-1, self.in_features)
        self._add_grad("weight", g2.T @ x2)
        if self.bias is not None:
            self._add_grad("bias", g2.sum(axis=0))
        return g @ as_float_array(self.weight, "weight", like=x.dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Merge dimensions ``start_dim`` .. ``end_dim`` into one, as torch.nn.Flatten."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = as_int(start_dim, "start_dim")
        self.end_dim = as_int(end_dim, "end_dim")

    def forward(self, x):
        x = x if is_cuda_array(x) else np.asarray(x)
        nd = max(x.ndim, 1)
        start, end = (d + nd if d < 0 else d for d in (self.start_dim, self.end_dim))
        if not (0 <= start < nd and 0 <= end < nd):
            raise ValueError(
                f"Flatten: start_dim={self.start_dim} and end_dim={self.end_dim} must lie in "
                f"[{-nd}, {nd - 1}] for a {x.ndim}-D input"
            )
        if start > end:
            raise ValueError(f"Flatten: start_dim={self.start_dim} comes after end_dim={self.end_dim}")
        self._save(shape=x.shape)
        if x.ndim == 0:
            return x.reshape(1)
        merged = int(np.prod(x.shape[start : end + 1]))
        return x.reshape(*x.shape[:start], merged, *x.shape[end + 1 :])

    def backward(self, grad_output):
        return np.asarray(grad_output).reshape(self._saved_for_backward()["shape"])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input; takes (and ignores) any constructor arguments, as torch.nn.Identity."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad_output):
        return grad_output


def _pad_input(x, mode, padding, kernel_size, dilation, stride):
    """The explicitly padded input the forward convolved for a non-zeros padding_mode, and its pads."""
    pads = api._conv_padding(padding, *kernel_size, dilation, stride)
    pt, pb, pl, pr = pads
    np_mode = api._NP_PAD_MODE[mode]
    width = ((0, 0),) * (x.ndim - 2) + ((pt, pb), (pl, pr))
    return np.pad(x, width, mode=np_mode), pads


def _unpad_grad(g, mode, pads):
    """The adjoint of np.pad: every padded cell's gradient goes back to the input cell it copied."""
    pt, pb, pl, pr = pads
    np_mode = api._NP_PAD_MODE[mode]
    h, w = g.shape[-2] - pt - pb, g.shape[-1] - pl - pr
    rows = np.pad(np.arange(h), (pt, pb), mode=np_mode)  # the source row of every padded row
    cols = np.pad(np.arange(w), (pl, pr), mode=np_mode)
    out_h = np.zeros((*g.shape[:-2], h, g.shape[-1]), g.dtype)
    np.add.at(out_h, (..., rows, slice(None)), g)
    out = np.zeros((*g.shape[:-2], h, w), g.dtype)
    np.add.at(out, (..., cols), out_h)
    return out
