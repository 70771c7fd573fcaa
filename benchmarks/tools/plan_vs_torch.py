"""fastconv.compile's plans against torch eager, whole ResNets, CPU time and wall clock.

    python benchmarks/tools/plan_vs_torch.py --arch resnet18 resnet50 --batch 1 8 --reps 7

Per model and batch: torch eager (the same weights through fastconv.interop.torch.to_torch,
torch.no_grad), ONNX Runtime when installed (that torch model exported with torch.onnx, the same
thread count, sequential execution), fastconv's fused model on the c backend (eager), the compiled plan (backend and
algorithm tuned per layer), the plan with Winograd allowed, and the plan with its arena switched
off (every c kernel allocating its output, as eager calls do: what the arena saves).  Calls are
interleaved, the order rotated each round; medians.  On a shared, loaded machine the process's
CPU time per forward (idle OpenMP threads sleep: OMP_WAIT_POLICY=PASSIVE) is the figure that
means something; wall clock is printed beside it, with the CPUs that other processes and the
hypervisor (steal time) kept busy during the timing (fastconv.bench.load).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import nn, timing  # noqa: E402
from fastconv.bench import load  # noqa: E402
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


def _onnxruntime(tmodel, tx, nthreads) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    import io
    import warnings

    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tmodel, (tx,), f, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = nthreads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(f.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: tx.numpy()}
    return {f"onnxruntime {ort.__version__}": lambda: sess.run(None, feed)[0]}


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
                **_onnxruntime(tmodel, tx, args.threads),
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
            cpu = timing.interleaved(calls, args.reps, settle_s=1e-9, timer=time.process_time)
            wall = timing.interleaved(calls, args.reps, settle_s=1e-9)
            others = meter.read()
            tc, tw = timing.median(cpu["torch eager"]), timing.median(wall["torch eager"])
            print(
                f"\n{arch}, batch {batch}, {args.size}x{args.size}, float32, {args.threads} threads, "
                f"load {os.getloadavg()[0]:.1f}; compile {t1 - t0:.1f} s (+ winograd plan {t2 - t1:.1f} s); "
                f"median of {args.reps} interleaved rounds"
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
