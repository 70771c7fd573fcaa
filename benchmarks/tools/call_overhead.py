"""What one eager fastconv call costs beyond its kernel: the functional API on problems too small to
compute anything, against torch.nn.functional on the same arrays.

    python benchmarks/tools/call_overhead.py [--backend c] [--threads 2] [--number 2000] [--repeats 9]

Each op runs on a 1 x 8 x 4 x 4 float32 input (conv2d: 8 output channels, 1x1; linear: 128 -> 10),
so its time is the call's fixed cost: argument checks, the problem descriptor, the dispatcher, the
backend's own Python and the C call.  The calls alternate op by op, rounds rotated
(fastconv.timing.interleaved); the figures are the medians of ``--repeats`` samples of
``--number`` back-to-back calls, in microseconds.  ``auto`` is conv2d with the backend left to the
dispatcher.  For a layer of 1 ms this fixed cost is the share of its time it says.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="c")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F

    import fastconv
    from fastconv import timing

    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    b = args.backend
    x = np.ones((1, 8, 4, 4), np.float32)
    w = np.ones((8, 8, 1, 1), np.float32)
    stat = np.ones(8, np.float32)
    fc = np.ones((10, 128), np.float32)
    t = {name: torch.from_numpy(a) for name, a in (("x", x), ("w", w), ("stat", stat), ("fc", fc))}
    ops = {
        "conv2d": (lambda: fastconv.conv2d(x, w, backend=b), lambda: F.conv2d(t["x"], t["w"])),
        "conv2d auto": (lambda: fastconv.conv2d(x, w), None),
        "batch_norm": (
            lambda: fastconv.batch_norm(x, stat, stat, backend=b),
            lambda: F.batch_norm(t["x"], t["stat"], t["stat"]),
        ),
        "relu": (lambda: fastconv.relu(x, backend=b), lambda: F.relu(t["x"])),
        "max_pool2d": (lambda: fastconv.max_pool2d(x, 2, backend=b), lambda: F.max_pool2d(t["x"], 2)),
        "adaptive_avg_pool2d": (
            lambda: fastconv.adaptive_avg_pool2d(x, 1, backend=b),
            lambda: F.adaptive_avg_pool2d(t["x"], 1),
        ),
        "linear": (
            lambda: fastconv.linear(x.reshape(1, -1), fc, backend=b),
            lambda: F.linear(t["x"].reshape(1, -1), t["fc"]),
        ),
    }
    calls = {}
    for name, (ours, theirs) in ops.items():
        calls[f"fastconv {name}"] = ours
        if theirs is not None:
            calls[f"torch {name}"] = theirs
    for call in calls.values():  # first calls: imports, numba/JIT caches, allocations
        call()
    samples = timing.interleaved(calls, args.repeats, number=args.number)
    us = {name: statistics.median(s) * 1e6 for name, s in samples.items()}
    print(f"fastconv {fastconv.__version__}, backend {b!r}, {args.threads} threads; us per call (median)")
    for name in ops:
        theirs = us.get(f"torch {name}")
        print(f"  {name:22s} fastconv {us[f'fastconv {name}']:7.1f}" + (f"   torch {theirs:6.1f}" if theirs else ""))


if __name__ == "__main__":
    main()
