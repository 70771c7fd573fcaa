"""fastconv.nn layers against their torch.nn twins: outputs, state dicts, modes, backends, errors."""

from collections import OrderedDict

import numpy as np
import pytest

from nn_helpers import BACKENDS, assert_matches, require, spy_backend

import fastconv
from fastconv import dispatch
from fastconv import nn

torch = pytest.importorskip("torch")
tnn = torch.nn

RNG = np.random.default_rng(0)


def _load_from(layer, tlayer):
    layer.load_state_dict(tlayer.state_dict())
    return layer.train(tlayer.training)


def _reference(tlayer, x):
    """torch's output in float64 (the layer and input cast up: the float32 values are kept exactly)."""
    t64 = tlayer.double() if any(True for _ in tlayer.parameters()) or list(tlayer.buffers()) else tlayer
    with torch.no_grad():
        return t64(torch.from_numpy(x.astype(np.float64))).numpy()


def _randomise_bn(t):
    with torch.no_grad():
        c = t.num_features
        if t.affine:
            t.weight.copy_(torch.rand(c) + 0.5)
            t.bias.copy_(torch.randn(c))
        if t.track_running_stats:
            t.running_mean.copy_(torch.randn(c))
            t.running_var.copy_(torch.rand(c) + 0.5)
    return t


# (fastconv layer, torch layer, input shape): the same constructor arguments on both sides.
LAYERS = {
    "conv3x3": (lambda m: m.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 9)),
    "conv_options": (
        lambda m: m.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=False),
        (1, 4, 10, 11),
    ),
    "conv_same_reflect": (lambda m: m.Conv2d(2, 3, 4, padding="same", padding_mode="reflect"), (1, 2, 7, 8)),
    "conv_valid": (lambda m: m.Conv2d(2, 3, 3, padding="valid"), (1, 2, 6, 5)),
    "depthwise": (lambda m: m.Conv2d(5, 5, 3, padding=1, groups=5), (1, 5, 6, 6)),
    "batchnorm": (lambda m: m.BatchNorm2d(5), (3, 5, 4, 4)),
    "batchnorm_noaffine": (lambda m: m.BatchNorm2d(5, affine=False, eps=1e-3), (3, 5, 4, 4)),
    "maxpool": (lambda m: m.MaxPool2d(3, 2, 1), (2, 3, 9, 9)),
    "maxpool_ceil_dil": (lambda m: m.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True), (1, 2, 9, 8)),
    "avgpool": (lambda m: m.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 3, 9, 9)),
    "avgpool_ceil_div": (lambda m: m.AvgPool2d(2, ceil_mode=True, divisor_override=3), (1, 2, 7, 7)),
    "adaptive": (lambda m: m.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    "relu": (lambda m: m.ReLU(), (2, 3, 4, 4)),  # inplace=True: tests/test_api_torch.py
    "linear": (lambda m: m.Linear(12, 5), (3, 2, 12)),
    "linear_nobias": (lambda m: m.Linear(12, 5, bias=False), (4, 12)),
    "flatten": (lambda m: m.Flatten(1, 2), (2, 3, 4, 5)),
    "identity": (lambda m: m.Identity(54, unused="ok"), (2, 3, 4)),
    "sequential": (
        lambda m: m.Sequential(
            m.Conv2d(3, 4, 3, padding=1, bias=False),
            m.BatchNorm2d(4),
            m.ReLU(),
            m.MaxPool2d(2),
            m.AdaptiveAvgPool2d(1),
            m.Flatten(),
            m.Linear(4, 2),
        ),
        (2, 3, 8, 8),
    ),
}


