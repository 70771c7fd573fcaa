"""Argument conversion shared by the functional API and the layers.

Every conversion raises TypeError (wrong kind of thing) with a message that names the argument
and shows what it got, before any kernel runs; value rules are :mod:`fastconv.problem`'s.  Arrays come out
C-contiguous, native byte order, float32 or float64 -- the only form a backend ever sees.
"""

from __future__ import annotations

import operator
import os

import numpy as np

from ._device import CudaArray, is_cuda_array
from .problem import require_nonnegative, require_positive

#: Largest value of a size, stride, padding or dilation: keeps every index a C kernel computes
#: far inside int64 while allowing any image that fits in memory.
MAX_DIM = 2**31 - 1

#: The native-order float dtypes, the only ones backends see.
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(a, name: str, like: np.dtype | None = None) -> np.ndarray:
    """``a`` as a C-contiguous native-order float32/float64 array (no copy when it already is).

    ``like`` is the dtype the other arrays of the call have; a different one is a TypeError.
    A CUDA array (CuPy, torch CUDA tensor, Numba device array) stays on its device, as a
    checked C-contiguous ``CudaArray`` view that only device backends run.
    """
    if type(a) is np.ndarray and a.dtype in _NATIVE and (like is None or a.dtype == like):
        # The common case, already in the form backends take, answered without the general path's
        # conversions (a few microseconds of a small call).
        flags = a.flags
        if flags.c_contiguous and flags.aligned and min(a.strides, default=0) >= 0:
            return a
    if isinstance(a, np.ma.MaskedArray):
        # Converting would silently drop the mask (and compute on whatever the masked cells hold).
        raise TypeError(f"{name} must not be a masked array: fill it first (e.g. {name}.filled(0))")
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
    a = np.asarray(a, dtype=native, order="C")
    if not a.flags.aligned or min(a.strides, default=0) < 0:
        # C-contiguous but not on an element boundary (a view into a byte buffer): kernels load
        # whole elements, which a misaligned address makes undefined behaviour.  NumPy also calls
        # an array C-contiguous when a negative stride sits on a length-1 axis, which torch
        # (a backend and the interop layer) refuses to wrap.
        a = a.copy()
    return a


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
    require_positive(pair, name)
    return pair


def nonnegative_pair(v, name: str) -> tuple[int, int]:
    pair = as_pair(v, name)
    require_nonnegative(pair, name)
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


def check_scratch_size(nbytes: int, what: str) -> None:
    """MemoryError, before any allocation, for working memory larger than this machine's memory."""
    if nbytes > 2**26:
        limit = _available_memory()
        if nbytes > limit:
            raise MemoryError(
                f"{what}: needs {nbytes / 2**30:.1f} GiB of scratch memory ({nbytes:,} bytes), "
                f"more than the {limit / 2**30:.1f} GiB available"
            )
