"""A backend whose backward kernels are torch's autograd: the gradient reference for layer tests.

It has the backend contract's forward ops (torch.nn.functional) and backward functions, so the
layer and model tests can check the chain rule of fastconv.nn on any machine; the backends'
own backward kernels are checked against torch op by op elsewhere and in the model tests.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fastconv.backends import torch as _fwd

NAME = "autograd"
available, supports = _fwd.available, _fwd.supports
conv2d, max_pool2d, avg_pool2d = _fwd.conv2d, _fwd.max_pool2d, _fwd.avg_pool2d
adaptive_avg_pool2d, batch_norm, relu = _fwd.adaptive_avg_pool2d, _fwd.batch_norm, _fwd.relu


def _t(a, grad=False):
    return torch.tensor(np.array(a), requires_grad=grad)


def _vjp(fn, grad_output, *inputs):
    """The gradients of sum(fn(*inputs) * grad_output) for the inputs that require grad."""
    out = fn(*inputs)
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, wanted, _t(grad_output))
    return [g.numpy() for g in grads]


def _conv(p, x, w, b=None):
    pt, pb, pl, pr = p.padding
    x = F.pad(x, (pl, pr, pt, pb))
    return F.conv2d(x, w, b, stride=p.stride, dilation=p.dilation, groups=p.groups)


def conv2d_bwd_data(p, grad_output, weight):
    x = torch.zeros((p.n, p.c, p.h, p.w), dtype=getattr(torch, p.dtype), requires_grad=True)
    return _vjp(lambda x, w: _conv(p, x, w), grad_output, x, _t(weight))[0]


def conv2d_bwd_weight(p, input, grad_output):
    w = torch.zeros((p.k, p.c // p.groups, p.r, p.s), dtype=getattr(torch, p.dtype), requires_grad=True)
    gw, = _vjp(lambda x, w: _conv(p, x, w), grad_output, _t(input), w)
    gb = grad_output.sum(axis=(0, 2, 3)) if p.bias else None
    return gw, gb


def max_pool2d_bwd_data(p, input, grad_output):
    return _vjp(lambda x: F.max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode),
                grad_output, _t(input, True))[0]


def avg_pool2d_bwd_data(p, grad_output):
    x = torch.zeros((p.n, p.c, p.h, p.w), dtype=getattr(torch, p.dtype), requires_grad=True)
    return _vjp(lambda x: F.avg_pool2d(x, p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad,
                                       p.divisor_override), grad_output, x)[0]


def adaptive_avg_pool2d_bwd_data(p, grad_output):
    x = torch.zeros((p.n, p.c, p.h, p.w), dtype=getattr(torch, p.dtype), requires_grad=True)
    return _vjp(lambda x: F.adaptive_avg_pool2d(x, (p.oh, p.ow)), grad_output, x)[0]


def batch_norm_bwd_data(p, input, grad_output, mean, var, weight):
    x, w, b = _t(input, True), _t(weight, True), torch.zeros(p.c, dtype=getattr(torch, p.dtype), requires_grad=True)
    if p.training:
        fn = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=p.eps)  # noqa: E731
    else:
        fn = lambda x, w, b: F.batch_norm(x, _t(mean), _t(var), w, b, eps=p.eps)  # noqa: E731
    return tuple(_vjp(fn, grad_output, x, w, b))


def relu_bwd_data(p, output, grad_output):
    return np.where(output > 0, grad_output, 0).astype(output.dtype)
