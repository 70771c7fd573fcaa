"""What a benchmark ran on: CPU, SIMD features, thread counts, library versions, FP32 peak.

Everything here is cheap and never raises (a missing library is reported as missing), except
:func:`peak_gflops`, which runs a short GEMM once per process and thread count.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import importlib.metadata
import os
import platform
import socket
import time

import numpy as np

from .. import threads
from .._cpu import cpu_model, cpuinfo

#: The SIMD flags worth showing, in the order they appeared (x86, then Arm).
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "fma",
    "avx2",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
    "sve2",
)
LIBRARIES = (
    "numpy",
    "numba",
    "llvmlite",
    "cffi",
    "threadpoolctl",
    "rich",
    "torch",
    "matplotlib",
    "asv",
    "pytest-benchmark",
    "onnx",
    "onnxruntime",
)


def simd_features() -> list[str]:
    """The CPU's SIMD extensions, from /proc/cpuinfo, else from NumPy's runtime CPU detection."""
    info = cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if flags:
        return [f for f in SIMD_FLAGS if f in flags]
    try:  # not Linux: NumPy detected the same features at import
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return []
    return [name.lower() for name, present in __cpu_features__.items() if present]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions() -> dict[str, str | None]:
    """Installed versions (None: not installed), read from package metadata without importing."""
    from .. import __version__

    out = {"fastconv": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def blas() -> list[dict]:
    """NumPy's BLAS libraries as threadpoolctl sees them (name, version, threads, architecture)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "architecture", "threading_layer")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib.get("user_api") == "blas"]


def thread_counts() -> dict[str, int | str | None]:
    """The thread count fastconv uses and what each runtime would use on its own."""
    out: dict[str, int | str | None] = {
        "fastconv": threads.get_num_threads(),
        "cpus": cpu_count(),
        "os.cpu_count": os.cpu_count(),
    }
    for var in (
        "FASTCONV_NUM_THREADS",
        "OMP_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "OMP_WAIT_POLICY",
        "GOMP_SPINCOUNT",
        "NUMBA_THREADING_LAYER",
    ):
        out[var] = os.environ.get(var)
    try:
        import numba

        out["numba"] = numba.config.NUMBA_NUM_THREADS
    except Exception:
        out["numba"] = None
    torch = _torch()
    out["torch"] = torch.get_num_threads() if torch else None
    out["blas"] = max((lib["num_threads"] or 0 for lib in blas()), default=None)
    return out


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


def cuda_info() -> dict:
    """Whether torch sees a CUDA device (and which), and the cuDNN version."""
    torch = _torch()
    if torch is None:
        return {"available": False, "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {
            "available": False,
            "reason": f"torch {torch.__version__} sees no CUDA device (built with CUDA {torch.version.cuda})",
        }
    return {
        "available": True,
        "device": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def describe() -> dict:
    """The machine section of a benchmark run."""
    torch = _torch()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": cpu_count(),
        "simd": simd_features(),
        "blas": blas(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch else None,
        "isa": c_isa(),
        "load_average": load_average(),
    }


def c_isa() -> str | None:
    """The instruction set of the C backend's kernels (``FASTCONV_ISA`` honoured), or None."""
    try:
        return importlib.import_module("fastconv.backends.c").isa()
    except Exception:
        return None


#: glibc's malloc thresholds the benchmark commands set for their own process, in bytes.
HEAP_MMAP_THRESHOLD = 256 << 20
HEAP_TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def steady_heap() -> bool:
    """Keep freed memory in this process's heap (glibc ``mallopt``), so that eager calls reuse it
    instead of faulting in fresh zeroed pages every call; False where the C library has no
    mallopt (the allocator is then left as it is).

    Why: by default glibc serves each large block (a ResNet's activations) from its own mapping,
    or trims the heap's free top, and every call pays page faults for memory it had just freed:
    measured on a 2-core AMD EPYC, torch's ResNet-18 batch 8 forward pass faulted 12,500 pages
    (49 MB) a call and took 104 ms against 89 ms with the heap kept; worse, how often that
    happened depended on what else the process had allocated, so torch's time in the models
    suite moved from 91 to 152 ms with the other targets in the run.  Fixed thresholds give
    every eager target (torch and fastconv's backends alike) the same steady heap; compiled
    plans and ONNX Runtime keep their own arenas either way.  ``--default-heap`` on the
    benchmark commands leaves the allocator alone."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    )


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: on a shared machine, how busy the other tenants were."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# -- peak ----------------------------------------------------------------------------------------

_peak_cache: dict[int, tuple[float, str, int]] = {}


def peak_cache_path() -> str:
    """The per-machine peak cache: ``FASTCONV_PEAK_CACHE``, else ~/.cache/fastconv/peak.json."""
    return os.environ.get("FASTCONV_PEAK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastconv", "peak.json"
    )


def _shown(path: str) -> str:
    """``path`` with the home directory as ``~``: results are shared, the user's home is not theirs."""
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home not in ("", "~", "/") and path.startswith(home + os.sep) else path


def _machine_key(nthreads: int) -> str:
    isa = None
    try:
        isa = importlib.import_module("fastconv.backends.c").isa()
    except Exception:
        pass
    return f"{socket.gethostname()}|{cpu_model()}|{isa}|{cpu_count()} cpus|{nthreads} threads"


def _read_cache() -> dict:
    try:
        with open(peak_cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, value: float, source: str) -> None:
    path = peak_cache_path()
    data = _read_cache()
    data[key] = {"gflops": value, "source": source}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the peak is measured again next time


def peak_gflops(nthreads: int, cache: bool = True) -> tuple[float, str, int]:
    """The machine's FP32 peak in GFLOP/s, how it was found, and the thread count it was measured at.

    Measured, never extrapolated: at ``min(nthreads, usable CPUs)`` threads (more threads than
    CPUs cannot add FLOPs), the best of three runs of the C backend's FMA loop when it offers
    one, else the best of five 2048^3 float32 matrix products on NumPy's BLAS (a lower bound).
    The first measurement per machine, ISA and thread count is kept in :func:`peak_cache_path`
    so runs are compared against the same roof; ``cache=False`` (a busy machine) neither reads
    nor writes it.
    """
    n = max(1, min(nthreads, cpu_count()))
    if n in _peak_cache and cache:
        return _peak_cache[n]
    key = _machine_key(n)
    stored = _read_cache().get(key) if cache else None
    if isinstance(stored, dict) and isinstance(stored.get("gflops"), (int, float)):
        result = (float(stored["gflops"]), f"{stored.get('source')}, cached ({_shown(peak_cache_path())})", n)
        _peak_cache[n] = result
        return result
    result = None
    try:
        c = importlib.import_module("fastconv.backends.c")
        values = [c.peak_gflops(n) for _ in range(3)]
        if all(values):
            result = (float(max(values)), f"fastconv.backends.c.peak_gflops at {n} threads (best of 3)", n)
    except Exception:  # no C backend, not built, or no peak function: fall back
        pass
    if result is None:
        result = (_numpy_gemm_gflops(n), f"numpy sgemm 2048^3 at {n} threads (best of 5)", n)
    if cache:
        _write_cache(key, result[0], result[1])
        _peak_cache[n] = result
    return result


def _numpy_gemm_gflops(nthreads: int, n: int = 2048) -> float:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    best = float("inf")
    with threadpool_limits(limits=nthreads, user_api="blas"):
        np.matmul(a, b, out=out)  # warm-up: BLAS threads, page faults
        for _ in range(5):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9
