"""fastconv.compile: compiled plans match the uncompiled model and torch on every CPU backend,
reuse their buffers, keep their tuning per machine, and refuse bad input naming the argument."""

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_helpers import assert_matches, require

import fastconv
from fastconv import _plan_tune, nn, plan as plan_module
from fastconv.models import resnet18

RTOL = 1e-5  # float32 against the float32 model or a float64 reference, relative to the output's scale
#: docs/results/winograd.md's bound on the largest error relative to the largest output.
WINOGRAD_RTOL = 1e-4


def _model(seed=0, num_classes=10):
    nn.init.manual_seed(seed)
    m = resnet18(num_classes=num_classes)
    rng = np.random.default_rng(seed)
    for layer in m.modules():  # running statistics like a trained network's: folding is not a no-op
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.weight = rng.uniform(0.4, 1.0, c).astype(np.float32)
            layer.bias = (rng.standard_normal(c) * 0.1).astype(np.float32)
            layer.running_mean = (rng.standard_normal(c) * 0.1).astype(np.float32)
            layer.running_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return m.eval()


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(autouse=True)
def _fresh_tuning(monkeypatch):
    monkeypatch.delenv("FASTCONV_TUNE_CACHE", raising=False)
    _plan_tune.clear_memory()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def reference(model):
    """The uncompiled model in float64: the reference every backend's plan is held to."""
    x = _x((2, 3, 32, 32))
    return x, model(x), _model().astype(np.float64)(x.astype(np.float64))


@pytest.mark.parametrize("backend", ["c", "im2col", "numba", "torch"])
def test_resnet18_plan_matches_the_model_and_float64(backend, model, reference):
    require(backend)
    x, eager, exact = reference
    plan = fastconv.compile(model, x.shape, backend=backend)
    y = plan(x)
    assert_matches(y, exact, what=f"compiled resnet18 on {backend}", rtol=RTOL)
    assert_matches(y, eager, what=f"compiled resnet18 on {backend} vs uncompiled", rtol=RTOL)
    np.testing.assert_array_equal(plan(x), y)  # the arena's second use gives the same bits
    if backend == "c":
        assert plan.allocations_per_call == 0
        fc = next(s for s in plan.steps if s.kind == "linear")
        assert fc.describe().startswith("c 1x1 convolution")  # one thread pool with the convolutions
    else:  # these backends return fresh arrays: the plan says how many steps allocate
        assert plan.allocations_per_call > 0


def test_batch_one_tuned_plan_and_winograd_bound(model):
    require("c")
    x = _x((1, 3, 24, 24), seed=2)
    exact = _model().astype(np.float64)(x.astype(np.float64))
    plan = fastconv.compile(model, x.shape, backend=None)
    assert_matches(plan(x), exact, what="tuned plan, batch 1", rtol=RTOL)
    # Timing decides whether Winograd wins; layers that ask for it get it, filters pre-transformed.
    asking = _model()
    for m in asking.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1):
            m.algorithm = "winograd"
    wino = fastconv.compile(asking, x.shape, backend="c", winograd=True)
    assert_matches(wino(x), exact, what="plan with Winograd layers", rtol=WINOGRAD_RTOL)
    assert sum("winograd (filters pre-transformed)" in s.describe() for s in wino.steps) == 13, wino.describe()


def test_compile_leaves_the_model_unchanged(model):
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fastconv.compile(model, (1, 3, 16, 16), backend="im2col")
    after = model.state_dict()
    assert before.keys() == after.keys()  # the batch norms were folded in a copy
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_graph_from_torch_matches_torch():
    torch = pytest.importorskip("torch")
    torch_nets = pytest.importorskip("torch_nets")
    from fastconv.interop.torch import from_torch

    for name in ("hand_resnet", "mobilenet_v2", "inception"):  # residual adds, ReLU6/cat, branches
        t = torch_nets.build(name).eval()
        x = _x((2, 3, 32, 32), seed=3)
        with torch.no_grad():
            expected = t.double()(torch.from_numpy(x).double()).numpy()
        plan = fastconv.compile(from_torch(torch_nets.build(name).eval()), x.shape, backend="c")
        assert_matches(plan(x), expected, what=f"compiled from_torch({name})", rtol=RTOL)


