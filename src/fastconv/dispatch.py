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
import sys
import threading
from dataclasses import dataclass, replace
from types import ModuleType

from . import _env, arrays, ops, threads, timing
from ._device import CudaArray

log = logging.getLogger("fastconv")

OPS = ops.OPS

#: fastconv's own backends, in the order "auto" prefers them for ops not listed in _AUTO_ORDER.
_BUILTIN = ("c", "numba", "im2col", "naive", "torch", "cuda", "cupy")
#: The per-op preference of "auto" without autotuning (from benchmarks/results on this project's
#: reference machine): BLAS-backed im2col beats the Numba direct loops on convolution, Numba's
#: fused loops beat NumPy's window views everywhere else.
_AUTO_ORDER = {
    "conv2d": ("c", "im2col", "numba", "naive"),
}
_AUTO_DEFAULT = ("c", "numba", "im2col", "naive")
#: Devices a problem may name (a backend declares the ones it runs on as DEVICES).
DEVICES = ("cpu", "cuda")
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
#: Untimed calls this long before each autotuning sample (see _autotuned).
AUTOTUNE_SETTLE_S = 0.01


# -- registry ----------------------------------------------------------------------------------


def check_contract(module) -> None:
    """TypeError naming what ``module`` lacks of the backend contract (see fastconv.backends)."""
    for attr in ("available", "supports"):
        if not callable(getattr(module, attr, None)):
            raise TypeError(f"backend {module!r} must have a callable {attr}()")
    kernels = [e.kernel for e in ops.entries() if callable(getattr(module, e.kernel, None))]
    if not kernels:
        raise TypeError(
            f"backend {module!r} implements none of the ops: define at least one of {[e.kernel for e in ops.entries()]}"
        )
    devices = getattr(module, "DEVICES", ("cpu",))
    if not isinstance(devices, tuple) or not devices or any(d not in DEVICES for d in devices):
        raise TypeError(f"backend {module!r}: DEVICES must be a non-empty tuple from {DEVICES}, got {devices!r}")
    hooks = getattr(module, "ARRAYS", arrays.numpy)
    missing = [h for h in arrays.HOOKS if not callable(getattr(hooks, h, None))]
    if missing:
        raise TypeError(f"backend {module!r}: ARRAYS lacks {missing}")


def register_backend(module, name: str | None = None, *, first: bool = False) -> str:
    """Add a backend: any object with NAME, available(), supports() and op functions of the contract.

    ``first=True`` puts it ahead of the built-in backends in "auto"'s order.
    """
    name = name or getattr(module, "NAME", None)
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"backend name must be a non-empty string other than 'auto', got {name!r}")
    check_contract(module)
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


def backends() -> list[str]:
    """Every registered backend's name, available or not, in registry order."""
    return list(_registry)


def status(name: str) -> tuple[bool, str]:
    """(available, reason) of backend ``name``; ValueError for an unknown name."""
    entry = _registry.get(name)
    if entry is None:
        raise ValueError(f"backend: unknown backend {name!r}; choose from {_choices()}")
    return _status(entry)


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
    return (
        _context_backend.get()
        or _global_backend
        or _check_name(_env.get("FASTCONV_BACKEND") or None, "FASTCONV_BACKEND")
        or "auto"
    )


def set_autotune(enabled: bool) -> None:
    """Time every candidate backend once per problem signature and keep the fastest."""
    global _autotune
    _autotune = bool(enabled)


def get_autotune() -> bool:
    if _autotune is not None:
        return _autotune
    return _env.get("FASTCONV_AUTOTUNE", "").lower() in ("1", "true", "yes", "on")


def clear_autotune_cache() -> None:
    _autotune_cache.clear()


def _verbose() -> bool:
    if _env.get("FASTCONV_VERBOSE", "").lower() in ("", "0", "false", "no", "off"):
        return False
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return True


# -- choosing and running ----------------------------------------------------------------------


def _refusal(name: str, problem, requested: bool = False) -> str | None:
    """Why backend ``name`` cannot run ``problem`` (on ``problem.device``), or None when it can.

    A device backend runs CPU (NumPy) arrays only when requested by name (it copies them to the
    device and back); "auto" keeps CPU arrays on CPU backends and device arrays on device ones.
    """
    ok, reason = _status(_registry[name])
    if not ok:
        return f"not available: {reason}"
    module = _registry[name].module
    devices = getattr(module, "DEVICES", ("cpu",))
    if problem.device not in devices and not (requested and problem.device == "cpu"):
        return f"runs on {'/'.join(devices)} arrays, not {problem.device} arrays"
    kernel = ops.get(problem).kernel
    if not hasattr(module, kernel):
        return f"does not implement {kernel}"
    act = getattr(problem, "activation", None)
    if (
        act not in (None, "relu")
        and act not in fused_activations(module)
        and not callable(getattr(getattr(module, "ARRAYS", arrays.numpy), "activation_", None))
    ):
        return f"its conv2d does not fuse {act!r} and its ARRAYS have no activation_ hook to apply it"
    if act not in (None, "relu") and problem.device != "cpu" and act not in fused_activations(module):
        return f"the shared epilogue applies {act!r} to host arrays only"
    return module.supports(problem)


def _auto_candidates(op: str) -> list[str]:
    order = [*_AUTO_ORDER.get(op, _AUTO_DEFAULT)]
    builtin_rest = [n for n in _BUILTIN if n not in order and n not in _NOT_AUTO]
    return [n for n in (*_extra_first, *order, *builtin_rest, *_extra_last) if n in _registry]


