"""Training converted models: Graph.backward and the backward of every layer a torch.fx conversion
makes (activations, shape ops, dropout, adaptive max pooling, functional conv/linear), against
torch autograd on the same model."""

import warnings

import numpy as np
import pytest

from nn_helpers import require

from fastconv import nn

torch = pytest.importorskip("torch")
torch_nets = pytest.importorskip("torch_nets")
from fastconv.interop.torch import from_torch  # noqa: E402

F = torch.nn.functional
tnn = torch.nn


def _compare(model, tmodel, inputs, tol, backend="c"):
    """Output, input gradients and every parameter gradient of ``model`` against torch's on ``tmodel``
    for the loss sum(output * r), r random: one scale per kind (a gradient that is zero in exact
    arithmetic -- a bias before batch norm -- is rounding)."""
    rng = np.random.default_rng(7)
    y = model(*inputs)
    r = rng.standard_normal(np.shape(y))
    grads = model.backward(r)
    grads = grads if isinstance(grads, tuple) else (grads,)
    tin = [torch.tensor(x, requires_grad=True) for x in inputs]
    yt = tmodel(*tin)
    (yt * torch.from_numpy(r)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol * np.abs(y).max())
    for g, t in zip(grads, tin):
        expected = t.grad.numpy()
        np.testing.assert_allclose(g, expected, rtol=tol, atol=tol * np.abs(expected).max(), err_msg="input gradient")
    theirs = dict(tmodel.named_parameters())
    ours = dict(model.named_grads())
    assert set(ours) == set(theirs)
    scale = max(float(np.abs(t.grad.numpy()).max()) for t in theirs.values())
    for name, g in ours.items():
        assert g is not None, name
        np.testing.assert_allclose(g, theirs[name].grad.numpy(), rtol=tol, atol=tol * scale, err_msg=name)


def _no_dropout(t):
    for m in t.modules():
        if isinstance(m, (tnn.Dropout, tnn.Dropout2d)):
            m.p = 0.0  # random masks cannot match torch's; the mask's gradient is tested below
    return t


@pytest.mark.parametrize("name", sorted(torch_nets.NETS))
def test_converted_graphs_train_like_torch(name):
    """Every plain-torch CNN of tests/torch_nets.py: residual adds, cat, depthwise, ReLU6, pooling."""
    require("c")
    t = _no_dropout(torch_nets.build(name)).double().train()
    g = from_torch(t, backend="c", graph=True).astype(np.float64).train()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    _compare(g, t, (x,), 1e-9)


def test_shared_relu_module_keeps_one_state_per_call():
    """torchvision's BasicBlock calls one ReLU module twice: each call's mask must reach its own backward."""
    require("c")
    torch_resnet = pytest.importorskip("torch_resnet")
    t = torch_resnet.build("resnet18", num_classes=5).double().train()
    g = from_torch(t, backend="c", graph=True).astype(np.float64).train()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    _compare(g, t, (x,), 1e-8)
    with pytest.raises(RuntimeError, match="needs a forward"):
        g.backward(np.zeros((2, 5)))


class _Functional(tnn.Module):
    """Weights read through F.conv2d / F.linear, and the shape ops the converter maps."""

    def __init__(self):
        super().__init__()
        self.w = tnn.Parameter(torch.randn(6, 3, 3, 3, dtype=torch.float64))
        self.b = tnn.Parameter(torch.randn(6, dtype=torch.float64))
        self.fc = tnn.Parameter(torch.randn(4, 6, dtype=torch.float64))
        self.register_buffer("scale", torch.rand(1, 6, 1, 1, dtype=torch.float64) + 0.5)

    def forward(self, x, z):
        y = F.conv2d(x, self.w, self.b, 1, 1) * self.scale
        a, b = y.chunk(2, dim=1)
        y = torch.cat([b, a * a], 1)[:, :, 1:-1].permute(0, 1, 3, 2).contiguous()
        y = F.adaptive_max_pool2d(y, (2, 3)) - F.avg_pool2d(y, 2).mean() + z / 3
        y = y.flatten(2).transpose(1, 2).mean(1)
        s = F.softmax(F.linear(y, self.fc), dim=-1)
        return s / 2 + torch.clamp(y[:, :4], min=0) - y[:, 2:].mean(1, keepdim=True) * y.reshape(-1, 6)[:, :1]


