"""Regression tests for faults found by hostile inputs: each test names the fault it pins down.

Every reproducer must give torch's result, or a clear ValueError / TypeError / MemoryError, and
fast: none may crash the interpreter or hang.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, grad, threads

torch = pytest.importorskip("torch")
F = torch.nn.functional

BIG = 2**31 - 1
HALF = 2**30 - 1


def _backends():
    return [b for b in dispatch._registry if dispatch._status(dispatch._registry[b])[0]]


def _torch(fn, *arrays, **kw):
    return fn(*(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in arrays), **kw).numpy()


@functools.lru_cache(maxsize=None)
def _torch_pool(op: str, shape: tuple, value: float, *args, **kw):
    """torch's result for a constant input, once per module: torch takes seconds on 2**31 windows."""
    return _torch(getattr(F, op), np.full(shape, value), *args, **kw)


def _run_or_refuse(fn, backend, *args, **kw):
    """fastconv's result, or None when the backend refuses the problem (with a reason)."""
    try:
        return fn(*args, backend=backend, **kw)
    except dispatch.BackendError:
        return None


# -- 1. scratch sizes overflowing size_t -----------------------------------------------------------

SCRATCH_OVERFLOW = [
    # (input shape, weight shape, dtype, keyword arguments)
    ((1, 1, 2, 2), (1, 1, 2, 2), np.float32, dict(padding=HALF, dilation=BIG)),
    ((1, 2, 2, 2), (2, 1, 2, 2), np.float64, dict(padding=HALF, dilation=BIG, groups=2)),
    ((1, 2, 2, 2), (2, 1, 1, 1), np.float32, dict(padding=HALF, stride=BIG, groups=2)),
    ((1, 2, 2, 2), (2, 1, 1, 1), np.float64, dict(padding=HALF, stride=BIG, groups=2)),
]


@pytest.mark.parametrize("xs, ws, dtype, kw", SCRATCH_OVERFLOW)
@pytest.mark.parametrize("backend", ["c", None])
def test_scratch_size_overflow_gives_torchs_result(xs, ws, dtype, kw, backend):
    """Scratch sizes wrapped in size_t: a tiny buffer was allocated and overrun (segfault)."""
    if backend and backend not in _backends():
        pytest.skip(f"{backend} not available")
    x, w = np.ones(xs, dtype), np.ones(ws, dtype)
    t0 = time.perf_counter()
    y = fastconv.conv2d(x, w, backend=backend, **kw)
    assert time.perf_counter() - t0 < 20  # no giant scratch walked through
    np.testing.assert_array_equal(y, _torch(F.conv2d, x, w, **kw))


def test_scratch_that_cannot_fit_is_refused_before_the_call(monkeypatch):
    """Python refuses, with the number, a problem whose C scratch exceeds the memory available
    (here a pretend 128 MiB machine: the float32 stride-2 phase planes need about 144 MB)."""
    if "c" not in _backends():
        pytest.skip("c not available")
    from fastconv import _args
    from fastconv.backends import _c_scratch

    monkeypatch.setattr(_args, "_available_memory", lambda: 2**27)
    x, w = np.ones((1, 1, 2000, 2000), np.float32), np.ones((1, 1, 3, 3), np.float32)
    assert (
        _c_scratch.conv2d_bytes(
            fastconv.problem.Conv2dProblem(1, 1, 2000, 2000, 1, 3, 3, (2, 2), (2000,) * 4, (1, 1), 1, "float32"), 1
        )
        > 2**27
    )
    with pytest.raises(MemoryError, match=r"GiB of scratch memory \([0-9,]+ bytes\)"):
        fastconv.conv2d(x, w, stride=2, padding=2000, backend="c")


# -- 2. fork --------------------------------------------------------------------------------------

