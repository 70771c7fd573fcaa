"""Training: whole-model gradients, the loss, SGD and the one-cycle schedule against torch, and
`fastconv train`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nn_helpers import require

from fastconv import grad, models, nn, optim
from fastconv.cli import main as cli_main
from fastconv.interop.torch import to_torch

GRAD_BACKENDS = ["naive", "im2col", "numba", "c", "torch"]


def _tiny_sequential():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect", groups=1),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _small_resnet():
    return models.ResNet(models.BasicBlock, [1, 1, 1, 1], num_classes=4)


def _check_gradients(model, x, backend, tol):
    """Loss, input gradient and every parameter gradient against torch autograd on a twin model."""
    model.train().to_backend(backend)
    twin = to_torch(model).train()
    target = np.arange(len(x)) % 3
    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(x), target)
    grad_x = model.backward(criterion.backward())
    xt = torch.tensor(x, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(target))
    loss_t.backward()
    np.testing.assert_allclose(loss, loss_t.item(), rtol=tol)
    scale = max(1e-30, float(np.abs(xt.grad.numpy()).max()))
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=tol, atol=tol * scale, err_msg="input gradient")
    expected = dict(twin.named_parameters())
    names = [name for name, _ in model.named_grads()]
    assert names == [name for name, _ in model.named_parameters()] == list(expected)
    # One scale for all: a gradient that is zero in exact arithmetic (a bias before batch norm) is rounding.
    scale = max(float(np.abs(t.grad.numpy()).max()) for t in expected.values())
    for name, g in model.named_grads():
        assert g is not None and g.dtype == x.dtype, name
        np.testing.assert_allclose(g, expected[name].grad.numpy(), rtol=tol, atol=tol * scale, err_msg=name)
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward(np.zeros((len(x), 3), x.dtype))
    model.zero_grad()
    assert all(g is None for _, g in model.named_grads())


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_sequential_gradients_match_torch(backend):
    require(backend)
    nn.init.manual_seed(1)
    x = np.random.default_rng(0).standard_normal((3, 2, 7, 7))
    _check_gradients(_tiny_sequential().astype(np.float64), x, backend, 1e-9)


# naive is too slow for a ResNet and numba's ResNet-sized compilations cost half a minute; both are
# covered by the Sequential test (same layer code) and the op tests of the backward kernels.
@pytest.mark.parametrize("backend", ["c", "torch"])
def test_resnet_gradients_match_torch(backend):
    require(backend)
    nn.init.manual_seed(2)
    model = _small_resnet().astype(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16))
    model.fc = nn.Linear(512, 3).astype(np.float64)
    _check_gradients(model, x, backend, 1e-8)


def test_bottleneck_gradients_match_torch():
    nn.init.manual_seed(3)
    model = models.ResNet(models.Bottleneck, [1, 1, 1, 1], num_classes=3).astype(np.float64)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16))
    _check_gradients(model, x, next(b for b in ("c", "im2col") if b in _available()), 1e-7)


def _available():
    from fastconv import dispatch

    return dispatch.available_backends()


def test_fused_epilogue_and_eval_batch_norm_gradients():
    """Conv2d's relu/residual epilogue, and an eval-mode batch norm under enable_grad()."""
    rng = np.random.default_rng(4)
    conv, bn = nn.Conv2d(3, 3, 3, padding=1).astype(np.float64), nn.BatchNorm2d(3).astype(np.float64)
    bn.running_mean, bn.running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    bn.weight, bn.bias = rng.standard_normal(3), rng.standard_normal(3)
    x, res, g = (rng.standard_normal((2, 3, 5, 5)) for _ in range(3))
    conv.train()
    y = conv(x, residual=res, activation="relu")
    gx, gres = conv.backward(g)
    tconv, tbn = to_torch(conv), to_torch(bn).eval()
    xt, rt = torch.tensor(x, requires_grad=True), torch.tensor(res, requires_grad=True)
    yt = torch.relu(tconv(xt) + rt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    for a, b in (
        (gx, xt.grad),
        (gres, rt.grad),
        (conv._grads["weight"], tconv.weight.grad),
        (conv._grads["bias"], tconv.bias.grad),
    ):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
    bn.eval()
    with nn.enable_grad():
        bn(x)
    gx = bn.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    tbn(xt).backward(torch.from_numpy(g))
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn._grads["weight"], tbn.weight.grad.numpy(), rtol=1e-10)
    with nn.no_grad():
        conv.train()(x)
    with pytest.raises(RuntimeError, match="needs a forward"):
        conv.backward(g)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(reduction, smoothing):
    rng = np.random.default_rng(5)
    logits, target = rng.standard_normal((5, 4)) * 10, rng.integers(0, 4, 5)
    criterion = nn.CrossEntropyLoss(reduction, smoothing)
    loss = criterion(logits, target)
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(
        lt, torch.from_numpy(target), reduction=reduction, label_smoothing=smoothing
    )
    up = np.linspace(0.5, 1.5, 5) if reduction == "none" else 1.0
    ref.backward(torch.tensor(up))
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(criterion.backward(up), lt.grad.numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="target"):
        criterion(logits, np.array([0, 1, 2, 3, 4]))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
        dict(momentum=0.5, dampening=0.3, weight_decay=0.1),
        dict(),
    ],
)
def test_sgd_matches_torch(kwargs):
    rng = np.random.default_rng(6)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    opt, topt = optim.SGD(params, lr=0.05, **kwargs), torch.optim.SGD(tparams, lr=0.05, **kwargs)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in params]
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g)
        opt.step(grads)
        topt.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(params, lr=0.1, nesterov=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(three_phase=True, pct_start=0.25),
        dict(anneal_strategy="linear", cycle_momentum=False, div_factor=10),
    ],
)
def test_one_cycle_matches_torch(kwargs):
    opt = optim.SGD([np.zeros(1)], lr=1.0, momentum=0.9)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
    sched = optim.OneCycleLR(opt, max_lr=0.5, total_steps=23, **kwargs)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.5, total_steps=23, **kwargs)
    for _ in range(23):
        group = topt.param_groups[0]
        assert opt.lr == pytest.approx(group["lr"], rel=1e-12)
        assert opt.momentum == pytest.approx(group["momentum"], rel=1e-12)
        topt.step()
        if tsched.last_epoch < 22:
            sched.step()
            tsched.step()


