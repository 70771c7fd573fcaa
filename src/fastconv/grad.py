"""Gradients of fastconv's ops, shaped like ``torch.nn.grad``: one function per (op, argument).

Each function is named after its forward op and the argument it differentiates with respect to,
takes the forward's arguments plus ``grad_output`` (the gradient of the loss with respect to the
forward's output), validates them through the forward's own problem descriptor and runs one
backend kernel.  ``backend`` selects as in the forward ("auto": the first of c, numba, im2col,
naive that implements the kernel).

>>> import numpy as np, fastconv
>>> from fastconv import grad
>>> x = np.arange(16.0).reshape(1, 1, 4, 4); w = np.ones((1, 1, 3, 3))
>>> g = np.ones((1, 1, 2, 2))                       # d(sum(conv2d(x, w))) / d(output)
>>> grad.conv2d_input(x.shape, w, g)[0, 0]          # how many windows each pixel falls in
array([[1., 2., 2., 1.],
       [2., 4., 4., 2.],
       [2., 4., 4., 2.],
       [1., 2., 2., 1.]])
>>> grad.conv2d_weight(x, w.shape, g)[0, 0]         # sum of each window's pixels
array([[10., 14., 18.],
       [26., 30., 34.],
       [42., 46., 50.]])
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from . import dispatch
from ._args import as_float, as_float_array, as_int, check_ndim, nonnegative_pair, positive_pair
from .api import _conv_padding, adaptive_max_pool2d
from .problem import AdaptivePool2dProblem, BatchNormProblem, Conv2dProblem, Pool2dProblem, ReluProblem

__all__ = [
    "conv2d_input",
    "conv2d_weight",
    "conv2d_bias",
    "max_pool2d_input",
    "avg_pool2d_input",
    "adaptive_avg_pool2d_input",
    "batch_norm_input",
    "relu_input",
    "relu6_input",
    "hardtanh_input",
    "leaky_relu_input",
    "sigmoid_input",
    "silu_input",
    "hardswish_input",
    "adaptive_max_pool2d_input",
]


def _run(p, direction: str, *arrays, backend):
    """The backend function of ``p``'s op in ``direction`` (the op table's ``conv2d_bwd_data``, ...).

    Chosen as the forward's: explicit ``backend`` first, then use_backend/set_backend/
    FASTCONV_BACKEND, then "auto"; a backend lacking the function or refusing the problem says why.
    """
    return dispatch.run(replace(p, direction=direction), *arrays, backend=backend)


def _size(input_size, name: str, ndim: tuple[int, ...]) -> tuple[int, ...]:
    try:
        size = tuple(as_int(v, name) for v in input_size)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {input_size!r}") from None
    if len(size) not in ndim or min(size, default=0) < 0:
        raise ValueError(f"{name} must be {' or '.join(map(str, ndim))} non-negative sizes, got {input_size!r}")
    return size


def _grad(grad_output, expected: tuple[int, ...], dtype) -> np.ndarray:
    g = as_float_array(grad_output, "grad_output", like=dtype)
    if tuple(g.shape) != tuple(expected):
        raise ValueError(f"grad_output must have the forward output's shape {tuple(expected)}, got {tuple(g.shape)}")
    return g


def _batched(shape):
    return shape if len(shape) == 4 else (1, *shape)


# -- convolution -------------------------------------------------------------------------------


def _conv_problem(size, weight_shape, dtype, stride, padding, dilation, groups, bias=False):
    n, c, h, w = _batched(size)
    k, cg, r, s = weight_shape
    stride, dilation = positive_pair(stride, "stride"), positive_pair(dilation, "dilation")
    groups = as_int(groups, "groups")
    if groups <= 0:
        raise ValueError(f"groups must be positive, got groups={groups}")
    if cg * groups != c:
        raise ValueError(
            f"input has {c} channels but weight of shape {tuple(weight_shape)} with groups={groups} "
            f"expects {cg * groups} (weight.shape[1] * groups)"
        )
    if k % groups:
        raise ValueError(f"groups={groups} must divide the out channels, weight.shape[0]={k}")
    pads = _conv_padding(padding, r, s, dilation, stride)
    return Conv2dProblem(n, c, h, w, k, r, s, stride, pads, dilation, groups, np.dtype(dtype).name, bias=bias)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """Gradient of conv2d with respect to its input, as torch.nn.grad.conv2d_input.

    ``input_size`` is the forward input's shape, (N, C, H, W) or unbatched (C, H, W).
    """
    size = _size(input_size, "input_size", (3, 4))
    w = as_float_array(weight, "weight")
    check_ndim(w, "weight", (4,), "(out_channels, in_channels / groups, kH, kW)")
    p = _conv_problem(size, w.shape, w.dtype, stride, padding, dilation, groups)
    out_shape = p.output_shape if len(size) == 4 else p.output_shape[1:]
    g = _grad(grad_output, out_shape, w.dtype).reshape(p.output_shape)
    if 0 in p.output_shape or 0 in _batched(size):
        return np.zeros(size, w.dtype)
    return _run(p, "bwd_data", g, w, backend=backend).reshape(size)


def _conv2d_weight_bias(input, weight_size, grad_output, stride, padding, dilation, groups, bias, backend):
    x = as_float_array(input, "input")
    check_ndim(x, "input", (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    wsize = _size(weight_size, "weight_size", (4,))
    p = _conv_problem(x.shape, wsize, x.dtype, stride, padding, dilation, groups, bias)
    out_shape = p.output_shape if x.ndim == 4 else p.output_shape[1:]
    g = _grad(grad_output, out_shape, x.dtype).reshape(p.output_shape)
    if 0 in p.output_shape or 0 in x.shape:
        return np.zeros(wsize, x.dtype), (np.zeros(wsize[0], x.dtype) if bias else None)
    return _run(p, "bwd_weight", x.reshape(_batched(x.shape)), g, backend=backend)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """Gradient of conv2d with respect to its weight, as torch.nn.grad.conv2d_weight."""
    return _conv2d_weight_bias(input, weight_size, grad_output, stride, padding, dilation, groups, False, backend)[0]


def conv2d_bias(grad_output):
    """Gradient of conv2d with respect to its bias: grad_output summed over all but the channel axis."""
    g = as_float_array(grad_output, "grad_output")
    check_ndim(g, "grad_output", (3, 4), "(N, K, OH, OW) or unbatched (K, OH, OW)")
    return g.reshape(_batched(g.shape)).sum(axis=(0, 2, 3), dtype=np.float64).astype(g.dtype)


# -- pooling -----------------------------------------------------------------------------------


def _pool_problem(
    kind, size, dtype, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad=True, divisor_override=None
):
    kernel = positive_pair(kernel_size, "kernel_size")
    stride = (
        kernel
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
        else positive_pair(stride, "stride")
    )
    padding = nonnegative_pair(padding, "padding")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"padding should be at most half of kernel_size, but got padding={padding} and kernel_size={kernel}"
        )
    if divisor_override is not None and as_int(divisor_override, "divisor_override") == 0:
        raise ValueError("divisor_override must be non-zero, got 0")
    return Pool2dProblem(
        kind,
        *_batched(size),
        kernel,
        stride,
        padding,
        positive_pair(dilation, "dilation"),
        bool(ceil_mode),
        bool(count_include_pad),
        divisor_override,
        dtype=np.dtype(dtype).name,
    )


def _unbatched_out(p, size):
    return p.output_shape if len(size) == 4 else p.output_shape[1:]


def max_pool2d_input(
    input, grad_output, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, backend=None
):
    """Gradient of max_pool2d with respect to its input: each output's gradient goes to its window's
    (first) maximum, as torch."""
    x = as_float_array(input, "input")
    check_ndim(x, "input", (3, 4), "(N, C, H, W) or unbatched (C, H, W)")
    p = _pool_problem("max", x.shape, x.dtype, kernel_size, stride, padding, dilation, ceil_mode)
    g = _grad(grad_output, _unbatched_out(p, x.shape), x.dtype).reshape(p.output_shape)
    if 0 in p.output_shape:
        return np.zeros(x.shape, x.dtype)
    return _run(p, "bwd_data", x.reshape(_batched(x.shape)), g, backend=backend).reshape(x.shape)


def avg_pool2d_input(
    input_size,
    grad_output,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
    *,
    backend=None,
):
    """Gradient of avg_pool2d with respect to its input (of shape ``input_size``)."""
    size = _size(input_size, "input_size", (3, 4))
    g = as_float_array(grad_output, "grad_output")
    p = _pool_problem(
        "avg", size, g.dtype, kernel_size, stride, padding, 1, ceil_mode, count_include_pad, divisor_override
    )
    g = _grad(g, _unbatched_out(p, size), g.dtype).reshape(p.output_shape)
    if 0 in p.output_shape:
        return np.zeros(size, g.dtype)
    return _run(p, "bwd_data", g, backend=backend).reshape(size)


def adaptive_avg_pool2d_input(input_size, grad_output, *, backend=None):
    """Gradient of adaptive_avg_pool2d with respect to its input (of shape ``input_size``); the
    output size is ``grad_output``'s."""
    size = _size(input_size, "input_size", (3, 4))
    g = as_float_array(grad_output, "grad_output")
    check_ndim(g, "grad_output", (len(size),), "the forward output's layout")
    n, c, h, w = _batched(size)
    oh, ow = g.shape[-2:]
    p = AdaptivePool2dProblem(n, c, h, w, oh, ow, g.dtype.name)
    g = _grad(g, _unbatched_out(p, size), g.dtype).reshape(p.output_shape)
    if 0 in p.output_shape:
        return np.zeros(size, g.dtype)
    return _run(p, "bwd_data", g, backend=backend).reshape(size)


