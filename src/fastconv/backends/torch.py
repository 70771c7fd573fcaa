"""torch.nn.functional on CPU: the reference every backend is tested against, and the baseline
every benchmark compares with.  "auto" never picks it; name it to use it."""
from __future__ import annotations

import numpy as np

from .. import threads

NAME = "torch"
FUSED_EPILOGUE = False


def available():
    try:
        import torch  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"torch is not installed ({type(exc).__name__}: {exc})"
    return True, ""


def supports(p):
    return None


def _torch():
    import torch

    n = threads.get_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch


def _run(fn, *arrays, **kwargs) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        # from_numpy shares memory and warns on read-only arrays; torch never writes inputs here.
        out = fn(*(torch.from_numpy(a if a.flags.writeable else a.copy()) if isinstance(a, np.ndarray) else a
                   for a in arrays), **kwargs)
    return out.numpy()


def conv2d(p, x, weight, bias, residual):
    import torch.nn.functional as F

    pt, pb, pl, pr = p.padding
    if pt == pb and pl == pr:
        return _run(F.conv2d, x, weight, bias, stride=p.stride, padding=(pt, pl), dilation=p.dilation,
                    groups=p.groups)
    # "same" with an even kernel: torch pads the extra row/column explicitly, so do we.
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    return _run(F.conv2d, x, weight, bias, stride=p.stride, dilation=p.dilation, groups=p.groups)


def max_pool2d(p, x):
    import torch.nn.functional as F

    return _run(F.max_pool2d, x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)


def avg_pool2d(p, x):
    import torch.nn.functional as F

    return _run(F.avg_pool2d, x, p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad,
                p.divisor_override)


def adaptive_avg_pool2d(p, x):
    import torch.nn.functional as F

    return _run(F.adaptive_avg_pool2d, x, (p.oh, p.ow))


def batch_norm(p, x, mean, var, weight, bias):
    import torch.nn.functional as F

    if p.training:
        # torch's stats: the batch mean and biased variance it normalises with.
        x64 = x.astype(np.float64)
        mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    y = _run(F.batch_norm, x, None if p.training else mean, None if p.training else var, weight, bias,
             training=p.training, eps=p.eps)
    return y, mean, var


def relu(p, x):
    import torch.nn.functional as F

    return _run(F.relu, x)


# -- backward: torch's autograd through the same forward calls ----------------------------------

def _grads(forward, outputs_grad, *arrays, wrt):
    """Run ``forward`` on tensors made from ``arrays`` and backpropagate ``outputs_grad``; return
    the gradients of the arrays whose positions are in ``wrt`` (None where torch gives none)."""
    torch = _torch()
    tensors = [torch.from_numpy(np.array(a, copy=True)) if isinstance(a, np.ndarray) else a for a in arrays]
    for i in wrt:
        tensors[i].requires_grad_(True)
    with torch.enable_grad():
        out = forward(*tensors)
        if out.numel():  # an empty batch has nothing to backpropagate; its gradients are zeros
            out.backward(torch.from_numpy(np.ascontiguousarray(outputs_grad)))
    return [np.zeros(tensors[i].shape, tensors[i].detach().numpy().dtype) if tensors[i].grad is None
            else tensors[i].grad.numpy() for i in wrt]


def _conv_forward(p):
    import torch.nn.functional as F

    pt, pb, pl, pr = p.padding

    def forward(x, weight, bias=None):
        mode = {"zeros": "constant", "replicate": "replicate"}.get(p.padding_mode, p.padding_mode)
        if (pt, pb, pl, pr) != (0, 0, 0, 0):
            x = F.pad(x, (pl, pr, pt, pb), mode=mode)
        return F.conv2d(x, weight, bias, stride=p.stride, dilation=p.dilation, groups=p.groups)
    return forward


