"""fastconv.graph and from_torch's torch.fx path: CNNs written in plain torch (tests/torch_nets.py)
convert, match torch on every backend, fuse, keep torch's state_dict names, and refuse unknown ops
with a message that names them."""

import copy
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from nn_helpers import BACKENDS, assert_matches, require

from fastconv import nn
from fastconv.graph import Graph, UnsupportedOpError

torch = pytest.importorskip("torch")
torch_nets = pytest.importorskip("torch_nets")
from fastconv.interop.torch import from_torch  # noqa: E402

F = torch.nn.functional
tnn = torch.nn
RTOL = 1e-5  # float32 against a float64 torch reference, relative to the output's scale
BACKENDS = list(dict.fromkeys(BACKENDS))


def _input(backend, seed=0):
    # the naive backend is the formula in Python loops: a tiny image
    shape = (1, 3, 16, 16) if backend == "naive" else (1, 3, 32, 32)
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _reference(tmodel, x):
    with torch.no_grad():
        return copy.deepcopy(tmodel).double()(x.double()).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(torch_nets.NETS))
def test_from_torch_matches_torch(name, backend):
    require(backend)
    t = torch_nets.build(name)
    g = from_torch(t, backend=backend)
    assert isinstance(g, Graph) and {m.backend for m in g.modules()} == {backend}
    x = _input(backend)
    expected = _reference(t, x)
    assert_matches(g(x.numpy()), expected, what=f"from_torch({name}) on {backend}", rtol=RTOL)
    assert_matches(g.fuse()(x.numpy()), expected, what=f"from_torch({name}).fuse() on {backend}", rtol=RTOL)


@pytest.mark.parametrize("name", sorted(torch_nets.NETS))
def test_state_dict_has_torch_names_and_values(name):
    t = torch_nets.build(name)
    ours, theirs = from_torch(t).state_dict(), t.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    g = from_torch(t)
    g.load_state_dict(theirs)  # and loads back


def test_fuse_folds_batch_norms_and_moves_add_relu_into_the_conv_epilogue():
    t = torch_nets.build("hand_resnet")
    g = from_torch(t).fuse()
    assert not [k for k in g.state_dict() if ".b1." in k or ".b2." in k or k.startswith("bn.")]
    layers = [type(g.layer_of(n)).__name__ for n in g.nodes if n.op == "call"]
    assert "BatchNorm2d" not in layers and "Elementwise" not in layers and "ReLU" not in layers
    fused = [n for n in g.nodes if n.kwargs.get("residual") is not None]
    assert len(fused) == 4 and all(n.kwargs["activation"] == "relu" for n in fused)
    x = _input("im2col")
    assert_matches(g(x.numpy()), _reference(t, x), rtol=RTOL)
    assert g.fuse().describe() == g.describe()  # idempotent


def test_fuse_leaves_shared_and_broadcast_patterns_alone():
    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(4, 4, 3, padding=1)
            self.bn = tnn.BatchNorm2d(4)
            self.pool = tnn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            a = self.conv(x)  # used twice: neither folded nor fused
            b = self.bn(a)
            c = F.relu(self.conv(b) + self.pool(b))  # broadcast skip connection: runs unfused
            return c + a

    t = torch_nets._randomise(Net(), 1)
    x = torch.randn(1, 4, 6, 6)
    g = from_torch(t).fuse()
    assert "bn.running_mean" in g.state_dict()
    assert_matches(g(x.numpy()), _reference(t, x), rtol=RTOL)


def test_fuse_needs_eval_mode():
    t = torch_nets.build("vgg").train()
    with pytest.raises(ValueError, match="training mode.*eval"):
        from_torch(t).fuse()


def test_graph_modes_and_backends_reach_every_layer():
    t = torch_nets.build("squeezenet")
    g = from_torch(t)
    assert not g.training and not any(m.training for m in g.modules())
    assert g.train().training and all(m.training for m in g.modules())
    g.eval().to_backend("im2col")
    assert {m.backend for m in g.modules()} == {"im2col"}
    with pytest.raises(TypeError, match="1 input"):
        g(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1))


def test_unsupported_op_names_op_node_source_line_and_patched():
    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.special.erf(self.conv(x))

    with pytest.raises(UnsupportedOpError) as info:
        from_torch(Net())
    msg = str(info.value)
    assert "erf" in msg and "node 'special_erf'" in msg and "test_graph.py:" in msg
    assert "return torch.special.erf(self.conv(x))" in msg and "patched(" in msg

    class Layer(tnn.Module):
        def __init__(self):
            super().__init__()
            self.act = tnn.GELU()

        def forward(self, x):
            return self.act(x)

    with pytest.raises(UnsupportedOpError, match=r"GELU.*node 'act'.*patched\("):
        from_torch(Layer())


