"""fastconv.models ResNets with torchvision-style weights against torch, on every backend.

The reference is tests/torch_resnet.py (torchvision's ResNet re-defined in torch; torchvision
itself cannot be installed beside the pinned torch) with random weights and trained-looking batch
norms, run in float64.  fastconv runs in float32 with the same (float32) weights.
"""

import json

import numpy as np
import pytest

from nn_helpers import BACKENDS, assert_matches, fast_backend, require, spy_backend

import fastconv
from fastconv import models, nn
from fastconv.bench import resnet_command as command

torch = pytest.importorskip("torch")
torch_resnet = pytest.importorskip("torch_resnet")


class Pair:
    """A torch reference model, its fastconv twin loaded from its state_dict, an input and torch's output."""

    def __init__(self, arch, shape, num_classes=1000, reference_dtype=torch.float64):
        self.arch = arch
        self.torch = torch_resnet.build(arch, num_classes=num_classes)
        self.model = models.ARCHS[arch](num_classes=num_classes).eval()
        self.model.load_state_dict(self.torch.state_dict())
        self.x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        ref = self.torch.to(reference_dtype)
        with torch.no_grad():
            self.expected = ref(torch.from_numpy(self.x).to(reference_dtype)).numpy()
        self.torch.float()


_pairs = {}


def pair(arch, shape=(1, 3, 32, 32), **kwargs) -> Pair:
    key = (arch, shape, tuple(sorted(kwargs.items())))
    if key not in _pairs:
        _pairs[key] = Pair(arch, shape, **kwargs)
    return _pairs[key]


@pytest.fixture(autouse=True, scope="module")
def _free_models():
    yield
    _pairs.clear()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnet_matches_torch(arch, backend):
    require(backend)
    # naive is the plain-Python specification: one small image; the others get a batch of two.
    p = pair(arch, (1, 3, 32, 32)) if backend == "naive" else pair(arch, (2, 3, 32, 32))
    assert_matches(p.model.to_backend(backend)(p.x), p.expected, what=f"{arch} on {backend}")


@pytest.mark.parametrize("arch", ["resnet101", "resnet152", "resnext50_32x4d"])
def test_deep_and_wide_resnets_match_torch(arch):
    # torch's float32 output as the reference: float64 is slow for these, and its own error
    # (about 1e-6 relative) is far below the tolerance.
    p = pair(arch, num_classes=10, reference_dtype=torch.float32)
    backend = fast_backend()
    assert_matches(p.model.to_backend(backend)(p.x), p.expected, what=f"{arch} on {backend}")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet152"])
def test_state_dict_is_torchvisions(arch):
    ours = models.ARCHS[arch]().state_dict()
    theirs = torch_resnet.build(arch).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert "layer4.0.downsample.1.num_batches_tracked" in ours


def test_structure_and_names():
    m = models.resnet50()
    names = [n for n, _ in m.named_children()]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    block = m.layer2[0]
    assert isinstance(block, models.Bottleneck)
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)  # v1.5: the stride sits on the 3x3
    assert block.downsample[0].stride == (2, 2)
    assert m.layer1[1].downsample is None
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert m.fc.weight.shape == (1000, 2048)
    assert models.resnet18(num_classes=7).fc.weight.shape == (7, 512)


def test_mixing_backends_per_layer_changes_nothing():
    p = pair("resnet18", (1, 3, 32, 32))
    available = [b for b in BACKENDS if b in fastconv.available_backends()]
    # naive takes the stages where images are small; the rest cycle through the other backends.
    p.model.to_backend(None)
    plan = {
        "conv1": "im2col",
        "maxpool": available[0],
        "layer1": available[-1],
        "layer2": available[1 % len(available)],
        "layer3": "naive",
        "layer4": available[2 % len(available)],
        "fc": available[0],
    }
    for name, backend in plan.items():
        getattr(p.model, name).to_backend(backend)
    p.model.layer1[1].bn2.backend = "naive"
    assert p.model.layer3[0].conv1.backend == "naive" and p.model.bn1.backend is None
    mixed = p.model(p.x)
    single = p.model.to_backend("im2col")(p.x)
    assert_matches(mixed, p.expected, what="mixed backends")
    np.testing.assert_allclose(mixed, single, rtol=1e-5, atol=1e-5 * np.abs(single).max())


def test_a_subtree_backend_receives_exactly_its_layers():
    p = pair("resnet18", (1, 3, 32, 32))
    p.model.to_backend("im2col")
    with spy_backend() as calls:
        p.model.layer3.to_backend("spy")
        y = p.model(p.x)
    ops = [op for op, _ in calls]
    # layer3 of resnet18: 2 blocks x 2 convs + a downsample conv, one batch norm each, 2 relus per block
    assert ops.count("conv2d") == 5 and ops.count("batch_norm") == 5 and ops.count("relu") == 4
    assert {pr.c for op, pr in calls if op == "conv2d"} == {128, 256}  # only layer3's channel counts
    assert_matches(y, p.expected)