def _pair(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    tlayer = make(tnn).eval()
    for m in tlayer.modules():
        if isinstance(m, tnn.BatchNorm2d):
            _randomise_bn(m)
    return _load_from(make(nn), tlayer), tlayer, shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch(name, backend):
    require(backend)
    layer, tlayer, shape = _pair(name)
    layer.to_backend(backend)
    x = RNG.standard_normal(shape).astype(np.float32)
    before = x.copy()
    y = layer(x)
    np.testing.assert_array_equal(x, before, err_msg="the layer modified its input")
    assert_matches(y, _reference(tlayer, x), what=f"{name} on {backend}")


@pytest.mark.parametrize("name", list(LAYERS))
def test_state_dict_keys_and_shapes_match_torch(name):
    layer, tlayer, _ = _pair(name)
    ours = layer.state_dict()
    theirs = tlayer.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == tuple(value.shape), key
        np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_training_updates_running_stats_like_torch(backend, momentum):
    require(backend)
    t = _randomise_bn(tnn.BatchNorm2d(4, momentum=momentum)).double()
    layer = _load_from(nn.BatchNorm2d(4, momentum=momentum, dtype="float64"), t).to_backend(backend).train()
    t.train()
    for step in range(3):
        x = RNG.standard_normal((3, 4, 5, 5)) * (step + 1) + step
        with torch.no_grad():
            expected = t(torch.from_numpy(x)).numpy()
        assert_matches(layer(x), expected, "float64", f"step {step} output")
        assert int(layer.num_batches_tracked) == step + 1
        for key in ("running_mean", "running_var"):
            assert_matches(getattr(layer, key), getattr(t, key).numpy(), "float64", f"step {step} {key}")
    layer.eval()
    t.eval()
    x = RNG.standard_normal((2, 4, 3, 3))
    with torch.no_grad():
        assert_matches(layer(x), t(torch.from_numpy(x)).numpy(), "float64", "eval after training")
    assert int(layer.num_batches_tracked) == 3  # eval mode counts nothing


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval_too():
    t = tnn.BatchNorm2d(3, track_running_stats=False).eval()
    layer = _load_from(nn.BatchNorm2d(3, track_running_stats=False), t)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)
    assert_matches(layer(x), _reference(t, x))


def test_train_and_eval_set_the_whole_subtree():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Sequential(nn.BatchNorm2d(2)))
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(TypeError, match="mode"):
        net.train("yes")


def test_to_backend_sets_every_layer_and_none_follows_the_dispatcher():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)))
    assert net.to_backend("naive") is net
    assert {m.backend for m in net.modules()} == {"naive"}
    net[1].to_backend("im2col")
    assert [m.backend for m in net.modules()] == ["naive", "naive", "im2col", "im2col", "im2col"]
    assert "backend='im2col'" in repr(net)
    net.to_backend(None)
    assert {m.backend for m in net.modules()} == {None}
    with spy_backend() as calls:
        with fastconv.use_backend("spy"):
            net(np.zeros((1, 3, 6, 6), np.float32))
    assert [op for op, _ in calls] == ["conv2d", "relu", "max_pool2d"]


def test_layer_backend_routes_only_that_layer():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    expected = net(x)
    with spy_backend() as calls:
        net[1].backend = "spy"
        y = net(x)
    assert [op for op, _ in calls] == ["batch_norm"]
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_linear_on_the_c_backend_runs_the_c_gemm(monkeypatch, caplog):
    """float32 Linear on c runs c's GEMM (one thread pool with the c convolutions); float64 stays on BLAS."""
    import logging

    require("c")
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    layer = nn.Linear(64, 10).to_backend("c")
    x = RNG.standard_normal((2, 3, 64)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        y = layer(x)
    assert any("ran conv2d f32" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-5)
    layer.astype(np.float64)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        y64 = layer(x.astype(np.float64))
    assert not any("ran conv2d" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(y64, x.astype(np.float64) @ layer.weight.T + layer.bias, rtol=1e-12)


@pytest.mark.parametrize("how", ["use_backend", "auto"])
def test_linear_follows_the_dispatcher_onto_the_c_gemm(monkeypatch, caplog, how):
    """A Linear with no backend of its own runs where the dispatcher sends the convolutions: c's
    GEMM under use_backend("c") and, where c is available, under "auto" (BLAS's own thread pool
    beside c's doubled a ResNet-18's time); another backend chosen keeps BLAS."""
    import logging

    import fastconv

    require("c")
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    layer = nn.Linear(64, 10)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    chosen = fastconv.use_backend("c") if how == "use_backend" else fastconv.use_backend("auto")
    with chosen, caplog.at_level(logging.DEBUG, logger="fastconv"):
        y = layer(x)
    assert any("ran conv2d f32" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-5)
    caplog.clear()
    with fastconv.use_backend("im2col"), caplog.at_level(logging.DEBUG, logger="fastconv"):
        y = layer(x)
    assert not any("ran conv2d" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "im2col"])
def test_linear_on_numba_and_im2col_runs_blas_on_one_thread(monkeypatch, backend):
    """On numba and im2col the classifier's BLAS stays on one thread: a 2-thread BLAS's idle
    threads spun against the backend's own and made a ResNet-18 at 2 threads slower than at 1."""
    import fastconv
    from fastconv import threads

    require(backend)
    seen = []
    real = threads.limit_blas
    monkeypatch.setattr(threads, "limit_blas", lambda n: seen.append(n) or real(n))
    layer = nn.Linear(64, 10)
    x = RNG.standard_normal((2, 3, 64)).astype(np.float32)
    with fastconv.use_backend(backend):
        y = layer(x)
    assert seen == [1]
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-5)
    seen.clear()
    with fastconv.use_backend("naive"):  # BLAS on fastconv's thread count, as before
        y = layer(x)
    assert seen == []
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, rtol=1e-5, atol=1e-5)


