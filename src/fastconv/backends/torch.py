"""torch.nn.functional on CPU: the reference every backend is tested against, and the baseline
every benchmark compares with.  "auto" never picks it; name it to use it."""
from __future__ import annotations

import numpy as np

from .. import threads

NAME = "torch"
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
