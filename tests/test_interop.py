"""fastconv.interop.torch: from_torch / to_torch conversions and patch / unpatch of torch models."""

import numpy as np
import pytest

from nn_helpers import BACKENDS, assert_matches, require, spy_backend

import fastconv
from fastconv import models, nn

torch = pytest.importorskip("torch")
torch_resnet = pytest.importorskip("torch_resnet")
from fastconv.interop.torch import from_torch, patch, patched, to_torch, unpatch  # noqa: E402

tnn = torch.nn
X32 = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32))


def _reference(tmodel, x):
    with torch.no_grad():
        return tmodel(x).numpy()


def _plain_stack():
    """A Sequential with every supported layer type and non-default options."""
    torch.manual_seed(3)
    net = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, stride=1, padding="same", padding_mode="replicate"),
        tnn.BatchNorm2d(8, momentum=None),
        tnn.ReLU(inplace=True),
        tnn.MaxPool2d(3, 2, 1, ceil_mode=True),
        tnn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False),
        tnn.BatchNorm2d(8, affine=False),
        tnn.AvgPool2d(2, count_include_pad=False),
        tnn.Sequential(tnn.Identity(), tnn.AdaptiveAvgPool2d((2, 3))),
        tnn.Flatten(),
        tnn.Linear(48, 5),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def resnet18():
    return torch_resnet.build("resnet18", num_classes=10)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_from_torch_resnet(arch):
    t = torch_resnet.build(arch, num_classes=10)
    m = from_torch(t, backend="im2col")
    assert isinstance(m, models.ResNet) and isinstance(
        m.layer1[0], models.BasicBlock if arch == "resnet18" else models.Bottleneck
    )
    assert {x.backend for x in m.modules()} == {"im2col"} and not m.training
    ours, theirs = m.state_dict(), t.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
    assert_matches(m(X32.numpy()), _reference(t, X32), what=f"from_torch({arch})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_torch_plain_stack(backend):
    require(backend)
    t = _plain_stack()
    m = from_torch(t, backend=backend)
    assert [type(x).__name__ for x in m] == [type(x).__name__ for x in t]
    x = torch.randn(2, 3, 11, 13)
    assert_matches(m(x.numpy()), _reference(t.double(), x.double()), what=f"plain stack on {backend}")


def test_from_torch_copies_training_mode_and_batch_norm_state():
    t = _plain_stack().train()
    t[5].eval()
    m = from_torch(t)
    assert m.training and m[1].training and not m[5].training
    assert m[1].momentum is None and m[5].affine is False and m[0].padding_mode == "replicate"
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        expected = t(x).numpy()
    assert_matches(m(x.numpy()), expected)
    np.testing.assert_allclose(m[1].running_mean, t[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    assert int(m[1].num_batches_tracked) == int(t[1].num_batches_tracked) == 1


def test_from_torch_names_the_unsupported_layer():
    # graph=False: only the module-tree conversion; any other model goes through the graph (test_graph.py)
    t = tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.Sequential(tnn.ReLU(), tnn.GELU()))
    with pytest.raises(
        TypeError, match=r"unsupported layer 'Sequential\.1\.1' \(torch\.nn\.modules\.activation\.GELU\)"
    ):
        from_torch(t, graph=False)
    with pytest.raises(TypeError, match="return_indices"):
        from_torch(tnn.MaxPool2d(2, return_indices=True))
    with pytest.raises(TypeError, match="float16"):
        from_torch(tnn.Conv2d(1, 1, 1).half())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch(np.zeros(3))

    class Custom(tnn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="'Custom'.*Custom"):
        from_torch(Custom(), graph=False)
    assert from_torch(Custom())(np.ones(3)).tolist() == [1, 1, 1]
    # a class called BasicBlock with other children is not torchvision's: it is traced instead
    block = torch_resnet.BasicBlock(4, 4).eval()
    block.extra = tnn.ReLU()
    with pytest.raises(TypeError, match="not torchvision's"):
        from_torch(block, graph=False)
    x = X32[:, :3].repeat(1, 2, 1, 1)[:, :4]
    assert_matches(from_torch(block)(x.numpy()), _reference(block, x), what="traced BasicBlock")


def test_to_torch_round_trip(resnet18):
    m = from_torch(resnet18)
    back = to_torch(m)
    assert not back.training
    assert list(back.state_dict()) == list(resnet18.state_dict())
    for k, v in resnet18.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    np.testing.assert_array_equal(_reference(back, X32), _reference(resnet18, X32))
    m.fuse()
    assert_matches(_reference(to_torch(m), X32), _reference(resnet18, X32), what="to_torch(fused)")
    stack = from_torch(_plain_stack())
    x = torch.randn(1, 3, 8, 8)
    np.testing.assert_array_equal(_reference(to_torch(stack), x), _reference(_plain_stack(), x))
    with pytest.raises(TypeError, match="fastconv.nn.Module"):
        to_torch(tnn.ReLU())
    assert not hasattr(stack, "to_torch")  # the model layer never reaches up to interop


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_runs_torch_layers_through_fastconv(backend, resnet18):
    require(backend)
    expected = _reference(resnet18.double(), X32.double())
    resnet18.float()
    with torch.no_grad():
        y = patch(resnet18, backend=backend)(X32)
    try:
        assert isinstance(y, torch.Tensor)
        assert_matches(y.numpy(), expected, what=f"patched resnet18 on {backend}")
    finally:
        assert unpatch(resnet18) is resnet18
    assert not any("forward" in m.__dict__ for m in resnet18.modules())


def test_patch_routes_every_conv_pool_and_batch_norm(resnet18):
    with spy_backend() as calls, torch.inference_mode():
        patch(resnet18, backend="spy")(X32)
    unpatch(resnet18)
    ops = [op for op, _ in calls]
    n_conv = sum(isinstance(m, tnn.Conv2d) for m in resnet18.modules())
    assert ops.count("conv2d") == n_conv == 20
    assert ops.count("batch_norm") == n_conv
    assert ops.count("max_pool2d") == 1 and ops.count("adaptive_avg_pool2d") == 1
    assert "relu" not in ops  # torch keeps everything else
    with spy_backend() as calls, torch.no_grad():
        resnet18(X32)
    assert calls == []  # unpatched: torch again


def test_patch_needs_no_grad_and_unpatch_restores_autograd(resnet18):
    with patched(resnet18, backend="im2col"):
        with pytest.raises(RuntimeError, match=r"'conv1' runs through fastconv.*torch.no_grad\(\)"):
            resnet18(X32)
    y = resnet18(X32)
    assert y.requires_grad  # torch's own forward again
    y.sum().backward()
    assert resnet18.conv1.weight.grad is not None
    resnet18.zero_grad(set_to_none=True)


def test_patch_twice_switches_backend_and_unpatch_restores_the_original(resnet18):
    conv = resnet18.conv1
    own = lambda x: x  # noqa: E731 - an instance forward someone else installed
    conv.forward = own
    patch(resnet18, backend="naive")
    patch(resnet18, backend="im2col")
    with spy_backend() as calls:
        patch(resnet18, backend="spy")
        with torch.no_grad():
            resnet18.layer1(torch.randn(1, 64, 8, 8))
    assert calls
    unpatch(resnet18)
    assert conv.forward is own
    del conv.forward


def test_patched_batch_norm_training_updates_running_stats_like_torch():
    for momentum in (0.1, None):
        t = tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.BatchNorm2d(4, momentum=momentum)).train()
        twin = tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.BatchNorm2d(4, momentum=momentum)).train()
        twin.load_state_dict(t.state_dict())
        patch(t, backend="im2col")
        with torch.no_grad():
            for _ in range(3):
                x = torch.randn(4, 3, 6, 6)
                assert_matches(t(x).numpy(), twin(x).numpy(), what=f"momentum={momentum} output")
        for key in ("1.running_mean", "1.running_var"):
            assert_matches(t.state_dict()[key].numpy(), twin.state_dict()[key].numpy(), what=key)
        assert int(t[1].num_batches_tracked) == int(twin[1].num_batches_tracked) == 3


def test_patch_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        patch(models.resnet18())
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        patch(tnn.Conv2d(1, 1, 1), backend="nope")
    with pytest.raises(ValueError, match="return_indices"):
        patch(tnn.Sequential(tnn.MaxPool2d(2, return_indices=True)))
    bn = patch(tnn.BatchNorm2d(3).eval())
    with torch.no_grad(), pytest.raises(ValueError, match="patched BatchNorm2d.*4D input"):
        bn(torch.randn(2, 3, 4))
    conv = patch(tnn.Conv2d(3, 2, 1))
    with torch.no_grad(), pytest.raises(TypeError, match="patched Conv2d.*float16"):
        conv(torch.randn(1, 3, 4, 4).half())


def test_fastconv_imports_without_torch_and_interop_loads_lazily():
    import subprocess
    import sys

    code = (
        "import sys, fastconv, fastconv.nn, fastconv.models, fastconv.interop; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "fastconv.models.resnet18(num_classes=2); assert 'torch' not in sys.modules; "
        "fastconv.interop.torch; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert fastconv.nn is nn and fastconv.models is models
