"""torch.nn.functional on CPU: the reference every backend is tested against, and the baseline
every benchmark compares with.  "auto" never picks it; name it to use it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import arrays, ops, threads

NAME = "torch"
DEVICES = ("cpu",)
#: torch (oneDNN) picks its own convolution algorithm and never lets a caller choose one.
ALGORITHMS: dict = {"conv2d": ()}
FUSED_EPILOGUE = False


def available():
    try:
        import torch  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"torch is not installed ({type(exc).__name__}: {exc})"
    return True, ""


def supports(p):
    if getattr(p, "algorithm", "auto") != "auto":
        return f"torch chooses its own convolution algorithm; {p.algorithm!r} cannot be requested"
    return None


def _torch():
    import torch

    n = threads.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch


def _tensor(torch, a):
    # from_numpy shares memory and warns on read-only arrays; torch never writes inputs here.
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _numpy(out):
    if isinstance(out, tuple):
        return tuple(None if o is None else o.detach().numpy() for o in out)
    return out.detach().numpy()


def _reference(p, direction="fwd", **data):
    """The op table's torch call for ``p``'s op in ``direction`` on these NumPy arrays, as NumPy arrays."""
    entry = ops.TABLE[(p.op, direction)]
    p = replace(p, direction=direction)
    if 0 in p.output_shape:  # an empty batch: torch's backward ops reject some empty shapes
        return entry.empty(p, p.dtype, arrays.numpy)
    torch = _torch()
    t = {k: None if v is None else _tensor(torch, v) for k, v in data.items()}
    with torch.no_grad():
        return _numpy(entry.torch(p, t, torch)())


def conv2d(p, x, weight, bias, residual):
    return _reference(p, x=x, w=weight, b=bias, residual=residual)


def max_pool2d(p, x):
    return _reference(p, x=x)


def avg_pool2d(p, x):
    return _reference(p, x=x)


def adaptive_avg_pool2d(p, x):
    return _reference(p, x=x)


def max_pool2d_with_indices(p, x):
    return _reference(p, x=x)


def adaptive_max_pool2d(p, x):
    return _reference(p, x=x)


def activation(p, x):
    return _reference(p, x=x)


def linear(p, x, weight, bias):
    return _reference(p, x=x, w=weight, b=bias)


def batch_norm(p, x, mean, var, weight, bias):
    if p.training:
        # torch's stats: the batch mean and biased variance it normalises with.
        x64 = x.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in a channel: torch's NaN
            mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
        y = _reference(p, x=x, mean=None, var=None, weight=weight, bias=bias)
    else:
        y = _reference(p, x=x, mean=mean, var=var, weight=weight, bias=bias)
    return y, mean, var


def relu(p, x):
    return _reference(p, x=x)


# -- backward: autograd (or aten's backward op) through the same references ------------------------


def _zeros(shape, p):
    return np.zeros(shape, p.dtype)


def conv2d_bwd_data(p, grad_output, weight):
    # The input's values do not enter the gradient of a linear op: zeros stand in for them.
    return _reference(p, "bwd_data", x=_zeros(p.input_shape, p), w=weight, grad_output=grad_output)


def conv2d_bwd_weight(p, input, grad_output):
    bias = _zeros(p.k, p) if p.bias else None
    return _reference(p, "bwd_weight", x=input, w=_zeros(p.weight_shape, p), b=bias, grad_output=grad_output)


def max_pool2d_bwd_data(p, input, grad_output):
    return _reference(p, "bwd_data", x=input, grad_output=grad_output)


def avg_pool2d_bwd_data(p, grad_output):
    return _reference(p, "bwd_data", x=_zeros(p.input_shape, p), grad_output=grad_output)


def adaptive_avg_pool2d_bwd_data(p, grad_output):
    return _reference(p, "bwd_data", x=_zeros(p.input_shape, p), grad_output=grad_output)


def batch_norm_bwd_data(p, input, grad_output, mean, var, weight):
    return _reference(p, "bwd_data", x=input, grad_output=grad_output, mean=mean, var=var, weight=weight)


def relu_bwd_data(p, output, grad_output):
    return _reference(p, "bwd_data", y=output, grad_output=grad_output)