def test_backend_errors():
    conv = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        conv.to_backend("nope")
    with pytest.raises(TypeError, match="backend must be"):
        conv.backend = 3
    dispatch.register_backend(
        type(
            "M",
            (),
            {
                "NAME": "broken",
                "available": staticmethod(lambda: (False, "no CPU")),
                "supports": staticmethod(lambda p: None),
                "relu": staticmethod(lambda p, x: x),
            },
        ),
        "broken",
    )
    try:
        with pytest.raises(fastconv.BackendError, match="no CPU"):
            conv.to_backend("broken")
    finally:
        dispatch.unregister_backend("broken")
    assert conv.backend is None  # a refused assignment leaves the old one


def test_load_state_dict_accepts_numpy_and_torch_and_copies():
    t = _randomise_bn(tnn.BatchNorm2d(3))
    layer = nn.BatchNorm2d(3)
    state = {k: v.numpy().copy() for k, v in t.state_dict().items()}
    result = layer.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    state["weight"][:] = 99  # the layer holds its own copy
    assert not (layer.weight == 99).any()
    layer.load_state_dict(t.state_dict())  # torch tensors
    np.testing.assert_array_equal(layer.running_var, t.running_var.numpy())
    assert layer.weight.dtype == np.float32 and layer.num_batches_tracked.dtype == np.int64
    layer.load_state_dict({k: v.double() for k, v in t.state_dict().items()})  # cast to the layer's dtype
    assert layer.weight.dtype == np.float32
    old = dict(t.state_dict())
    del old["num_batches_tracked"]  # checkpoints from before torch 0.4.1
    layer.load_state_dict(old)


def test_load_state_dict_errors_list_every_problem():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = dict(net.state_dict())
    del state["0.bias"]
    state["1.weight"] = np.ones(5, np.float32)
    state["2.weight"] = np.ones(1, np.float32)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    msg = str(info.value)
    assert "Sequential" in msg
    assert "missing keys (1): 0.bias" in msg
    assert "unexpected keys (1): 2.weight" in msg
    assert "1.weight: checkpoint has shape (5,), the model has (4,)" in msg
    state["1.weight"] = np.ones(4, np.float32)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["2.weight"]
    state["1.weight"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="shape mismatches"):  # shapes are checked even when not strict
        net.load_state_dict(state, strict=False)
    with pytest.raises(TypeError, match="mapping"):
        net.load_state_dict([1, 2])
    with pytest.raises(TypeError, match="0.weight"):
        net.load_state_dict({**net.state_dict(), "0.weight": np.full((4, 3, 3, 3), "a")})


def test_sequential_container():
    a, b = nn.ReLU(), nn.Identity()
    net = nn.Sequential(OrderedDict([("act", a), ("id", b)]))
    assert list(dict(net.named_children())) == ["act", "id"]
    assert net[0] is a and net[-1] is b and len(net) == 2 and list(net) == [a, b]
    assert list(net[1:].children()) == [b]
    net.append(nn.Flatten())
    assert len(net) == 3
    with pytest.raises(IndexError):
        net[7]
    with pytest.raises(TypeError, match="not a fastconv.nn Module"):
        nn.Sequential(tnn.ReLU())


def test_fuse_sequential_conv_bn():
    _, tnet, shape = _pair("sequential")
    net = _load_from(LAYERS["sequential"][0](nn), tnet).eval()
    x = RNG.standard_normal(shape).astype(np.float32)
    expected = net(x)
    import copy

    fused_copy = copy.deepcopy(net).fuse()  # the usual way to keep both: the original is untouched
    assert type(net[1]) is nn.BatchNorm2d and type(fused_copy[1]) is nn.Identity
    assert net.fuse() is net
    assert type(net[1]) is nn.Identity and net[0].bias is not None
    assert "1.running_mean" not in net.state_dict()
    np.testing.assert_allclose(net(x), expected, rtol=1e-5, atol=1e-6)
    assert_matches(net(x), _reference(tnet, x))


@pytest.mark.parametrize("bias, affine", [(True, True), (False, False)])
def test_fuse_folds_every_batch_norm_term(bias, affine):
    # A large eps and far-from-trivial statistics: dropping any term of the fold shows.
    torch.manual_seed(4)
    t = tnn.Sequential(tnn.Conv2d(3, 6, 3, bias=bias), _randomise_bn(tnn.BatchNorm2d(6, eps=0.3, affine=affine)))
    with torch.no_grad():
        t[1].running_mean.mul_(5)
    t.eval()
    net = _load_from(nn.Sequential(nn.Conv2d(3, 6, 3, bias=bias), nn.BatchNorm2d(6, eps=0.3, affine=affine)), t)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_matches(net.fuse()(x), _reference(t, x), what="fused conv + batch norm")
    assert net[0].bias is not None and type(net[1]) is nn.Identity


