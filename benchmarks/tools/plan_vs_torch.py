"""fastconv.compile's plans against torch eager, whole ResNets, CPU time and wall clock.

    python benchmarks/tools/plan_vs_torch.py --arch resnet18 resnet50 --batch 1 8 --reps 7

Per model and batch: torch eager (the same weights through fastconv.interop.torch.to_torch,
torch.no_grad), ONNX Runtime when installed (that torch model exported with torch.onnx, the same
thread count, sequential execution), fastconv's fused model on the c backend (eager), the compiled plan (backend and
algorithm tuned per layer), the plan with Winograd allowed, and the plan with its arena switched
off (every c kernel allocating its output, as eager calls do: what the arena saves).  Calls are
interleaved, the order rotated each round, each sample after 150 ms of untimed calls (the
previous runtime's idle threads spin meanwhile: OpenBLAS's for up to 100 ms); medians.

On free cores the wall clock is the figure, every runtime keeping its default wait policy.  When
other processes keep the cores busy (read before any thread pool starts, fastconv.bench.load),
the tool switches OpenMP to OMP_WAIT_POLICY=PASSIVE, as `fastconv bench` does, and the process's
CPU time per forward is the figure that means something (passive threads cost torch and the c
kernels a wake-up per parallel region, which ONNX Runtime's own pool does not pay).  Both clocks
are printed, with the CPUs that other processes and the hypervisor (steal time) kept busy while
timing.  `fastconv resnet --compile` measures the same plans with the project's own runner.
"""

from __future__ import annotations

import argparse
import os
import time

from fastconv.bench import load  # reads /proc/stat only: no thread pool starts here

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=2)
_CONTENDED = load.assess(load.sample(0.5), _pre.parse_known_args()[0].threads)["contended"]
if _CONTENDED:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import nn, timing  # noqa: E402
from fastconv.bench import machine, onnxruntime_target  # noqa: E402
from fastconv.models.resnet import ARCHS  # noqa: E402


def _randomise_batch_norms(model, rng):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight = rng.uniform(0.4, 1.0, c).astype(np.float32)
            m.bias = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m.running_mean = (rng.standard_normal(c) * 0.1).astype(np.float32)
            m.running_var = rng.uniform(0.5, 2.0, c).astype(np.float32)


def _without_arena(plan):
    """The plan's steps calling the allocating kernels (dispatch.run) instead of writing into the arena."""
    import copy

    other = copy.copy(plan)
    other.steps = [copy.copy(s) for s in plan.steps]
    for s in other.steps:
        if s.kind == "conv" and s.bound and s.u is None:
            s.bound = False
    return other


def _onnxruntime(tmodel, x, nthreads) -> dict:
    """ONNX Runtime as `fastconv bench` runs it (onnxruntime_target: its workers stop spinning
    when a run returns), or nothing when it is not installed."""
    if onnxruntime_target.unavailable_reason() is not None:
        return {}
    import onnxruntime as ort

    return {f"onnxruntime {ort.__version__}": onnxruntime_target.runner(tmodel, x, nthreads)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--describe", action="store_true")
    args = ap.parse_args()
    import torch

    from fastconv.interop.torch import to_torch

    fastconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    machine.steady_heap()  # as fastconv bench and fastconv resnet: eager calls reuse freed memory
    for arch in args.arch:
        for batch in args.batch:
            rng = np.random.default_rng(0)
            nn.init.manual_seed(0)
            model = ARCHS[arch]()
            _randomise_batch_norms(model, rng)
            model.eval()
            x = rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            tmodel = to_torch(model).eval()
            tx = torch.from_numpy(x)
            with torch.no_grad():
                ref = tmodel(tx).numpy().astype(np.float64)
            fused = __import__("copy").deepcopy(model).fuse().to_backend("c")
            t0 = time.perf_counter()
            plan = fastconv.compile(model, x.shape)
            t1 = time.perf_counter()
            wplan = fastconv.compile(model, x.shape, winograd=True)
            t2 = time.perf_counter()
            if args.describe:
                print(plan.describe())
                print(wplan.describe())

            def run_torch():
                with torch.no_grad():
                    return tmodel(tx)

            calls = {
                "torch eager": run_torch,
                **_onnxruntime(tmodel, x, args.threads),
                "c eager, fused": lambda: fused(x),
                "compiled": lambda: plan(x),
                "compiled, winograd": lambda: wplan(x),
                "compiled, no arena": (lambda p: lambda: p(x))(_without_arena(plan)),
            }
            outs = {n: (np.asarray(c()) if n != "torch eager" else ref) for n, c in calls.items()}
            outs = {n: o[0] if isinstance(o, list) else o for n, o in outs.items()}
            for c in calls.values():
                c()
            meter = load.Meter()  # other processes' and other guests' (steal) busy CPUs meanwhile
            cpu = timing.interleaved(calls, args.reps, settle_s=0.15, timer=time.process_time)
            wall = timing.interleaved(calls, args.reps, settle_s=0.15)
            others = meter.read()
            tc, tw = timing.median(cpu["torch eager"]), timing.median(wall["torch eager"])
            print(
                f"\n{arch}, batch {batch}, {args.size}x{args.size}, float32, {args.threads} threads, "
                f"load {os.getloadavg()[0]:.1f}; compile {t1 - t0:.1f} s (+ winograd plan {t2 - t1:.1f} s); "
                f"median of {args.reps} interleaved rounds; OpenMP wait policy "
                f"{os.environ.get('OMP_WAIT_POLICY', 'default').lower()}"
                + (" (the cores were busy: the CPU-time columns are the figures)" if _CONTENDED else "")
            )
            if others is not None:
                print(
                    f"other processes and the hypervisor kept {others:.2f} CPUs busy meanwhile"
                    + (": the wall-clock columns are not trustworthy" if others > load.MARGIN else "")
                )
            print(f"| {'':22s} | CPU ms | vs torch (CPU) | wall ms | vs torch (wall) | max rel diff |")
            print("|---|---|---|---|---|---|")
            scale = np.abs(ref).max()
            for n in calls:
                c, w = timing.median(cpu[n]), timing.median(wall[n])
                diff = np.abs(outs[n].astype(np.float64) - ref).max() / scale
                print(f"| {n:22s} | {c * 1e3:7.1f} | {tc / c:5.2f}x | {w * 1e3:7.1f} | {tw / w:5.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
