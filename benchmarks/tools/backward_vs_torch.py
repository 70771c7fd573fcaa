"""Interleaved timing of a backend's convolution backward against torch's autograd kernels.

    python benchmarks/tools/backward_vs_torch.py [--backend c] [--threads 2] [--batch 8] [--reps 7]
                                                 [--only LABEL] [--dtype float32] [--clock cpu]
                                                 [--direction bwd_data,bwd_weight]

The layers are the ``resnet50`` benchmark suite's (every distinct ResNet-50 v1.5 convolution).
For each layer and direction the two sides alternate call by call in one process with the same
thread count, after warm-up calls, through fastconv.timing.interleaved (the order rotated each
round); the figures are medians.  ``--direction bwd_weight`` (or bwd_data) runs one direction.  fastconv is timed through the
backend's ``conv2d_bwd_data`` / ``conv2d_bwd_weight`` (output allocation included), torch
through ``torch.ops.aten.convolution_backward`` -- the op autograd runs for F.conv2d -- asking
for the one gradient the direction computes.  GFLOP/s count 2 FLOPs per multiply-add, the same
count for every direction (benchdnn's convention).  Ratios > 1 mean fastconv is faster; the
summary is the geometric mean over the layers, each layer once.

``--clock cpu`` times each call by the process's CPU time divided by the thread count, with idle
OpenMP threads sleeping (OMP_WAIT_POLICY=PASSIVE, set before the runtime loads; torch and
fastconv share one libgomp): on cores shared with other busy processes wall-clock times of
multi-threaded calls mostly measure the scheduler.  The CPU clock hides load imbalance and
serial phases, on both sides alike.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time

if "--clock" in sys.argv and "cpu" in sys.argv:  # before libgomp loads: it reads this once
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import timing  # noqa: E402
from fastconv.bench.suites import get_suite  # noqa: E402

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(fa, fb, reps: int, warmup: int = 2, clock=time.perf_counter, scale: float = 1.0):
    """Medians (seconds per call, times ``scale``) of fa and fb, through fastconv's timing primitive:
    samples interleaved call by call, the order rotated each round."""
    for _ in range(warmup):
        fa()
        fb()
    samples = timing.interleaved({"a": fa, "b": fb}, reps, timer=clock)
    return timing.median(samples["a"]) * scale, timing.median(samples["b"]) * scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="c")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default=None, help="substring of the layer labels to run")
    ap.add_argument("--direction", default="bwd_data,bwd_weight", help="comma-separated: bwd_data, bwd_weight")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCK),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time / threads (see the module doc)",
    )
    args = ap.parse_args()
    timing = {"clock": CLOCK[args.clock], "scale": 1.0 / args.threads if args.clock == "cpu" else 1.0}
    module = importlib.import_module(f"fastconv.backends.{args.backend}")
    import torch

    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"backend={args.backend} threads={args.threads} batch={args.batch} dtype={args.dtype} "
        f"reps={args.reps} clock={args.clock} (medians, interleaved with torch)"
    )
    print(f"{'layer':28s} {'dir':10s} {'ours ms':>8s} {'torch ms':>8s} {'ours GF/s':>9s} {'torch':>7s} {'ratio':>6s}")
    ratios = {"bwd_data": [], "bwd_weight": []}
    for case in get_suite("resnet50").cases((args.batch,), args.dtype):
        p = case.problem
        if args.only and args.only not in case.label:
            continue
        x = rng.standard_normal(p.input_shape).astype(p.dtype)
        w = rng.standard_normal(p.weight_shape).astype(p.dtype)
        gy = rng.standard_normal(p.output_shape).astype(p.dtype)
        tx, tw, tgy = (torch.from_numpy(a) for a in (x, w, gy))
        pad = [p.padding[0], p.padding[2]]

        def torch_bwd(mask):
            return lambda: torch.ops.aten.convolution_backward(
                tgy, tx, tw, None, list(p.stride), pad, list(p.dilation), False, [0, 0], p.groups, mask
            )

        sides = {
            "bwd_data": (lambda: module.conv2d_bwd_data(p, gy, w), torch_bwd([True, False, False])),
            "bwd_weight": (lambda: module.conv2d_bwd_weight(p, x, gy), torch_bwd([False, True, False])),
        }
        for direction, (ours, theirs) in sides.items():
            if direction not in args.direction.split(","):
                continue
            t_ours, t_torch = interleaved(ours, theirs, args.reps, **timing)
            ratio = t_torch / t_ours
            ratios[direction].append(ratio)
            print(
                f"{case.label:28s} {direction:10s} {t_ours * 1e3:8.2f} {t_torch * 1e3:8.2f} "
                f"{p.flops / t_ours / 1e9:9.1f} {p.flops / t_torch / 1e9:7.1f} {ratio:6.2f}",
                flush=True,
            )
    for direction, values in ratios.items():
        if values:
            gm = math.exp(sum(map(math.log, values)) / len(values))
            print(f"geomean {direction}: {gm:.2f}x torch over {len(values)} layers")


if __name__ == "__main__":
    main()
