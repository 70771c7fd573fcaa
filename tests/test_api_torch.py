"""The torch API people reach for: tensors in and out, in-place activations, return_indices, the
activations as conv epilogues on every path, and graph fusion of conv -> activation."""

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, nn
from harness import require

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(7)
CPU = ["naive", "im2col", "numba", "c", "torch"]
ACTS = [("relu6",), ("leaky_relu", 0.2), ("hardtanh", -0.5, 0.7), ("sigmoid",), ("silu",), ("hardswish",)]


def _torch_act(y, act):
    return getattr(F, act[0])(y, *act[1:])


# -- torch tensors in, torch tensors out -----------------------------------------------------------


def test_tensor_in_tensor_out_without_copy():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    y = fastconv.conv2d(x, w, padding=1, backend="c")
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    seen = []
    real = dispatch.run

    def spy(p, *arrays, **kw):
        seen.append(arrays[0])
        return real(p, *arrays, **kw)

    dispatch.run = spy
    try:
        fastconv.relu(x, backend="c")
    finally:
        dispatch.run = real
    # the kernel read the tensor's own memory: no copy on the way in
    assert seen[0].__array_interface__["data"][0] == x.data_ptr()


def test_tensor_results_share_numpy_memory_and_tuples():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    ty, ti = F.max_pool2d(x, 2, return_indices=True)
    assert isinstance(y, torch.Tensor) and isinstance(idx, torch.Tensor) and idx.dtype == torch.int64
    torch.testing.assert_close(y, ty)
    assert torch.equal(idx, ti)


def test_tensor_that_requires_grad_is_refused():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(TypeError, match="requires grad.*detach"):
        fastconv.relu(x)
    with pytest.raises(TypeError, match="weight is a torch tensor that requires grad"):
        fastconv.conv2d(np.ones((1, 2, 4, 4), np.float32), torch.randn(3, 2, 3, 3, requires_grad=True))
    assert isinstance(fastconv.relu(x.detach()), torch.Tensor)


def test_tensor_of_other_dtype_is_refused():
    with pytest.raises(TypeError, match="float32 or float64.*float16"):
        fastconv.relu(torch.ones(3, dtype=torch.float16))
    with pytest.raises(TypeError, match="bfloat16"):
        fastconv.sigmoid(torch.ones(3, dtype=torch.bfloat16))


@pytest.mark.parametrize("backend", ["c", "im2col"])
def test_channels_last_input(backend):
    x = torch.randn(2, 5, 7, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 5, 3, 3)
    y = fastconv.conv2d(x, w, padding=1, activation="silu", backend=backend)
    expected = F.silu(F.conv2d(x, w, padding=1))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    assert y.is_contiguous(memory_format=torch.channels_last)  # as torch returns it
    p = fastconv.max_pool2d(x, 3, 2, 1, backend=backend)
    torch.testing.assert_close(p, F.max_pool2d(x, 3, 2, 1))
    assert p.is_contiguous(memory_format=torch.channels_last)


def test_running_stats_tensors_update_in_place():
    x = torch.randn(4, 3, 5, 5)
    mean, var = torch.zeros(3), torch.ones(3)
    tm, tv = mean.clone(), var.clone()
    y = fastconv.batch_norm(x, mean, var, training=True)
    ty = F.batch_norm(x, tm, tv, training=True)
    torch.testing.assert_close(y, ty, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean, tm)
    torch.testing.assert_close(var, tv)


# -- in place ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, args",
    [("relu", ()), ("relu6", ()), ("leaky_relu", (0.1,)), ("hardtanh", (-0.5, 0.5)), ("silu", ()), ("hardswish", ())],
)
def test_inplace_writes_into_the_input(fn, args):
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    expected = getattr(F, fn)(torch.from_numpy(x.copy()), *args).numpy()
    out = getattr(fastconv, fn)(x, *args, inplace=True)
    assert out is x
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)


def test_inplace_any_layout_and_tensor():
    base = RNG.standard_normal((6, 8)).astype(np.float64)
    view = base[::2, ::-1].T  # strided, negative, transposed: written through the view
    expected = np.maximum(view, 0)
    assert fastconv.relu(view, inplace=True) is view
    np.testing.assert_array_equal(view, expected)
    swapped = RNG.standard_normal(5).astype(">f4")
    fastconv.relu(swapped, inplace=True)
    assert (swapped >= 0).all()
    t = torch.randn(2, 3)
    expected_t = F.relu(t)
    assert fastconv.relu(t, inplace=True) is t
    torch.testing.assert_close(t, expected_t)


def test_inplace_refuses_what_it_cannot_write():
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastconv.relu(ro, inplace=True)
    with pytest.raises(TypeError, match="NumPy array"):
        fastconv.relu([1.0, -1.0], inplace=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        fastconv.relu(np.array([1, -1]), inplace=True)
    assert fastconv.relu([1.0, -1.0]).tolist() == [1.0, 0.0]  # not in place: a new array


def test_relu_layer_inplace_as_torch():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    expected = np.maximum(x, 0)
    assert nn.ReLU(inplace=True)(x) is x
    np.testing.assert_array_equal(x, expected)
    ro = RNG.standard_normal(4).astype(np.float32)
    ro.flags.writeable = False
    np.testing.assert_array_equal(nn.ReLU(inplace=True)(ro), np.maximum(ro, 0))  # read-only: a new array
    x = RNG.standard_normal(5)
    assert nn.LeakyReLU(0.3, inplace=True)(x) is x


# -- return_indices in layers ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU)
def test_pool_layers_return_indices(backend):
    require(backend)
    x = np.round(RNG.standard_normal((2, 3, 9, 9)) * 2).astype(np.float32)  # ties
    layer = nn.MaxPool2d(3, 2, 1, return_indices=True).to_backend(backend)
    y, idx = layer(x)
    ty, ti = tnn_call(torch.nn.MaxPool2d(3, 2, 1, return_indices=True), x)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, ti)
    y, idx = nn.AdaptiveMaxPool2d((4, 3), return_indices=True).to_backend(backend)(x)
    ty, ti = tnn_call(torch.nn.AdaptiveMaxPool2d((4, 3), return_indices=True), x)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, ti)


