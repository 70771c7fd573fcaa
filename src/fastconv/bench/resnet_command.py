"""``fastconv resnet``: a whole ResNet forward pass on each backend, timed against torch.

    fastconv resnet --arch resnet50 --batch 1 --backend c --backend numba,im2col --threads 2

builds the model (random torchvision-style weights, or ``--weights`` a torchvision state_dict),
runs it once per backend to warm up (JIT, caches, thread pools) and to compare its output with
torch's, then times the backends and torch eager interleaved, the order rotated each round -- so
a busy machine slows them alike -- and prints the median and fastest time per backend, the speed relative to torch, and the
largest difference from torch's output.

Each round runs every backend untimed for 150 ms (at least once) and then times one pass.  The
thread pools of the backend before it keep spinning for a while after returning -- torch's and
the C backend's OpenMP for milliseconds, OpenBLAS for up to 100 ms; ONNX Runtime's session
stops its own when a run returns -- and on a machine with few cores that halves the speed of
whatever runs next, so an unsettled pass would time the previous backend's leftovers.

The torch side is the same model converted with ``fastconv.interop.torch.to_torch`` (a plain
torch.nn model with torchvision's forward pass), run under ``torch.no_grad()`` with the same
thread count.  The ``torch`` backend row is different: fastconv's layers calling
torch.nn.functional, which shows fastconv's own per-layer overhead.

The ``onnxruntime`` row is that torch model exported through torch.onnx and run by ONNX Runtime
(every graph optimisation on, ``intra_op_num_threads`` = the thread count, one inter-op thread),
when onnxruntime is installed; otherwise the row says why it cannot run.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import fastconv
from fastconv import dispatch, timing
from fastconv import nn as fnn

from ..models.resnet import ARCHS
from . import onnxruntime_target, runner

#: Relative difference from torch (max |y - ref| / max |ref|) above which the exit status is 1.
TOLERANCE = {"float32": 1e-3, "float64": 1e-9}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastconv resnet",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", default="resnet50", choices=sorted(ARCHS), help="architecture (default resnet50)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--size", type=int, default=224, help="image height and width (default 224)")
    p.add_argument(
        "--backend",
        action="append",
        default=None,
        metavar="NAME[,NAME...]",
        help="backend(s) to run, repeatable or comma-separated (default: every available one but naive)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for fastconv and torch alike (default: fastconv.get_num_threads())",
    )
    p.add_argument("--repeat", type=int, default=10, help="timed forward passes per backend (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per backend first (default 1)")
    p.add_argument("--fuse", action="store_true", help="fold batch norms into the convolutions (model.fuse())")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time fastconv.compile's plans: 'compiled' (backend and algorithm tuned per layer) "
        "and 'compiled, winograd' (Winograd allowed for 3x3 layers)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument(
        "--weights", default=None, metavar="FILE", help="a torchvision-style state_dict: .pth/.pt (torch.load) or .npz"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and input")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--omp-wait-policy",
        choices=["active", "passive"],
        default=None,
        help="set OMP_WAIT_POLICY for every OpenMP runtime (torch's, the C backend's) before they "
        "start; passive keeps idle threads from spinning, which matters on a shared machine",
    )
    p.add_argument(
        "--default-heap",
        action="store_true",
        help="leave the C library's allocator as it is (default: freed memory stays in the heap, "
        "as in fastconv bench: eager torch and the eager backends do not page-fault afresh each call)",
    )
    return p


def _backends(requested, parser) -> list[str]:
    if not requested:
        return [b for b in fastconv.available_backends() if b != "naive"]
    names = []
    for item in requested:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in dispatch.backends():
                parser.error(f"--backend: unknown backend {name!r}; choose from {sorted(dispatch.backends())}")
            if name not in names:
                names.append(name)
    return names


def _load_weights(path: str) -> dict:
    if path.endswith(".npz"):
        with np.load(path) as f:
            return dict(f)
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _randomise_batch_norms(model, rng) -> None:
    """Running statistics and affine parameters like a trained network's, so eval mode is no identity."""
    for m in model.modules():
        if isinstance(m, fnn.BatchNorm2d):
            c, dt = m.num_features, m.weight.dtype
            m.weight = rng.uniform(0.4, 1.0, c).astype(dt)
            m.bias = (rng.standard_normal(c) * 0.1).astype(dt)
            m.running_mean = (rng.standard_normal(c) * 0.1).astype(dt)
            m.running_var = rng.uniform(0.5, 2.0, c).astype(dt)