def test_naive_backend_on_a_small_graph():
    require("naive")
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()
    m[1].running_mean = np.full(4, 0.3, np.float32)
    x = _x((2, 3, 9, 9), seed=4)
    plan = fastconv.compile(m, x.shape, backend="naive")
    assert_matches(plan(x), m.astype(np.float64)(x.astype(np.float64)), what="naive plan", rtol=RTOL)
    assert [s.kind for s in plan.steps][:2] == ["conv", "pool"]  # bn folded, relu fused into the conv


@pytest.mark.parametrize("bias", [True, False])
def test_linear_steps_on_c_and_on_blas_match(bias):
    """A plan on c runs its linear layers as 1x1 convolutions; one on numba keeps BLAS."""

    def build():
        nn.init.manual_seed(3)
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 7, bias=bias)).eval()

    m, x = build(), _x((3, 3, 7, 7), seed=8)
    exact = build().astype(np.float64)(x.astype(np.float64))
    for backend, route in [("c", "c 1x1 convolution"), ("numba", "numpy (BLAS)")]:
        require(backend)
        plan = fastconv.compile(m, x.shape, backend=backend)
        assert plan.steps[-1].describe().startswith(route)
        assert_matches(plan(x), exact, what=f"linear step on {backend}", rtol=RTOL)
    require("c")
    plan = fastconv.compile(build().astype(np.float64), x.shape, backend="c")  # float64: BLAS, not c's loops
    assert plan.steps[-1].describe().startswith("numpy (BLAS)")
    assert_matches(plan(x.astype(np.float64)), exact, "float64", what="float64 linear step", rtol=RTOL)


def test_buffers_are_allocated_once_and_shared_by_liveness(model):
    require("c")
    x = _x((2, 3, 64, 64), seed=5)
    plan = fastconv.compile(model, x.shape, backend="c")
    bound = [s for s in plan.steps if s.bound]
    assert len(bound) > 15 and plan.buffers <= 4 < len(bound)  # a residual block needs 3 live values
    assert plan.arena_bytes < plan.value_bytes / 2
    # Two live values never share a buffer: a step's output is none of its inputs' memory -- but
    # for a residual the step writes over in place, exactly its buffer, which no later step reads.
    for i, s in enumerate(plan.steps):
        if not s.bound:
            continue
        for v in s.reads():
            other = next((t for t in plan.steps if t.output == v and t.bound), None)
            if other is not None and s.in_place and v == s.residual:
                assert other.out.ctypes.data == s.out.ctypes.data and other.out.shape == s.out.shape, s.name
                assert not any(v in t.reads() for t in plan.steps[i + 1 :]), s.name
            else:
                assert other is None or not np.shares_memory(other.out, s.out), s.name
    assert any(s.in_place for s in bound)
    plan(x)
    tracemalloc.start()
    try:
        y = plan(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    smallest = min(s.out.nbytes for s in bound if s.kind == "conv")
    assert peak < smallest, f"a forward pass allocated {peak} bytes (smallest activation {smallest})"
    assert y.base is None  # the caller's result is its own, not a view of the arena
    out = np.empty_like(y)
    assert plan(x, out=out) is out and np.array_equal(out, y)


def test_input_layouts_give_the_same_result(model):
    require("c")
    x = _x((2, 3, 32, 32), seed=6)
    plan = fastconv.compile(model, x.shape, backend="c")
    y = plan(x)
    fortran = np.asfortranarray(x)
    strided = np.repeat(x, 2, axis=3)[..., ::2]
    readonly = x.copy()
    readonly.flags.writeable = False
    for variant in (fortran, strided, readonly, x.astype(">f4")):
        if variant.dtype == x.dtype:
            np.testing.assert_array_equal(plan(variant), y)
    assert np.array_equal(x, _x((2, 3, 32, 32), seed=6))  # the input was not modified


def test_tune_cache_written_read_and_per_machine(tmp_path, monkeypatch):
    require("c")
    path = tmp_path / "tune.json"
    monkeypatch.setenv("FASTCONV_TUNE_CACHE", str(path))
    shape = (1, 8, 12, 12)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
    ).eval()
    first = fastconv.compile(model, shape, backend="c", winograd=True)  # two candidates per 3x3 layer
    assert any(src.startswith("timed") for _, _, src in first.tuner_log)
    data = json.loads(path.read_text())
    machine = _plan_tune.machine_key()
    assert list(data["machines"]) == [machine] and "isa" in machine
    entries = data["machines"][machine]["conv"]
    assert entries and all(e["backend"] == "c" and e["algorithm"] in ("auto", "winograd") for e in entries.values())

    _plan_tune.clear_memory()  # a new process: read from the file
    again = fastconv.compile(model, shape, backend="c", winograd=True)
    assert {src for _, _, src in again.tuner_log if src != "only candidate"} == {"cached"}
    assert [s.describe() for s in again.steps] == [s.describe() for s in first.steps]

    # Another machine (or FASTCONV_ISA forcing another instruction set): its own entries.
    _plan_tune.clear_memory()
    monkeypatch.setattr(_plan_tune, "machine_key", lambda: machine.replace("isa", "isa other"))
    other = fastconv.compile(model, shape, backend="c", winograd=True)
    assert any(src.startswith("timed") for _, _, src in other.tuner_log)
    assert len(json.loads(path.read_text())["machines"]) == 2

    path.write_text("{not json")  # a damaged file is ignored and rewritten
    _plan_tune.clear_memory()
    fastconv.compile(model, shape, backend="c", winograd=True)
    assert json.loads(path.read_text())["format"] == _plan_tune.FORMAT