def test_functional_weights_shape_ops_and_two_inputs():
    require("c")
    torch.manual_seed(0)
    t = _Functional()
    g = from_torch(t, backend="c").astype(np.float64).train()
    rng = np.random.default_rng(3)
    x, z = rng.standard_normal((2, 3, 9, 10)), rng.standard_normal((2, 6, 1, 1))
    _compare(g, t, (x, z), 1e-9)


ACTIVATIONS = [
    (nn.ReLU6(), tnn.ReLU6()),
    (nn.ReLU6(inplace=True), tnn.ReLU6()),
    (nn.LeakyReLU(0.3), tnn.LeakyReLU(0.3)),
    (nn.LeakyReLU(-0.5, inplace=True), tnn.LeakyReLU(-0.5)),
    (nn.Hardtanh(-0.5, 2.0), tnn.Hardtanh(-0.5, 2.0)),
    (nn.Sigmoid(), tnn.Sigmoid()),
    (nn.Tanh(), tnn.Tanh()),
    (nn.SiLU(), tnn.SiLU()),
    (nn.SiLU(inplace=True), tnn.SiLU()),
    (nn.Hardswish(), tnn.Hardswish()),
    (nn.Hardswish(inplace=True), tnn.Hardswish()),
    (nn.Hardsigmoid(), tnn.Hardsigmoid()),
    (nn.Softmax(1), tnn.Softmax(1)),
    (nn.AdaptiveMaxPool2d((3, 5)), tnn.AdaptiveMaxPool2d((3, 5))),
    (nn.AdaptiveMaxPool2d(2), tnn.AdaptiveMaxPool2d(2)),
    (nn.Pad((1, 2, -1, 1)), lambda x: F.pad(x, (1, 2, -1, 1))),
    (nn.Mean((1, 3), keepdim=True), lambda x: x.mean((1, 3), keepdim=True)),
    (nn.Mean(2), lambda x: x.mean(2)),
]


@pytest.mark.parametrize("layer, tlayer", ACTIVATIONS, ids=lambda m: repr(m))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layer_gradients_match_torch_at_their_boundaries(layer, tlayer, dtype):
    x = np.random.default_rng(4).standard_normal((2, 5, 7, 6)).astype(dtype) * 4
    # where each derivative changes: torch's choice at the kink is the contract
    x[0, 0, 0, :6] = [-3.0, 3.0, 0.0, -0.5, 2.0, 6.0]
    x[0, 0, 1, :2] = [100.0, -100.0]  # (not NaN: torch's vector and scalar loops disagree on its gradient)
    x[1, 1, 1, :] = 1.5  # ties inside an adaptive max pooling bin
    g = np.random.default_rng(5).standard_normal(layer.eval()(x.copy()).shape).astype(dtype)
    y = layer.train()(x.copy())
    gx = layer.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = tlayer(xt * 1)  # through a copy, so torch's in-place layers keep x intact too
    yt.backward(torch.from_numpy(g))
    assert gx.dtype == x.dtype and gx.shape == x.shape
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)


