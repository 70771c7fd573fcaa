"""One thread count for every backend.

``set_num_threads(n)`` is the single knob.  Each backend applies it the way its runtime wants,
at call time, so the count is right whatever was imported first:

- c: passed to every C call, which opens its OpenMP region with ``num_threads(n)``;
- numba: ``numba.set_num_threads`` before each parallel call (numba keeps it per thread);
- im2col: NumPy's BLAS through threadpoolctl (``apply_blas``; cached, the lookup costs ms), held
  at one thread under im2col's own threads (``single_threaded_blas``), from whichever thread
  calls; numba's linear layer holds it at one thread too, beside numba's OpenMP threads;
- torch: ``torch.set_num_threads`` before each call.

The default is the CPUs this process may run on, or ``FASTCONV_NUM_THREADS`` when set.
"""

from __future__ import annotations

import operator
import os
import threading

#: Most threads any backend is asked for: the count reaches C as an int and opens that many
#: OpenMP threads, so it is kept far below both limits.
MAX_THREADS = 1024

_num_threads: int | None = None
_blas_lock = threading.Lock()
_blas_applied: int | None = None
_blas_limiter = None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_count(n, name: str) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(n).__name__}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{name} must be between 1 and {MAX_THREADS}, got {n}")
    return n


def _default() -> int:
    env = os.environ.get("FASTCONV_NUM_THREADS")
    if env:
        try:
            return _check_count(int(env), "FASTCONV_NUM_THREADS")
        except ValueError:
            raise ValueError(f"FASTCONV_NUM_THREADS must be an integer from 1 to {MAX_THREADS}, got {env!r}") from None
    return _cpu_count()


def get_num_threads() -> int:
    """The thread count every backend uses."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default()
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every backend (and in torch when it is the backend or the baseline).

    >>> import fastconv
    >>> fastconv.set_num_threads(2); fastconv.get_num_threads()
    2
    """
    global _num_threads
    _num_threads = _check_count(n, "num_threads")


def _take_blas_control() -> None:
    """Let the calling thread's BLAS limit take effect.

    OpenBLAS built on pthreads has one process-wide thread count.  threadpoolctl (3.6 on) lets
    only one thread change it -- the first to try, for as long as it lives -- and silently ignores
    every other thread's limit, so a limit set from a user's thread (an im2col call keeping BLAS
    on one thread under its own threads) did nothing once the main thread had set one.  fastconv
    changes the count only under ``_blas_lock``, one change at a time, so it hands control to
    whichever thread makes the change.
    """
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # older threadpoolctl: no such rule
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


_blas_controller = None


def limit_blas(n: int):
    """Limit BLAS to ``n`` threads from any thread; ``restore_blas`` on the result undoes it."""
    global _blas_controller
    with _blas_lock:
        if _blas_controller is None:  # finding the loaded libraries costs ~80 us; limiting them ~3 us
            from threadpoolctl import ThreadpoolController

            _blas_controller = ThreadpoolController()
        _take_blas_control()
        return _blas_controller.limit(limits=n, user_api="blas")


def restore_blas(limiter) -> None:
    """Put back the BLAS thread counts ``limiter`` (from ``limit_blas``) replaced, from any thread."""
    with _blas_lock:
        _take_blas_control()
        limiter.restore_original_limits()


class single_threaded_blas:
    """``with single_threaded_blas():`` keeps NumPy's BLAS on one thread while any such block runs,
    and restores its thread count after the last one ends.

    For BLAS calls beside another thread pool: im2col runs BLAS under its own threads (a
    multi-threaded BLAS under each would oversubscribe the cores), and numba's linear layer runs
    between numba's OpenMP kernels, where a 2-thread OpenBLAS, idle after its call, spins for up
    to 100 ms and takes a core from them (a ResNet-18 on numba, 2 threads, batch 1: 62-86 ms,
    23-24 ms with its classifier's BLAS on one thread).  Reference-counted, so concurrent blocks
    cannot leave BLAS stuck at one thread; the limit holds whichever thread the block runs on
    (``limit_blas``).
    """

    def __enter__(self):
        global _single_users, _single_limiter
        with _single_lock:
            if _single_users == 0:
                _single_limiter = limit_blas(1)
            _single_users += 1
        return self

    def __exit__(self, *exc):
        global _single_users, _single_limiter
        with _single_lock:
            _single_users -= 1
            if _single_users == 0:
                restore_blas(_single_limiter)
                _single_limiter = None


_single_lock = threading.Lock()
_single_users = 0
_single_limiter = None


def _single_after_fork_in_child() -> None:
    """A forked child has none of its parent's threads, so no block is running there."""
    global _single_lock, _single_users, _single_limiter
    _single_lock = threading.Lock()
    _single_users, _single_limiter = 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_single_after_fork_in_child)


def apply_blas() -> None:
    """Limit NumPy's BLAS to the current thread count (no-op when already applied)."""
    global _blas_applied, _blas_limiter
    n = get_num_threads()
    if _blas_applied == n:
        return
    with _blas_lock:
        if _blas_applied != n:
            from threadpoolctl import threadpool_limits

            _take_blas_control()
            # Not used as a context manager: the limit stays until the next change.
            _blas_limiter = threadpool_limits(limits=n, user_api="blas")
            _blas_applied = n