def _aten_conv_backward(p, grad_output, x, weight, mask):
    """aten's convolution_backward, the op autograd calls, for symmetric zero padding."""
    torch = _torch()
    pt, _, pl, _ = p.padding
    return torch.ops.aten.convolution_backward(
        torch.from_numpy(np.ascontiguousarray(grad_output)), x, weight, [p.k] if p.bias else None,
        list(p.stride), [pt, pl], list(p.dilation), False, [0, 0], p.groups, mask)


def _symmetric_zeros(p) -> bool:
    pt, pb, pl, pr = p.padding
    return p.padding_mode == "zeros" and pt == pb and pl == pr


def conv2d_bwd_data(p, grad_output, weight):
    if p.n == 0:
        return np.zeros(p.input_shape, p.dtype)
    if _symmetric_zeros(p):
        torch = _torch()
        x = torch.empty(p.input_shape, dtype=getattr(torch, p.dtype))
        return _aten_conv_backward(p, grad_output, x, torch.from_numpy(np.ascontiguousarray(weight)),
                                   [True, False, False])[0].numpy()
    x = np.zeros(p.input_shape, p.dtype)
    return _grads(_conv_forward(p), grad_output, x, weight, wrt=(0,))[0]


def conv2d_bwd_weight(p, x, grad_output):
    if p.n == 0:
        return np.zeros(p.weight_shape, p.dtype), (np.zeros(p.k, p.dtype) if p.bias else None)
    if _symmetric_zeros(p):
        torch = _torch()
        w = torch.empty(p.weight_shape, dtype=getattr(torch, p.dtype))
        _, gw, gb = _aten_conv_backward(p, grad_output, torch.from_numpy(np.ascontiguousarray(x)), w,
                                        [False, True, bool(p.bias)])
        return gw.numpy(), (gb.numpy() if p.bias else None)
    bias = np.zeros(p.k, p.dtype) if p.bias else None
    grads = _grads(_conv_forward(p), grad_output, x, np.zeros(p.weight_shape, p.dtype), bias,
                   wrt=(1, 2) if p.bias else (1,))
    return grads[0], (grads[1] if p.bias else None)


def max_pool2d_bwd_data(p, x, grad_output):
    import torch.nn.functional as F

    def forward(t):
        return F.max_pool2d(t, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
    return _grads(forward, grad_output, x, wrt=(0,))[0]


def avg_pool2d_bwd_data(p, grad_output):
    import torch.nn.functional as F

    def forward(t):
        return F.avg_pool2d(t, p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override)
    return _grads(forward, grad_output, np.zeros(p.input_shape, p.dtype), wrt=(0,))[0]


def adaptive_avg_pool2d_bwd_data(p, grad_output):
    import torch.nn.functional as F

    def forward(t):
        return F.adaptive_avg_pool2d(t, (p.oh, p.ow))
    return _grads(forward, grad_output, np.zeros(p.input_shape, p.dtype), wrt=(0,))[0]


def batch_norm_bwd_data(p, x, grad_output, mean, var, weight):
    """torch's own batch-norm backward kernel, given the statistics the forward normalised with."""
    torch = _torch()
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x, grad_output)]
    stats = [torch.from_numpy(np.asarray(a, dtype=p.dtype).copy()) for a in (mean, var, weight)]
    if p.count == 0:
        return np.zeros(x.shape, p.dtype), np.zeros(p.c, p.dtype), np.zeros(p.c, p.dtype)
    # training: save_mean and save_invstd are what the forward saved; eval: the running stats.
    inv_std = 1.0 / torch.sqrt(stats[1].double() + p.eps)
    gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
        t[1], t[0], stats[2], None if p.training else stats[0], None if p.training else stats[1],
        stats[0] if p.training else None, inv_std.to(stats[1].dtype) if p.training else None,
        p.training, p.eps, [True, True, True])
    return gx.numpy(), gw.numpy(), gb.numpy()


def relu_bwd_data(p, output, grad_output):
    torch = _torch()
    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d).
    out = torch.ops.aten.threshold_backward(torch.from_numpy(np.require(grad_output, requirements="C")),
                                            torch.from_numpy(np.require(output, requirements="C")), 0)
    return out.numpy()
