"""Interleaved timing of the numba backend against torch on ResNet-50 convolution layers.

    python benchmarks/tools/numba_vs_torch.py [--threads 2] [--batch 1 8] [--reps 15] [--only NAME]
    python benchmarks/tools/numba_vs_torch.py --other-ops   # pooling, batch norm, relu, depthwise
    python benchmarks/tools/numba_vs_torch.py --compile     # cold and cached compile times

Both sides run with the same thread count, alternately (numba, torch, numba, ...) in one process,
so machine noise hits both alike; the figures are medians.  On a shared machine each row first
waits (up to --patience seconds) for the CPUs to be idle, and reports how many were.  float32, no bias (ResNet's convs have
none).  GFLOP/s counts 2 FLOPs per multiply-add.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet_layers import LAYERS  # noqa: E402  (the shape list every tuning tool shares)


def _idle_cpus(interval: float = 0.25) -> float:
    """How many CPUs were idle over ``interval`` seconds (Linux /proc/stat; inf elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total (in ticks)

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except OSError:
        return math.inf
    return (idle1 - idle0) / max(1, total1 - total0) * os.cpu_count()


def wait_for_quiet(threads: int, patience: float) -> float:
    """On a shared machine, wait (up to ``patience`` s) until ``threads`` CPUs are idle."""
    deadline = time.monotonic() + patience
    idle = _idle_cpus()
    while idle < 0.9 * threads and time.monotonic() < deadline:
        time.sleep(0.5)
        idle = _idle_cpus()
    return idle


def interleaved_medians(ours, theirs, reps: int) -> tuple[float, float]:
    """Median seconds of each side over ``reps`` alternating calls (ours, theirs, ours, ...)."""
    times = ([], [])
    for _ in range(reps):
        for side, fn in zip(times, (ours, theirs)):
            t0 = time.perf_counter()
            fn()
            side.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_layers(threads: int, batches, reps: int, only: str | None, patience: float = 60) -> None:
    import torch

    import fastconv

    fastconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"float32, {threads} threads, medians of {reps} interleaved runs; torch {torch.__version__}")
    print("| layer | batch | numba ms | torch ms | numba GFLOP/s | torch GFLOP/s | numba/torch | idle CPUs |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = {b: [] for b in batches}
    for batch in batches:
        for name, c, h, w, k, r, s, stride, pad in LAYERS:
            if only and only not in name:
                continue
            x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
            wt = (rng.standard_normal((k, c, r, s)) / math.sqrt(c * r * s)).astype(np.float32)
            xt, wtt = torch.from_numpy(x), torch.from_numpy(wt)
            oh = (h + 2 * pad - r) // stride + 1
            ow = (w + 2 * pad - s) // stride + 1
            flops = 2 * batch * k * oh * ow * c * r * s

            def ours():
                return fastconv.conv2d(x, wt, None, stride, pad, backend="numba")

            def theirs():
                with torch.no_grad():
                    return torch.nn.functional.conv2d(xt, wtt, None, stride, pad)

            err = np.abs(ours() - theirs().numpy()).max()
            assert err < 1e-3, (name, err)
            for _ in range(2):
                ours(), theirs()
            idle = wait_for_quiet(threads, patience)
            a, b = interleaved_medians(ours, theirs, reps)
            ratios[batch].append(b / a)
            print(f"| {name} | {batch} | {a * 1e3:.3f} | {b * 1e3:.3f} | {flops / a / 1e9:.1f} | "
                  f"{flops / b / 1e9:.1f} | {b / a:.2f} | {idle:.1f} |", flush=True)
    every = [v for vs in ratios.values() for v in vs]
    for batch, vs in ratios.items():
        if vs:
            print(f"geomean speed vs torch, batch {batch}: {math.exp(statistics.mean(map(math.log, vs))):.2f}x")
    if every:
        print(f"geomean speed vs torch, all: {math.exp(statistics.mean(map(math.log, every))):.2f}x")


def bench_other_ops(threads: int, batches, reps: int, patience: float = 60) -> None:
    """The non-ResNet-conv ops on ResNet/MobileNet-sized inputs, numba vs torch, interleaved."""
    import torch
    import torch.nn.functional as F

    import fastconv

    fastconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print("| op | batch | numba ms | torch ms | numba/torch | idle CPUs |")
    print("|---|---|---|---|---|---|")
    for batch in batches:
        x = rng.standard_normal((batch, 64, 112, 112)).astype(np.float32)
        dwx = rng.standard_normal((batch, 128, 56, 56)).astype(np.float32)
        dww = rng.standard_normal((128, 1, 3, 3)).astype(np.float32)
        top = rng.standard_normal((batch, 2048, 7, 7)).astype(np.float32)
        c = x.shape[1]
        mean, var = np.zeros(c, np.float32), np.ones(c, np.float32)
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        t = {k: torch.from_numpy(v) for k, v in dict(x=x, dwx=dwx, dww=dww, top=top, mean=mean, var=var,
                                                        gamma=gamma, beta=beta).items()}
        cases = [
            ("depthwise 3x3 128ch @56", lambda: fastconv.conv2d(dwx, dww, None, 1, 1, 1, 128, backend="numba"),
             lambda: F.conv2d(t["dwx"], t["dww"], None, 1, 1, 1, 128)),
            ("max pool 3x3/2 64ch @112", lambda: fastconv.max_pool2d(x, 3, 2, 1, backend="numba"),
             lambda: F.max_pool2d(t["x"], 3, 2, 1)),
            ("avg pool 3x3/2 64ch @112", lambda: fastconv.avg_pool2d(x, 3, 2, 1, backend="numba"),
             lambda: F.avg_pool2d(t["x"], 3, 2, 1)),
            ("adaptive avg 2048ch 7x7->1", lambda: fastconv.adaptive_avg_pool2d(top, 1, backend="numba"),
             lambda: F.adaptive_avg_pool2d(t["top"], 1)),
            ("batch norm eval 64ch @112", lambda: fastconv.batch_norm(x, mean, var, gamma, beta, backend="numba"),
             lambda: F.batch_norm(t["x"], t["mean"], t["var"], t["gamma"], t["beta"])),
            ("batch norm train 64ch @112",
             lambda: fastconv.batch_norm(x, mean.copy(), var.copy(), gamma, beta, training=True, backend="numba"),
             lambda: F.batch_norm(t["x"], t["mean"].clone(), t["var"].clone(), t["gamma"], t["beta"], training=True)),
            ("relu 64ch @112", lambda: fastconv.relu(x, backend="numba"), lambda: F.relu(t["x"])),
        ]
        for name, ours, theirs in cases:
            with torch.no_grad():
                for _ in range(2):
                    ours(), theirs()
                idle = wait_for_quiet(threads, patience)
                a, b = interleaved_medians(ours, theirs, reps)
            print(f"| {name} | {batch} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.2f} | {idle:.1f} |", flush=True)


_COMPILE_PROBE = """
import time
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
fastconv.warmup(["numba"])
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def bench_compile() -> None:
    """fastconv.warmup(['numba']) in fresh processes: with an empty cache, then from the cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (empty NUMBA_CACHE_DIR)", "from cache", "from cache"):
            out = subprocess.run([sys.executable, "-c", _COMPILE_PROBE], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            print(f"{label}: import fastconv {float(out[0]):.2f} s, warmup(['numba']) {float(out[1]):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--only", help="run the layers whose name contains this text")
    ap.add_argument("--compile", action="store_true", help="measure compile times instead")
    ap.add_argument("--other-ops", action="store_true", help="pooling, batch norm, relu, depthwise instead")
    ap.add_argument("--patience", type=float, default=60, help="seconds to wait for idle CPUs per row")
    args = ap.parse_args()
    if args.compile:
        bench_compile()
    elif args.other_ops:
        bench_other_ops(args.threads, args.batch, args.reps, args.patience)
    else:
        bench_layers(args.threads, args.batch, args.reps, args.only, args.patience)


if __name__ == "__main__":
    main()