def test_fuse_refuses_training_mode_and_batch_stats():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"1 is in training mode.*eval\(\)"):
        net.fuse()
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        net.fuse()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: nn.Conv2d(3, 8, 0), ValueError, "kernel_size must be positive"),
        (lambda: nn.Conv2d(3.0, 8, 3), TypeError, "in_channels must be an int"),
        (lambda: nn.Conv2d(3, 0, 3), ValueError, "out_channels must be positive"),
        (lambda: nn.Conv2d(3, 8, 3, groups=2), ValueError, "in_channels must be divisible by groups"),
        (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, "out_channels must be divisible by groups"),
        (lambda: nn.Conv2d(3, 8, 3, stride=2, padding="same"), ValueError, "padding='same'"),
        (lambda: nn.Conv2d(3, 8, 3, padding="full"), ValueError, "padding must be"),
        (lambda: nn.Conv2d(3, 8, 3, padding=-1), ValueError, "padding must be non-negative"),
        (lambda: nn.Conv2d(3, 8, 3, padding_mode="mirror"), ValueError, "padding_mode"),
        (lambda: nn.Conv2d(3, 8, 3, bias=1), TypeError, "bias must be a bool"),
        (lambda: nn.Conv2d(3, 8, 3, device="cuda"), ValueError, "device"),
        (lambda: nn.Conv2d(3, 8, 3, dtype=np.int32), TypeError, "dtype"),
        (lambda: nn.BatchNorm2d(0), ValueError, "num_features"),
        (lambda: nn.BatchNorm2d(4, eps=-1), ValueError, "eps"),
        (lambda: nn.BatchNorm2d(4, momentum="fast"), TypeError, "momentum"),
        (lambda: nn.MaxPool2d(2, padding=2), ValueError, "at most half of kernel_size"),
        (lambda: nn.MaxPool2d(2, stride=0), ValueError, "stride must be positive"),
        (lambda: nn.AvgPool2d(3, divisor_override=0), ValueError, "divisor_override"),
        (lambda: nn.AdaptiveAvgPool2d((1, 2, 3)), ValueError, "output_size"),
        (lambda: nn.AdaptiveAvgPool2d(-1), ValueError, "output_size"),
        (lambda: nn.Linear(0, 3), ValueError, "in_features"),
        (lambda: nn.ReLU(inplace="no"), TypeError, "inplace"),
        (lambda: nn.Flatten(1.5), TypeError, "start_dim"),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="input has 2 channels"):
        nn.Conv2d(3, 4, 3)(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="mixed dtypes"):
        nn.Conv2d(3, 4, 3)(np.zeros((1, 3, 5, 5), np.float64))
    with pytest.raises(ValueError, match="4-D"):
        nn.BatchNorm2d(3)(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(\*, 4\)"):
        nn.Linear(4, 2)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(3)(np.zeros((2, 3)))


def test_float64_layers_and_astype():
    conv = nn.Conv2d(2, 3, 3, dtype="float64")
    assert conv.weight.dtype == np.float64
    assert conv(np.ones((1, 2, 4, 4))).dtype == np.float64
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).astype(np.float64)
    assert {a.dtype for k, a in net.state_dict().items() if "num_batches" not in k} == {np.dtype(np.float64)}
    assert net[1].num_batches_tracked.dtype == np.int64


def test_parameters_and_buffers_are_registered_by_assignment():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    assert [k for k, _ in conv.named_parameters()] == ["weight"]
    conv.bias = np.zeros(3)
    assert list(conv.state_dict()) == ["weight", "bias"]
    net = nn.Sequential(conv)
    net.extra = nn.ReLU()
    assert [k for k, _ in net.named_modules()] == ["", "0", "extra"]
    with pytest.raises(TypeError, match="child module"):
        net.extra = 3
    del net.extra
    assert [k for k, _ in net.named_modules()] == ["", "0"]
    bn = nn.BatchNorm2d(2)
    assert [k for k, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = bn.nope


@pytest.mark.parametrize(
    "module_name",
    [
        "fastconv.nn",
        "fastconv.nn.module",
        "fastconv.nn.layers",
        "fastconv.nn.container",
        "fastconv.nn.init",
        "fastconv.models",
        "fastconv.models.resnet",
        "fastconv.interop.torch",
    ],
)
def test_docstring_examples(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