def select(problem, backend: str | None = None) -> tuple[str, str]:
    """(backend name, how it was chosen) for ``problem``; BackendError if nothing can run it."""
    return _select(problem, backend, _verbose())


def _select(problem, backend, verbose: bool) -> tuple[str, str]:
    requested = _check_name(backend) or get_backend()
    if requested != "auto":
        why = _refusal(requested, problem, requested=True)
        if why is not None:
            raise BackendError(f"backend {requested!r} cannot run {problem.op} {problem.id}: {why}")
        return requested, "requested"
    refusals = []
    for name in _auto_candidates(problem.op):  # the first that can run it: later ones are not asked
        why = _refusal(name, problem)
        if why is None:
            return name, "auto"
        refusals.append(f"{name}: {why}")
        if verbose:
            log.debug("%s %s: %s refused: %s", problem.op, problem.id, name, why)
    raise BackendError(f"no backend can run {problem.op} {problem.id}: " + "; ".join(refusals))


def run(problem, *arrays_, backend: str | None = None):
    """Run ``problem``'s op and direction on validated, C-contiguous arrays with the selected backend.

    The arrays are the backend function's, in the order of the op table's ``args``.
    """
    if CudaArray.seen and problem.device == "cpu" and any(isinstance(a, CudaArray) for a in arrays_):
        problem = replace(problem, device="cuda")  # the arrays say where it runs
    verbose = _verbose()  # read once per call: the environment lookup is a measurable share of a tiny op
    name, how = _select(problem, backend, verbose)
    entry = ops.get(problem)
    shape = problem.output_shape
    if problem.device == "cpu":  # a device backend allocates (and sizes) its own arrays
        hooks = getattr(_registry[name].module, "ARRAYS", arrays.numpy)
        hooks.check_size(shape, problem.dtype, problem.op)
        if 0 in shape:  # an empty batch or output: nothing for a kernel (or autotuning) to do
            return entry.empty(problem, problem.dtype, hooks)
    if how == "auto" and get_autotune():
        name, how = _autotuned(problem, arrays_, name)
    if verbose:
        log.debug("%s %s -> %s (%s, %d threads)", problem.op, problem.id, name, how, threads.get_num_threads())
    module = _registry[name].module
    return _call(module, entry, problem, arrays_)


def fused_activations(module) -> tuple:
    """The activations ``module``'s conv2d applies itself (FUSED_ACTIVATIONS; relu by default)."""
    if not getattr(module, "FUSED_EPILOGUE", False):
        return ()
    return getattr(module, "FUSED_ACTIVATIONS", ("relu",))


def _call(module, entry, problem, arrays_):
    fn = getattr(module, entry.kernel)
    if problem.op != "conv2d" or not (problem.residual or problem.activation):
        return fn(problem, *arrays_)
    fused = getattr(module, "FUSED_EPILOGUE", False)
    act_fused = problem.activation is None or problem.activation in fused_activations(module)
    if fused and act_fused:
        return fn(problem, *arrays_)
    # The backend does what it fuses (conv+bias, and the residual when FUSED_EPILOGUE); the
    # shared epilogue, through the backend's array hooks, does the rest.
    x, weight, bias, residual = arrays_
    y = fn(
        replace(problem, residual=problem.residual and fused, activation=None),
        x,
        weight,
        bias,
        residual if fused else None,
    )
    return apply_epilogue(
        y,
        None if fused else residual,
        problem.activation,
        getattr(module, "ARRAYS", arrays.numpy),
        problem.activation_params,
    )


def apply_epilogue(y, residual, activation: str | None, hooks=arrays.numpy, params: tuple = ()):
    """y = act(y + residual), in place on the freshly made output, with the backend's array hooks."""
    if residual is not None:
        hooks.add_(y, residual)
    if activation == "relu":
        hooks.relu_(y)
    elif activation is not None:
        hooks.activation_(y, activation, params)
    return y


def _signature(problem) -> tuple:
    # The id carries every field, direction and device included.
    return (problem.id, threads.get_num_threads())


def _autotuned(problem, arrays_, first_choice: str) -> tuple[str, str]:
    key = _signature(problem)
    cached = _autotune_cache.get(key)
    if cached in _registry and _refusal(cached, problem) is None:
        return cached, "autotuned, cached"
    entry = ops.get(problem)
    candidates = [n for n in _auto_candidates(problem.op) if n != "naive" and _refusal(n, problem) is None]
    if len(candidates) <= 1:
        best = candidates[0] if candidates else first_choice
    else:
        module = {n: _registry[n].module for n in candidates}
        calls = {n: (lambda n=n: _call(module[n], entry, problem, arrays_)) for n in candidates}
        for call in calls.values():
            call()  # first call: JIT compilation, caches, thread pools
        # Each candidate's own device sync before the clock is read: queued work is counted.
        syncs = [getattr(m, "ARRAYS", arrays.numpy).synchronize for m in module.values()]
        # Settled before each sample: the previous candidate's idle OpenMP threads spin-wait for
        # milliseconds on the cores this one needs; running this one meanwhile outlasts them
        # (timed back to back, a fresh process billed 8-12 ms of spin to a 0.04 ms call).
        samples = timing.interleaved(calls, 3, settle_s=AUTOTUNE_SETTLE_S, sync=lambda: [s() for s in syncs])
        timings = {n: timing.median(v) for n, v in samples.items()}
        best = min(timings, key=timings.get)
        if _verbose():
            log.debug(
                "%s %s autotune: %s",
                problem.op,
                problem.id,
                ", ".join(f"{n} {t * 1e3:.3f} ms" for n, t in timings.items()),
            )
    _autotune_cache[key] = best
    return best, "autotuned"