def test_untraceable_forward_says_so_and_points_to_patched():
    class Net(tnn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # control flow on a tensor value

    with pytest.raises(UnsupportedOpError, match=r"torch.fx cannot trace Net.*patched\("):
        from_torch(Net())


class _ShapeBranch(tnn.Module):
    """A forward torch.fx cannot trace (Python control flow on a size), which torch.export handles."""

    def __init__(self):
        super().__init__()
        self.conv = tnn.Conv2d(3, 4, 3, padding=1)
        self.bn = tnn.BatchNorm2d(4)

    def forward(self, x):
        if x.shape[-1] > 8:
            x = F.max_pool2d(x, 2)
        return F.relu(self.bn(self.conv(x)) + x.mean(1, keepdim=True))


def test_untraceable_by_fx_converts_through_torch_export_with_example_inputs():
    t = torch_nets._randomise(_ShapeBranch(), 2)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(UnsupportedOpError, match=r"torch.fx cannot trace.*example_inputs.*patched\("):
        from_torch(t)
    g = from_torch(t, example_inputs=(x,), backend="im2col")
    assert list(g.state_dict()) == list(t.state_dict())
    assert_matches(g(x.numpy()), _reference(t, x), rtol=RTOL)
    assert_matches(g.fuse()(x.numpy()), _reference(t, x), rtol=RTOL)
    assert "bn.weight" not in g.state_dict()


@pytest.mark.parametrize("name", ["hand_resnet", "densenet"])
def test_torch_export_path_matches_torch_and_fuses(name):
    from fastconv.interop._export import graph_from_export

    t = torch_nets.build(name)
    x = _input("im2col")
    g = graph_from_export(t, (x,)).to_backend("im2col")
    assert list(g.state_dict()) == list(t.state_dict())
    assert_matches(g(x.numpy()), _reference(t, x), rtol=RTOL)
    assert_matches(g.fuse()(x.numpy()), _reference(t, x), rtol=RTOL)


def test_functional_weights_and_indexing():
    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.w = tnn.Parameter(torch.randn(6, 3, 3, 3))
            self.register_buffer("scale", torch.rand(1, 6, 1, 1) + 0.5)
            self.fc = tnn.Parameter(torch.randn(4, 6))

        def forward(self, x):
            y = F.conv2d(x, self.w, None, 1, 1) * self.scale
            a, b = y.chunk(2, dim=1)
            y = torch.cat([b, a], 1)[:, :, 1:-1].permute(0, 1, 3, 2).contiguous()
            y = F.adaptive_max_pool2d(y, (2, 3)) - F.avg_pool2d(y, 2).mean()
            y = y.flatten(2).transpose(1, 2).mean(1)
            return F.softmax(F.linear(y, self.fc), dim=-1) / 2 + torch.clamp(y[:, :4], min=0)

    torch.manual_seed(0)
    t = Net()
    x = torch.randn(2, 3, 9, 10)
    g = from_torch(t, backend="im2col")
    assert set(g.state_dict()) == {"w", "scale", "fc"}
    assert_matches(g(x.numpy()), _reference(t, x), rtol=RTOL)


@pytest.mark.parametrize(
    "layer, fn",
    [
        (nn.ReLU6(), F.relu6),
        (nn.LeakyReLU(0.3), lambda x: F.leaky_relu(x, 0.3)),
        (nn.Hardtanh(-0.5, 2.0), lambda x: F.hardtanh(x, -0.5, 2.0)),
        (nn.Sigmoid(), torch.sigmoid),
        (nn.Tanh(), torch.tanh),
        (nn.SiLU(), F.silu),
        (nn.Hardswish(), F.hardswish),
        (nn.Hardsigmoid(), F.hardsigmoid),
        (nn.Softmax(1), lambda x: F.softmax(x, 1)),
        (nn.AdaptiveMaxPool2d((3, 5)), lambda x: F.adaptive_max_pool2d(x, (3, 5))),
        (nn.AdaptiveMaxPool2d(1), lambda x: F.adaptive_max_pool2d(x, 1)),
        (nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0), lambda x: F.local_response_norm(x, 3, 1e-2, 0.75, 2.0)),
        (nn.Pad((1, 2, 0, 1)), lambda x: F.pad(x, (1, 2, 0, 1))),
        (nn.Mean((2, 3), keepdim=True), lambda x: x.mean((2, 3), keepdim=True)),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_match_torch(layer, fn, dtype):
    x = np.random.default_rng(4).standard_normal((2, 5, 7, 6)).astype(dtype) * 4
    x[0, 0, 0, :3] = [-100.0, 100.0, 0.0]  # saturating values
    y = layer(x)
    assert y.dtype == x.dtype
    assert_matches(y, fn(torch.from_numpy(x).double()).numpy(), dtype=dtype, rtol=RTOL if dtype == "float32" else 1e-12)


def test_dropout_is_identity_in_eval_and_scales_in_training():
    x = np.ones((4, 1000), np.float32)
    d = nn.Dropout(0.25)
    assert d.eval()(x) is x
    y = d.train()(x)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)} and 0.15 < (y == 0).mean() < 0.35
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def _readme_graph_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Any torch or ONNX CNN: graphs", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_graph_example_runs_on_the_torch_redefinition(tmp_path, monkeypatch):
    """The README's torchvision flow, verbatim, with torchvision's resnet18 from tests/torch_resnet.py
    (torchvision's ResNet re-defined in torch; torchvision itself cannot be installed here)."""
    torch_resnet = pytest.importorskip("torch_resnet")
    pytest.importorskip("onnx")
    require("c")
    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(resnet18=lambda weights=None: torch_resnet.build("resnet18"))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.chdir(tmp_path)
    code = _readme_graph_example()
    assert "torchvision.models.resnet18" in code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "resnet18.onnx").exists()


@pytest.mark.parametrize("name", ["hand_resnet", "catnet", "mobilenet_v2", "densenet"])
def test_to_torch_round_trip_of_a_graph(name):
    from fastconv.interop.torch import to_torch

    t = torch_nets.build(name)
    x = _input("im2col")
    g = from_torch(t)
    back = to_torch(g)
    assert isinstance(back, torch.fx.GraphModule) and not back.training
    assert list(back.state_dict()) == list(t.state_dict())
    with torch.no_grad():
        assert_matches(back(x).numpy(), _reference(t, x), rtol=RTOL)
        assert_matches(to_torch(g.fuse())(x).numpy(), _reference(t, x), rtol=RTOL)  # fused: conv, add, relu again
