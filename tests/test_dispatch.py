"""Backend selection: argument > use_backend > set_backend > FASTCONV_BACKEND > auto, refusals,
the shared epilogue, autotuning and the verbose log -- with mock backends."""

import logging
import threading
import types

import numpy as np
import pytest

import fastconv
from fastconv import dispatch


class Mock:
    """A backend that records its calls and returns an identifiable answer."""

    def __init__(self, name, ok=True, refuse=None, fused=False, delay=0.0):
        self.NAME, self.ok, self.refuse, self.FUSED_EPILOGUE, self.delay = name, ok, refuse, fused, delay
        self.calls = []

    def available(self):
        return (True, "") if self.ok else (False, f"{self.NAME} needs a flux capacitor")

    def supports(self, p):
        return self.refuse(p) if self.refuse else None

    def conv2d(self, p, x, w, b, residual):
        self.calls.append(("conv2d", p, residual))
        if self.delay:
            import time

            time.sleep(self.delay)
        return np.full(p.output_shape, float(len(self.NAME)), x.dtype)

    def relu(self, p, x):
        self.calls.append(("relu", p, None))
        return np.full(x.shape, float(len(self.NAME)), x.dtype)


@pytest.fixture
def mocks():
    made = []

    def make(name, **kw):
        m = Mock(name, **kw)
        dispatch.register_backend(m, first=True)
        made.append(name)
        return m

    yield make
    for name in made:
        dispatch.unregister_backend(name)


X = np.ones((1, 2, 5, 5), np.float32)
W = np.ones((3, 2, 3, 3), np.float32)


def test_auto_prefers_first_registered(mocks):
    m = mocks("mockA")
    fastconv.relu(X)
    assert m.calls and m.calls[0][0] == "relu"


def test_precedence_argument_context_global_env(mocks, monkeypatch):
    mocks("aaaa"), mocks("bbbbb"), mocks("cccccc"), mocks("ddddddd")
    monkeypatch.setenv("FASTCONV_BACKEND", "ddddddd")
    assert fastconv.relu(X)[0, 0, 0, 0] == 7
    fastconv.set_backend("cccccc")
    assert fastconv.relu(X)[0, 0, 0, 0] == 6
    with fastconv.use_backend("bbbbb"):
        assert fastconv.get_backend() == "bbbbb"
        assert fastconv.relu(X)[0, 0, 0, 0] == 5
        assert fastconv.relu(X, backend="aaaa")[0, 0, 0, 0] == 4
    assert fastconv.get_backend() == "cccccc"
    fastconv.set_backend(None)
    assert fastconv.get_backend() == "ddddddd"


