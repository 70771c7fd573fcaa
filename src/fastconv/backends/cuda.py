"""The cuda backend: every op a Numba-CUDA kernel (``_cuda_kernels``).

Convolution runs as a direct kernel (one thread per output) or as an implicit GEMM with
shared-memory tiles (``algorithm="direct"`` / ``"gemm"``; "auto" takes the direct kernel for
depthwise and tiny reductions, the GEMM otherwise).  Bias, residual and ReLU are applied in the
kernel's epilogue, and the reflect / replicate / circular padding modes are read in place.

Arrays stay where they are: a CUDA array (CuPy, torch CUDA tensor, Numba device array, anything
with ``__cuda_array_interface__`` or CUDA DLPack) comes back as the same kind, on the same device;
NumPy arrays are copied to the device and the result back.  Kernels run on the default stream,
which CuPy and torch (on their default streams) order with.

Needs Numba's CUDA target, the ``numba-cuda`` package (``pip install fastconv[cuda]``), and a
driver and device -- or ``NUMBA_ENABLE_CUDASIM=1``, Numba's CUDA simulator, set before Numba is
imported: there every kernel runs in Python threads (slow; the test suite uses it on small shapes).
"""

from __future__ import annotations

import importlib.util
import os

from types import SimpleNamespace

import numpy as np

from .. import arrays
from .._device import CudaArray, as_kind_of

NAME = "cuda"
DEVICES = ("cuda",)
FUSED_EPILOGUE = True
ALGORITHMS = {"conv2d": ("direct", "gemm")}
#: Host problems (NumPy arrays, requested by name) use NumPy's hooks; autotuning syncs the device
#: before reading the clock, so queued kernels are counted.
ARRAYS = SimpleNamespace(**{**vars(arrays.numpy), "synchronize": lambda: _synchronize()})

#: GEMM tile (BM, BN, BK, threads y, threads x): 64x64 outputs per 256-thread block, 4x4 each.
GEMM_TILE = (64, 64, 8, 16, 16)
#: The simulator runs one Python thread per CUDA thread: same code, smaller tiles.
SIM_GEMM_TILE = (8, 8, 4, 2, 4)
_THREADS = 256
_MAX_BLOCKS = 65535 * 4


def _simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _numba_cuda_installed() -> bool:
    """Numba's CUDA target is there (the numba-cuda package, or the copy older numbas ship),
    found without importing numba: asking for availability must stay cheap."""
    spec = importlib.util.find_spec("numba")
    if spec is None:
        return False
    if importlib.util.find_spec("numba_cuda") is not None:
        return True
    return any(os.path.isdir(os.path.join(p, "cuda")) for p in spec.submodule_search_locations or ())