def test_dropout_backward_uses_the_forward_mask():
    x = np.ones((4, 6, 5, 5))
    d = nn.Dropout(0.4).train()
    y = d(x)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    d2 = nn.Dropout(0.5, channels=True).train()  # torch.nn.Dropout2d: whole planes
    y2 = d2(x)
    planes = y2.reshape(4, 6, -1)
    assert np.all(planes.min(axis=2) == planes.max(axis=2)) and 0 < (planes[..., 0] == 0).sum() < 24
    np.testing.assert_array_equal(d2.backward(2 * np.ones_like(x)), 2 * y2)
    d.eval()
    with nn.enable_grad():
        assert d(x) is x
    assert d.backward(x) is x
    with pytest.raises(RuntimeError, match="needs a forward"):
        d.backward(x)


def test_dropout2d_converts_to_channel_dropout():
    g = from_torch(tnn.Sequential(tnn.Conv2d(2, 4, 1), tnn.Dropout2d(0.5)), graph=True)
    assert [m.channels for m in g.modules() if isinstance(m, nn.Dropout)] == [True]


def test_layers_without_a_backward_name_the_node():
    t = tnn.Sequential(tnn.Conv2d(3, 4, 1), tnn.LocalResponseNorm(3))
    g = from_torch(t, graph=True).train()
    y = g(np.ones((1, 3, 4, 4), np.float32))
    with pytest.raises(NotImplementedError, match="LocalResponseNorm does not define backward"):
        g.backward(np.ones_like(y))


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("relu6", F.relu6),
        (("leaky_relu", 0.2), lambda z: F.leaky_relu(z, 0.2)),
        (("hardtanh", -0.5, 0.5), lambda z: F.hardtanh(z, -0.5, 0.5)),
        ("sigmoid", torch.sigmoid),
        ("silu", F.silu),
        ("hardswish", F.hardswish),
    ],
)
def test_conv_fused_activation_trains(activation, fn):
    """Conv2d(x, residual=, activation=) in training mode: the activation's gradient at the pre-activation."""
    rng = np.random.default_rng(6)
    conv = nn.Conv2d(3, 4, 3, padding=1).astype(np.float64).train()
    x, res = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 4, 6, 6))
    g = rng.standard_normal((2, 4, 6, 6))
    y = conv(x, residual=res, activation=activation)
    gx, gres = conv.backward(g)
    w = torch.tensor(conv.weight, requires_grad=True)
    b = torch.tensor(conv.bias, requires_grad=True)
    xt, rt = torch.tensor(x, requires_grad=True), torch.tensor(res, requires_grad=True)
    yt = fn(F.conv2d(xt, w, b, padding=1) + rt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((gx, xt), (gres, rt), (conv._grads["weight"], w), (conv._grads["bias"], b)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)
    with nn.no_grad():  # inference keeps the fused epilogue
        np.testing.assert_allclose(conv(x, residual=res, activation=activation), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "max", "min"])
def test_elementwise_gradients_broadcast_back_like_torch(op):
    rng = np.random.default_rng(8)
    a, b = rng.uniform(0.5, 2.0, (2, 3, 4, 5)), rng.uniform(0.5, 2.0, (3, 1, 5))
    b[0, 0, :2] = a[0, 0, 0, :2]  # ties for max/min: torch shares the gradient
    layer = nn.Elementwise(op, alpha=2.0 if op in ("add", "sub") else None).train()
    y = layer(a, b)
    g = rng.standard_normal(y.shape)
    ga, gb = layer.backward(g)
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    fns = {"add": lambda: torch.add(at, bt, alpha=2.0), "sub": lambda: torch.sub(at, bt, alpha=2.0)}
    fns.update(mul=lambda: at * bt, div=lambda: at / bt, pow=lambda: at**bt)
    fns.update(max=lambda: torch.maximum(at, bt), min=lambda: torch.minimum(at, bt))
    fns[op]().backward(torch.from_numpy(g))
    assert ga.shape == a.shape and gb.shape == b.shape
    np.testing.assert_allclose(ga, at.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-12)
    scaled = nn.Elementwise("mul").train()
    scaled(a, 3.0)
    ga, gnumber = scaled.backward(g)
    assert gnumber is None
    np.testing.assert_array_equal(ga, 3.0 * g)