def test_bad_arguments_name_themselves(model):
    require("c")
    with pytest.raises(TypeError, match="model"):
        fastconv.compile(lambda x: x, (1, 3, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        fastconv.compile(model, (3, 8, 8))
    with pytest.raises(TypeError, match="input_shape"):
        fastconv.compile(model, "1,3,8,8")
    with pytest.raises(TypeError, match="input_shape"):
        fastconv.compile(model, (True, 3, 8, 8))
    # Channels the first layer does not take: its own ValueError, on every backend (the c backend
    # called it a fastconv bug when its array check met the weight, found by probing compile).
    for backend in ("c", "im2col", None):
        with pytest.raises(ValueError, match="input_shape: layer 'conv1' gets 4 channels"):
            fastconv.compile(model, (1, 4, 16, 16), backend=backend, tune=False)
    with pytest.raises(ValueError, match="backend"):
        fastconv.compile(model, (1, 3, 8, 8), backend="nope")
    plan = fastconv.compile(model, (1, 3, 16, 16), backend="c")
    with pytest.raises(ValueError, match=r"x must have the compiled shape \(1, 3, 16, 16\)"):
        plan(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        plan(np.zeros((1, 3, 16, 16), np.float64))
    with pytest.raises(TypeError, match="x must be a NumPy array"):
        plan([[0.0]])
    with pytest.raises(ValueError, match="out must be"):
        plan(np.zeros((1, 3, 16, 16), np.float32), out=np.empty((1, 3)))


def test_exported_and_described(model):
    assert fastconv.compile is plan_module.compile
    plan = fastconv.compile(model, (1, 3, 16, 16), backend="im2col")
    text = plan.describe()
    assert "layer4.1.conv2" in text and "residual" in text and "fresh array per call" in text


def test_graph_from_onnx_matches_onnx_runtime():
    require("c")
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    torch_nets = pytest.importorskip("torch_nets")
    import io
    import warnings

    import fastconv.onnx

    x = _x((2, 3, 32, 32), seed=7)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch_nets.build("hand_resnet").eval(), (torch.from_numpy(x),), f, dynamo=False, opset_version=13
        )
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    plan = fastconv.compile(fastconv.onnx.load(f.getvalue()), x.shape, backend="c")
    assert_matches(plan(x), expected, what="compiled onnx.load(hand_resnet)", rtol=RTOL)
    assert sum(s.kind == "conv" and s.residual is not None for s in plan.steps) >= 1  # add fused into a conv


def test_docstring_example():
    import doctest

    result = doctest.testmod(plan_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_blocked_layout_kept_between_convolutions(model, reference):
    """c plans keep activations channel-blocked from convolution to convolution; the stem's max
    pool writes the first blocked value (the stem's 3 input channels are no multiple of the vector
    width) and the global average pool reads the last one, so no conversion step is left; the
    result matches the NCHW plan, the model and float64."""
    require("c")
    from fastconv._plan_steps import Pool, Relayout

    x, eager, exact = reference
    plan = fastconv.compile(model, x.shape, backend="c", tune=False)
    nchw = fastconv.compile(model, x.shape, backend="c", tune=False, layout="nchw")
    convs = [s for s in plan.steps if s.kind == "conv"]
    assert [s.name for s in convs if s.blocked is None] == ["conv1"]
    assert all("blocked" in s.describe() for s in convs[1:])
    assert not any(isinstance(s, Relayout) for s in plan.steps)
    # Every block's last convolution writes over its residual (the downsampling branches' and
    # the last block's borders widened to match the output's).
    assert [s.name for s in convs if s.in_place] == [s.name for s in convs if s.residual is not None]
    assert len([s for s in convs if s.in_place]) == 8
    assert [(s.name, s.blocked) for s in plan.steps if isinstance(s, Pool)] == [
        ("maxpool", ("out", 1)),
        ("avgpool", ("in", 1)),  # the last block's output has its residual's border
    ]
    assert not any(
        isinstance(s, Relayout) or s.blocked is not None for s in nchw.steps if s.kind in ("conv", "layout", "pool")
    )
    y = plan(x)
    assert_matches(y, exact, what="blocked plan vs float64", rtol=RTOL)
    assert_matches(y, nchw(x), what="blocked plan vs NCHW plan", rtol=RTOL)
    np.testing.assert_array_equal(plan(x), y)
    assert plan.allocations_per_call == 0


def _untuned_c_plan(module, shape, seed):
    """(an untuned c plan of the torch ``module`` through from_torch, an input of ``shape``, torch's
    output for it)."""
    torch = pytest.importorskip("torch")
    from fastconv.interop.torch import from_torch

    x = _x(shape, seed=seed)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    return fastconv.compile(from_torch(module), x.shape, backend="c", tune=False), x, expected


def test_pools_take_a_conversion_only_where_they_can():
    """A max pool's output that another step also reads, and a pool that is not a global average,
    keep their conversion steps; the plan still matches the model."""
    require("c")
    from fastconv._plan_steps import Pool, Relayout

    nn.init.manual_seed(4)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(),
    )  # fmt: skip
    x = _x((2, 3, 12, 12), seed=9)
    plan = fastconv.compile(m.eval(), x.shape, backend="c", tune=False)
    assert [s.blocked for s in plan.steps if isinstance(s, Pool)] == [("out", 1), None]
    assert [s.to_blocked for s in plan.steps if isinstance(s, Relayout)] == [False]
    assert_matches(plan(x), m(x), what="a blocked max pool, an NCHW average pool", rtol=RTOL)

    torch = pytest.importorskip("torch")

    class Both(torch.nn.Module):  # the pooled value feeds a blocked convolution and an NCHW step
        def __init__(self):
            super().__init__()
            self.pool = torch.nn.MaxPool2d(2)
            self.c1, self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 1)

        def forward(self, x):
            p = self.pool(x)
            return self.c2(torch.relu(self.c1(p))) + torch.sigmoid(p)  # sigmoid reads p as NCHW

    torch.manual_seed(0)
    plan, x, expected = _untuned_c_plan(Both().eval(), (1, 16, 8, 8), seed=10)
    assert [s.blocked for s in plan.steps if isinstance(s, Pool)] == [None]
    assert any(isinstance(s, Relayout) and s.to_blocked for s in plan.steps)
    assert_matches(plan(x), expected, what="a pooled value read twice", rtol=RTOL)


def test_outputs_written_over_residuals_only_where_nothing_else_reads_them():
    """A blocked convolution takes its residual's buffer as output when it is the residual's last
    reader; not when a later step reads the residual, nor when the residual is also its input."""
    require("c")
    torch = pytest.importorskip("torch")

    class Residuals(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(7):
                setattr(self, f"c{i}", torch.nn.Conv2d(16, 16, 3 if i % 2 else 1, padding=i % 2))

        def forward(self, x):
            a = torch.relu(self.c0(x))
            b = torch.relu(self.c2(torch.relu(self.c1(a))) + a)  # a dies here: over a
            d = torch.relu(self.c4(torch.relu(self.c3(b))) + b)  # b is read again by c5
            v = self.c5(b) + d  # d dies here: over d
            w = self.c6(v) + v  # v is also the convolution's input
            return w + torch.sigmoid(b)  # sigmoid reads an NCHW copy of b, made where b is

    torch.manual_seed(1)
    plan, x, expected = _untuned_c_plan(Residuals().eval(), (2, 16, 9, 9), seed=11)
    convs = [s for s in plan.steps if s.kind == "conv"]
    assert all(s.blocked is not None for s in convs)
    assert [s.in_place for s in convs if s.residual is not None] == [True, False, True, False]
    assert "over the residual" in plan.describe()
    assert_matches(plan(x), expected, what="residuals in place and apart", rtol=RTOL)
    np.testing.assert_array_equal(plan(x), plan(x))


def test_lone_convolutions_stay_nchw():
    """A convolution with no blocked neighbour would pay two conversions: it stays NCHW."""
    require("c")
    from fastconv._plan_steps import Relayout

    nn.init.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Sigmoid(), nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid())
    x = _x((1, 3, 9, 9), seed=8)
    plan = fastconv.compile(m.eval(), x.shape, backend="c", tune=False)
    assert not any(isinstance(s, Relayout) for s in plan.steps)
    assert_matches(plan(x), m(x), what="lone convolutions", rtol=RTOL)
    chain = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=2, dilation=2),
                          nn.ReLU(), nn.Conv2d(32, 16, 1), nn.Sigmoid())  # fmt: skip
    plan = fastconv.compile(chain.eval(), x.shape, backend="c", tune=False)
    assert [s.blocked is not None for s in plan.steps if s.kind == "conv"] == [False, True, True]
    assert_matches(plan(x), chain(x), what="a blocked chain between NCHW steps", rtol=RTOL)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_blocked_plans_of_random_pooled_chains(data):
    """Random chains of convolutions and pools (max pools of any window, stride, padding,
    dilation and ceil mode before the blocked layers, a global or plain average pool after):
    the blocked plan matches the model and the NCHW plan, whichever conversions the pools take."""
    require("c")
    from fastconv._plan_steps import Pool
    from fastconv.backends import c as cbackend

    L = cbackend.blocked_lanes()
    c1, c2 = data.draw(st.sampled_from([L, 2 * L])), data.draw(st.sampled_from([L, 2 * L, 3 * L]))
    k = data.draw(st.integers(1, 3))
    stride = data.draw(st.integers(1, k))
    pad = data.draw(st.integers(0, k // 2))
    dil = data.draw(st.integers(1, 2))
    ceil = data.draw(st.booleans())
    global_avg = data.draw(st.booleans())
    size = data.draw(st.integers(7, 13))
    nn.init.manual_seed(data.draw(st.integers(0, 100)))
    layers = [nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(k, stride, pad, dilation=dil, ceil_mode=ceil)]
    layers += [nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1) if global_avg else nn.AvgPool2d(2, ceil_mode=True), nn.Flatten()]
    m = nn.Sequential(*layers).eval()
    x = _x((data.draw(st.integers(1, 2)), 3, size, size), seed=5)
    plan = fastconv.compile(m, x.shape, backend="c", tune=False)
    nchw = fastconv.compile(m, x.shape, backend="c", tune=False, layout="nchw")
    pools = [s.blocked for s in plan.steps if isinstance(s, Pool)]
    assert pools == [("out", 1), ("in", 0) if global_avg else None]
    y = plan(x)
    assert_matches(y, m(x), what="a blocked plan of a random chain", rtol=RTOL)
    assert_matches(y, nchw(x), what="blocked vs NCHW plan", rtol=RTOL)


def test_layout_argument_is_checked(model):
    with pytest.raises(ValueError, match="layout"):
        fastconv.compile(model, (1, 3, 16, 16), backend="c", layout="nhwc")


def test_tuned_plans_time_their_layouts_and_remember_the_choice(tmp_path, monkeypatch):
    """With tuning, a plan times whole forward passes of its layout variants (NCHW, blocked, and
    blocked instead of Winograd where the tuner picked it) and keeps the fastest, remembered in
    the tune cache's "layout" section; every variant computes the same function."""
    require("c")
    path = tmp_path / "tune.json"
    monkeypatch.setenv("FASTCONV_TUNE_CACHE", str(path))
    nn.init.manual_seed(4)
    m = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(32, 16, 1)).eval()  # fmt: skip
    x = _x((1, 16, 10, 10), seed=9)
    plan = fastconv.compile(m, x.shape, backend="c")
    layout = [e for e in plan.tuner_log if e[0] == "plan layout"]
    assert len(layout) == 1 and layout[0][2].startswith("timed") and layout[0][1] == plan.layout_chosen
    assert plan.layout_chosen in ("nchw", "blocked") and f"layout {plan.layout_chosen}" in plan.describe()
    assert set(plan.layout_ms) == {"nchw", "blocked"} and min(plan.layout_ms.values()) > 0
    entries = json.loads(path.read_text())["machines"][_plan_tune.machine_key()]["layout"]
    assert [e["layout"] for e in entries.values()] == [plan.layout_chosen]
    assert_matches(plan(x), m(x), what="tuned plan", rtol=RTOL)
    _plan_tune.clear_memory()
    again = fastconv.compile(m, x.shape, backend="c")
    assert [e[2] for e in again.tuner_log if e[0] == "plan layout"] == ["cached"]
    assert again.layout_chosen == plan.layout_chosen
    # Each variant, forced, gives the model's answer.
    for lay in ("nchw", "auto"):
        assert_matches(fastconv.compile(m, x.shape, backend="c", tune=False, layout=lay)(x), m(x), rtol=RTOL,
                       what=f"layout={lay}")  # fmt: skip
    wino = fastconv.compile(m, x.shape, backend="c", winograd=True)
    assert_matches(wino(x), m(x), what="tuned Winograd plan", rtol=WINOGRAD_RTOL)