def _check_positive(parser, **values) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_positive(
        parser, batch=args.batch, size=args.size, threads=args.threads, repeat=args.repeat, num_classes=args.num_classes
    )
    if args.warmup < 0:
        parser.error(f"--warmup must be non-negative, got {args.warmup}")
    if args.omp_wait_policy:
        # OpenMP reads it once, when its runtime loads: before torch and the C backend are imported.
        if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY") != args.omp_wait_policy.upper():
            print(
                "fastconv resnet: warning: torch is already loaded; --omp-wait-policy may not apply to it",
                file=sys.stderr,
            )
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    backends = _backends(args.backend, parser)
    if not args.default_heap:
        from .machine import steady_heap

        steady_heap()
    threads = args.threads or fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    try:
        import torch
    except ImportError:
        torch = None

    rng = np.random.default_rng(args.seed)
    fnn.init.manual_seed(args.seed)
    model = ARCHS[args.arch](num_classes=args.num_classes)
    if args.weights:
        model.load_state_dict(_load_weights(args.weights))
    else:
        _randomise_batch_norms(model, rng)
    model.eval().astype(args.dtype)
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(args.dtype)

    runners, results = {}, {}
    if torch is not None:
        from ..interop.torch import to_torch

        torch.set_num_threads(threads)
        tmodel = to_torch(model).eval()  # converted before fuse(): the reference stays unfused
        tx = torch.from_numpy(x)

        def run_torch():
            with torch.no_grad():
                return tmodel(tx).numpy()

        runners["torch (eager)"] = run_torch
    # ONNX Runtime: the same torch model exported, at the same thread count (a second baseline).
    ort_run, ort_why = (
        onnxruntime_target.try_runner(tmodel, x, threads)
        if torch is not None
        else (None, onnxruntime_target.unavailable_reason())
    )
    results[onnxruntime_target.NAME] = {"error": ort_why} if ort_run is None else {"out": ort_run()}
    if ort_run is not None:
        runners[onnxruntime_target.NAME] = ort_run
    if args.fuse:
        model.fuse()
    for name in backends:
        try:
            model.to_backend(name)
            out = model(x)  # also the first warm-up pass; a backend that cannot run says why here
        except (fastconv.BackendError, ValueError, MemoryError) as exc:
            results[name] = {"error": str(exc)}
            continue
        results[name] = {"out": out}
        runners[name] = (lambda n: lambda: model.to_backend(n)(x))(name)
    if args.compile:
        backends = [*backends, *_add_compiled(model, x, runners, results)]
    reference = runners["torch (eager)"]() if "torch (eager)" in runners else None

    for _ in range(max(0, args.warmup - 1)):
        for run in runners.values():
            run()
    # Interleaved, the order rotated each round; untimed calls for the runner's model_settle
    # (150 ms, at least one call) before each sample: the previous backend's idle threads spin
    # meanwhile, OpenBLAS's (im2col, numba's classifier) for up to 100 ms (bench/runner.py).
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("timing rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("rounds", total=args.repeat)
        samples = timing.interleaved(
            runners,
            args.repeat,
            settle_s=runner.Settings(threads=threads).model_settle,
            on_round=lambda done: bar.update(task, completed=done),
        )

    torch_median = timing.median(samples["torch (eager)"]) if reference is not None else None
    status = 0
    rows = []
    for name in [*backends, onnxruntime_target.NAME, *(["torch (eager)"] if reference is not None else [])]:
        r = results.setdefault(name, {})
        if "error" in r:
            rows.append({"backend": name, "error": r["error"]})
            continue
        med, best = timing.median(samples[name]), min(samples[name])
        row = {"backend": name, "median_ms": med * 1e3, "min_ms": best * 1e3}
        if torch_median is not None:
            row["speed_vs_torch"] = torch_median / med
        if reference is not None and "out" in r:
            diff = float(np.abs(r["out"].astype(np.float64) - reference).max())
            rel = diff / max(float(np.abs(reference).max()), np.finfo(np.float64).tiny)
            row.update(max_abs_diff=diff, max_rel_diff=rel)
            if not rel <= TOLERANCE[args.dtype]:
                status = 1
        rows.append(row)
    load = ", load average {:.2f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    header = (
        f"{args.arch}, batch {args.batch}, {args.size}x{args.size}, {args.dtype}, {threads} threads{load}, "
        f"{'fused' if args.fuse else 'unfused'}, {'weights ' + args.weights if args.weights else 'random weights'}"
        f"; median of {args.repeat} interleaved rounds"
    )
    _print(header, rows, torch is not None)
    layouts = [f"{n}: {results[n]['layout']}" for n in backends if "layout" in results.get(n, {})]
    if layouts:  # which activation layout each plan's timing chose (fastconv.plan)
        print("plan layouts: " + "; ".join(layouts))
    if args.json:  # the benchmark schema (docs/bench-schema.md): `fastconv bench show/compare` read it
        from . import schema

        doc = schema.model_document(
            arch=args.arch,
            batch=args.batch,
            size=args.size,
            dtype=args.dtype,
            num_classes=args.num_classes,
            threads=threads,
            rows=rows,
            samples=samples,
            config=vars(args) | {"threads": threads, "backends": backends},
            tolerance=TOLERANCE[args.dtype],
        )
        schema.dump(doc, args.json)
    return status


def _add_compiled(model, x, runners: dict, results: dict) -> list[str]:
    """Compile the model (tuning each layer once, see fastconv.plan) and add the plans as runners."""
    names = []
    for name, winograd in (("compiled", False), ("compiled, winograd", True)):
        try:
            plan = fastconv.compile(model, x.shape, winograd=winograd)
            timed = ", ".join(f"{k} {v:.1f} ms" for k, v in plan.layout_ms.items())
            results[name] = {"out": plan(x), "layout": plan.layout_chosen + (f" (timed: {timed})" if timed else "")}
        except (fastconv.BackendError, ValueError, TypeError, MemoryError) as exc:
            results[name] = {"error": str(exc)}
        else:
            runners[name] = (lambda p: lambda: p(x))(plan)
        names.append(name)
    return names


def _print(header: str, rows: list[dict], have_torch: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header, title_justify="left")
    for col in ("backend", "median ms", "min ms", "speed vs torch", "max |diff|", "max rel diff"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["backend"], f"[yellow]cannot run: {row['error']}[/yellow]", "", "", "", "")
            continue
        fmt = lambda key, spec: format(row[key], spec) if key in row else "-"  # noqa: E731
        speed = f"{row['speed_vs_torch']:.2f}x" if "speed_vs_torch" in row else "-"
        table.add_row(
            row["backend"],
            fmt("median_ms", ".2f"),
            fmt("min_ms", ".2f"),
            speed,
            fmt("max_abs_diff", ".2e"),
            fmt("max_rel_diff", ".2e"),
        )
    console = Console(width=max(120, Console().width))
    console.print(table)
    if not have_torch:
        console.print("torch is not installed: no reference output and no torch timing")


if __name__ == "__main__":
    sys.exit(main())