def _driver_library() -> bool:
    """Whether the CUDA driver library loads (no driver: no need to import numba to say so)."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def available():
    if importlib.util.find_spec("numba") is None:
        return False, "numba is not installed (pip install numba numba-cuda)"
    if not _numba_cuda_installed():
        return False, "numba's CUDA target is not installed (pip install numba-cuda)"
    if _simulated():
        return True, ""
    if not _driver_library():
        return False, "no CUDA driver (libcuda cannot be loaded)"
    try:
        from numba import cuda

        if not cuda.is_available():
            return False, "no CUDA device (numba.cuda.is_available() is False)"
    except Exception as exc:
        return False, f"numba's CUDA target cannot start: {type(exc).__name__}: {exc}"
    try:
        # The modules the first kernel compile loads: a numba-cuda older than the NumPy beside it
        # fails here (numba-cuda 0.30 under NumPy 2.5: np.row_stack is gone), not in every call.
        importlib.import_module("numba.cuda.cudaimpl")
    except Exception as exc:
        return False, (
            f"numba's CUDA target cannot compile with NumPy {np.__version__}: {type(exc).__name__}: {exc} "
            "(upgrade numba-cuda, or use an older NumPy)"
        )
    return True, ""


def supports(p):
    if getattr(p, "direction", "fwd") != "fwd":
        return f"the cuda backend has no {p.direction} kernels"
    algorithm = getattr(p, "algorithm", "auto")
    if p.op == "conv2d" and algorithm not in ("auto", *ALGORITHMS["conv2d"]):
        return f"the cuda backend has no {algorithm} convolution (it has {', '.join(ALGORITHMS['conv2d'])})"
    if p.op == "conv2d" and algorithm == "gemm" and p.groups > 65535:
        return f"the GEMM kernel takes at most 65535 groups (one grid layer each), got {p.groups}"
    return None


# -- arrays: in from any kind, out as the caller's kind ------------------------------------------


def _k():
    from . import _cuda_kernels

    return _cuda_kernels


def _cuda():
    from numba import cuda

    return cuda


def _to_device(a):
    """A Numba device array for a NumPy array (copied) or a device array (shared, no copy)."""
    cuda = _cuda()
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if not isinstance(a, CudaArray):
        a = CudaArray.wrap(a, "array")
    return cuda.as_cuda_array(a)


def _result(y, like):
    """Device array ``y`` as the kind of array ``like`` is."""
    return as_kind_of(y, like, lambda d: d.copy_to_host())


def _launch(total: int):
    """(blocks, threads) for a grid-stride kernel over ``total`` items."""
    if _simulated():  # every simulated thread is a Python thread: few of them, each looping more
        return max(1, min((total + 31) // 32, 2)), 32
    return max(1, min((total + _THREADS - 1) // _THREADS, _MAX_BLOCKS)), _THREADS


def _empty(shape, dtype):
    return _cuda().device_array(shape, dtype)


def _synchronize() -> None:
    _cuda().synchronize()


# -- ops -----------------------------------------------------------------------------------------


def conv_algorithm(p) -> str:
    """The kernel "auto" runs: direct where a GEMM tile would be mostly padding."""
    algorithm = getattr(p, "algorithm", "auto")
    if algorithm != "auto":
        return algorithm
    if p.depthwise or p.kg < 8 or p.cg * p.r * p.s < 8 or p.groups > 65535:
        return "direct"
    return "gemm"


def conv2d(p, x, weight, bias, residual):
    k = _k()
    y = _empty(p.output_shape, p.dtype)
    if y.size:
        dx, dw = _to_device(x), _to_device(weight)
        db = _to_device(np.zeros(p.k, p.dtype) if bias is None else bias)
        dr = _to_device(np.zeros((1, 1, 1, 1), p.dtype) if residual is None else residual)
        pt, _, pl, _ = p.padding
        args = (
            dx,
            dw,
            db,
            dr,
            y,
            *p.stride,
            pt,
            pl,
            *p.dilation,
            p.groups,
            k.PAD_MODES[p.padding_mode],
            residual is not None,
            p.activation == "relu",
        )
        if conv_algorithm(p) == "direct":
            blocks, threads = _launch(y.size)
            k.conv_direct[blocks, threads](*args)
        else:
            tile = SIM_GEMM_TILE if _simulated() else GEMM_TILE
            bm, bn, _, ty, tx = tile
            grid = ((p.n * p.oh * p.ow + bn - 1) // bn, (p.kg + bm - 1) // bm, p.groups)
            k.conv_gemm(p.dtype, tile)[grid, (tx, ty)](*args)
    return _result(y, x)


def max_pool2d(p, x):
    k = _k()
    y = _empty(p.output_shape, p.dtype)
    if y.size:
        blocks, threads = _launch(y.size)
        k.max_pool[blocks, threads](_to_device(x), y, *p.kernel, *p.stride, *p.padding, *p.dilation)
    return _result(y, x)


def avg_pool2d(p, x):
    k = _k()
    y = _empty(p.output_shape, p.dtype)
    if y.size:
        blocks, threads = _launch(y.size)
        k.avg_pool[blocks, threads](
            _to_device(x), y, *p.kernel, *p.stride, *p.padding, p.count_include_pad, p.divisor_override or 0
        )
    return _result(y, x)


def adaptive_avg_pool2d(p, x):
    k = _k()
    y = _empty(p.output_shape, p.dtype)
    if y.size:
        blocks, threads = _launch(y.size)
        k.adaptive_avg_pool[blocks, threads](_to_device(x), y)
    return _result(y, x)


def batch_norm(p, x, mean, var, weight, bias):
    """x (N, C, L).  The batch statistics (training) come back as float64 NumPy arrays (C values)."""
    k = _k()
    dx = _to_device(x)
    y = _empty(dx.shape, p.dtype)
    if p.training:
        if p.count == 0:
            return _result(y, x), None, None
        dmean, dvar = _empty(p.c, np.float64), _empty(p.c, np.float64)
        threads = 8 if _simulated() else k.STATS_THREADS
        k.channel_stats(threads)[p.c, threads](dx, dmean, dvar)
        mean, var = dmean.copy_to_host(), dvar.copy_to_host()
        m, v = mean, var
    else:
        m, v = _host64(mean), _host64(var)
    # torch's folding with float64 constants: scale = weight / sqrt(var + eps), shift = bias - mean * scale.
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = _host64(weight) / np.sqrt(v + p.eps)
        shift = _host64(bias) - m * scale
    if y.size:
        blocks, threads = _launch(y.size)
        k.normalize[blocks, threads](dx, _to_device(scale.astype(p.dtype)), _to_device(shift.astype(p.dtype)), y)
    return _result(y, x), mean, var


def _host64(a) -> np.ndarray:
    """A per-channel vector (C values) on the host in float64, wherever it lives."""
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    return _to_device(a).copy_to_host().astype(np.float64)


def relu(p, x):
    k = _k()
    dx = _to_device(x)
    flat = dx.reshape(dx.size)
    y = _empty(flat.shape, p.dtype)
    if y.size:
        blocks, threads = _launch(y.size)
        k.relu[blocks, threads](flat, y)
    out = _result(y, x)
    return out.reshape(tuple(x.shape))
