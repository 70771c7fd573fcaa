"""CPU time of one backend's ops on a suite's problems at 1 and 2 threads (a tuning tool).

    python benchmarks/tools/cpu_time.py [--backend c] [--suite resnet50] [--batch 1 8] [--reps 8]
    python benchmarks/tools/cpu_time.py --compile      # numba's cold and cached compile times

Wall-clock comparisons with torch are ``fastconv bench --suite resnet50 --backends c``.  On a
machine shared with other busy processes, wall-clock times of multi-threaded code mostly measure
the scheduler; the process's CPU time does not: it shows the kernel's own efficiency (GFLOP/s or
GB/s per busy core) and, comparing 2 threads with 1, any parallel overhead (idle OpenMP threads
sleep, so waiting costs no CPU time).  ``2T est.`` is the rate two threads would reach on two free
cores: work / (CPU time at 2 threads / 2).  Median over ``--reps`` samples, through
``fastconv.timing`` with the CPU clock.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

# Idle OpenMP threads must sleep, or their spinning is counted as CPU time.  Set before the
# runtime loads (it reads the variable once); torch is not imported here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import fastconv  # noqa: E402
from fastconv import timing  # noqa: E402
from fastconv.bench import suites, targets  # noqa: E402

_COMPILE_PROBE = """
import time
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
fastconv.warmup(["numba"])
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def compile_times() -> None:
    """fastconv.warmup(['numba']) in fresh processes: with an empty cache, then from the cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (empty NUMBA_CACHE_DIR)", "from cache", "from cache"):
            out = subprocess.run(
                [sys.executable, "-c", _COMPILE_PROBE], env=env, check=True, capture_output=True, text=True
            ).stdout.split()
            print(f"{label}: import fastconv {float(out[0]):.2f} s, warmup(['numba']) {float(out[1]):.2f} s")


def cpu_times(backend: str, suite: str, batches: list[int], reps: int) -> None:
    print(
        f"{'problem':34s} {'n':>3s} {'1T ms':>8s} {'per core':>9s} {'2T cpu ms':>9s} {'overhead':>8s} {'2T est.':>8s}"
    )
    for case in suites.get_suite(suite).cases(tuple(batches)):
        if case.op == "model":
            continue
        call = targets.api_call(case.problem, targets.make_inputs(case), backend)
        times = []
        for nthreads in (1, 2):
            fastconv.set_num_threads(nthreads)
            call()  # first call: compilation, thread pools
            times.append(timing.median(timing.interleaved({"call": call}, reps, timer=time.process_time)["call"]))
        print(
            f"{case.label:34s} {case.n:3d} {times[0] * 1e3:8.2f} {case.throughput(times[0]):9.1f} "
            f"{times[1] * 1e3:9.2f} {times[1] / times[0] - 1:+8.0%} {case.throughput(times[1] / 2):8.1f}  {case.unit}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="c")
    ap.add_argument("--suite", default="resnet50")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="numba's compile times instead")
    args = ap.parse_args()
    if args.compile:
        compile_times()
    else:
        cpu_times(args.backend, args.suite, args.batch, args.reps)


if __name__ == "__main__":
    main()
