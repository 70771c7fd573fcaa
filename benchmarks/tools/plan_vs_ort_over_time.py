"""A compiled plan and ONNX Runtime timed alternately for a while, in one process.

    python benchmarks/tools/plan_vs_ort_over_time.py --arch resnet50 --batch 1 --seconds 60

On a shared host the speed of both moves from one minute to the next; what a single
`fastconv resnet` run shows depends on when it ran.  This tool alternates the two for
``--seconds``: each round runs the plan (``fastconv.compile``, Winograd allowed, tuned here) and
ONNX Runtime (the same weights exported through torch.onnx, the same thread count) ``--passes``
times each, after one untimed pass, and prints both medians and their ratio per round, then the
median over rounds and the range of the per-round ratios.  Rounds in which both slow down together
are the host; a ratio that moves with them is a runtime that is more sensitive to it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconv
from fastconv import nn
from fastconv.bench import onnxruntime_target
from fastconv.bench.machine import cpu_model
from fastconv.interop.torch import to_torch
from fastconv.models.resnet import ARCHS


def _median_ms(fn, passes: int) -> float:
    fn()  # untimed: the other runtime's threads settle, this one's caches fill
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet50", choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--passes", type=int, default=25, help="timed passes per runtime per round")
    args = ap.parse_args()
    why = onnxruntime_target.unavailable_reason()
    if why is not None:
        raise SystemExit(f"ONNX Runtime cannot run: {why}")
    import torch

    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    nn.init.manual_seed(0)
    model = ARCHS[args.arch]().eval()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    ort = onnxruntime_target.runner(to_torch(model).eval(), x, args.threads)
    plan = fastconv.compile(model, x.shape, backend="c", winograd=True)
    print(
        f"{args.arch}, batch {args.batch}, {args.threads} threads, CPU: {cpu_model()}; "
        f"plan layout {plan.layout_chosen}; median ms of {args.passes} passes per round"
    )
    print("| round | plan ms | ONNX Runtime ms | plan / ONNX Runtime |\n|---|---|---|---|")
    rounds = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        ours, theirs = _median_ms(lambda: plan(x), args.passes), _median_ms(ort, args.passes)
        rounds.append((ours, theirs))
        print(f"| {len(rounds)} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.3f} |", flush=True)
    ours, theirs = np.array(rounds).T
    ratio = ours / theirs
    print(
        f"over {len(rounds)} rounds: plan {np.median(ours):.2f} ms, ONNX Runtime {np.median(theirs):.2f} ms, "
        f"plan / ONNX Runtime {np.median(ratio):.3f} (per round {ratio.min():.3f}-{ratio.max():.3f})"
    )


if __name__ == "__main__":
    main()
