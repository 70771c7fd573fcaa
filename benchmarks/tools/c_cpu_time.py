"""CPU time of the c backend's convolution on the ResNet-50 layers, 1 and 2 threads (a tuning tool).

    python benchmarks/tools/c_cpu_time.py [--batch 1 8]

On a machine shared with other busy processes, wall-clock times of multi-threaded code mostly
measure the scheduler.  The process's CPU time does not: it shows the kernel's own efficiency
(GFLOP/s per busy core) and, comparing 2 threads with 1, any parallel overhead (idle OpenMP
threads sleep, so waiting costs no CPU time).  ``2T est.`` is the wall-clock rate two threads
would reach on two free cores: FLOPs / (CPU time at 2 threads / 2).  Minimum over repeats.
"""
from __future__ import annotations

import argparse
import os
import time

# Idle OpenMP threads must sleep, or their spinning is counted as CPU time.  Set before the
# runtime loads (it reads the variable once); torch is not imported here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from resnet_layers import LAYERS  # noqa: E402


def cpu_time(f, reps: int) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'layer':32s} {'bs':>3s} {'1T ms':>7s} {'GF/s/core':>9s} {'2T cpu ms':>9s} {'overhead':>8s} {'2T est.':>7s}")
    for bs in args.batch:
        for name, c, h, w, k, r, s, st, pad in LAYERS:
            x = rng.standard_normal((bs, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((k, c, r, s), dtype=np.float32)
            times = []
            for nthreads in (1, 2):
                fastconv.set_num_threads(nthreads)
                times.append(cpu_time(lambda: fastconv.conv2d(x, wt, None, st, pad, backend="c"),
                                      args.reps if bs == 1 else max(2, args.reps // 3)))
            oh, ow = (h + 2 * pad - r) // st + 1, (w + 2 * pad - s) // st + 1
            flops = 2 * bs * k * c * r * s * oh * ow
            print(f"{name:32s} {bs:3d} {times[0] * 1e3:7.2f} {flops / times[0] / 1e9:9.1f} {times[1] * 1e3:9.2f} "
                  f"{times[1] / times[0] - 1:+8.0%} {flops / (times[1] / 2) / 1e9:7.0f}", flush=True)


if __name__ == "__main__":
    main()
