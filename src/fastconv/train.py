"""``fastconv train``: a small ResNet trained on scikit-learn's handwritten digits, from NumPy.

The digits (1797 grey 8x8 images, bundled with scikit-learn: no download) are split 80/20,
stratified, and normalised.  The network is a stem convolution and three residual stages
(fastconv.models.BasicBlock) of 16, 32 and 64 channels, global average pooling and a linear
classifier, trained with SGD (momentum, weight decay) under a one-cycle schedule.

With ``--compare-torch`` (the default when torch is installed) a torch copy of the same network,
same initial weights, same batches in the same order and the same optimiser trains alongside;
the step-by-step loss difference says whether fastconv's gradients track torch's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import nn, optim
from .models.resnet import BasicBlock, conv1x1


def digits_resnet(width: int = 16, num_classes: int = 10, dtype="float32") -> nn.Sequential:
    """Stem 3x3 conv, three BasicBlock stages (width, 2x and 4x, the last two with stride 2), pool, fc."""

    def stage(inplanes, planes, stride):
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        return BasicBlock(inplanes, planes, stride, down)

    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        stage(w, w, 1),
        stage(w, 2 * w, 2),
        stage(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    ).astype(dtype)


def load_digits(dtype="float32", seed: int = 0):
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) normalised with the training set's statistics."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = data.images.astype(np.float64)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.2, stratify=data.target, random_state=seed)
    mean, std = x_tr.mean(), x_tr.std()
    return (
        ((x_tr - mean) / std).astype(dtype),
        y_tr.astype(np.int64),
        ((x_te - mean) / std).astype(dtype),
        y_te.astype(np.int64),
    )


def accuracy(model, x, y, batch: int = 256) -> float:
    model.eval()
    with nn.no_grad():
        hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return hits / len(x)


class _TorchTwin:
    """The same network, weights, batches and optimiser in torch: the reference losses."""

    def __init__(self, model, args, total_steps):
        import torch

        from .interop.torch import to_torch

        self.torch = torch
        torch.set_num_threads(args.threads)
        self.model = to_torch(model).train()
        self.opt = torch.optim.SGD(
            self.model.parameters(),
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            nesterov=args.nesterov,
        )
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=args.lr, total_steps=total_steps)
        self.seconds = 0.0

    def step(self, xb, yb) -> float:
        t0 = time.perf_counter()
        torch = self.torch
        loss = torch.nn.functional.cross_entropy(self.model(torch.from_numpy(xb)), torch.from_numpy(yb))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.seconds += time.perf_counter() - t0
        return float(loss.detach())

    def accuracy(self, x, y) -> float:
        self.model.eval()
        with self.torch.no_grad():
            acc = float((self.model(self.torch.from_numpy(x)).argmax(1).numpy() == y).mean())
        self.model.train()
        return acc


def train(args, console=None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import threads

    threads.set_num_threads(args.threads)
    x_tr, y_tr, x_te, y_te = load_digits(args.dtype, args.seed)
    nn.init.manual_seed(args.seed)
    model = digits_resnet(args.width, dtype=args.dtype).to_backend(args.backend).train()
    steps_per_epoch = -(-len(x_tr) // args.batch_size)
    total = args.epochs * steps_per_epoch if args.steps is None else args.steps
    twin = _TorchTwin(model, args, total) if args.compare_torch else None
    criterion = nn.CrossEntropyLoss()
    opt = optim.SGD(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov)
    sched = optim.OneCycleLR(opt, max_lr=args.lr, total_steps=total)
    rng = np.random.default_rng(args.seed)
    history = {"loss": [], "torch_loss": [], "epoch_step": [], "test_acc": [], "torch_test_acc": []}
    seconds, step = 0.0, 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, disable=args.quiet, transient=False) as progress:
        task = progress.add_task(f"train on {args.backend}", total=total, status="")
        while step < total:
            order = rng.permutation(len(x_tr))
            for start in range(0, len(order), args.batch_size):
                if step == total:
                    break
                idx = order[start : start + args.batch_size]
                xb, yb = x_tr[idx], y_tr[idx]
                t0 = time.perf_counter()
                loss = criterion(model(xb), yb)
                model.zero_grad()
                model.backward(criterion.backward())
                opt.step()
                sched.step()
                seconds += time.perf_counter() - t0
                history["loss"].append(float(loss))
                if twin is not None:
                    history["torch_loss"].append(twin.step(xb, yb))
                step += 1
                progress.update(task, advance=1, status=f"loss {float(loss):.4f}")
            t0 = time.perf_counter()
            history["test_acc"].append(accuracy(model, x_te, y_te))
            seconds += time.perf_counter() - t0
            history["epoch_step"].append(step)
            if twin is not None:
                history["torch_test_acc"].append(twin.accuracy(x_te, y_te))
            progress.update(task, status=f"loss {history['loss'][-1]:.4f}  test acc {history['test_acc'][-1]:.4f}")
    result = {
        "backend": args.backend,
        "dtype": args.dtype,
        "threads": args.threads,
        "steps": total,
        "batch_size": args.batch_size,
        "epochs": len(history["test_acc"]),
        "seconds": seconds,
        "test_accuracy": history["test_acc"][-1],
        "history": history,
    }
    if twin is not None:
        ours, ref = np.array(history["loss"]), np.array(history["torch_loss"])
        result.update(
            torch_seconds=twin.seconds,
            torch_test_accuracy=history["torch_test_acc"][-1],
            max_loss_diff=float(np.abs(ours - ref).max()),
            max_loss_rel_diff=float((np.abs(ours - ref) / np.abs(ref)).max()),
        )
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result["history"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(1, len(h["loss"]) + 1)
    ax_loss.plot(steps, h["loss"], label=f"fastconv ({result['backend']})")
    if h["torch_loss"]:
        ax_loss.plot(steps, h["torch_loss"], "--", label="torch, same weights and batches")
    ax_loss.set(xlabel="step", ylabel="training loss (cross-entropy)", yscale="log", title="loss per step")
    ax_acc.plot(h["epoch_step"], h["test_acc"], "o-", label=f"fastconv ({result['backend']})")
    if h["torch_test_acc"]:
        ax_acc.plot(h["epoch_step"], h["torch_test_acc"], "s--", label="torch")
    ax_acc.set(xlabel="step", ylabel="test accuracy", title="test accuracy per epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"ResNet on scikit-learn digits: {result['test_accuracy']:.2%} in {result['seconds']:.1f} s "
        f"({result['threads']} threads, {result['dtype']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    from . import dispatch

    available = dispatch.available_backends()
    default = next((b for b in ("c", "numba", "im2col") if b in available), "naive")
    p = argparse.ArgumentParser(prog="fastconv train", description=__doc__.splitlines()[0].strip("`: "))
    p.add_argument("--backend", default=default, help="backend for every layer (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: every epoch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1, help="the one-cycle schedule's peak learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=16, help="channels of the first stage")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compare-torch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train torch alongside from the same weights and batches (default: when installed)",
    )
    p.add_argument("--plot", metavar="PNG", help="write the loss and accuracy curves")
    p.add_argument("--json", metavar="PATH", help="write the figures and curves as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    from rich.console import Console

    args = parser().parse_args(argv)
    for name in ("epochs", "batch_size", "threads", "width"):
        if getattr(args, name) < 1:
            parser().error(f"--{name.replace('_', '-')} must be positive")
    if args.steps is not None and args.steps < 1:
        parser().error("--steps must be positive")
    if args.compare_torch is None:
        try:
            import torch  # noqa: F401

            args.compare_torch = True
        except ImportError:
            args.compare_torch = False
    console = Console(stderr=True)
    result = train(args, console)
    line = (
        f"{result['backend']}: test accuracy {result['test_accuracy']:.2%} after {result['steps']} steps "
        f"({result['epochs']} epochs) in {result['seconds']:.1f} s at {result['threads']} threads"
    )
    if "torch_test_accuracy" in result:
        line += (
            f"; torch from the same start: {result['torch_test_accuracy']:.2%} in "
            f"{result['torch_seconds']:.1f} s; largest loss difference per step "
            f"{result['max_loss_diff']:.2e} (relative {result['max_loss_rel_diff']:.2e})"
        )
    print(line)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
