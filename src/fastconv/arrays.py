"""Array hooks: how the dispatcher allocates, finishes and sizes a backend's arrays.

The dispatcher never calls NumPy directly on a backend's arrays; it goes through the hooks the
backend declares as ``ARRAYS`` (default: :data:`numpy`, these functions).  A backend for another
device (CuPy, CUDA) supplies the same five functions for its own array type, so nothing is copied
to the host between ops.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import _args


def check_size(shape: tuple[int, ...], dtype, what: str) -> None:
    """MemoryError, before any work, for an output larger than this machine's memory."""
    count = 1
    for n in shape:
        count *= n
    nbytes = count * np.dtype(dtype).itemsize
    if count == 0:
        # NumPy refuses even an empty array whose other dimensions multiply past its size limit.
        extent = np.dtype(dtype).itemsize
        for n in shape:
            extent *= max(n, 1)
        if extent >= 2**63:
            raise ValueError(
                f"{what}: the output shape {tuple(shape)} is empty but its other dimensions "
                f"multiply past NumPy's largest array size, so it cannot be made"
            )
        return
    if nbytes > 2**26:  # reading /proc/meminfo costs microseconds: only for outputs over 64 MiB
        limit = _args._available_memory()
        if nbytes > limit:
            raise MemoryError(
                f"{what}: the output of shape {tuple(shape)} needs {nbytes / 2**30:.1f} GiB, "
                f"more than the {limit / 2**30:.1f} GiB of memory available"
            )


def add_(y, other):
    """y += other, in place on a freshly made output."""
    np.add(y, other, out=y)
    return y


def relu_(y):
    """max(y, 0) in place; np.maximum keeps NaN, as torch.relu does."""
    np.maximum(y, 0, out=y)
    return y


def activation_(y, kind: str, params: tuple = ()):
    """Activation ``kind`` (a key of problem.ACTIVATION_PARAMS) with ``params``, in place on ``y``.

    Written as torch.nn.functional evaluates each one, so NaN and +-inf come out as torch's:
    clamps keep NaN (np.minimum/np.maximum propagate it), ``silu(-inf)`` and ``hardswish(-inf)``
    are NaN (-inf * 0), ``sigmoid`` never overflows (exp of a non-positive argument only).
    """
    if kind == "relu":
        return relu_(y)
    with np.errstate(invalid="ignore", over="ignore"):  # -inf * 0 (silu, hardswish): torch's NaN
        return _activation(y, kind, params)


def _activation(y, kind, params):
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else params
        np.maximum(y, y.dtype.type(lo), out=y)
        np.minimum(y, y.dtype.type(hi), out=y)
    elif kind == "leaky_relu":
        np.multiply(y, y.dtype.type(params[0]), out=y, where=~(y > 0))
    elif kind == "sigmoid":
        _sigmoid(y, y)
    elif kind == "silu":
        s = _sigmoid(y, np.empty_like(y))
        np.multiply(y, s, out=y)
    elif kind == "hardswish":
        t = np.add(y, y.dtype.type(3))
        np.clip(t, 0, 6, out=t)
        np.multiply(y, t, out=y)
        np.divide(y, y.dtype.type(6), out=y)
    else:
        raise ValueError(f"unknown activation {kind!r}")
    return y


def _sigmoid(x, out):
    """1 / (1 + exp(-x)) into ``out`` (may be x), through exp(-|x|) so nothing overflows."""
    with np.errstate(invalid="ignore"):
        e = np.exp(-np.abs(x))
        pos = x >= 0
        np.divide(np.where(pos, 1, e).astype(x.dtype, copy=False), 1 + e, out=out)
    return out


def synchronize() -> None:
    """Wait for queued work (a host backend has none)."""


#: The hooks of every host (NumPy) backend.
numpy = SimpleNamespace(
    empty=np.empty,
    zeros=np.zeros,
    add_=add_,
    relu_=relu_,
    check_size=check_size,
    synchronize=synchronize,
    activation_=activation_,
)

#: The names a backend's ARRAYS must provide.
HOOKS = ("empty", "zeros", "add_", "relu_", "check_size", "synchronize")
#: Optional: without ``activation_`` a backend runs convolutions whose epilogue is relu or none.
OPTIONAL_HOOKS = ("activation_",)
