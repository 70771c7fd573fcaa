"""Argument checks shared by the functional API and the layers.

Every check raises TypeError (wrong kind of thing) or ValueError (wrong value) with a message
that names the argument and shows what it got, before any kernel runs.  Arrays come out
C-contiguous, native byte order, float32 or float64 -- the only form a backend ever sees.
"""
from __future__ import annotations

import operator
import os

import numpy as np

from ._device import CudaArray, is_cuda_array

#: Largest value of a size, stride, padding or dilation: keeps every index a C kernel computes
#: far inside int64 while allowing any image that fits in memory.
MAX_DIM = 2**31 - 1


def as_float_array(a, name: str, like: np.dtype | None = None) -> np.ndarray:
    """``a`` as a C-contiguous native-order float32/float64 array (no copy when it already is).

    ``like`` is the dtype the other arrays of the call have; a different one is a TypeError.
    A CUDA array (CuPy, torch CUDA tensor, Numba device array) stays on its device, as a
    checked C-contiguous ``CudaArray`` view that only device backends run.
    """
    if not isinstance(a, np.ndarray) and is_cuda_array(a):
        a = CudaArray.wrap(a, name)
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8) or a.dtype.byteorder == ">":
            raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
        if like is not None and a.dtype != like:
            raise TypeError(f"{name} has dtype {a.dtype} but input has dtype {like}: mixed dtypes are not supported")
        return a
    if not isinstance(a, np.ndarray):
        if a is None:
            raise TypeError(f"{name} must be an array, got None")
        try:
            a = np.asarray(a)
        except Exception as exc:  # e.g. a torch tensor that requires grad
            raise TypeError(f"{name} must be convertible to a NumPy array, got {type(a).__name__}: {exc}") from None
    if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    native = a.dtype.newbyteorder("=")
    if like is not None and native != like:
        raise TypeError(f"{name} has dtype {native} but input has dtype {like}: mixed dtypes are not supported")
    return np.asarray(a, dtype=native, order="C")


def check_ndim(a: np.ndarray, name: str, ndims: tuple[int, ...], layout: str) -> None:
    if a.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want} {layout}, got {a.ndim}-D with shape {tuple(a.shape)}")


def as_int(v, name: str) -> int:
    """A Python int from an int or NumPy integer (bool and float are TypeErrors)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool {v!r}")
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}") from None
    if abs(v) > MAX_DIM:
        raise ValueError(f"{name}={v} is out of range (at most {MAX_DIM})")
    return v


def as_pair(v, name: str) -> tuple[int, int]:
    """(a, b) from an int or a sequence of one or two ints, like torch's _pair."""
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a tuple of 2 ints, got {name}={tuple(v)!r}")
        return as_int(v[0], name), as_int(v[1], name)
    if isinstance(v, np.ndarray) and v.ndim == 1:
        return as_pair(v.tolist(), name)
    try:
        n = as_int(v, name)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of 2 ints, got {type(v).__name__} {v!r}") from None
    return n, n


def positive_pair(v, name: str) -> tuple[int, int]:
    pair = as_pair(v, name)
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {name}={v!r}")
    return pair


def nonnegative_pair(v, name: str) -> tuple[int, int]:
    pair = as_pair(v, name)
    if min(pair) < 0:
        raise ValueError(f"{name} must be non-negative, got {name}={v!r}")
    return pair


def as_bool(v, name: str) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be a bool, got {type(v).__name__} {v!r}")


def as_float(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    return float(v)


def _available_memory() -> int:
    """Bytes this machine can still give: MemAvailable on Linux, else all physical memory.

    Linux overcommits, so an allocation larger than this can succeed and then get the process
    killed when the kernel writes it; refusing it up front is the only clean way out.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**46  # unknown: only refuse the impossible


def check_output_size(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    """MemoryError, before any work, for an output larger than this machine's memory."""
    count = 1
    for n in shape:
        count *= n
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes > 2**26:  # reading /proc/meminfo costs microseconds: only for outputs over 64 MiB
        limit = _available_memory()
        if nbytes > limit:
            raise MemoryError(f"{what}: the output of shape {tuple(shape)} needs {nbytes / 2**30:.1f} GiB, "
                              f"more than the {limit / 2**30:.1f} GiB of memory available")