# -- batch norm and relu -----------------------------------------------------------------------


def batch_norm_input(input, grad_output, mean=None, var=None, weight=None, training=False, eps=1e-5, *, backend=None):
    """Gradients of batch_norm with respect to (input, weight, bias), for an (N, C, *) input.

    ``training=True``: the forward normalised with the batch's own statistics, so the gradient
    flows through them too; ``mean``/``var`` are those statistics (biased variance), computed from
    ``input`` when None.  ``training=False``: ``mean``/``var`` are the running statistics used.
    ``weight`` None means no affine scale (the weight and bias gradients are still returned).
    """
    x = as_float_array(input, "input")
    if x.ndim < 2:
        raise ValueError(f"input must be at least 2-D (N, C, *), got {x.ndim}-D with shape {tuple(x.shape)}")
    g = _grad(grad_output, x.shape, x.dtype)
    n, c, *spatial = x.shape
    eps = as_float(eps, "eps")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be non-negative and finite, got eps={eps}")
    p = BatchNormProblem(n, c, tuple(spatial), bool(training), eps, x.dtype.name)
    if training and p.count == 1:  # as the forward (and torch): one value has no batch statistics
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    x3, g3 = x.reshape(n, c, p.l), g.reshape(n, c, p.l)
    if mean is None or var is None:
        if not training:
            raise ValueError("mean and var (the running statistics) are needed when training=False")
        if x.size == 0:  # no values, no statistics (and no "Mean of empty slice" warning); unused below
            mean = var = np.zeros(c, x.dtype)
        else:
            x64 = x3.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):  # inf inputs: torch's NaN statistics, quietly
                mean = x64.mean(axis=(0, 2)).astype(x.dtype)
                var = x64.var(axis=(0, 2)).astype(x.dtype)
    stats = []
    for name, a in (("mean", mean), ("var", var), ("weight", np.ones(c, x.dtype) if weight is None else weight)):
        a = as_float_array(a, name, like=x.dtype)
        if a.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) to match the input's {c} channels, got {a.shape}")
        stats.append(a)
    if x.size == 0:
        return np.zeros_like(x), np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    gi, gw, gb = _run(p, "bwd_data", x3, g3, *stats, backend=backend)
    return gi.reshape(x.shape), gw, gb