FORK_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import fastconv
    backend = sys.argv[1]
    fastconv.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 64)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32)
    ref = fastconv.conv2d(x, w, backend=backend)       # the parent starts the backend's threads
    fastconv.relu(x, backend=backend)
    pid = os.fork()
    if pid == 0:
        try:
            y = fastconv.conv2d(x, w, backend=backend)
            fastconv.relu(x, backend=backend)
            os._exit(0 if np.array_equal(y, ref) else 3)
        except BaseException as exc:  # a clear error is acceptable; a hang is not
            print("child error:", type(exc).__name__, exc, flush=True)
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("backend", ["c", "im2col"])
def test_forked_child_does_not_hang(backend):
    """A child forked after the parent used c (libgomp's pool) or im2col (its thread pool) blocked
    forever on its first call.  The problem is large enough that both run on 2 threads."""
    if backend not in _backends():
        pytest.skip(f"{backend} not available")
    # Its own session, so a hung grandchild is killed with it rather than left behind.
    proc = subprocess.Popen(
        [sys.executable, "-c", FORK_CHILD, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{backend}: the forked child hung")
    assert proc.returncode == 0, out


# -- 3. scratch sized from the output -------------------------------------------------------------


def test_huge_dilation_with_one_output_is_fast_and_small():
    """Scratch was sized by the dilated extent: 67 s and 16.8 GB for one output element."""
    x, w = np.ones((1, 1, 1), np.float32), np.ones((1, 1, 3, 1), np.float32)
    kw = dict(padding="same", dilation=(BIG, 1))
    t0 = time.perf_counter()
    y = fastconv.conv2d(x, w, **kw)
    assert time.perf_counter() - t0 < 20
    np.testing.assert_array_equal(y, _torch(F.conv2d, x, w, **kw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", [None, "c"])
def test_huge_pool_window_with_one_output(dtype, backend):
    """max/avg pooling with a 2**31-wide padded window around a 1x1 input raised MemoryError."""
    if backend and backend not in _backends():
        pytest.skip(f"{backend} not available")
    x = np.full((1, 1, 1, 1), 5.0, dtype)
    t0 = time.perf_counter()
    y_max = fastconv.max_pool2d(x, BIG, 1, HALF, backend=backend)
    y_avg = fastconv.avg_pool2d(x, (BIG, 1), 1, (HALF, 0), backend=backend)
    y_avg2 = fastconv.avg_pool2d(x, (1, 2**20 + 1), 1, (0, 2**19), backend=backend, count_include_pad=False)
    assert time.perf_counter() - t0 < 20
    np.testing.assert_array_equal(y_max, _torch_pool("max_pool2d", x.shape, 5.0, BIG, 1, HALF))
    np.testing.assert_allclose(y_avg, _torch_pool("avg_pool2d", x.shape, 5.0, (BIG, 1), 1, (HALF, 0)), rtol=1e-6)
    np.testing.assert_allclose(
        y_avg2,
        _torch_pool("avg_pool2d", x.shape, 5.0, (1, 2**20 + 1), 1, (0, 2**19), count_include_pad=False),
        rtol=1e-6,
    )


@pytest.mark.parametrize("backend", ["c"])
def test_wide_padding_pool_matches_torch_on_real_rows(backend):
    """The clipped pooling path (padding far wider than the input) on several rows and columns."""
    if backend not in _backends():
        pytest.skip(f"{backend} not available")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    kw = dict(kernel_size=(3, 40001), stride=(2, 3), padding=(1, 20000))
    np.testing.assert_array_equal(fastconv.max_pool2d(x, **kw, backend=backend), _torch(F.max_pool2d, x, **kw))
    np.testing.assert_allclose(fastconv.avg_pool2d(x, **kw, backend=backend), _torch(F.avg_pool2d, x, **kw), rtol=1e-12)
    kw.update(stride=(2, 7), ceil_mode=True)
    np.testing.assert_array_equal(fastconv.max_pool2d(x, **kw, backend=backend), _torch(F.max_pool2d, x, **kw))


# -- 4. autotune and the empty-output shortcut ----------------------------------------------------


def test_autotune_skips_empty_outputs():
    """With autotuning on, empty outputs reached the timing loop ('this is a fastconv bug')."""
    dispatch.set_autotune(True)
    try:
        y = fastconv.conv2d(np.ones((0, 1, 3, 3)), np.ones((1, 1, 1, 1)))
        assert y.shape == (0, 1, 3, 3)
        assert fastconv.adaptive_avg_pool2d(np.ones((1, 2, 3, 3)), 0).shape == (1, 2, 0, 0)
        assert fastconv.max_pool2d(np.ones((0, 1, 4, 4)), 2).shape == (0, 1, 2, 2)
        assert fastconv.avg_pool2d(np.ones((0, 1, 4, 4)), 2).shape == (0, 1, 2, 2)
        assert fastconv.relu(np.ones((0, 3))).shape == (0, 3)
    finally:
        dispatch.set_autotune(False)
        dispatch.clear_autotune_cache()


# -- 5. im2col's executor replaced under a running call -------------------------------------------


def test_im2col_survives_concurrent_set_num_threads():
    """While one thread changed the thread count, another's executor was shut down under it
    ("cannot schedule new futures after shutdown", 152 of 1,200 calls)."""
    if "im2col" not in _backends():
        pytest.skip("im2col not available")
    x = np.random.default_rng(0).standard_normal((4, 8, 64, 64)).astype(np.float32)
    ref = np.maximum(x, 0)
    stop, errors = threading.Event(), []

    def flip():
        n = 0
        while not stop.is_set():
            threads.set_num_threads(2 + n % 3)
            n += 1

    def call():
        for _ in range(150):
            try:
                if not np.array_equal(fastconv.relu(x, backend="im2col"), ref):
                    errors.append("wrong result")
            except Exception as exc:  # noqa: BLE001 -- any failure is the fault
                errors.append(repr(exc))

    flipper = threading.Thread(target=flip)
    workers = [threading.Thread(target=call) for _ in range(2)]
    flipper.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    flipper.join()
    assert not errors, errors[:3]


# -- 6. NaN and inf weights on padded taps --------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2, 65])
@pytest.mark.parametrize("channels, groups", [(2, 1), (4, 2)])
def test_nonfinite_weight_on_padding_taps_gives_nan(dtype, stride, channels, groups):
    """c float64 (and float32 at stride > 64) and naive skipped taps in the zero padding, so a
    NaN (or inf) weight there gave 0 where torch gives NaN (0 * NaN).

    Depthwise convolutions are left out: torch's float32 depthwise kernel itself skips padded
    taps (0, not NaN) while its float64 one does not, so no one answer matches torch there."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, channels, 5, 70)).astype(dtype)
    w = rng.standard_normal((2, channels // groups, 3, 3)).astype(dtype)
    w[0, 0, 0, 0] = np.nan  # top-left tap: in the padding for the first row and column
    w[-1, -1, 2, 1] = np.inf  # bottom tap: in the padding for the last row
    kw = dict(stride=stride, padding=1, groups=groups)
    ref = _torch(F.conv2d, x, w, **kw)
    for backend in _backends():
        y = _run_or_refuse(fastconv.conv2d, backend, x, w, **kw)
        if y is not None:
            np.testing.assert_array_equal(np.isnan(y), np.isnan(ref), err_msg=backend)


# -- 7. thread count range ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, threads.MAX_THREADS + 1, 2**31, 2**63])
def test_set_num_threads_out_of_range(n):
    """set_num_threads(2**31) was accepted; every later c call raised cffi's OverflowError."""
    before = fastconv.get_num_threads()
    with pytest.raises(ValueError, match="num_threads"):
        fastconv.set_num_threads(n)
    assert fastconv.get_num_threads() == before


@pytest.mark.parametrize("env", ["abc", "0", "-3", str(2**31)])
def test_bad_thread_env_is_a_clear_error(env, monkeypatch):
    monkeypatch.setattr(threads, "_num_threads", None)
    monkeypatch.setenv("FASTCONV_NUM_THREADS", env)
    with pytest.raises(ValueError, match="FASTCONV_NUM_THREADS"):
        threads.get_num_threads()


# -- 8. misaligned arrays -------------------------------------------------------------------------


def _misaligned(a: np.ndarray) -> np.ndarray:
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and not m.flags.aligned
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_arrays_are_copied(dtype):
    """C-contiguous arrays not aligned to their dtype reached C unchanged (UBSan: misaligned load)."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 9, 9)).astype(dtype), rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    mx, mw, mb = _misaligned(x), _misaligned(w), _misaligned(b)
    for backend in _backends():
        np.testing.assert_array_equal(
            fastconv.conv2d(mx, mw, mb, padding=1, backend=backend),
            fastconv.conv2d(x, w, b, padding=1, backend=backend),
        )
        np.testing.assert_array_equal(fastconv.relu(mx, backend=backend), fastconv.relu(x, backend=backend))
        np.testing.assert_array_equal(
            fastconv.max_pool2d(mx, 2, backend=backend), fastconv.max_pool2d(x, 2, backend=backend)
        )
    from fastconv._args import as_float_array

    assert as_float_array(mx, "input").flags.aligned


# -- 9. im2col adaptive pooling vectorised --------------------------------------------------------


@pytest.mark.parametrize(
    "shape, out",
    [((1, 1, 1, 1), (1, 2**16)), ((2, 3, 7, 5), (3, 4)), ((1, 2, 5, 9), (11, 13)), ((1, 1, 64, 1), (1, 1))],
)
def test_im2col_adaptive_pool_matches_torch(shape, out):
    """im2col looped over output bins in Python: output (1, 2**20) of a 1x1 input took 6 s.  Now
    two vectorised reductions over (possibly overlapping) bins; checked against torch."""
    x = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_allclose(
        fastconv.adaptive_avg_pool2d(x, out, backend="im2col"),
        _torch(F.adaptive_avg_pool2d, x, out),
        rtol=1e-12,
        atol=1e-15,
    )


# -- 10. BLAS threads and calls from worker threads -----------------------------------------------

BLAS_FROM_THREADS = textwrap.dedent("""
    import threading
    import numpy as np
    import fastconv
    from fastconv import threads
    from fastconv.backends import im2col
    from threadpoolctl import ThreadpoolController, threadpool_info

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def in_thread(fn):
        out = []
        t = threading.Thread(target=lambda: out.append(fn()))
        t.start(); t.join()
        return out[0]

    if not blas_threads():
        raise SystemExit(0)
    fastconv.set_num_threads(2)
    # A limit set once from some other thread, then the main thread's own (fastconv's apply_blas,
    # as nn layers do): threadpoolctl then ignores limits set from any other thread ...
    in_thread(lambda: ThreadpoolController().limit(limits=1, user_api="blas"))
    threads.apply_blas()
    assert blas_threads() == {2}, blas_threads()
    # ... yet an im2col call from a user thread must run its BLAS on one thread,
    seen = []
    def call():
        im2col._parallel(lambda part: seen.extend(blas_threads()), [1, 2], blas=True)
    in_thread(call)
    assert set(seen) == {1}, seen
    # and leave BLAS as it found it,
    assert blas_threads() == {2}, blas_threads()
    # and a convolution from a user thread is the main thread's, bit for bit.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 40, 40)).astype(np.float32)
    w = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    ref = fastconv.conv2d(x, w, padding=1, backend="im2col")
    assert np.array_equal(in_thread(lambda: fastconv.conv2d(x, w, padding=1, backend="im2col")), ref)
""")


def test_im2col_blas_single_threaded_when_called_from_a_user_thread():
    """im2col keeps BLAS on one thread under its own threads.  threadpoolctl ignores a limit set
    from any thread but the one that first set one (while it lives), so calls from user threads ran
    BLAS on every core under each of im2col's threads, oversubscribed, and differed in the last bits
    from main-thread calls."""
    if "im2col" not in _backends():
        pytest.skip("im2col not available")
    proc = subprocess.run([sys.executable, "-c", BLAS_FROM_THREADS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- 11. masked arrays ----------------------------------------------------------------------------


def test_masked_arrays_are_refused():
    """A masked array's mask was silently dropped."""
    x = np.ma.masked_array(np.ones((1, 1, 4, 4)), mask=np.eye(4, dtype=bool)[None, None])
    with pytest.raises(TypeError, match="masked"):
        fastconv.relu(x)
    with pytest.raises(TypeError, match="masked"):
        fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ma.masked_array(np.ones((1, 1, 3, 3))))


def test_empty_output_with_huge_dimensions_is_a_clear_error():
    """An empty output whose other dimensions multiply past NumPy's limit raised NumPy's own
    'array is too big' from deep inside the dispatcher."""
    with pytest.raises(ValueError, match="conv2d: the output shape .* is empty"):
        fastconv.conv2d(np.ones((0, 1, 1, 1), np.float32), np.ones((3, 1, 1, 1), np.float32), padding=BIG)
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: the output shape"):
        fastconv.adaptive_avg_pool2d(np.ones((0, 4, 1, 1)), (BIG, BIG))
    # Representable empty outputs still come back, with torch's shape.
    assert fastconv.adaptive_avg_pool2d(np.ones((0, 4, 1, 1)), (3, BIG)).shape == (0, 4, 3, BIG)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--min-time", "nan"], None),
        (["bench", "--min-time", "-1"], None),
        (["bench", "--threads", str(2**31)], None),
        (["bench", "--json", "/no/such/folder/r.json", "--problems", "small"], "does not exist"),
        (["bench", "--csv", ".", "--problems", "small"], "is a directory"),
    ],
)
def test_cli_bad_options_are_one_line_errors(argv, message, capsys):
    """Unwritable --json/--csv/--markdown paths gave a traceback after the whole run (results
    lost); --min-time nan was accepted."""
    from fastconv import cli

    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own one-line error
        rc = exc.code
    assert rc == 2
    if message:
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("env", ["abc", "0"])
def test_cli_bad_thread_env_is_a_one_line_error(env, capsys, monkeypatch):
    from fastconv import cli

    monkeypatch.setattr(threads, "_num_threads", None)
    monkeypatch.setenv("FASTCONV_NUM_THREADS", env)
    assert cli.main(["info"]) == 2
    assert "FASTCONV_NUM_THREADS" in capsys.readouterr().err


# -- found by the differential fuzzer (tests/test_fuzz.py) ----------------------------------------


def test_negative_stride_on_a_length_one_axis_reaches_every_backend():
    """NumPy calls such an array C-contiguous, so it reached the torch backend, which refuses
    negative strides ('tensors with negative strides are not currently supported')."""
    x = np.random.default_rng(0).standard_normal((2, 1, 1, 1)).astype(np.float32)[:, ::-1]
    assert x.flags.c_contiguous and min(x.strides) < 0
    for backend in _backends():
        np.testing.assert_array_equal(fastconv.adaptive_avg_pool2d(x, 1, backend=backend), x.copy())


def test_training_batch_norm_with_inf_input_gives_nan_without_warnings():
    """inf - inf in a channel's statistics raised NumPy's 'invalid value' RuntimeWarning (an error
    in this suite) on im2col, naive and torch; torch itself returns NaN quietly."""
    x = np.array([[[np.inf, -0.13, 0.64]]], np.float32)
    mean, var = np.zeros(1, np.float32), np.ones(1, np.float32)
    ref = _torch(F.batch_norm, x, None, None, training=True)
    for backend in _backends():
        np.testing.assert_array_equal(
            fastconv.batch_norm(x, mean.copy(), var.copy(), training=True, momentum=0.0, backend=backend), ref
        )


def test_empty_training_batch_norm_input_gradient_without_warnings():
    """grad.batch_norm_input computed an empty batch's statistics with NumPy ('Mean of empty
    slice', an error in this suite); torch returns zero gradients quietly."""
    x = np.zeros((0, 3), np.float32)
    for backend in [None, *_backends()]:
        gi, gw, gb = grad.batch_norm_input(x, x, training=True, backend=backend)
        assert gi.shape == (0, 3) and not gw.any() and not gb.any()


def test_training_batch_norm_input_gradient_of_one_value_per_channel_is_refused():
    """The forward (and torch) refuse training batch norm on one value per channel; its gradient
    accepted it (found by make fuzz)."""
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        grad.batch_norm_input(np.ones((1, 3)), np.ones((1, 3)), training=True)


def test_eval_batch_norm_input_gradient_does_not_read_the_input():
    """In eval mode the input gradient is grad * weight / sqrt(var + eps), whatever the input holds,
    NaN and inf included, as torch's (c and numba once multiplied (x - mean) by a zero slope)."""
    x = np.array([[np.nan, np.inf, 1.0]]).reshape(1, 1, 3)
    g = np.ones_like(x)
    mean, var = np.zeros(1), np.ones(1)
    tx = torch.from_numpy(x).requires_grad_(True)
    F.batch_norm(tx, torch.from_numpy(mean), torch.from_numpy(var), training=False).backward(torch.from_numpy(g))
    for backend in _backends():
        gi = grad.batch_norm_input(x, g, mean, var, training=False, backend=backend)[0]
        np.testing.assert_allclose(gi, tx.grad.numpy(), rtol=1e-12, err_msg=backend)


# -- backward kernels and Winograd: hostile sizes ---------------------------------------------------


def _torch_grads(forward, arrays: dict, wrt: str, seed=0):
    """torch autograd: the gradient w.r.t. arrays[wrt] of forward(**tensors), and the grad_output used."""
    t = {n: torch.from_numpy(a).requires_grad_(n == wrt) for n, a in arrays.items()}
    y = forward(**t)
    g = np.random.default_rng(seed).standard_normal(tuple(y.shape)).astype(arrays[wrt].dtype)
    y.backward(torch.from_numpy(g))
    return t[wrt].grad.numpy(), g


_ONES = functools.partial(np.ones, dtype=np.float32)
BWD_CONV_HOSTILE = [
    # (input shape, weight shape, dtype, keyword arguments): the forward's hostile sizes, backward
    ((1, 1, 2, 2), (1, 1, 2, 2), np.float32, dict(padding=HALF, dilation=BIG)),
    ((1, 2, 2, 2), (2, 1, 2, 2), np.float64, dict(padding=HALF, dilation=BIG, groups=2)),
    ((1, 2, 2, 2), (2, 1, 1, 1), np.float64, dict(padding=HALF, stride=BIG, groups=2)),
    ((1, 1, 1, 1), (1, 1, 3, 1), np.float32, dict(padding="same", dilation=(BIG, 1))),
    ((1, 1, 3, 3), (1, 1, 3, 3), np.float32, dict(padding=(HALF, 1), stride=(BIG, 5))),
    # many channels on a 1x1 image, strided (the C kernel's columns), depthwise with many groups
    ((2, 1024, 1, 1), (3, 1024, 3, 3), np.float32, dict(padding=1, stride=5)),
    ((1, 2**12, 1, 1), (2**12, 1, 2, 2), np.float32, dict(padding=1, stride=3, groups=2**12)),
]


@pytest.mark.parametrize("xs, ws, dtype, kw", BWD_CONV_HOSTILE)
def test_backward_conv_hostile_sizes_give_torchs_result(xs, ws, dtype, kw):
    """grad.conv2d_input / conv2d_weight on every backend: torch's gradient, or a refusal that says
    why (BackendError) -- never a crash, a hang or a giant allocation."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    conv = functools.partial(F.conv2d, **kw)
    gx_ref, g = _torch_grads(lambda x, w: conv(x, w), {"x": x, "w": w}, "x")
    gw_ref, _ = _torch_grads(lambda x, w: conv(x, w), {"x": x, "w": w}, "w")
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for backend in [None, *_backends()]:
        t0 = time.perf_counter()
        gx = _run_or_refuse(grad.conv2d_input, backend, xs, w, g, **kw)
        gw = _run_or_refuse(grad.conv2d_weight, backend, x, ws, g, **kw)
        assert time.perf_counter() - t0 < 20, backend
        if gx is not None:
            np.testing.assert_allclose(gx, gx_ref, **tol, err_msg=f"{backend} input gradient")
        if gw is not None:
            np.testing.assert_allclose(gw, gw_ref, **tol, err_msg=f"{backend} weight gradient")


@pytest.mark.parametrize("backend", [None, "c", "im2col"])
def test_backward_pool_huge_window_with_one_output(backend):
    """A 2**31-wide padded window around a 1x1 input, backward: torch's gradient on c (the C kernels
    clip the window), a refusal on im2col, which looped over 2**62 taps in Python (a hang)."""
    if backend and backend not in _backends():
        pytest.skip(f"{backend} not available")
    x, g = np.full((1, 1, 1, 1), 5.0), np.full((1, 1, 1, 1), 3.0)
    t0 = time.perf_counter()
    try:
        gmax = grad.max_pool2d_input(x, g, (BIG, 1), 1, (HALF, 0), backend=backend)
        gavg = grad.avg_pool2d_input(x.shape, g, (BIG, 1), 1, (HALF, 0), backend=backend)
    except dispatch.BackendError as exc:
        assert backend == "im2col" and "taps" in str(exc)
        return
    finally:
        assert time.perf_counter() - t0 < 20
    np.testing.assert_array_equal(gmax, g)  # the one value is every window's maximum
    # torch: each of the window's BIG rows divides by BIG (count_include_pad)
    np.testing.assert_allclose(gavg, g / BIG, rtol=1e-12)


def test_winograd_many_channels_on_a_tiny_image_gives_torchs_result():
    """Winograd's tiles are at least one microkernel panel wide, so 2**14 channels on a 1x1 image
    need 36 x c x nr floats of scratch however few tiles there are: sized and run, torch's result."""
    if "c" not in _backends():
        pytest.skip("c not available")
    rng = np.random.default_rng(0)
    x, w = (
        rng.standard_normal((1, 2**14, 1, 1)).astype(np.float32),
        rng.standard_normal((2, 2**14, 3, 3)).astype(np.float32),
    )
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd", backend="c")
    np.testing.assert_allclose(y, _torch(F.conv2d, x, w, padding=1), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize(
    "xs, kw",
    [
        ((1, 1, 1, 1), dict(padding=300)),
        ((1, 3, 1, 2**14), dict(padding=(1, 0))),
        ((1, 1, 2, 2), dict(padding=HALF)),
        ((1, 1, 2, 2), dict(padding=(1, BIG))),
    ],
)
def test_winograd_hostile_padding_gives_torchs_result_or_memory_error(xs, kw):
    """Winograd tiles the output: wide padding makes many tiles of a tiny input (torch's result), or
    an output that cannot exist (MemoryError before any work)."""
    if "c" not in _backends():
        pytest.skip("c not available")
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal((2, xs[1], 3, 3)).astype(np.float32)
    t0 = time.perf_counter()
    try:
        y = fastconv.conv2d(x, w, algorithm="winograd", backend="c", **kw)
    except MemoryError as exc:
        assert "output" in str(exc) and time.perf_counter() - t0 < 5
        return
    np.testing.assert_allclose(y, _torch(F.conv2d, x, w, **kw), rtol=1e-3, atol=1e-3)


def _refused_for_scratch(monkeypatch, memory: int, call) -> None:
    from fastconv import _args

    monkeypatch.setattr(_args, "_available_memory", lambda: memory)
    with pytest.raises(MemoryError, match=r"GiB of scratch memory \([0-9,]+ bytes\)"):
        call()


def test_backward_and_winograd_scratch_that_cannot_fit_is_refused(monkeypatch):
    """On a pretend small machine, the scratch of the C backward kernels (columns of a strided
    backward-data, per-thread weight gradients) and of Winograd (transformed filters and tiles of
    a many-channel problem) is refused with the number before anything is allocated."""
    if "c" not in _backends():
        pytest.skip("c not available")
    from dataclasses import replace

    from fastconv.backends import _c_scratch
    from fastconv.problem import Conv2dProblem

    threads.set_num_threads(4)
    # strided float64 backward-data: 64x64 taps x 179x179 outputs of columns, about 1 GB
    p = Conv2dProblem(1, 1, 600, 600, 1, 64, 64, (3, 3), (0,) * 4, (1, 1), 1, "float64", direction="bwd_data")
    assert _c_scratch.conv2d_bytes(p, 4) > 2**28
    g = np.ones((1, 1, 179, 179))
    _refused_for_scratch(
        monkeypatch,
        2**28,
        lambda: grad.conv2d_input((1, 1, 600, 600), np.ones((1, 1, 64, 64)), g, stride=3, backend="c"),
    )
    # backward-weight: four threads each sum into a private 75 MB weight gradient
    x = np.ones((4, 1024, 3, 3))
    q = Conv2dProblem(4, 1024, 3, 3, 1024, 3, 3, (1, 1), (0,) * 4, (1, 1), 1, "float64", direction="bwd_weight")
    assert _c_scratch.conv2d_bytes(q, 4) > 4 * 1024 * 1024 * 9 * 8 > 2**28
    _refused_for_scratch(
        monkeypatch, 2**28, lambda: grad.conv2d_weight(x, (1024, 1024, 3, 3), np.ones((4, 1024, 1, 1)), backend="c")
    )
    # Winograd with 2**14 channels on a 1x1 image, 24 outputs (a multiple of every table's rows)
    w = Conv2dProblem(1, 2**14, 1, 1, 24, 3, 3, (1, 1), (1,) * 4, (1, 1), 1, "float32", algorithm="winograd")
    need = _c_scratch.conv2d_bytes(w, 4)
    assert need > 36 * 2**14 * 16 * 4 + 36 * 24 * 2**14 * 4  # tiles of one 16-wide panel + filters
    assert _c_scratch.conv2d_bytes(replace(w, algorithm="auto"), 4) < need
    _refused_for_scratch(
        monkeypatch,
        need - 1,
        lambda: fastconv.conv2d(
            np.ones((1, 2**14, 1, 1), np.float32),
            np.ones((24, 2**14, 3, 3), np.float32),
            padding=1,
            algorithm="winograd",
            backend="c",
        ),
    )


SCRATCH_RSS = textwrap.dedent("""
    import sys
    import numpy as np
    import fastconv
    from fastconv import grad
    from fastconv.backends import _c_scratch
    from fastconv.problem import Conv2dProblem
    fastconv.set_num_threads(1)
    which = sys.argv[1]
    if which == "winograd":
        p = Conv2dProblem(1, 2**14, 1, 1, 24, 3, 3, (1, 1), (1,) * 4, (1, 1), 1, "float32", algorithm="winograd")
        x, w = np.ones((1, 2**14, 1, 1), np.float32), np.ones((24, 2**14, 3, 3), np.float32)
        run = lambda: fastconv.conv2d(x, w, padding=1, algorithm="winograd", backend="c")
    elif which == "bwd_data":
        p = Conv2dProblem(1, 1, 300, 300, 1, 48, 48, (3, 3), (0,) * 4, (1, 1), 1, "float64", direction="bwd_data")
        w, g = np.ones((1, 1, 48, 48)), np.ones((1, 1, 85, 85))
        run = lambda: grad.conv2d_input((1, 1, 300, 300), w, g, stride=3, backend="c")
    else:  # the float32 GEMM with a copy of grad_output (FASTCONV_BWD_DATA_B=copy)
        p = Conv2dProblem(1, 16, 300, 300, 768, 3, 3, (2, 2), (1,) * 4, (1, 1), 1, "float32", direction="bwd_data")
        w, g = np.ones((768, 16, 3, 3), np.float32), np.ones((1, 768, 150, 150), np.float32)
        run = lambda: grad.conv2d_input((1, 16, 300, 300), w, g, stride=2, padding=1, backend="c")
    def peak():  # VmHWM: this process image's peak (ru_maxrss would carry the parent's across exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    before = peak()
    run()
    grown = peak() - before
    print(grown, _c_scratch.conv2d_bytes(p, 1))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason="AddressSanitizer's allocator and shadow")
@pytest.mark.parametrize("which", ["winograd", "bwd_data", "bwd_data_f32"])
def test_scratch_estimate_matches_what_the_kernel_takes(which):
    """The Python mirror of the C sizing is what the kernel really takes (peak RSS of a fresh
    process): within a quarter, so the refusal above neither misses nor over-refuses."""
    if "c" not in _backends():
        pytest.skip("c not available")
    env = {**os.environ, "FASTCONV_BWD_DATA_B": "copy"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRATCH_RSS, which], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    grown, estimate = map(int, proc.stdout.split())
    assert estimate > 2**26
    assert 0.75 * estimate < grown < 1.25 * estimate + 2**24, (grown, estimate)


MAX_POOL_BWD_WIDE_PADDING = textwrap.dedent("""
    import numpy as np
    from fastconv import grad
    x = np.ones((1, 1, 64, 64), np.float32)
    k, pad = 2**23 + 1, 2**22  # 64 x 64 outputs, every window's first tap 2**22 cells into the padding
    gx = grad.max_pool2d_input(x, np.ones((1, 1, 64, 64), np.float32), k, 1, pad, backend="c")
    assert gx.sum() == 64 * 64
""")


def test_max_pool_backward_with_wide_padding_is_fast():
    """max_pool2d backward on c finds each window's first tap inside the input in one step (it
    once walked there one dilation step at a time: 4096 outputs x 2**22 steps here)."""
    if "c" not in _backends():
        pytest.skip("c not available")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", MAX_POOL_BWD_WIDE_PADDING], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:
        pytest.fail("max_pool2d backward took over 5 s for a 64x64 output")
    assert proc.returncode == 0, proc.stderr


def test_max_pool_backward_window_of_padding_only():
    """A dilated window whose taps all land in the padding (width 1, padding 1, dilation 2) credited
    the cell past the row: heap-buffer-overflow on c (ASan, found by the fuzzer), a write into the
    next plane on numba, the whole plane on naive.  torch's own backward aborts the process here.
    Nothing flows back from such a window: its maximum, -inf, is padding."""
    x = np.random.default_rng(0).standard_normal((1, 3, 2, 1))
    kw = dict(kernel_size=2, stride=(3, 1), padding=(1, 1), dilation=(2, 2))
    y = fastconv.max_pool2d(x, **kw)
    assert np.isneginf(y).all()
    g = np.arange(1.0, y.size + 1).reshape(y.shape)
    for backend in ("c", "numba", "im2col", "naive"):
        if backend in _backends():
            np.testing.assert_array_equal(grad.max_pool2d_input(x, g, backend=backend, **kw), 0, err_msg=backend)


def test_max_pool_window_of_padding_only_gives_torchs_value_and_index():
    """The forward of the window above: naive raised a TypeError (no tap to take the maximum of,
    found by make fuzz); torch gives the padding's -inf and, as index, the window's first row and
    column past the top-left padding (here outside the input), which every backend repeats."""
    x = np.array([[[[0.125]]], [[[-0.13]]]], np.float32)
    kw = dict(kernel_size=2, padding=1, dilation=2, return_indices=True)
    ref, ref_idx = F.max_pool2d(torch.from_numpy(x), **kw)
    assert np.isneginf(ref.numpy()).all()
    for backend in _backends():
        y, idx = fastconv.max_pool2d(x, backend=backend, **kw)
        np.testing.assert_array_equal(y, ref.numpy(), err_msg=backend)
        np.testing.assert_array_equal(idx, ref_idx.numpy(), err_msg=backend)


def test_gradients_of_inf_inputs_are_nan_without_warnings():
    """inf - inf in the convolution gradients' products (im2col's weight and input gradients,
    naive's) and in training batch norm's input gradient (naive, im2col, grad's statistics) raised
    NumPy's 'invalid value' RuntimeWarning, an error in this suite (found by make fuzz); torch
    returns NaN quietly.  And an inf gradient meeting the padding (zeros) makes a NaN weight
    gradient in torch, which numba and naive, skipping padded taps, did not give (found once the
    fuzzer's grad_output held NaN and inf)."""
    x = np.array([[[[np.inf, -0.13], [0.64, np.inf]]]], np.float32)
    w = np.array([[[[1.0, 0.0], [-1.0, 2.0]]]], np.float32)
    g = np.array([[[[np.inf, -np.inf, 1.0]]]], np.float32)  # the output: 1 x 3
    kw = dict(padding=(0, 1))
    t = {n: torch.from_numpy(a).requires_grad_() for n, a in (("x", x), ("w", w))}
    F.conv2d(t["x"], t["w"], **kw).backward(torch.from_numpy(g))
    xb = np.array([[[np.inf, -0.13, 0.64]]], np.float32)
    gb = np.array([[[1.0, -2.0, 3.0]]], np.float32)
    tb = torch.from_numpy(xb).requires_grad_()
    F.batch_norm(tb, None, None, training=True).backward(torch.from_numpy(gb))
    for backend in _backends():
        for got, want, what in [
            (grad.conv2d_input(x.shape, w, g, backend=backend, **kw), t["x"].grad, "input gradient"),
            (grad.conv2d_weight(x, w.shape, g, backend=backend, **kw), t["w"].grad, "weight gradient"),
            (grad.batch_norm_input(xb, gb, training=True, backend=backend)[0], tb.grad, "batch norm"),
        ]:
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want.numpy()), err_msg=f"{backend} {what}")
    # Eval mode, an inf gradient: torch's weight gradient is inf; im2col's one-pass sum made
    # inf - inf = NaN of it (found by make fuzz once grad_output held NaN and inf).
    xe, ge = np.array([[0.5], [0.7]], np.float32), np.array([[np.inf], [1.0]], np.float32)
    mean, var = np.array([0.125], np.float32), np.array([0.25], np.float32)
    for backend in _backends():
        gw = grad.batch_norm_input(xe, ge, mean, var, training=False, backend=backend)[1]
        assert np.isposinf(gw).all(), (backend, gw)


def test_gemm_refuses_strides_its_phases_cannot_take():
    """algorithm="gemm" with a stride above 64: the C GEMM returned "cannot run this" while the c
    backend's supports() had accepted the problem, a RuntimeError calling itself a fastconv bug
    (found by make fuzz-c).  Now the c backend refuses it with the reason, "auto" backend selection
    moves on, and "direct" runs it; every result is torch's."""
    x, w = np.ones((1, 1, 3, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
    kw = dict(stride=(2**31 - 2, 2), padding=1, dilation=2)
    ref = _torch(F.conv2d, x, w, **kw)
    if "c" in _backends():
        with pytest.raises(fastconv.BackendError, match="stride phases"):
            fastconv.conv2d(x, w, algorithm="gemm", backend="c", **kw)
        np.testing.assert_array_equal(fastconv.conv2d(x, w, algorithm="direct", backend="c", **kw), ref)
    np.testing.assert_array_equal(fastconv.conv2d(x, w, algorithm="gemm", **kw), ref)