def test_winograd_layers_on_blocked_activations(model, monkeypatch):
    """The blocked variant of a Winograd plan keeps its Winograd layers (their transforms reading
    and writing the blocked layout), and its output matches the NCHW Winograd plan's."""
    require("c")
    x = _x((2, 3, 32, 32), seed=10)

    def winograd_where_it_can(self, p, layer_algorithm, make_call):  # the tuner's choice, fixed
        return ("c", "winograd") if ("c", "winograd") in self.candidates(p, layer_algorithm) else ("c", "auto")

    monkeypatch.setattr(_plan_tune.Tuner, "choose_conv", winograd_where_it_can)
    plans = {}
    for layout in ("nchw", "blocked"):
        monkeypatch.setattr(_plan_tune.Tuner, "choose_layout", lambda self, key, runs, layout=layout: layout)
        plans[layout] = fastconv.compile(model, x.shape, backend="c", winograd=True)
    wino = [s for s in plans["blocked"].steps if s.kind == "conv" and s.p.algorithm == "winograd"]
    assert len(wino) >= 10  # resnet18's stride-1 3x3 layers
    assert all(s.blocked is not None and "winograd, blocked activations" in s.describe() for s in wino)
    y = plans["blocked"](x)
    # The other layers run the blocked direct kernel instead of the GEMM (another summation
    # order): close, not the same bits (tests/test_c_blocked.py has the layer-level bit test).
    assert_matches(y, plans["nchw"](x), what="blocked vs NCHW Winograd plan", rtol=RTOL)
    assert_matches(y, model(x), what="blocked Winograd plan", rtol=WINOGRAD_RTOL)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_plans_of_random_residual_networks_match_torch(data):
    """Random residual networks written in plain torch (tests/torch_nets.py's HandResNet: widths in
    and out of whole channel vectors, strided blocks with projection shortcuts, odd image sizes),
    compiled with each convolution's backend and algorithm and the plan's layout drawn at random
    instead of timed: every mix of NCHW and blocked steps, Winograd and direct, conversions at the
    boundaries and outputs written over residuals computes torch's function, twice in a row."""
    require("c")
    torch = pytest.importorskip("torch")
    torch_nets = pytest.importorskip("torch_nets")
    from fastconv.interop.torch import from_torch

    stages = tuple(data.draw(st.lists(st.integers(1, 2), min_size=1, max_size=3)))
    width = data.draw(st.sampled_from([3, 5, 8, 16]))
    torch.manual_seed(data.draw(st.integers(0, 100)))
    t = torch_nets._randomise(torch_nets.HandResNet(blocks=stages, width=width), data.draw(st.integers(0, 100)))
    size = data.draw(st.integers(4, 14))
    x = _x((data.draw(st.integers(1, 3)), 3, size, size), seed=data.draw(st.integers(0, 100)))
    with torch.no_grad():
        expected = t.double()(torch.from_numpy(x).double()).numpy()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    picks = []

    def drawn_conv(self, p, layer_algorithm, make_call):
        cands = self.candidates(p, layer_algorithm)
        picks.append(cands[rng.integers(len(cands))])
        return picks[-1]

    backend = data.draw(st.sampled_from(["c", None]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_plan_tune.Tuner, "choose_conv", drawn_conv)
        mp.setattr(_plan_tune.Tuner, "choose_layout", lambda self, key, runs: list(runs)[rng.integers(len(runs))])
        plan = fastconv.compile(from_torch(t.float()), x.shape, backend=backend, winograd=True)
    rtol = WINOGRAD_RTOL if ("c", "winograd") in picks else RTOL
    what = f"plan of HandResNet{stages} width {width} on {x.shape} ({plan.layout_chosen}, {picks})"
    assert_matches(plan(x), expected, what=what, rtol=rtol)
    assert_matches(plan(x), expected, what=what + ", again", rtol=rtol)