@pytest.mark.parametrize("name", ["catnet", "hand_resnet"])
def test_onnx_graphs_train(name, tmp_path):
    """fastconv.onnx.load's graph, differentiated in eval mode (the export folds batch norms)."""
    require("c")
    pytest.importorskip("onnx")
    import fastconv.onnx

    t = torch_nets.build(name).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(t, (torch.from_numpy(x.astype(np.float32)),), tmp_path / "m.onnx", dynamo=False)
    g = fastconv.onnx.load(tmp_path / "m.onnx").astype(np.float64).to_backend("c").eval()
    with nn.enable_grad():
        y = g(x)
    r = np.random.default_rng(1).standard_normal(y.shape)
    gx = g.backward(r)
    xt = torch.tensor(x, requires_grad=True)
    (t.double()(xt) * torch.from_numpy(r)).sum().backward()
    # the file holds float32 weights: float32 rounding of the weights, not of the arithmetic
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-5, atol=1e-5 * np.abs(xt.grad.numpy()).max())
    assert all(v is not None for _, v in g.named_grads())


def test_onnx_small_layers_gradients():
    from fastconv import onnx as fonnx

    rng = np.random.default_rng(9)
    for a_shape, b_shape in [((2, 3, 4), (4, 5)), ((4,), (2, 4, 3)), ((3, 4), (4,)), ((1, 3, 4), (2, 4, 2))]:
        a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
        layer = fonnx._MatMul().train()
        y = layer(a, b)
        g = rng.standard_normal(np.shape(y))
        ga, gb = layer.backward(g)
        at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        torch.matmul(at, bt).backward(torch.from_numpy(np.asarray(g)))
        np.testing.assert_allclose(ga, at.grad.numpy(), rtol=1e-12, err_msg=f"{a_shape} @ {b_shape}")
        np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-12, err_msg=f"{a_shape} @ {b_shape}")
    x, idx = rng.standard_normal((3, 5, 2)), np.array([[4, 0], [4, -1]])
    gather = fonnx._Gather(axis=1).train()
    y = gather(x, idx)
    g = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    xt[:, torch.from_numpy(idx % 5)].backward(torch.from_numpy(g))
    np.testing.assert_allclose(gather.backward(g), xt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "name, args, fn, from_output",
    [
        ("relu6_input", (), F.relu6, False),
        ("hardtanh_input", (-0.5, 2.0), lambda x: F.hardtanh(x, -0.5, 2.0), False),
        ("leaky_relu_input", (-0.2,), lambda x: F.leaky_relu(x, -0.2), False),
        ("sigmoid_input", (), torch.sigmoid, True),
        ("silu_input", (), F.silu, False),
        ("hardswish_input", (), F.hardswish, False),
    ],
)
def test_activation_grad_functions_match_torch(name, args, fn, from_output):
    from fastconv import grad

    x = np.random.default_rng(10).standard_normal((2, 3, 4, 5)) * 4
    x[0, 0, 0, :5] = [-3.0, 3.0, 0.0, -0.5, 2.0]
    g = np.random.default_rng(11).standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.from_numpy(g))
    first = yt.detach().numpy() if from_output else x
    np.testing.assert_allclose(getattr(grad, name)(first, g, *args), xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="grad_output must have"):
        getattr(grad, name)(first, g[:1], *args)


def test_adaptive_max_pool2d_input_matches_torch():
    from fastconv import grad

    x = np.random.default_rng(12).standard_normal((2, 3, 7, 9))
    x[0, 0, :3, :3] = 1.0  # a tie: torch's first index
    xt = torch.tensor(x, requires_grad=True)
    yt = F.adaptive_max_pool2d(xt, (3, 4))
    g = np.random.default_rng(13).standard_normal(yt.shape)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(grad.adaptive_max_pool2d_input(x, g, (3, 4)), xt.grad.numpy(), rtol=1e-12)