def test_env_backend_unknown_is_named(monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTCONV_BACKEND: unknown backend 'nope'"):
        fastconv.relu(X)


def test_use_backend_is_per_thread(mocks):
    mocks("aaaa")
    mocks("bbbbb")
    seen = {}

    def other():
        seen["other"] = fastconv.get_backend()

    with fastconv.use_backend("bbbbb"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert fastconv.get_backend() == "bbbbb"
    assert seen["other"] == "auto"


def test_use_backend_restores_after_error(mocks):
    mocks("aaaa")
    with pytest.raises(RuntimeError):
        with fastconv.use_backend("aaaa"):
            raise RuntimeError
    assert fastconv.get_backend() == "auto"


def test_named_unavailable_backend_says_why(mocks):
    mocks("broken", ok=False)
    with pytest.raises(fastconv.BackendError, match="flux capacitor"):
        fastconv.relu(X, backend="broken")
    assert "broken" not in fastconv.available_backends()
    assert ("broken", False, "broken needs a flux capacitor") in fastconv.backend_status()


def test_named_backend_that_refuses_says_why(mocks):
    mocks("picky", refuse=lambda p: "only odd sizes")
    with pytest.raises(fastconv.BackendError, match=r"'picky' cannot run relu relu_1x2x5x5_f32: only odd sizes"):
        fastconv.relu(X, backend="picky")


def test_named_backend_without_the_op(mocks):
    mocks("reluonly")
    with pytest.raises(fastconv.BackendError, match="does not implement max_pool2d"):
        fastconv.max_pool2d(X, 2, backend="reluonly")


def test_auto_skips_refusals_and_logs_them(mocks, monkeypatch, caplog):
    mocks("picky", refuse=lambda p: "not today")
    broken = mocks("broken", ok=False)
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        y = fastconv.relu(np.array([-1.0, 1.0]))
    assert y.tolist() == [0.0, 1.0]  # a real backend ran
    assert not broken.calls
    text = caplog.text
    assert "picky refused: not today" in text and "broken refused: not available" in text
    assert "relu relu_2_f64 -> c" in text or "-> im2col (auto" in text or "-> numba (auto" in text


def test_auto_asks_no_backend_after_the_first_that_runs_it(mocks):
    """ "auto" takes the first candidate that can run the problem; the ones after it are not asked
    (their supports() is neither called nor paid for)."""
    asked = []
    mocks("later", refuse=lambda p: asked.append(p) or "not me")  # registered first, asked first
    first = mocks("first")  # now first in the order: it runs, "later" is never asked
    fastconv.relu(X)
    assert first.calls and not asked


def test_the_same_conv2d_call_gets_the_same_problem(mocks):
    """conv2d builds and checks a problem once per distinct call: the same arguments again give the
    same object (the caches keyed by it hit by identity), other arguments another problem."""
    m = mocks("rec", fused=True)
    x2 = np.ones((1, 2, 6, 6), np.float32)
    for x, kw in ((X, {}), (X, {}), (X, {"padding": 1}), (x2, {}), (X, {}), (X, {"stride": (1, 1)})):
        fastconv.conv2d(x, W, **kw)
    p = [call[1] for call in m.calls]
    assert p[0] is p[1] is p[4] is p[5]  # stride=1 and stride=(1, 1) are one problem
    assert p[2] is not p[0] and p[2].padding == (1, 1, 1, 1) and p[3].h == 6


def test_repeated_calls_of_every_op_share_their_problem(monkeypatch):
    """Every functional op builds its problem once per distinct call; floats that may be a signed
    zero (batch norm's eps of 0) are built afresh."""
    seen = []
    real = dispatch.run
    monkeypatch.setattr(dispatch, "run", lambda p, *a, **k: seen.append(p) or real(p, *a, **k))
    x = np.ones((2, 3, 6, 6), np.float32)
    stat = np.ones(3, np.float32)
    calls = {
        "max_pool2d": lambda: fastconv.max_pool2d(x, 2),
        "avg_pool2d": lambda: fastconv.avg_pool2d(x, 3, padding=1),
        "adaptive_avg_pool2d": lambda: fastconv.adaptive_avg_pool2d(x, 1),
        "adaptive_max_pool2d": lambda: fastconv.adaptive_max_pool2d(x, (2, 3)),
        "batch_norm": lambda: fastconv.batch_norm(x, stat, stat),
        "relu": lambda: fastconv.relu(x),
        "linear": lambda: fastconv.linear(x.reshape(2, -1), np.ones((4, 108), np.float32)),
        "batch_norm eps=0": lambda: fastconv.batch_norm(x, stat, stat, eps=0.0),
    }
    for name, call in calls.items():
        seen.clear()
        call()
        call()
        assert seen[0] == seen[1], name
        assert (seen[0] is seen[1]) == (name != "batch_norm eps=0"), name


def test_activation_parameters_keep_the_sign_of_zero():
    """Problems with activation parameters are never taken from the cache of equal calls: -0.0 and
    0.0 compare equal, but a leaky_relu slope of -0.0 gives -x * 0.0 = +0.0 where 0.0 gives -0.0."""
    torch = pytest.importorskip("torch")
    x = -np.ones((1, 1, 3, 3), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    for slope in (0.0, -0.0, 0.0):
        y = fastconv.conv2d(x, w, activation=("leaky_relu", slope), backend="c")
        ref = torch.nn.functional.leaky_relu(torch.from_numpy(x), slope).numpy()
        assert np.array_equal(np.signbit(y), np.signbit(ref)), slope


def test_env_reads_what_os_environ_holds(monkeypatch):
    """fastconv._env.get (the per-call reads of FASTCONV_* variables) answers as os.environ.get,
    through every change made to os.environ."""
    import os

    from fastconv import _env

    name = "FASTCONV_TEST_ENV_READ"
    monkeypatch.delenv(name, raising=False)
    assert _env.get(name) is None and _env.get(name, "d") == "d"
    for value in ("1", "", "caf\u00e9", "x" * 300):
        monkeypatch.setenv(name, value)
        assert _env.get(name) == os.environ.get(name) == value
    os.environ.pop(name)
    assert _env.get(name, "gone") == "gone"


def test_auto_never_picks_torch():
    assert "torch" not in dispatch._auto_candidates("conv2d")


def test_no_backend_can_run(monkeypatch, mocks):
    monkeypatch.setattr(dispatch, "_auto_candidates", lambda op: ["picky"])
    mocks("picky", refuse=lambda p: "never")
    with pytest.raises(fastconv.BackendError, match="no backend can run relu .*picky: never"):
        fastconv.relu(X)


def test_epilogue_applied_by_dispatcher_for_unfused_backend(mocks):
    m = mocks("plain", fused=False)
    res = np.full((1, 3, 3, 3), -10.0, np.float32)
    y = fastconv.conv2d(X, W, residual=res, activation="relu", backend="plain")
    _, p, passed = m.calls[0]
    assert passed is None and not p.residual and p.activation is None  # the backend saw plain conv
    np.testing.assert_array_equal(y, np.zeros((1, 3, 3, 3)))  # relu(5 - 10)
    y = fastconv.conv2d(X, W, residual=-res, backend="plain")
    np.testing.assert_array_equal(y, np.full((1, 3, 3, 3), 15.0))


def test_epilogue_passed_to_fused_backend(mocks):
    m = mocks("fused", fused=True)
    res = np.zeros((1, 3, 3, 3), np.float32)
    fastconv.conv2d(X, W, residual=res, activation="relu", backend="fused")
    _, p, passed = m.calls[0]
    assert passed is not None and p.residual and p.activation == "relu"


def test_empty_output_needs_no_kernel(mocks):
    m = mocks("aaaa")
    y = fastconv.conv2d(np.ones((0, 2, 5, 5), np.float32), W, backend="aaaa")
    assert y.shape == (0, 3, 3, 3) and not m.calls


def test_autotune_times_candidates_and_caches(mocks, monkeypatch):
    slow, fast = mocks("slow", delay=0.01), mocks("fastest")
    monkeypatch.setattr(dispatch, "_auto_candidates", lambda op: ["slow", "fastest"])
    fastconv.set_autotune(True)
    dispatch.clear_autotune_cache()
    y = fastconv.conv2d(X, W)
    assert y[0, 0, 0, 0] == len("fastest")
    # warm-up, then 3 timed samples each, each after at least one settling call; then the winner
    tuned_slow, tuned_fast = len(slow.calls), len(fast.calls)
    assert tuned_slow >= 1 + 3 * 2 and tuned_fast >= 1 + 3 * 2 + 1
    fastconv.conv2d(X, W)
    assert len(slow.calls) == tuned_slow and len(fast.calls) == tuned_fast + 1  # cached: no more timing
    fastconv.set_num_threads(fastconv.get_num_threads() + 1)  # a new signature times again
    fastconv.conv2d(X, W)
    assert len(slow.calls) >= 2 * tuned_slow


def test_autotune_env(monkeypatch):
    monkeypatch.setenv("FASTCONV_AUTOTUNE", "1")
    assert fastconv.get_autotune()
    fastconv.set_autotune(False)
    assert not fastconv.get_autotune()


def test_register_rejects_bad_names():
    with pytest.raises(ValueError):
        dispatch.register_backend(Mock("auto"))
    with pytest.raises(ValueError):
        dispatch.register_backend(object())


def test_available_backends_lists_builtin():
    names = fastconv.available_backends()
    assert {"naive", "im2col"} <= set(names)


def test_threads_default_and_env(monkeypatch):
    from fastconv import threads

    monkeypatch.setattr(threads, "_num_threads", None)
    monkeypatch.setenv("FASTCONV_NUM_THREADS", "3")
    assert fastconv.get_num_threads() == 3
    monkeypatch.setattr(threads, "_num_threads", None)
    monkeypatch.setenv("FASTCONV_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="FASTCONV_NUM_THREADS"):
        fastconv.get_num_threads()
    monkeypatch.setattr(threads, "_num_threads", None)
    monkeypatch.delenv("FASTCONV_NUM_THREADS")
    assert fastconv.get_num_threads() >= 1


def test_im2col_restores_blas_threads():
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    fastconv.set_num_threads(2)
    fastconv.conv2d(np.ones((2, 3, 16, 16)), np.ones((4, 3, 3, 3)), backend="im2col")
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def test_registration_order_in_auto():
    dispatch.register_backend(Mock("early"), first=True)
    dispatch.register_backend(Mock("late"))
    try:
        order = dispatch._auto_candidates("conv2d")
        assert order[0] == "early" and order[-1] == "late"
        assert order.index("im2col") < order.index("late")
    finally:
        dispatch.unregister_backend("early")
        dispatch.unregister_backend("late")
    assert "early" not in dispatch._auto_candidates("conv2d")


def test_register_checks_the_contract():
    with pytest.raises(TypeError, match="supports"):
        dispatch.register_backend(types.SimpleNamespace(NAME="nosupports", available=lambda: (True, ""), relu=None))
    with pytest.raises(TypeError, match="implements none of the ops"):
        dispatch.register_backend(
            types.SimpleNamespace(NAME="noops", available=lambda: (True, ""), supports=lambda p: None)
        )
    base = dict(available=lambda: (True, ""), supports=lambda p: None, relu=lambda p, x: x)
    with pytest.raises(TypeError, match="DEVICES"):
        dispatch.register_backend(types.SimpleNamespace(NAME="tpu", DEVICES=("tpu",), **base))
    with pytest.raises(TypeError, match="ARRAYS lacks"):
        dispatch.register_backend(types.SimpleNamespace(NAME="noarrays", ARRAYS=types.SimpleNamespace(), **base))
    assert "nosupports" not in dispatch.backends() and "tpu" not in dispatch.backends()


def test_public_registry_api():
    # fastconv.dispatch's registry API (fastconv.backends is the package of backend modules).
    assert {"naive", "im2col", "numba", "c", "torch"} <= set(dispatch.backends())
    assert dispatch.status("naive") == (True, "")
    assert [(n, *dispatch.status(n)) for n in dispatch.backends()] == fastconv.backend_status()
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        dispatch.status("nope")


def test_dispatcher_uses_the_backends_array_hooks(monkeypatch):
    """Allocation, epilogue and size check go through ARRAYS, and autotune synchronises through it."""
    seen = []
    hooks = types.SimpleNamespace(
        empty=lambda shape, dtype: seen.append("empty") or np.empty(shape, dtype),
        zeros=lambda shape, dtype: seen.append("zeros") or np.zeros(shape, dtype),
        add_=lambda y, r: seen.append("add_") or np.add(y, r, out=y),
        relu_=lambda y: seen.append("relu_") or np.maximum(y, 0, out=y),
        check_size=lambda shape, dtype, what: seen.append("check_size"),
        synchronize=lambda: seen.append("synchronize"),
    )

    def conv2d(p, x, w, b, res):
        return np.full(p.output_shape, -1.0 if x.shape[0] == 1 else 1.0, x.dtype)

    module = types.SimpleNamespace(
        NAME="hooked", ARRAYS=hooks, available=lambda: (True, ""), supports=lambda p: None, conv2d=conv2d
    )
    dispatch.register_backend(module, first=True)
    try:
        y = fastconv.conv2d(X, W, residual=np.full((1, 3, 3, 3), 3, np.float32), activation="relu", backend="hooked")
        assert np.all(y == 2) and seen == ["check_size", "add_", "relu_"]
        seen.clear()
        assert fastconv.conv2d(X[:0], W, backend="hooked").shape == (0, 3, 3, 3)
        assert seen == ["check_size", "empty"]
        seen.clear()
        monkeypatch.setattr(dispatch, "_autotune", True)
        dispatch.clear_autotune_cache()
        fastconv.conv2d(X, W)  # "hooked" and the built-in backends compete; every sample is synchronised
        assert seen.count("synchronize") >= 2
    finally:
        dispatch.clear_autotune_cache()
        dispatch.unregister_backend("hooked")