def relu_input(output, grad_output, *, backend=None):
    """Gradient of relu with respect to its input, from the forward's ``output``: grad where output > 0."""
    y = as_float_array(output, "output")
    g = _grad(grad_output, y.shape, y.dtype)
    p = ReluProblem(tuple(y.shape), y.dtype.name)
    if y.size == 0:
        return np.zeros_like(y)
    return _run(p, "bwd_data", y, g, backend=backend)


# -- the other activations and adaptive max pooling: NumPy on every backend ------------------------
# Each is one elementwise formula (or one scatter), torch's derivative with its choice at the kinks.


def _input_and_grad(input, grad_output):
    x = as_float_array(input, "input")
    return x, _grad(grad_output, x.shape, x.dtype)


def hardtanh_input(input, grad_output, min_val=-1.0, max_val=1.0):
    """Gradient of hardtanh: grad strictly inside (min_val, max_val), 0 elsewhere (at the bounds too)."""
    x, g = _input_and_grad(input, grad_output)
    lo, hi = as_float(min_val, "min_val"), as_float(max_val, "max_val")
    return np.where((x <= lo) | (x >= hi), g.dtype.type(0), g)


def relu6_input(input, grad_output):
    """Gradient of relu6: grad strictly inside (0, 6)."""
    return hardtanh_input(input, grad_output, 0.0, 6.0)


