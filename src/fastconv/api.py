"""The functional API: torch.nn.functional's names, argument order and semantics, on NumPy arrays.

Each function checks its arguments (TypeError / ValueError naming the argument, MemoryError for
an output that cannot fit), builds a frozen problem descriptor, brings the arrays into the one
form backends accept (C-contiguous, native byte order, one float dtype) and makes one dispatch
call.  Inputs are never modified; ``batch_norm(training=True)`` updates the running statistics in
place, as torch does.  fastconv's own options are keyword-only and come last.

Torch tensors in, torch tensors out: a CPU tensor is read through ``tensor.numpy()`` -- no copy
when it is contiguous, float32/float64 -- and results come back as tensors sharing the NumPy
result's memory (``torch.from_numpy``).  A ``channels_last`` input (NHWC in memory) costs one
transposing copy in and one out: the kernels are NCHW, and the 4-D result is returned
``channels_last`` again, as torch returns it.  A tensor that requires grad is refused (fastconv
records no autograd graph): pass ``t.detach()``.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import replace

import numpy as np

from . import dispatch
from ._device import CudaArray
from ._args import as_bool, as_float, as_float_array, as_int, as_pair, check_ndim, nonnegative_pair, positive_pair
from .problem import (
    ActivationProblem,
    AdaptivePool2dProblem,
    BatchNormProblem,
    Conv2dProblem,
    LinearProblem,
    Pool2dProblem,
    ReluProblem,
    activation_params,
    require_activation,
    require_algorithm,
    require_eps,
    require_padding_mode,
    require_pool_padding,
    require_padding_string,
    require_positive,
)

_NP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
_IMAGE = "(N, C, H, W) or unbatched (C, H, W)"


# -- torch tensors in, torch tensors out ----------------------------------------------------------


def _torch_module():
    return sys.modules.get("torch")  # a tensor exists only once torch is imported


def _from_tensor(t, name: str, torch):
    """A CPU tensor as a NumPy view of its memory (torch's strides kept); CUDA tensors pass through."""
    if t.requires_grad:
        raise TypeError(
            f"{name} is a torch tensor that requires grad, but fastconv records no autograd graph: "
            f"pass {name}.detach() (or call inside torch.no_grad())"
        )
    if t.device.type != "cpu":
        return t  # a device array: as_float_array keeps it on its device
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got torch dtype {str(t.dtype).replace('torch.', '')}")
    return t.resolve_conj().resolve_neg().numpy()


#: dtype -> its name for the problem descriptors: NumPy's dtype.name costs about 2.5 us a call.
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def _dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(dtype) or dtype.name


def _channels_last(t, torch) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _accepts_tensors(fn):
    """Let ``fn`` take CPU torch tensors for its array arguments and return tensors for them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch = _torch_module()
        if torch is None or not any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())):
            return fn(*args, **kwargs)
        views = {}  # id(NumPy view) -> the tensor it views: an in-place result returns the tensor itself
        names = fn.__code__.co_varnames

        def convert(a, name):
            if not isinstance(a, torch.Tensor):
                return a
            v = _from_tensor(a, name, torch)
            views[id(v)] = a
            return v

        args = [convert(a, names[i] if i < len(names) else "input") for i, a in enumerate(args)]
        kwargs = {k: convert(v, k) for k, v in kwargs.items()}
        first = args[0] if args else kwargs.get("input")
        nhwc = isinstance(views.get(id(first)), torch.Tensor) and _channels_last(views[id(first)], torch)

        def back(y):
            if isinstance(y, tuple):
                return tuple(back(v) for v in y)
            if not isinstance(y, np.ndarray):
                return y
            if id(y) in views:
                return views[id(y)]
            t = torch.from_numpy(y if y.flags.writeable else y.copy())
            return t.contiguous(memory_format=torch.channels_last) if nhwc and t.dim() == 4 else t

        return back(fn(*args, **kwargs))

    return wrapper


def _writable_target(input, name: str, fn: str):
    """The array an ``inplace=True`` call writes its result into; TypeError/ValueError if it cannot be."""
    if not isinstance(input, np.ndarray):
        raise TypeError(
            f"{fn}(inplace=True) writes its result into {name}, which must then be a NumPy array "
            f"or CPU torch tensor, got {type(input).__name__}"
        )
    if input.dtype.kind != "f" or input.dtype.itemsize not in (4, 8):
        raise TypeError(f"{fn}(inplace=True): {name} must be float32 or float64, got dtype {input.dtype}")
    if not input.flags.writeable:
        raise ValueError(f"{fn}(inplace=True): {name} is read-only")
    return input


def _in_place(target, y):
    """Write ``y`` into ``target`` (any strides or byte order: NumPy converts) and return ``target``."""
    np.copyto(target, y, casting="same_kind")
    return target


def _batched(x: np.ndarray) -> np.ndarray:
    return x[np.newaxis] if x.ndim == 3 else x


def _conv_padding(padding, r: int, s: int, dilation: tuple[int, int], stride: tuple[int, int]):
    """(top, bottom, left, right) from an int, a pair, "same" or "valid"."""
    if isinstance(padding, str):
        require_padding_string(padding, stride)
        if padding == "valid":
            return (0, 0, 0, 0)
        th, tw = dilation[0] * (r - 1), dilation[1] * (s - 1)
        # torch puts the odd extra row/column at the bottom/right.
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = nonnegative_pair(padding, "padding")
    return (ph, ph, pw, pw)


@_accepts_tensors
def conv2d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    padding_mode="zeros",
    residual=None,
    activation=None,
    algorithm="auto",
    backend=None,
):
    """2-D convolution, ``y = act(conv(input, weight) + bias + residual)``, as torch.nn.functional.conv2d.

    input (N, C, H, W) or unbatched (C, H, W); weight (K, C // groups, R, S); bias (K,).
    ``padding`` is an int, a pair, "same" (stride 1 only; an odd total puts the extra row and
    column at the bottom/right) or "valid".  ``padding_mode`` is "zeros", "reflect" (padding <
    input size), "replicate" or "circular" (padding <= input size), as in torch.nn.Conv2d; padding
    is never negative (torch.nn.Conv2d crops the input by a negative padding in the last three
    modes, through F.pad; fastconv refuses it in every mode, as torch.nn.functional.conv2d does).
    ``residual`` (the output's shape) is added after the bias, then ``activation`` is applied --
    a ResNet skip connection in one call.  ``activation`` is None, "relu", "relu6", "leaky_relu",
    "hardtanh", "sigmoid", "silu", "hardswish", or a tuple ``(name, *params)`` such as
    ``("leaky_relu", 0.2)`` or ``("hardtanh", -2.0, 2.0)`` (torch.nn.functional's parameters, in
    its order; omitted ones take torch's defaults).  ``algorithm`` ("auto", "direct",
    "gemm", "winograd") asks for one way of computing it; a backend that does not implement it
    refuses (and "auto" backend selection moves on).  "winograd" needs a 3x3, stride-1,
    undilated kernel and trades accuracy for fewer multiplies (docs/results/winograd.md).

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 3, 3), dtype=np.float32)
    >>> fastconv.conv2d(x, w)
    array([[[[45., 54.],
             [81., 90.]]]], dtype=float32)
    >>> fastconv.conv2d(x, w, padding="same", stride=1).shape
    (1, 1, 4, 4)
    >>> fastconv.conv2d(x, w, residual=np.full((1, 1, 2, 2), -60, np.float32), activation="relu")
    array([[[[ 0.,  0.],
             [21., 30.]]]], dtype=float32)
    """
    x = as_float_array(input, "input")
    check_ndim(x, "input", (3, 4), _IMAGE)
    w = as_float_array(weight, "weight", like=x.dtype)
    check_ndim(w, "weight", (4,), "(out_channels, in_channels / groups, kH, kW)")
    groups = as_int(groups, "groups")
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    require_positive(groups, "groups")
    require_padding_mode(padding_mode)
    require_algorithm(algorithm)
    activation, act_params = _activation_spec(activation)
    x4 = _batched(x)
    n, c, h, wd = x4.shape
    k, cg, r, s = w.shape
    if cg * groups != c:
        raise ValueError(
            f"input has {c} channels but weight of shape {tuple(w.shape)} with groups={groups} "
            f"expects {cg * groups} (weight.shape[1] * groups)"
        )
    pads = _conv_padding(padding, r, s, dilation, stride)
    b = None
    if bias is not None:
        b = as_float_array(bias, "bias", like=x.dtype)
        if b.shape != (k,):
            raise ValueError(
                f"bias must have shape ({k},) to match weight of shape {tuple(w.shape)}, got {tuple(b.shape)}"
            )
    p = _problem(
        Conv2dProblem,
        n,
        c,
        h,
        wd,
        k,
        r,
        s,
        stride,
        pads,
        dilation,
        groups,
        _dtype_name(x.dtype),
        bias=b is not None,
        residual=residual is not None,
        activation=activation,
        padding_mode=padding_mode,
        algorithm=algorithm,
        activation_params=act_params,
        floats=bool(act_params),
    )
    out_shape = p.output_shape if x.ndim == 4 else p.output_shape[1:]
    res = None
    if residual is not None:
        res = as_float_array(residual, "residual", like=x.dtype)
        if res.shape != out_shape:
            raise ValueError(f"residual must have the output's shape {out_shape}, got {tuple(res.shape)}")
        res = _batched(res)
    if padding_mode != "zeros" and not isinstance(x4, CudaArray):
        # CPU backends only see zero padding (device backends read the other modes in place): the
        # other modes become an explicit padded copy.
        pt, pb, pl, pr = pads
        x4 = np.pad(x4, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode=_NP_PAD_MODE[padding_mode])
        p = replace(p, h=h + pt + pb, w=wd + pl + pr, padding=(0, 0, 0, 0), padding_mode="zeros")
    y = dispatch.run(p, x4, w, b, res, backend=backend)
    return y if x.ndim == 4 else y[0]


def _problem(cls, *args, floats: bool = False, **kwargs):
    """``cls(*args, **kwargs)``, the same object for the same call: a problem is built and checked
    once per distinct call, and every cache keyed by it downstream (the dispatcher's, the
    backends') hits at the cost of an identity test.  The arguments are the checked ones: Python
    ints, tuples of them, bools, None and validated names, so equal keys mean equal problems --
    except floats (``floats=True``: built afresh), where -0.0 equals 0.0 but is another value (a
    leaky_relu slope of -0.0 makes another sign of zero than 0.0)."""
    return cls(*args, **kwargs) if floats else _cached_problem(cls, *args, **kwargs)


_cached_problem = functools.lru_cache(maxsize=2048)(lambda cls, *args, **kwargs: cls(*args, **kwargs))


def _activation_spec(activation):
    """(name, params) from None, a name, or a tuple (name, *params)."""
    if activation is None:  # the common case, without the general rule's checks (about 2 us)
        return None, ()
    if isinstance(activation, (tuple, list)) and activation:
        name, params = activation[0], tuple(as_float(v, "activation parameter") for v in activation[1:])
    else:
        name, params = activation, ()
    require_activation(name)
    return name, activation_params(name, params)


def _pool_args(input, kernel_size, stride, padding, dilation, ceil_mode):
    x = as_float_array(input, "input")
    check_ndim(x, "input", (3, 4), _IMAGE)
    kernel = positive_pair(kernel_size, "kernel_size")
    stride = (
        kernel
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
        else positive_pair(stride, "stride")
    )
    padding = nonnegative_pair(padding, "padding")
    dilation = positive_pair(dilation, "dilation")
    require_pool_padding(kernel, padding)
    x4 = _batched(x)
    if x4.shape[1] == 0 or x4.shape[2] == 0 or x4.shape[3] == 0:
        raise ValueError(f"input must have non-zero channels, height and width, got shape {tuple(x.shape)}")
    return x, x4, kernel, stride, padding, dilation, as_bool(ceil_mode, "ceil_mode")


def _run_pool(p, x, x4, backend):
    y = dispatch.run(p, x4, backend=backend)
    if isinstance(y, tuple):  # (values, indices)
        return y if x.ndim == 4 else tuple(a[0] for a in y)
    return y if x.ndim == 4 else y[0]


@_accepts_tensors
def max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False, *, backend=None
):
    """2-D max pooling, as torch.nn.functional.max_pool2d.

    Padding counts as -inf and is at most half the kernel; a window containing NaN gives NaN;
    ``stride`` defaults to ``kernel_size``; ``ceil_mode`` rounds the output size up but drops a
    last window that would start in the right padding.  With ``return_indices=True`` it returns
    ``(output, indices)``: each output's arg max as an int64 flat index ``ih * W + iw`` into its
    (n, c) plane, torch's choice on ties (the first in the window's row-major scan), NaN (the
    last NaN) and all -inf windows (the first cell inside the input).

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> fastconv.max_pool2d(x, 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    >>> fastconv.max_pool2d(x, 3, stride=2, padding=1).shape
    (1, 1, 2, 2)
    >>> fastconv.max_pool2d(x, 2, return_indices=True)[1]
    array([[[[ 5,  7],
             [13, 15]]]])
    """
    x, x4, kernel, stride, padding, dilation, ceil_mode = _pool_args(
        input, kernel_size, stride, padding, dilation, ceil_mode
    )
    p = _problem(
        Pool2dProblem,
        "max",
        *x4.shape,
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode,
        dtype=_dtype_name(x.dtype),
        return_indices=as_bool(return_indices, "return_indices"),
    )
    return _run_pool(p, x, x4, backend)


@_accepts_tensors
def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
    *,
    backend=None,
):
    """2-D average pooling, as torch.nn.functional.avg_pool2d.

    The divisor counts the padded cells of a window when ``count_include_pad`` (but never the part
    of a ceil-mode window that hangs past the padding), only the real cells otherwise; a non-zero
    ``divisor_override`` replaces both.

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    >>> fastconv.avg_pool2d(x, 2)
    array([[[[ 2.5,  4.5],
             [10.5, 12.5]]]])
    >>> fastconv.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)[0, 0]
    array([[ 2.5,  4. ],
           [ 8.5, 10. ]])
    """
    x, x4, kernel, stride, padding, dilation, ceil_mode = _pool_args(input, kernel_size, stride, padding, 1, ceil_mode)
    count_include_pad = as_bool(count_include_pad, "count_include_pad")
    if divisor_override is not None:
        divisor_override = as_int(divisor_override, "divisor_override")
    p = _problem(
        Pool2dProblem,
        "avg",
        *x4.shape,
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode,
        count_include_pad,
        divisor_override,
        dtype=_dtype_name(x.dtype),
    )
    return _run_pool(p, x, x4, backend)


@_accepts_tensors
def adaptive_avg_pool2d(input, output_size, *, backend=None):
    """Average pooling to a fixed output size, as torch.nn.functional.adaptive_avg_pool2d.

    Output bin i averages input rows ``floor(i*H/O)`` to ``ceil((i+1)*H/O)`` (exclusive), so bins
    may overlap and ``O`` may exceed ``H``.  ``output_size`` is an int or a pair whose None entries
    keep the input's size.

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    >>> fastconv.adaptive_avg_pool2d(x, 1)
    array([[[[7.5]]]])
    >>> fastconv.adaptive_avg_pool2d(x, (2, None)).shape
    (1, 1, 2, 4)
    """
    x, x4, (oh, ow) = _adaptive_args(input, output_size, "adaptive_avg_pool2d")
    p = _problem(AdaptivePool2dProblem, *x4.shape, oh, ow, _dtype_name(x.dtype))
    return _run_pool(p, x, x4, backend)


@_accepts_tensors
def adaptive_max_pool2d(input, output_size, return_indices=False, *, backend=None):
    """Max pooling to a fixed output size, as torch.nn.functional.adaptive_max_pool2d.

    The bins are adaptive_avg_pool2d's; each output is its bin's max (NaN if the bin holds one).
    With ``return_indices=True`` it returns ``(output, indices)``, the flat arg max in each
    (n, c) plane, chosen as max_pool2d chooses it.

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> fastconv.adaptive_max_pool2d(x, 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    >>> fastconv.adaptive_max_pool2d(x, (1, 3), return_indices=True)[1]
    array([[[[13, 14, 15]]]])
    """
    x, x4, (oh, ow) = _adaptive_args(input, output_size, "adaptive_max_pool2d")
    p = _problem(
        AdaptivePool2dProblem,
        *x4.shape,
        oh,
        ow,
        _dtype_name(x.dtype),
        kind="max",
        return_indices=as_bool(return_indices, "return_indices"),
    )
    return _run_pool(p, x, x4, backend)


def _adaptive_args(input, output_size, fn: str):
    x = as_float_array(input, "input")
    check_ndim(x, "input", (3, 4), _IMAGE)
    x4 = _batched(x)
    n, c, h, w = x4.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"{fn} expects non-zero channels, height and width, got input of shape {tuple(x.shape)}")
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair, got output_size={tuple(output_size)!r}")
        size = (
            h if output_size[0] is None else as_int(output_size[0], "output_size"),
            w if output_size[1] is None else as_int(output_size[1], "output_size"),
        )
    else:
        size = as_pair(output_size, "output_size")
    return x, x4, size


def _stat(a, name: str, c: int, like: np.dtype):
    arr = as_float_array(a, name, like=like)
    if arr.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},) to match the input's {c} channels, got {tuple(arr.shape)}")
    return arr


@_accepts_tensors
def batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *, backend=None
):
    """Batch normalisation over axis 1 of an (N, C, *) input, as torch.nn.functional.batch_norm.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``.  In eval mode mean and var are the
    running statistics.  With ``training=True`` they are the batch's own (biased variance), and
    the running statistics, when given, are updated in place:
    ``running = (1 - momentum) * running + momentum * batch``, the variance stored unbiased.
    Note: as in torch, a 3-D input is (N, C, L), not an unbatched image.

    >>> import numpy as np, fastconv
    >>> x = np.array([[[1.0, 3.0]], [[5.0, 7.0]]])          # N=2, C=1, L=2
    >>> mean, var = np.zeros(1), np.ones(1)
    >>> fastconv.batch_norm(x, mean, var, training=True)[:, 0].round(4)   # batch mean 4, variance 5
    array([[-1.3416, -0.4472],
           [ 0.4472,  1.3416]])
    >>> mean, var                                            # 0.9*0 + 0.1*4, 0.9*1 + 0.1*(5*4/3)
    (array([0.4]), array([1.56666667]))
    """
    x = as_float_array(input, "input")
    if x.ndim < 2:
        raise ValueError(f"input must be at least 2-D (N, C, *), got {x.ndim}-D with shape {tuple(x.shape)}")
    n, c, *spatial = x.shape
    training = as_bool(training, "training")
    momentum = as_float(momentum, "momentum")
    eps = as_float(eps, "eps")
    require_eps(eps)
    if training and eps == 0:
        raise ValueError("eps must be positive when training (a constant channel would divide by zero), got eps=0.0")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if running_mean is None and not training:
        raise ValueError("running_mean and running_var must be given in evaluation mode (training=False)")
    mean = var = None
    if running_mean is not None:
        mean = _stat(running_mean, "running_mean", c, x.dtype)
        var = _stat(running_var, "running_var", c, x.dtype)
        if training:
            for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
                if not isinstance(stat, np.ndarray):
                    raise TypeError(f"{name} must be a NumPy array to be updated in place, got {type(stat).__name__}")
                if not stat.flags.writeable:
                    raise ValueError(f"{name} is read-only, but training=True updates it in place")
    w = np.ones(c, x.dtype) if weight is None else _stat(weight, "weight", c, x.dtype)
    b = np.zeros(c, x.dtype) if bias is None else _stat(bias, "bias", c, x.dtype)
    # eps is a float, but only its zero has a sign (-0.0 and 0.0 would share a cached problem).
    p = _problem(BatchNormProblem, n, c, tuple(spatial), training, eps, _dtype_name(x.dtype), floats=eps == 0)
    if training and p.count == 1:
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    x3 = x.reshape(n, c, p.l)
    y, batch_mean, batch_var = dispatch.run(
        p, x3, None if training else mean, None if training else var, w, b, backend=backend
    )
    if training and running_mean is not None and p.count > 0:
        with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf or inf - inf: torch's NaN
            unbiased = np.asarray(batch_var, np.float64) * (p.count / (p.count - 1))
            running_mean[...] = (1 - momentum) * running_mean + momentum * np.asarray(batch_mean, np.float64)
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    return y.reshape(x.shape)


@_accepts_tensors
def relu(input, inplace=False, *, backend=None):
    """max(x, 0) elementwise on an array of any shape; NaN stays NaN, as torch.relu.

    ``inplace=True`` writes the result into ``input`` and returns it, as torch does: ``input``
    must be a writable float32/float64 NumPy array (or CPU torch tensor) of any layout.  The
    kernel computes into a new array that is then copied into ``input`` (one extra pass).

    >>> import numpy as np, fastconv
    >>> fastconv.relu(np.array([-1.5, 0.0, 2.0], dtype=np.float32))
    array([0., 0., 2.], dtype=float32)
    >>> x = np.array([-1.0, 3.0]); fastconv.relu(x, inplace=True) is x, x
    (True, array([0., 3.]))
    """
    target = _writable_target(input, "input", "relu") if as_bool(inplace, "inplace") else None
    x = as_float_array(input, "input")
    p = _problem(ReluProblem, tuple(x.shape), _dtype_name(x.dtype))
    y = dispatch.run(p, x, backend=backend)
    return y if target is None else _in_place(target, y)


def _activation(kind, input, params, inplace, backend):
    target = _writable_target(input, "input", kind) if as_bool(inplace, "inplace") else None
    x = as_float_array(input, "input")
    p = ActivationProblem(kind, tuple(x.shape), _dtype_name(x.dtype), params)
    y = dispatch.run(p, x, backend=backend)
    return y if target is None else _in_place(target, y)


@_accepts_tensors
def relu6(input, inplace=False, *, backend=None):
    """min(max(x, 0), 6) elementwise, as torch.nn.functional.relu6 (NaN stays NaN).

    >>> import numpy as np, fastconv
    >>> fastconv.relu6(np.array([-1.0, 3.0, 9.0]))
    array([0., 3., 6.])
    """
    return _activation("relu6", input, (), inplace, backend)


@_accepts_tensors
def leaky_relu(input, negative_slope=0.01, inplace=False, *, backend=None):
    """x if x > 0 else negative_slope * x, as torch.nn.functional.leaky_relu.

    >>> import numpy as np, fastconv
    >>> fastconv.leaky_relu(np.array([-2.0, 3.0]), 0.5)
    array([-1.,  3.])
    """
    return _activation("leaky_relu", input, (as_float(negative_slope, "negative_slope"),), inplace, backend)


@_accepts_tensors
def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False, *, backend=None):
    """clip(x, min_val, max_val), as torch.nn.functional.hardtanh (NaN stays NaN).

    >>> import numpy as np, fastconv
    >>> fastconv.hardtanh(np.array([-3.0, 0.5, 3.0]))
    array([-1. ,  0.5,  1. ])
    """
    params = (as_float(min_val, "min_val"), as_float(max_val, "max_val"))
    return _activation("hardtanh", input, params, inplace, backend)


@_accepts_tensors
def sigmoid(input, *, backend=None):
    """1 / (1 + exp(-x)), as torch.sigmoid.

    >>> import numpy as np, fastconv
    >>> fastconv.sigmoid(np.array([0.0]))
    array([0.5])
    """
    return _activation("sigmoid", input, (), False, backend)


@_accepts_tensors
def silu(input, inplace=False, *, backend=None):
    """x * sigmoid(x) (swish), as torch.nn.functional.silu.

    >>> import numpy as np, fastconv
    >>> fastconv.silu(np.array([0.0, 1.0])).round(4)
    array([0.    , 0.7311])
    """
    return _activation("silu", input, (), inplace, backend)


@_accepts_tensors
def hardswish(input, inplace=False, *, backend=None):
    """x * clip(x + 3, 0, 6) / 6, as torch.nn.functional.hardswish.

    >>> import numpy as np, fastconv
    >>> fastconv.hardswish(np.array([-4.0, 0.0, 1.0, 4.0])).round(4)
    array([-0.    ,  0.    ,  0.6667,  4.    ])
    """
    return _activation("hardswish", input, (), inplace, backend)


@_accepts_tensors
def linear(input, weight, bias=None, *, backend=None):
    """``y = input @ weight.T + bias``, as torch.nn.functional.linear.

    input (*, in_features); weight (out_features, in_features); bias (out_features,).

    >>> import numpy as np, fastconv
    >>> fastconv.linear(np.ones((2, 3)), np.arange(6.0).reshape(2, 3), np.array([0.5, -0.5]))
    array([[ 3.5, 11.5],
           [ 3.5, 11.5]])
    """
    x = as_float_array(input, "input")
    w = as_float_array(weight, "weight", like=x.dtype)
    check_ndim(w, "weight", (2,), "(out_features, in_features)")
    if x.ndim == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match weight of shape {tuple(w.shape)}: "
            f"input.shape[-1] must be in_features={w.shape[1]}"
        )
    b = None
    if bias is not None:
        b = as_float_array(bias, "bias", like=x.dtype)
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"bias must have shape ({w.shape[0]},) to match weight of shape {tuple(w.shape)}, got {tuple(b.shape)}"
            )
    p = _problem(LinearProblem, tuple(x.shape[:-1]), w.shape[1], w.shape[0], b is not None, _dtype_name(x.dtype))
    return dispatch.run(p, x, w, b, backend=backend)


def warmup(backends=None) -> None:
    """Run every op once on tiny inputs, in both dtypes, on each backend (default: all available).

    Numba compiles (or loads from its cache) here instead of in the first real call.
    """
    names = [b for b in (backends or dispatch.available_backends()) if b != "torch"]
    rng = np.random.default_rng(0)
    for name in names:
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal((1, 2, 5, 5)).astype(dtype)
            w = rng.standard_normal((2, 2, 3, 3)).astype(dtype)
            ones, zeros = np.ones(2, dtype), np.zeros(2, dtype)
            conv2d(x, w, zeros, padding=1, backend=name)
            conv2d(x, w[:, :1], groups=2, backend=name)
            conv2d(x, w[:, :, :1, :1], residual=x, activation="relu", backend=name)
            max_pool2d(x, 3, 2, 1, backend=name)
            avg_pool2d(x, 3, 2, 1, backend=name)
            adaptive_avg_pool2d(x, 2, backend=name)
            for fn in (max_pool2d, adaptive_max_pool2d):
                try:  # not every backend returns indices
                    fn(x, 2, return_indices=True, backend=name)
                except dispatch.BackendError:
                    pass
            batch_norm(x, zeros, ones, backend=name)
            batch_norm(x, zeros.copy(), ones.copy(), training=True, backend=name)
            relu(x, backend=name)
            for fn in (relu6, sigmoid, silu, hardswish, leaky_relu, hardtanh):
                try:  # not every backend has the activation kernel
                    fn(x, backend=name)
                except dispatch.BackendError:
                    pass