def tnn_call(layer, x):
    return tuple(t.numpy() for t in layer(torch.from_numpy(x)))


def test_unsupported_backend_refuses_indices_with_a_reason():
    class NoIndices:
        NAME = "noidx"

        @staticmethod
        def available():
            return True, ""

        @staticmethod
        def supports(p):
            return None

        @staticmethod
        def max_pool2d(p, x):
            return np.zeros(p.output_shape, p.dtype)

    fastconv.register_backend(NoIndices)
    try:
        with pytest.raises(fastconv.BackendError, match="does not implement max_pool2d_with_indices"):
            fastconv.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2, return_indices=True, backend="noidx")
        with pytest.raises(fastconv.BackendError, match="sigmoid"):
            fastconv.conv2d(
                np.ones((1, 1, 4, 4), np.float32),
                np.ones((1, 1, 3, 3), np.float32),
                activation="sigmoid",
                backend="noidx",
            )
    finally:
        fastconv.unregister_backend("noidx")


# -- activations as conv epilogues: every c kernel path, float32 and float64 ----------------------------


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0])
@pytest.mark.parametrize(
    "algorithm, dtype", [("gemm", "float32"), ("direct", "float32"), ("winograd", "float32"), ("direct", "float64")]
)
def test_c_epilogue_paths(act, algorithm, dtype):
    require("c")
    x = RNG.standard_normal((2, 5, 9, 10)).astype(dtype) * 3
    w = RNG.standard_normal((7, 5, 3, 3)).astype(dtype)
    b = RNG.standard_normal(7).astype(dtype)
    res = RNG.standard_normal((2, 7, 9, 10)).astype(dtype)
    y = fastconv.conv2d(
        x, w, b, padding=1, residual=res, activation=act if len(act) > 1 else act[0], algorithm=algorithm, backend="c"
    )
    t = [torch.from_numpy(a.astype(np.float64)) for a in (x, w, b, res)]
    expected = _torch_act(F.conv2d(t[0], t[1], t[2], padding=1) + t[3], act).numpy()
    tol = 5e-3 if algorithm == "winograd" else (1e-4 if dtype == "float32" else 1e-10)
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * 10)


def test_activation_argument_errors():
    x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        fastconv.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="takes 1 parameter"):
        fastconv.conv2d(x, w, activation=("leaky_relu", 0.1, 0.2))
    with pytest.raises(ValueError, match="max_val >= min_val"):
        fastconv.hardtanh(x, 1.0, -1.0)
    with pytest.raises(TypeError, match="negative_slope"):
        fastconv.leaky_relu(x, "steep")
    with pytest.raises(ValueError, match="in_features=3"):
        fastconv.linear(np.ones((2, 4)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="bias must have shape"):
        fastconv.linear(np.ones((2, 3)), np.ones((5, 3)), np.ones(4))


def test_problem_ids_stay_stable():
    from fastconv.problem import Conv2dProblem

    base = Conv2dProblem(1, 3, 8, 8, 4, 3, 3, padding=(1, 1, 1, 1), activation="relu")
    assert base.id == "n1_c3h8w8_k4r3s3_st1p1d1g1_relu_f32"
    assert Conv2dProblem(1, 3, 8, 8, 4, 3, 3).id == "n1_c3h8w8_k4r3s3_st1p0d1g1_f32"
    assert Conv2dProblem(1, 3, 8, 8, 4, 3, 3, activation="leaky_relu").id.endswith("_leaky_relu_f32")
    assert Conv2dProblem(1, 3, 8, 8, 4, 3, 3, activation="leaky_relu", activation_params=(0.2,)).id.endswith(
        "_leaky_relu0.2_f32"
    )


# -- graph fusion ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act",
    [
        torch.nn.ReLU6(),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Hardtanh(-0.3, 0.4),
        torch.nn.Sigmoid(),
        torch.nn.SiLU(),
        torch.nn.Hardswish(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_fuse_folds_conv_activation(act):
    from fastconv.interop import from_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), act, torch.nn.Conv2d(8, 4, 1)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    g = from_torch(model).fuse().to_backend("c")
    calls = [n for n in g.nodes if n.op == "call"]
    assert len(calls) == 2 and calls[0].kwargs.get("activation") is not None, g.describe()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(g(x.numpy()), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["sigmoid", "silu", "hardswish", "leaky_relu", "relu6"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_epilogue_over_the_whole_float_range(kind, dtype):
    # The float32 sigmoids use their own vectorised exp: every magnitude, the underflow edge, +-inf, NaN.
    require("c")
    x = np.concatenate([np.linspace(-100, 100, 4001), [np.inf, -np.inf, np.nan, -87.5, -86.9, 0.0, -0.0, 1e-8]])
    x = np.ascontiguousarray(x.astype(dtype).reshape(1, 1, 1, -1))
    y = fastconv.conv2d(x, np.ones((1, 1, 1, 1), dtype), activation=kind, backend="c")
    expected = getattr(F, kind)(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6 if dtype == "float32" else 1e-12, atol=1e-30, equal_nan=True)
    ya = fastconv.sigmoid(x, backend="c") if kind == "sigmoid" else None
    if ya is not None:
        np.testing.assert_allclose(ya, expected, rtol=1e-6, atol=1e-30, equal_nan=True)
