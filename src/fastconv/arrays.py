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
            raise ValueError(f"{what}: the output shape {tuple(shape)} is empty but its other dimensions "
                             f"multiply past NumPy's largest array size, so it cannot be made")
        return
    if nbytes > 2**26:  # reading /proc/meminfo costs microseconds: only for outputs over 64 MiB
        limit = _args._available_memory()
        if nbytes > limit:
            raise MemoryError(f"{what}: the output of shape {tuple(shape)} needs {nbytes / 2**30:.1f} GiB, "
                              f"more than the {limit / 2**30:.1f} GiB of memory available")


def add_(y, other):
    """y += other, in place on a freshly made output."""
    np.add(y, other, out=y)
    return y


def relu_(y):
    """max(y, 0) in place; np.maximum keeps NaN, as torch.relu does."""
    np.maximum(y, 0, out=y)
    return y


def synchronize() -> None:
    """Wait for queued work (a host backend has none)."""


#: The hooks of every host (NumPy) backend.
numpy = SimpleNamespace(empty=np.empty, zeros=np.zeros, add_=add_, relu_=relu_, check_size=check_size,
                        synchronize=synchronize)

#: The names a backend's ARRAYS must provide.
HOOKS = tuple(numpy.__dict__)