def test_training_steps_track_torch():
    """A few SGD steps on the digits ResNet in float64: the losses and weights stay torch's."""
    from fastconv.train import digits_resnet

    nn.init.manual_seed(7)
    model = digits_resnet(4, num_classes=4, dtype="float64").train()
    twin = to_torch(model).train()
    backend = next(b for b in ("c", "numba", "im2col", "torch") if b in _available())
    model.to_backend(backend)
    opt = optim.SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    criterion, rng = nn.CrossEntropyLoss(), np.random.default_rng(8)
    for _ in range(4):
        x, y = rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 4, 6)
        loss = criterion(model(x), y)
        opt.zero_grad()
        model.backward(criterion.backward())
        opt.step()
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-9)
    tstate = twin.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, tstate[name].numpy(), rtol=1e-7, atol=1e-9, err_msg=name)


def test_grad_functions_validate_and_match_torch():
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((6, 2, 3, 2))
    g = rng.standard_normal((2, 6, 3, 5))
    kw = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(
        grad.conv2d_input(x.shape, w, g, **kw),
        torch.nn.grad.conv2d_input(x.shape, torch.from_numpy(w), torch.from_numpy(g), **kw),
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        grad.conv2d_weight(x, w.shape, g, **kw),
        torch.nn.grad.conv2d_weight(torch.from_numpy(x), w.shape, torch.from_numpy(g), **kw),
        rtol=1e-12,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="grad_output"):
        grad.conv2d_input(x.shape, w, g[:, :, :2], **kw)
    with pytest.raises(ValueError, match="channels"):
        grad.conv2d_weight(x, (6, 3, 3, 2), g, **kw)
    with pytest.raises(ValueError, match="unknown backend"):
        grad.relu_input(x, x, backend="nope")


def test_train_command_smoke(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png, js = tmp_path / "curves.png", tmp_path / "run.json"
    assert (
        cli_main(
            [
                "train",
                "--steps",
                "3",
                "--batch-size",
                "16",
                "--width",
                "4",
                "--quiet",
                "--plot",
                str(png),
                "--json",
                str(js),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test accuracy" in out and "torch from the same start" in out
    assert png.stat().st_size > 1000
    import json

    result = json.loads(js.read_text())
    assert result["steps"] == 3 and len(result["history"]["loss"]) == 3
    assert result["max_loss_rel_diff"] < 1e-3  # same weights and batches: the first steps agree