def test_fuse_keeps_the_output_and_uses_the_residual_epilogue():
    p = pair("resnet50", (1, 3, 32, 32))
    model = models.resnet50().eval()
    model.load_state_dict(p.torch.state_dict())
    model.to_backend("im2col")
    unfused = model(p.x)
    assert model.fuse() is model
    keys = model.state_dict()
    assert not any(".bn" in k or "downsample.1" in k for k in keys) and "conv1.bias" in keys
    fused = model(p.x)
    # Folding rounds the weights once in float32: the outputs agree to float32 rounding.
    np.testing.assert_allclose(fused, unfused, rtol=1e-5, atol=1e-5 * np.abs(unfused).max())
    assert_matches(fused, p.expected, what="fused resnet50")
    with spy_backend() as calls:
        model.to_backend("spy")(p.x)
    convs = [pr for op, pr in calls if op == "conv2d"]
    assert len(convs) == 53 and not [op for op, _ in calls if op in ("batch_norm", "relu")]
    assert sum(pr.residual and pr.activation == "relu" for pr in convs) == 16  # one per bottleneck
    assert model.fuse() is model  # a second fuse finds nothing left to fold
    np.testing.assert_array_equal(model.to_backend("im2col")(p.x), fused)


def test_fuse_refuses_training_mode():
    with pytest.raises(ValueError, match=r"bn1 is in training mode.*eval\(\)"):
        models.resnet18().fuse()


def test_float64_model_matches_torch_float64():
    p = pair("resnet18", (1, 3, 32, 32))
    model = models.resnet18(dtype="float64").eval()
    model.load_state_dict(p.torch.state_dict())
    assert model.fc.weight.dtype == np.float64
    assert_matches(
        model.to_backend("im2col")(p.x.astype(np.float64)),
        p.expected,
        "float64",
        rtol=1e-9 * 64,
        what="float64 resnet18",
    )


def test_loading_the_wrong_checkpoint_is_a_clear_error():
    state = torch_resnet.build("resnet18", num_classes=10).state_dict()
    with pytest.raises(ValueError) as info:
        models.resnet34().load_state_dict(state)
    msg = str(info.value)
    assert "for ResNet" in msg and "missing keys" in msg and "layer1.2.conv1.weight" in msg
    assert "fc.weight: checkpoint has shape (10, 512), the model has (1000, 512)" in msg
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): layer1.0.conv3.weight"):
        models.resnet18(num_classes=10).load_state_dict(models.resnet50(num_classes=10).state_dict())


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: models.resnet18(num_classes=0), ValueError, "num_classes must be positive"),
        (lambda: models.resnet18(num_classes="10"), TypeError, "num_classes must be an int"),
        (lambda: models.resnet18(weights="IMAGENET1K_V1"), TypeError, "weights"),
        (lambda: models.ResNet(nn.Conv2d, [2, 2, 2, 2]), TypeError, "block must be BasicBlock or Bottleneck"),
        (lambda: models.ResNet(models.BasicBlock, [2, 2, 2]), ValueError, "layers must be 4 block counts"),
        (lambda: models.ResNet(models.BasicBlock, [2, 0, 2, 2]), ValueError, "layers must be positive"),
        (lambda: models.resnet18(groups=2), ValueError, "BasicBlock only supports groups=1"),
        (lambda: models.resnet18(replace_stride_with_dilation=[True]), ValueError, "replace_stride_with_dilation"),
        (lambda: models.resnet18(dtype="int8"), TypeError, "dtype"),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_input_is_named():
    model = models.resnet18(num_classes=3).eval()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="input has 1 channels"):
        model(np.zeros((1, 1, 32, 32), np.float32))


def test_resnet_command(tmp_path, capsys):
    out, weights = tmp_path / "r.json", tmp_path / "w.npz"
    np.savez(weights, **{k: v.numpy() for k, v in torch_resnet.build("resnet18", num_classes=10).state_dict().items()})
    status = command.main(
        [
            "--arch",
            "resnet18",
            "--size",
            "32",
            "--repeat",
            "2",
            "--backend",
            "im2col",
            "--backend",
            "torch,im2col",
            "--threads",
            "1",
            "--num-classes",
            "10",
            "--weights",
            str(weights),
            "--json",
            str(out),
        ]
    )
    assert status == 0
    text = capsys.readouterr().out
    assert "resnet18, batch 1, 32x32" in text and "torch (eager)" in text and "w.npz" in text
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["im2col", "torch", "onnxruntime", "torch (eager)"]  # onnxruntime: a row either way
    for name in ("im2col", "torch"):
        assert rows[name]["max_rel_diff"] < 1e-4 and rows[name]["median_ms"] > 0


def test_resnet_command_reports_a_backend_that_cannot_run(tmp_path, capsys):
    out = tmp_path / "r.json"
    # at 224x224 the stem is too large for the naive backend: it refuses, the others still run
    status = command.main(
        [
            "--arch",
            "resnet18",
            "--backend",
            "naive,im2col",
            "--repeat",
            "1",
            "--fuse",
            "--num-classes",
            "10",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert "too large" in rows["naive"]["error"] and rows["im2col"]["max_rel_diff"] < 1e-4
    assert "cannot run" in capsys.readouterr().out


def test_resnet_command_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        command.main(["--backend", "nope"])
    assert info.value.code == 2 and "unknown backend 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["--batch", "0"])
    with pytest.raises(SystemExit):
        command.main(["--arch", "vgg16"])
