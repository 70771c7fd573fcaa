"""How the numba backend compiles: one decorator for every kernel, its fast-math flags, its cache.

Imported only when a numba op first runs (``fastconv.backends.numba`` imports nothing heavy), and
decorating compiles nothing: each kernel compiles on its first call, once per dtype, because the
backend hands every kernel arrays of one layout (C-contiguous, inputs read-only views).
"""

from __future__ import annotations

import numba
from numba.core import config
from numba.core.codegen import get_host_cpu_features
from numba.core.registry import cpu_target


def _prefer_512_bit_vectors() -> None:
    """Let LLVM use whole AVX-512 registers, where the CPU has them.

    LLVM's tuning for recent Intel server CPUs prefers 256-bit vectors; the conv kernels run
    about 1.45x faster with 512-bit ones (measured on this project's Xeon).  The choice belongs to
    numba's one code generator for the process, so it is made here, before the first kernel is
    declared, and only when nobody has chosen: not when NUMBA_CPU_NAME / NUMBA_CPU_FEATURES are
    set, nor once numba has started compiling (other code's choice stands; ours just runs at
    256 bits).  It is a tuning hint, not a change of ISA: other numba code stays correct.
    """
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return
    if "_toplevel_target_context" in vars(cpu_target):  # the code generator exists already
        return
    features = get_host_cpu_features()
    if "+avx512f" in features.split(","):
        config.CPU_FEATURES = features + ",-prefer-256-bit"


_prefer_512_bit_vectors()

#: Reassociation and FMA contraction let LLVM vectorise sums and keep them in vector registers.
#: fastmath=True would also assume no NaN and no infinity; max pooling and relu must propagate
#: NaN exactly like torch, so those flags are left out.
FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp"})

# nogil: concurrent calls from Python threads run at the same time; parallel: prange is split
# over numba's thread pool; error_model="numpy": a division never raises, it gives inf/NaN.
_OPTIONS = dict(nogil=True, error_model="numpy")


def kernel(fn):
    """``@njit(parallel=True, cache=True)``, falling back to no cache when nowhere is writable.

    Numba looks for a cache directory in NUMBA_CACHE_DIR, then in ``__pycache__`` next to this
    package, then in the user's cache directory; when none is writable it refuses ``cache=True``
    outright, and the kernels then compile in every process instead of failing.
    """
    options = dict(_OPTIONS, parallel=True, fastmath=set(FASTMATH))
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError as exc:
        if "cannot cache" not in str(exc):
            raise
        return numba.njit(cache=False, **options)(fn)


def inline(fn):
    """A helper that numba inlines into the kernels calling it (no call, and LLVM sees the loop)."""
    return numba.njit(inline="always", fastmath=set(FASTMATH), **_OPTIONS)(fn)