def leaky_relu_input(input, grad_output, negative_slope=0.01):
    """Gradient of leaky_relu: grad where input > 0, negative_slope * grad elsewhere."""
    x, g = _input_and_grad(input, grad_output)
    return np.where(x > 0, g, g * g.dtype.type(as_float(negative_slope, "negative_slope")))


def sigmoid_input(output, grad_output):
    """Gradient of sigmoid from the forward's ``output`` y: grad * y * (1 - y)."""
    y, g = _input_and_grad(output, grad_output)
    return g * y * (1 - y)


def silu_input(input, grad_output):
    """Gradient of silu, x * sigmoid(x): grad * s * (1 + x * (1 - s)) with s = sigmoid(x)."""
    x, g = _input_and_grad(input, grad_output)
    s = 0.5 * (1 + np.tanh(0.5 * x))  # sigmoid, without exp's overflow
    return g * s * (1 + x * (1 - s))


def hardswish_input(input, grad_output):
    """Gradient of hardswish: 0 up to -3, grad * (x / 3 + 1/2) inside, grad from 3 on."""
    x, g = _input_and_grad(input, grad_output)
    slope = np.where(x <= -3, 0, np.where(x < 3, x / x.dtype.type(3) + x.dtype.type(0.5), 1))
    return (g * slope).astype(x.dtype, copy=False)


def adaptive_max_pool2d_input(input, grad_output, output_size, *, backend=None):
    """Gradient of adaptive_max_pool2d: each output's gradient to its bin's arg max (the forward's
    ``return_indices``), summed where bins overlap."""
    _, indices = adaptive_max_pool2d(input, output_size, return_indices=True, backend=backend)
    return _scatter_to_indices(np.shape(input), indices, grad_output)


def _scatter_to_indices(shape, indices, grad_output):
    """``grad_output`` added at the flat plane positions ``indices`` of an array of ``shape``."""
    g = np.asarray(grad_output)
    if g.shape != indices.shape:
        raise ValueError(f"grad_output must have the output's shape {indices.shape}, got {g.shape}")
    planes = int(np.prod(shape[:-2]))
    gx = np.zeros((planes, shape[-2] * shape[-1]), g.dtype)
    rows = np.repeat(np.arange(planes), indices.shape[-2] * indices.shape[-1])
    np.add.at(gx, (rows, indices.reshape(-1)), g.reshape(-1))
    return gx.reshape(shape)
