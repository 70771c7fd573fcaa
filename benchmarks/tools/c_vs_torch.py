"""Interleaved timing of the c backend against torch on the ResNet-50 layer shapes (a tuning tool).

    python benchmarks/tools/c_vs_torch.py [--threads 2] [--batch 1 8] [--reps 15] [--only NAME]
                                          [--algorithm auto|direct|gemm|winograd]

The c backend's instruction set follows FASTCONV_ISA (e.g. avx2 on an AVX-512 machine; limit torch
the same way with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2).

For each layer the two sides alternate call by call (c, torch, c, torch, ...) in one process,
both with the same thread count, after warm-up calls; the figure is the median of each side.
fastconv is timed through its public API (``fastconv.conv2d(..., backend="c")``: argument
checks, layout conversion and output allocation included), torch through
``torch.nn.functional.conv2d`` on tensors that share the NumPy arrays' memory.
GFLOP/s count 2 FLOPs per multiply-add.  Also times max pooling 3x3/2 pad 1 on 64x112x112.

``--clock cpu`` times each call by the process's CPU time instead, divided by the thread count
(the wall time both sides would take on free cores), with idle OpenMP threads sleeping
(OMP_WAIT_POLICY=PASSIVE; torch and fastconv share one libgomp).  On a machine shared with
other busy processes, wall-clock times of multi-threaded calls mostly measure the scheduler:
use the CPU clock there, and know that it hides load imbalance and serial phases (both sides).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

if "--clock" in sys.argv and "cpu" in sys.argv:  # before libgomp loads: it reads this once
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
import fastconv.backends.c  # noqa: E402,F401  (load the extension, hence libgomp, first)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from resnet_layers import LAYERS  # noqa: E402

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}



def interleaved(fa, fb, reps: int, warmup: int = 2, clock=time.perf_counter, scale: float = 1.0):
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(reps):
        t0 = clock()
        fa()
        t1 = clock()
        fb()
        t2 = clock()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta) * scale, statistics.median(tb) * scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--only", default=None, help="substring of the layer names to run")
    ap.add_argument("--no-pool", action="store_true")
    ap.add_argument("--algorithm", default="auto", choices=("auto", "direct", "gemm", "winograd"),
                    help="asked of the c backend where it applies (winograd: 3x3 stride-1 layers; else auto)")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall: perf_counter; cpu: process CPU time / threads (see the module doc)")
    args = ap.parse_args()
    timing = {"clock": CLOCK[args.clock], "scale": 1.0 / args.threads if args.clock == "cpu" else 1.0}
    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} reps={args.reps} clock={args.clock} (medians, interleaved); "
          f"GFLOP/s = 2 FLOPs per multiply-add")
    print(f"{'layer':32s} {'bs':>3s} {'c ms':>8s} {'torch ms':>8s} {'c GF/s':>7s} {'torch':>7s} {'ratio':>6s}")
    for bs in args.batch:
        ratios = []
        for name, c, h, w, k, r, s, st, pad in LAYERS:
            if args.only and args.only not in name:
                continue
            x = rng.standard_normal((bs, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((k, c, r, s), dtype=np.float32) * 0.05
            b = rng.standard_normal(k, dtype=np.float32)
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b)
            reps = max(3, args.reps if bs == 1 else args.reps // 2)
            algo = args.algorithm
            if algo == "winograd" and (r, s, st) != (3, 3, 1):
                algo = "auto"
            with torch.no_grad():
                tc, tt = interleaved(lambda: fastconv.conv2d(x, wt, b, st, pad, algorithm=algo, backend="c"),
                                     lambda: F.conv2d(tx, tw, tb, st, pad), reps, **timing)
            oh = (h + 2 * pad - r) // st + 1
            flops = 2 * bs * k * c * r * s * oh * ((w + 2 * pad - s) // st + 1)
            ratios.append(tt / tc)
            print(f"{name:32s} {bs:3d} {tc * 1e3:8.3f} {tt * 1e3:8.3f} {flops / tc / 1e9:7.1f} "
                  f"{flops / tt / 1e9:7.1f} {tt / tc:6.2f}", flush=True)
        if ratios:
            gm = math.exp(sum(map(math.log, ratios)) / len(ratios))
            print(f"{'geomean c/torch speed, bs' + str(bs):32s} {gm:.3f}  (min {min(ratios):.2f})")
    if not args.no_pool:
        x = rng.standard_normal((1, 64, 112, 112), dtype=np.float32)
        tx = torch.from_numpy(x)
        tc, tt = interleaved(lambda: fastconv.max_pool2d(x, 3, 2, 1, backend="c"),
                             lambda: F.max_pool2d(tx, 3, 2, 1), max(20, args.reps), **timing)
        print(f"{'max pool 3x3/2 p1 64x112x112':32s} {1:3d} {tc * 1e3:8.3f} {tt * 1e3:8.3f} "
              f"{'':7s} {'':7s} {tt / tc:6.2f}")


if __name__ == "__main__":
    main()
