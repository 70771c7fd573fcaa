"""Backend registry and selection.

Selection, strongest first: the ``backend=`` argument, ``use_backend()`` (a context variable, so
threads and asyncio tasks each see their own), ``set_backend()``, the ``FASTCONV_BACKEND``
environment variable, then "auto".  A named backend that cannot run a problem raises
``BackendError`` saying why; "auto" skips it and takes the next one.

"auto" never picks torch (it is the reference, not a fastconv backend) and takes backends in a
per-op preference order measured on this project's benchmarks.  With autotuning on
(``set_autotune(True)`` or ``FASTCONV_AUTOTUNE=1``) it instead times every candidate once per
problem signature and thread count and caches the winner, like ``torch.backends.cudnn.benchmark``.

``FASTCONV_VERBOSE=1`` logs every choice and every refusal to stderr (logger ``fastconv``).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from . import threads
from ._device import CudaArray

log = logging.getLogger("fastconv")

OPS = ("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "relu")

#: fastconv's own backends, in the order "auto" prefers them for ops not listed in _AUTO_ORDER.
_BUILTIN = ("c", "numba", "im2col", "naive", "torch", "cuda", "cupy")
#: The per-op preference of "auto" without autotuning (from benchmarks/results on this project's
#: reference machine): BLAS-backed im2col beats the Numba direct loops on convolution, Numba's
#: fused loops beat NumPy's window views everywhere else.
_AUTO_ORDER = {
    "conv2d": ("c", "im2col", "numba", "naive"),
}
_AUTO_DEFAULT = ("c", "numba", "im2col", "naive")
#: Never chosen by "auto": the reference implementation.
_NOT_AUTO = frozenset({"torch"})


class BackendError(RuntimeError):
    """A requested backend is unavailable or cannot run the problem; the message says why."""


@dataclass
class _Entry:
    name: str
    source: str | ModuleType  # module path (imported lazily) or the module-like object itself
    module: ModuleType | None = None
    status: tuple[bool, str] | None = None  # cached available()


_registry: dict[str, _Entry] = {name: _Entry(name, f"fastconv.backends.{name}") for name in _BUILTIN}
# Registered (non-built-in) backends: "auto" tries _extra_first before the built-in ones and
# _extra_last after them.
_extra_first: list[str] = []
_extra_last: list[str] = []
_registry_lock = threading.Lock()

_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastconv_backend", default=None)
_global_backend: str | None = None
_autotune: bool | None = None
_autotune_cache: dict[tuple, str] = {}


# -- registry ----------------------------------------------------------------------------------

def register_backend(module, name: str | None = None, *, first: bool = False) -> str:
    """Add a backend: any object with NAME, available(), supports() and the op functions.

    ``first=True`` puts it ahead of the built-in backends in "auto"'s order.
    """
    name = name or getattr(module, "NAME", None)
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"backend name must be a non-empty string other than 'auto', got {name!r}")
    with _registry_lock:
        _registry[name] = _Entry(name, module, module=module)
        _forget_order(name)
        if name not in _BUILTIN:
            if first:
                _extra_first.insert(0, name)
            else:
                _extra_last.append(name)
        _autotune_cache.clear()
    return name


def unregister_backend(name: str) -> None:
    """Remove a backend added with register_backend (built-in backends are restored instead)."""
    with _registry_lock:
        if name in _BUILTIN:
            _registry[name] = _Entry(name, f"fastconv.backends.{name}")
        else:
            _registry.pop(name, None)
            _forget_order(name)
        _autotune_cache.clear()


def _forget_order(name: str) -> None:
    for order in (_extra_first, _extra_last):
        if name in order:
            order.remove(name)


def _status(entry: _Entry) -> tuple[bool, str]:
    """(available, reason), importing the module on first use; an import failure is a reason."""
    if entry.status is None:
        try:
            if entry.module is None:
                entry.module = importlib.import_module(entry.source)
            ok, reason = entry.module.available()
            entry.status = (bool(ok), str(reason or ""))
        except Exception as exc:  # a broken backend must not break the others
            entry.status = (False, f"import failed: {type(exc).__name__}: {exc}")
    return entry.status


def backend_status() -> list[tuple[str, bool, str]]:
    """(name, available, reason) for every registered backend, in registry order."""
    return [(name, *_status(entry)) for name, entry in list(_registry.items())]


def available_backends() -> list[str]:
    """Names of the backends that can run here (torch included when it is installed).

    >>> import fastconv
    >>> "naive" in fastconv.available_backends()
    True
    """
    return [name for name, ok, _ in backend_status() if ok]


def get_module(name: str) -> ModuleType:
    """The backend module ``name``; BackendError when it is not available."""
    entry = _registry.get(name)
    if entry is None:
        raise ValueError(f"backend: unknown backend {name!r}; choose from {_choices()}")
    ok, reason = _status(entry)
    if not ok:
        raise BackendError(f"backend {name!r} is not available: {reason}")
    return entry.module


def _choices() -> list[str]:
    return ["auto", *_registry]


def _check_name(name, what: str = "backend") -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a backend name (str) or None, got {type(name).__name__}")
    if name != "auto" and name not in _registry:
        raise ValueError(f"{what}: unknown backend {name!r}; choose from {_choices()}")
    return name


# -- selection state ---------------------------------------------------------------------------

def set_backend(name: str | None) -> None:
    """Use backend ``name`` ("auto", or None to go back to FASTCONV_BACKEND/auto) from now on.

    >>> import fastconv
    >>> fastconv.set_backend("im2col"); fastconv.get_backend()
    'im2col'
    >>> fastconv.set_backend(None)
    """
    global _global_backend
    _global_backend = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run the block with backend ``name`` (this thread / task only), then restore.

    >>> import fastconv, numpy as np
    >>> with fastconv.use_backend("naive"):
    ...     fastconv.relu(np.array([-1.0, 2.0]))
    array([0., 2.])
    """
    token = _context_backend.set(_check_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


def get_backend() -> str:
    """The backend name calls without ``backend=`` would request now ("auto" by default)."""
    return _context_backend.get() or _global_backend or _check_name(
        os.environ.get("FASTCONV_BACKEND") or None, "FASTCONV_BACKEND") or "auto"


def set_autotune(enabled: bool) -> None:
    """Time every candidate backend once per problem signature and keep the fastest."""
    global _autotune
    _autotune = bool(enabled)


def get_autotune() -> bool:
    if _autotune is not None:
        return _autotune
    return os.environ.get("FASTCONV_AUTOTUNE", "").lower() in ("1", "true", "yes", "on")


def clear_autotune_cache() -> None:
    _autotune_cache.clear()


def _verbose() -> bool:
    if os.environ.get("FASTCONV_VERBOSE", "").lower() in ("", "0", "false", "no", "off"):
        return False
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return True


# -- choosing and running ----------------------------------------------------------------------

def _refusal(name: str, problem, device: str = "cpu", requested: bool = False) -> str | None:
    """Why backend ``name`` cannot run ``problem`` on ``device`` arrays, or None when it can.

    A device backend runs CPU (NumPy) arrays only when requested by name (it copies them to the
    device and back); "auto" keeps CPU arrays on CPU backends and device arrays on device ones.
    """
    ok, reason = _status(_registry[name])
    if not ok:
        return f"not available: {reason}"
    module = _registry[name].module
    devices = getattr(module, "DEVICES", ("cpu",))
    if device not in devices and not (requested and device == "cpu"):
        return f"runs on {'/'.join(devices)} arrays, not {device} arrays"
    if not hasattr(module, problem.op):
        return f"does not implement {problem.op}"
    return module.supports(problem)


def _auto_candidates(op: str) -> list[str]:
    order = [*_AUTO_ORDER.get(op, _AUTO_DEFAULT)]
    builtin_rest = [n for n in _BUILTIN if n not in order and n not in _NOT_AUTO]
    return [n for n in (*_extra_first, *order, *builtin_rest, *_extra_last) if n in _registry]


def select(problem, backend: str | None = None, device: str = "cpu") -> tuple[str, str]:
    """(backend name, how it was chosen) for ``problem``; BackendError if nothing can run it."""
    requested = _check_name(backend) or get_backend()
    verbose = _verbose()
    if requested != "auto":
        why = _refusal(requested, problem, device, requested=True)
        if why is not None:
            raise BackendError(f"backend {requested!r} cannot run {problem.op} {problem.id}: {why}")
        return requested, "requested"
    refusals = []
    runnable = []
    for name in _auto_candidates(problem.op):
        why = _refusal(name, problem, device)
        if why is None:
            runnable.append(name)
        else:
            refusals.append(f"{name}: {why}")
            if verbose:
                log.debug("%s %s: %s refused: %s", problem.op, problem.id, name, why)
    if not runnable:
        raise BackendError(f"no backend can run {problem.op} {problem.id}: " + "; ".join(refusals))
    return runnable[0], "auto"


def run(problem, *arrays, backend: str | None = None):
    """Run ``problem.op`` on validated, C-contiguous arrays with the selected backend."""
    device = "cuda" if any(isinstance(a, CudaArray) for a in arrays) else "cpu"
    name, how = select(problem, backend, device)
    if how == "auto" and get_autotune():
        name, how = _autotuned(problem, arrays, name, device)
    if _verbose():
        log.debug("%s %s -> %s (%s, %d threads)", problem.op, problem.id, name, how, threads.get_num_threads())
    if 0 in problem.output_shape and device == "cpu":  # an empty batch or output: nothing for a kernel to do
        y = np.empty(problem.output_shape, arrays[0].dtype)
        return (y, None, None) if problem.op == "batch_norm" else y
    return _call(name, problem, arrays)


def _call(name: str, problem, arrays):
    module = _registry[name].module
    fn = getattr(module, problem.op)
    if problem.op == "conv2d" and (problem.residual or problem.activation) \
            and not getattr(module, "FUSED_EPILOGUE", False):
        # The backend does plain conv+bias; the shared epilogue does residual and activation.
        x, weight, bias, residual = arrays
        y = fn(replace(problem, residual=False, activation=None), x, weight, bias, None)
        return apply_epilogue(y, residual, problem.activation)
    return fn(problem, *arrays)


def apply_epilogue(y: np.ndarray, residual: np.ndarray | None, activation: str | None) -> np.ndarray:
    """y = act(y + residual), in place on the freshly made output."""
    if residual is not None:
        np.add(y, residual, out=y)
    if activation == "relu":
        # np.maximum keeps NaN, as torch.relu does.
        np.maximum(y, 0, out=y)
    return y


def _signature(problem) -> tuple:
    return (problem.id, threads.get_num_threads())


def _autotuned(problem, arrays, first_choice: str, device: str = "cpu") -> tuple[str, str]:
    key = (*_signature(problem), device)
    cached = _autotune_cache.get(key)
    if cached in _registry and _refusal(cached, problem, device) is None:
        return cached, "autotuned, cached"
    candidates = [n for n in _auto_candidates(problem.op)
                  if n != "naive" and _refusal(n, problem, device) is None]
    if len(candidates) <= 1:
        best = candidates[0] if candidates else first_choice
    else:
        timings = {}
        for name in candidates:
            _call(name, problem, arrays)  # first call: JIT compilation, caches, thread pools
            samples = []
            for _ in range(3):
                t0 = time.perf_counter()
                _call(name, problem, arrays)
                samples.append(time.perf_counter() - t0)
            timings[name] = sorted(samples)[1]
        best = min(timings, key=timings.get)
        if _verbose():
            log.debug("%s %s autotune: %s", problem.op, problem.id,
                      ", ".join(f"{n} {t * 1e3:.3f} ms" for n, t in timings.items()))
    _autotune_cache[key] = best
    return best, "autotuned"
