"""The numba backend: every op a ``@njit(parallel=True, cache=True)`` kernel with ``prange``.

This module stays cheap to import: numba and the kernels (``_numba_conv``, ``_numba_pool``,
``_numba_pointwise``) are imported on the first op call, and each kernel compiles -- or loads
from numba's on-disk cache -- on its own first call.  ``fastconv.warmup(["numba"])`` does all of
that up front.  Each kernel compiles once per dtype: every array reaches it C-contiguous and
aligned, and the caller's arrays as read-only views (numba types read-only arrays apart).

Threads.  Each call applies ``fastconv.get_num_threads()`` with ``numba.set_num_threads`` (capped
at NUMBA_NUM_THREADS, numba's pool size).  Numba's default threading layer may pick
``workqueue``, which aborts the process when two Python threads run parallel kernels at once, so
before the first parallel call this module asks numba for a thread-safe layer (OpenMP or TBB),
unless NUMBA_THREADING_LAYER says otherwise.  Only when the layer in use is still workqueue
(neither OpenMP nor TBB installed, or chosen by the user) are calls serialised with a lock: each
call already uses every thread, so that costs concurrency, not throughput.  GNU OpenMP cannot
run in a child forked after the parent used it (numba kills such a child); the backend raises a
RuntimeError there instead.  ``_numba_jit`` explains the one other process-wide numba setting (512-bit vectors).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from contextlib import contextmanager

import numpy as np

from .. import threads
from . import refuse_algorithm, refuse_padded_copy

NAME = "numba"
DEVICES = ("cpu",)
ALGORITHMS = {"conv2d": ("direct",)}
FUSED_EPILOGUE = True


def available():
    if importlib.util.find_spec("numba") is None:
        return False, "numba is not installed (pip install numba)"
    return True, ""


def supports(p):
    return refuse_algorithm(p, ALGORITHMS, NAME) or refuse_padded_copy(p, "the numba backend")


# -- runtime: lazy kernels, threading layer, thread count ---------------------------------------

_setup_lock = threading.Lock()
_serial_lock = threading.Lock()
_layer: str | None = None  # the threading layer in use, once launched
_launch_pid: int | None = None


def _kernels(name: str):
    return importlib.import_module(f"fastconv.backends.{name}")


def _launch(numba) -> None:
    """Start numba's thread pool on a thread-safe layer (once per process)."""
    global _layer, _launch_pid
    from numba.np.ufunc import parallel

    if not parallel._is_initialized and "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"  # OpenMP or TBB, whichever is installed
    # OMP_WAIT_POLICY is left alone: GNU OpenMP reads it once, when the first library loads the
    # runtime, and torch shares that runtime (same soname) -- a policy set here would change
    # torch's speed for the whole process.  On shared cores, set OMP_WAIT_POLICY=PASSIVE yourself.
    try:
        parallel._launch_threads()
    except ValueError:  # neither is installed: fall back to workqueue, serialised below
        numba.config.THREADING_LAYER = "workqueue"
        parallel._launch_threads()
    _layer = numba.threading_layer()
    _launch_pid = os.getpid()


@contextmanager
def _parallel():
    """Around each kernel call: the thread pool, this call's thread count, and the fork guard."""
    import numba

    if _layer is None:
        with _setup_lock:
            if _layer is None:
                _launch(numba)
    if _layer == "omp" and os.getpid() != _launch_pid:
        from numba.np.ufunc import omppool

        if omppool.openmp_vendor == "GNU":
            raise RuntimeError(
                "the numba backend cannot run in a process forked after its parent "
                "used it (GNU OpenMP is not fork-safe); use the 'spawn' or "
                "'forkserver' multiprocessing start method, or another backend"
            )
    numba.set_num_threads(min(threads.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if _layer == "workqueue":
        with _serial_lock:
            yield
    else:
        yield


def _ro(a: np.ndarray) -> np.ndarray:
    """A read-only view, so caller arrays (writable or not) reach a kernel with one numba type."""
    if not a.flags.aligned:  # numba types unaligned arrays apart too
        a = a.copy()
    view = a.view()
    view.flags.writeable = False
    return view


# -- ops ---------------------------------------------------------------------------------------

_NO_RESIDUAL = {dt: _ro(np.zeros((1, 1, 1, 1), dt)) for dt in ("float32", "float64")}


def conv2d(p, x, weight, bias, residual):
    conv = _kernels("_numba_conv")
    bias = np.zeros(p.k, p.dtype) if bias is None else bias
    res = _NO_RESIDUAL[p.dtype] if residual is None else _ro(residual)
    with _parallel():
        return conv.conv2d(p, _ro(x), _ro(weight), _ro(bias), res, residual is not None, p.activation == "relu")


def max_pool2d(p, x):
    with _parallel():
        return _kernels("_numba_pool").max_pool2d(p, _ro(x))


def max_pool2d_with_indices(p, x):
    with _parallel():
        return _kernels("_numba_pool").max_pool2d_with_indices(p, _ro(x))


def adaptive_max_pool2d(p, x):
    with _parallel():
        return _kernels("_numba_pool").adaptive_max_pool2d(p, _ro(x))


def avg_pool2d(p, x):
    with _parallel():
        return _kernels("_numba_pool").avg_pool2d(p, _ro(x))


def adaptive_avg_pool2d(p, x):
    with _parallel():
        return _kernels("_numba_pool").adaptive_avg_pool2d(p, _ro(x))


def batch_norm(p, x, mean, var, weight, bias):
    with _parallel():
        return _kernels("_numba_pointwise").batch_norm(p, _ro(x), mean, var, weight, bias)


def relu(p, x):
    with _parallel():
        return _kernels("_numba_pointwise").relu(p, _ro(x))


def linear(p, x, weight, bias):
    """NumPy's BLAS GEMM (a jitted loop would not beat it) on one thread: between numba's OpenMP
    kernels a multi-threaded BLAS's idle threads spin and take the cores numba's threads need
    (``threads.single_threaded_blas``)."""
    with threads.single_threaded_blas(), np.errstate(invalid="ignore", over="ignore"):  # inf * 0: torch's NaN
        y = x.reshape(p.rows, p.in_features) @ weight.T
        if bias is not None:
            y += bias
    return y.reshape(p.output_shape)


def activation(p, x):
    with _parallel():
        return _kernels("_numba_pointwise").activation(p, _ro(x))


# -- backward (kernels in _numba_bwd) ----------------------------------------------------------


def _backward(name: str):
    def op(p, *arrays):
        with _parallel():
            return getattr(_kernels("_numba_bwd"), name)(
                p, *(_ro(a) if isinstance(a, np.ndarray) else a for a in arrays)
            )

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"{name} on numba kernels (see _numba_bwd)."
    return op


conv2d_bwd_data = _backward("conv2d_bwd_data")
conv2d_bwd_weight = _backward("conv2d_bwd_weight")
max_pool2d_bwd_data = _backward("max_pool2d_bwd_data")
avg_pool2d_bwd_data = _backward("avg_pool2d_bwd_data")
adaptive_avg_pool2d_bwd_data = _backward("adaptive_avg_pool2d_bwd_data")
batch_norm_bwd_data = _backward("batch_norm_bwd_data")
relu_bwd_data = _backward("relu_bwd_data")
