"""What the shared conformance suite does not cover for the numba backend: threads, the on-disk
cache, lazy compilation, and a Hypothesis sweep of the convolution options.

Every call here uses the (N, C, H, W) float32/float64 layouts the conformance cases use, so the
kernels compile once per dtype for the whole session (and load from numba's cache after that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch
from harness import Case, check

pytest.importorskip("numba")
ok, why = dispatch.status("numba")
pytestmark = pytest.mark.skipif(not ok, reason=f"numba unavailable: {why}")

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
        cwd=ROOT,
    )


# -- laziness ----------------------------------------------------------------------------------


def test_import_compiles_nothing():
    # Importing fastconv and the backend module, and asking whether it is available, must not
    # import numba (let alone compile): that happens on the first op call.
    out = _run("""
        import sys
        import fastconv, fastconv.backends.numba as nb
        print(nb.available(), fastconv.available_backends().count("numba"), "numba" in sys.modules)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(True,", "'')", "1", "False"]


# -- threads -----------------------------------------------------------------------------------


def _conv_inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    return x, w


def test_concurrent_calls_match_serial_calls():
    inputs = [_conv_inputs(seed) for seed in range(4)]
    expected = [fastconv.conv2d(x, w, padding=1, backend="numba") for x, w in inputs]
    pools = [fastconv.max_pool2d(x, 3, 2, 1, backend="numba") for x, _ in inputs]
    results, errors = {}, []

    def worker(t):
        try:
            for rep in range(5):
                i = (t + rep) % len(inputs)
                x, w = inputs[i]
                results[(t, rep)] = (
                    i,
                    fastconv.conv2d(x, w, padding=1, backend="numba"),
                    fastconv.max_pool2d(x, 3, 2, 1, backend="numba"),
                )
        except Exception as exc:  # reported below, with the thread that raised it
            errors.append((t, exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 20
    for i, y, pooled in results.values():
        np.testing.assert_array_equal(y, expected[i])
        np.testing.assert_array_equal(pooled, pools[i])


def test_thread_count_is_applied_per_call():
    import numba

    x, w = _conv_inputs(0)
    counts = []
    original = numba.set_num_threads

    def spy(n):
        counts.append(n)
        original(n)

    numba.set_num_threads = spy
    try:
        fastconv.set_num_threads(1)
        y1 = fastconv.conv2d(x, w, padding=1, backend="numba")
        fastconv.set_num_threads(2)
        y2 = fastconv.conv2d(x, w, padding=1, backend="numba")
        fastconv.set_num_threads(64)  # more than numba's pool: capped at NUMBA_NUM_THREADS
        fastconv.relu(x, backend="numba")
    finally:
        numba.set_num_threads = original
    assert counts == [1, min(2, numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS]
    # The work split does not depend on the thread count: results are bit-identical.
    np.testing.assert_array_equal(y1, y2)


def test_thread_safe_layer_and_count_in_a_fresh_process():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    out = _run(
        """
        import numba, numpy as np, fastconv
        fastconv.set_num_threads(2)
        fastconv.relu(np.ones(4, np.float32), backend="numba")
        from fastconv.backends import numba as nb
        print(numba.get_num_threads(), nb._layer)
    """,
        FASTCONV_NUM_THREADS="2",
    )
    assert out.returncode == 0, out.stderr
    count, layer = out.stdout.split()
    assert count == "2"
    assert layer in ("omp", "tbb", "workqueue")


def test_forked_child_gets_an_error_not_a_kill():
    # GNU OpenMP cannot serve a child forked after the parent used it: numba would SIGTERM the
    # child.  The backend must raise a RuntimeError there instead.
    out = _run("""
        import os, numpy as np, fastconv
        from fastconv.backends import numba as nb
        fastconv.relu(np.ones(4, np.float32), backend="numba")
        from numba.np.ufunc import omppool
        if nb._layer != "omp" or omppool.openmp_vendor != "GNU":
            print("fork-safe layer"); raise SystemExit
        pid = os.fork()
        if pid == 0:
            try:
                fastconv.relu(np.ones(4, np.float32), backend="numba")
                os._exit(3)
            except RuntimeError as exc:
                os._exit(0 if "fork" in str(exc) else 4)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("child 0", "fork-safe layer")


# -- the on-disk cache -------------------------------------------------------------------------

_CACHE_PROBE = """
    import numpy as np, fastconv
    x = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6) / 50 - 1
    y = fastconv.relu(x, backend="numba")
    p = fastconv.max_pool2d(x, 2, backend="numba")
    assert np.array_equal(y, np.maximum(x, 0)), "relu"
    assert np.array_equal(p, x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))), "max_pool2d"
    print("ok")
"""


def test_cache_dir_is_used(tmp_path):
    out = _run(_CACHE_PROBE, NUMBA_CACHE_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]
    assert list(tmp_path.rglob("*.nbi")), "no numba cache index written to NUMBA_CACHE_DIR"


def test_unwritable_cache_dir_falls_back(tmp_path):
    # A cache "directory" under a regular file can never be created, even by root (for whom a
    # chmod'ed read-only directory is still writable).  Numba then uses its other locations.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = _run(_CACHE_PROBE, NUMBA_CACHE_DIR=str(blocker / "cache"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]


def test_no_cache_location_at_all_still_runs(tmp_path):
    # Only the (unwritable) NUMBA_CACHE_DIR locator is allowed: numba refuses cache=True, and the
    # backend must fall back to compiling without a cache instead of failing to import.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    probe = (
        _CACHE_PROBE
        + """
    from fastconv.backends import _numba_pointwise
    print(type(_numba_pointwise._relu._cache).__name__)
    """
    )
    out = _run(
        probe,
        NUMBA_CACHE_DIR=str(blocker / "cache"),
        NUMBA_CACHE_LOCATOR_CLASSES="numba.core.caching.UserProvidedCacheLocator",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "NullCache"]


# -- one compiled signature per kernel and dtype ----------------------------------------------


def _kernels():
    from numba.core.registry import CPUDispatcher

    from fastconv.backends import _numba_conv, _numba_pointwise, _numba_pool

    return {
        f"{m.__name__}.{name}": obj
        for m in (_numba_conv, _numba_pool, _numba_pointwise)
        for name, obj in vars(m).items()
        if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("parallel")
    }


def test_warmup_compiles_every_kernel_once_per_dtype():
    # Whatever ran before in this session (every conformance case, Hypothesis), each kernel
    # has exactly the float32 and the float64 signature that warmup() compiles: no shape,
    # layout or read-only flag makes a third.
    fastconv.warmup(["numba"])
    kernels = _kernels()
    assert len(kernels) == 14, sorted(kernels)
    for name, dispatcher in kernels.items():
        dtypes = sorted({str(sig[0].dtype) for sig in dispatcher.signatures})
        assert len(dispatcher.signatures) == 2 and dtypes == ["float32", "float64"], f"{name}: {dispatcher.signatures}"


# -- read-only inputs use the same compiled kernels -------------------------------------------


def test_readonly_inputs_share_one_signature():
    from fastconv.backends import _numba_pool

    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    fastconv.max_pool2d(x, 2, backend="numba")
    before = len(_numba_pool._max_pool.signatures)
    x.flags.writeable = False
    fastconv.max_pool2d(x, 2, backend="numba")
    fastconv.max_pool2d(np.asfortranarray(x), 2, backend="numba")
    assert len(_numba_pool._max_pool.signatures) == before


# -- Hypothesis over the convolution options ---------------------------------------------------


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups == 1
    cg = 1 if depthwise else draw(st.integers(1, 6))
    c = draw(st.integers(1, 6)) if depthwise else cg * groups
    if depthwise:
        groups = c
    k = groups * draw(st.integers(1, 5))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h = draw(st.integers(max(1, dilation[0] * (r - 1) + 1 - 2 * padding[0]), 14))
    w = draw(st.integers(max(1, dilation[1] * (s - 1) + 1 - 2 * padding[1]), 14))
    n = draw(st.integers(1, 3))
    residual = draw(st.booleans())
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if draw(st.booleans()):
        kwargs["activation"] = "relu"
    return Case(
        "conv2d",
        "hypothesis",
        (n, c, h, w),
        (k, c // groups, r, s),
        kwargs,
        bias=draw(st.booleans()),
        residual=residual,
        dtype=draw(st.sampled_from(["float32", "float64"])),
    )


@pytest.mark.parametrize("path", ["chosen", "dense"])
@settings(max_examples=max(10, int(settings.default.max_examples * 0.4)))
@given(case=conv_cases())
def test_conv_matches_torch_hypothesis(path, case):
    # Small drawn shapes mostly take the few-channels kernel; "dense" forces the dense one too.
    from fastconv.backends import _numba_conv

    saved = _numba_conv.MIN_RUN
    _numba_conv.MIN_RUN = 0 if path == "dense" else saved
    try:
        check(case, "numba")
    finally:
        _numba_conv.MIN_RUN = saved
