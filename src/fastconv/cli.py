"""The ``fastconv`` command (also ``python -m fastconv``).

    fastconv bench [--suite quick] [--threads 2] [--json r.json] [--csv r.csv] [--plot r.png] ...
    fastconv bench compare A.json B.json      two saved runs, side by side
    fastconv bench show r.json [...]          a saved run's tables again (or --markdown / --plot / --csv)
    fastconv bench list                       the suites and their problems
    fastconv info [--json]                    backends (available or not, and why), CPU, threads, versions
    fastconv resnet ...                       the ResNet tools of fastconv.models (when installed)
    fastconv train [--backend c] [--epochs 8] [--plot curves.png]   a ResNet on scikit-learn's digits

    fastconv --version

Exit status: 0; 1 when a benchmark result was wrong or a target raised; 2 for bad arguments or a
missing optional dependency (checked before any work); 141 when the reader of the output went
away (``fastconv info | head``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys

EPILOG = (
    "GFLOP/s count 2 FLOPs per multiply-add. Every target runs at the same --threads; "
    "torch on CPU is the baseline of every 'vs torch' ratio."
)


def _console(stderr: bool = False):
    from rich.console import Console

    # Piped output (make bench | tee) gets a wide table instead of rich's 80-column default.
    probe = Console(stderr=stderr)
    console = probe if probe.is_terminal else Console(stderr=stderr, width=190)
    console.on_broken_pipe = _broken_pipe  # one exit status for a closed pipe (see main)
    return console


def _broken_pipe():
    raise BrokenPipeError("the reader of the output went away")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _thread_count(text: str) -> int:
    from .threads import MAX_THREADS

    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _check_writable(paths) -> str | None:
    """Why one of the output files cannot be written, checked before a run that may take minutes."""
    for path in paths:
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            return f"{path} is a directory"
        if not os.path.isdir(folder):
            return f"cannot write {path}: folder {folder} does not exist"
        if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            return f"cannot write {path}: permission denied"
    return None


def _missing_module(module: str, option: str, command: str) -> str | None:
    """The error line for ``option`` when optional ``module`` is not installed (checked before any work)."""
    if importlib.util.find_spec(module) is None:
        return f"{command}: {option} needs {module}, which is not installed (pip install 'fastconv[bench]')"
    return None


def _runtimes_loaded() -> bool:
    """Whether an OpenMP runtime may already be running (it read OMP_WAIT_POLICY when it started)."""
    return "torch" in sys.modules or any(
        m.startswith("fastconv._ckernels") or m == "numba.np.ufunc.omppool" for m in sys.modules
    )


def _directions(text: str) -> tuple[str, ...]:
    allowed = ("fwd", "bwd_data", "bwd_weight")
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated directions from {', '.join(allowed)}, got {text!r}")
    return values


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,8, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


def bench_parser() -> argparse.ArgumentParser:
    from .bench.suites import SUITES
    from .threads import get_num_threads

    p = argparse.ArgumentParser(
        prog="fastconv bench",
        epilog=EPILOG,
        description="Time every fastconv backend and torch on a suite of layers. "
        "Also: 'fastconv bench compare A.json B.json', 'fastconv bench show r.json', "
        "'fastconv bench list'.",
    )
    p.add_argument("--suite", default="quick", choices=sorted(SUITES), help="which suite (default: quick)")
    p.add_argument(
        "--threads",
        type=_thread_count,
        default=get_num_threads(),
        help="threads for every backend and torch (default: %(default)s)",
    )
    p.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=None,
        help="comma-separated batch sizes replacing the suite's own (default: 1,8; quick picks per layer)",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument(
        "--direction",
        type=_directions,
        default=None,
        help="comma-separated directions of every convolution: fwd, bwd_data, bwd_weight (default: "
        "the suite's; fwd except for the training suite). fastconv's backward runs through "
        "dispatch.run (as fastconv.grad), torch's through autograd of the same op; FLOPs are "
        "the forward's in every direction (benchdnn's count)",
    )
    p.add_argument(
        "--backends",
        default=None,
        help="comma-separated backends to run, e.g. c,torch (default: every registered backend; "
        "torch, the baseline, always runs)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cuda adds the device backends (cuda, cupy; on GPU-resident arrays and on NumPy arrays "
        "copied each call) and torch on the GPU (cuDNN, benchmark mode off and on, TF32 off; "
        "plus a torch-cuda-benchmark-tf32 row) to the CPU targets",
    )
    p.add_argument(
        "--flush-l2",
        action="store_true",
        help="with --device cuda: overwrite the GPU's L2 cache before every timed call",
    )
    p.add_argument("--problems", default=None, help="only problems whose id or label contains this text")
    p.add_argument(
        "--algorithm",
        default="auto",
        choices=("auto", "direct", "gemm", "winograd"),
        help="the convolution algorithm asked of the fastconv backends (default: auto; torch "
        "always picks its own); backends that lack it show as skipped",
    )
    p.add_argument(
        "--min-time",
        type=_seconds,
        default=1.0,
        help="seconds of timed samples per problem, all targets together (default: %(default)s)",
    )
    p.add_argument("--min-repeats", type=_positive_int, default=5, help="samples per target at least (default: 5)")
    p.add_argument("--max-repeats", type=_positive_int, default=50, help="samples per target at most (default: 50)")
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active"),
        default=None,
        help="set OMP_WAIT_POLICY for every OpenMP runtime (torch's, the C backend's) before they "
        "start; passive keeps idle threads from spinning, which matters when other processes "
        "share the cores (default: the environment's, switched to passive when the load "
        "reading finds the cores contended or with --clock cpu)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: the process's CPU time / --threads, the time on "
        "free cores -- steadier on a loaded machine, blind to idle waits and load imbalance",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="measure even where the result cannot be trusted (--omp-wait-policy active on contended cores)",
    )
    p.add_argument(
        "--default-heap",
        action="store_true",
        help="leave the C library's allocator as it is (default: freed memory stays in the heap, "
        "so eager calls do not page-fault their outputs afresh each call; see docs/benchmarking.md)",
    )
    p.add_argument("--no-check", action="store_true", help="do not compare results with torch")
    p.add_argument("--no-peak", action="store_true", help="do not measure the machine's peak")
    p.add_argument("--json", metavar="FILE", help="write the run as JSON (schema: docs/bench-schema.md)")
    p.add_argument("--csv", metavar="FILE", help="write one row per problem and backend")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="plot the speed relative to torch and the throughput against the machine peak (needs matplotlib)",
    )
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown summary table")
    p.add_argument("--quiet", action="store_true", help="no tables on the terminal (files only)")
    return p


def _write_outputs(doc: dict, args, console) -> None:
    from .bench import report, schema

    if getattr(args, "json", None):
        schema.dump(doc, args.json)
        console.print(f"wrote {args.json}")
    if getattr(args, "csv", None):
        report.write_csv(doc, args.csv)
        console.print(f"wrote {args.csv}")
    if getattr(args, "markdown", None):
        with open(args.markdown, "w") as f:
            f.write(report.markdown(doc))
        console.print(f"wrote {args.markdown}")
    if getattr(args, "plot", None):
        from .bench.plot import plot

        plot(doc, args.plot)
        console.print(f"wrote {args.plot}")


def bench_main(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["show"]:
        return show_main(argv[1:])
    if argv[:1] == ["list"]:
        return list_main(argv[1:])
    args = bench_parser().parse_args(argv)
    missing = args.plot and _missing_module("matplotlib", "--plot", "fastconv bench")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    policy, before = _choose_wait_policy(args)
    if policy is None:
        return 2
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench import report, runner, schema, suites, targets

    out, err = _console(), _console(stderr=True)
    why = _check_writable((args.json, args.csv, args.markdown, args.plot))
    if why:
        err.print(f"[red]fastconv bench: {why}[/red]")
        return 2
    suite = suites.get_suite(args.suite)
    cases = suite.cases(args.batch_sizes, args.dtype, args.direction)
    if not cases:
        err.print(
            f"[red]fastconv bench: suite {suite.name} has no {','.join(args.direction)} problems "
            "(backward directions cover convolutions)[/red]"
        )
        return 2
    if args.algorithm != "auto":
        cases = [
            dataclasses.replace(c, problem=dataclasses.replace(c.problem, algorithm=args.algorithm))
            if c.op == "conv2d"
            else c
            for c in cases
        ]
    if args.problems:
        cases = [c for c in cases if args.problems in c.id or args.problems in c.label]
        if not cases:
            err.print(f"[red]--problems {args.problems!r} matches nothing in suite {suite.name}[/red]")
            return 2
    try:
        chosen = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
        with_torch = chosen is None or "torch" in chosen
        fastconv_names = None if chosen is None else [n for n in chosen if n != "torch"]
        all_targets = targets.fastconv_targets(fastconv_names, args.device, args.flush_l2) + targets.torch_targets(
            args.device, args.flush_l2
        )
        all_targets = targets.model_targets(all_targets, cases, args.threads)
    except targets.BenchError as exc:
        err.print(f"[red]fastconv bench: {exc}[/red]")
        return 2
    if not with_torch and fastconv_names:
        err.print("[dim]torch runs too: it is the baseline of every 'vs torch' ratio[/dim]")
    settings = runner.Settings(
        threads=args.threads,
        min_time=args.min_time,
        min_repeats=args.min_repeats,
        max_repeats=max(args.max_repeats, args.min_repeats),
        check=not args.no_check,
        clock=args.clock,
        steady_heap=not args.default_heap,
    )
    meta = {
        "name": suite.name,
        "version": suite.version,
        "description": suite.description,
        "dtype": args.dtype,
        "batch_sizes": list(args.batch_sizes) if args.batch_sizes else None,
        "directions": list(args.direction or suite.directions),
    }
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("measuring the machine's peak", total=len(cases))
        run = runner.new_run(meta, cases, all_targets, settings, args.device, peak=not args.no_peak, load_before=before)
        runner.run_cases(run, all_targets, lambda done, total, text: bar.update(task, completed=done, description=text))
    doc = schema.to_dict(run)
    if not args.quiet:
        report.print_run(doc, out)
    try:
        _write_outputs(doc, args, err)
    except OSError as exc:  # e.g. the disk filled during the run: say so, keep the printed tables
        err.print(f"[red]fastconv bench: could not write the results: {exc}[/red]")
        return 2
    bad = [r for r in doc["results"] if r["status"] in ("wrong", "error")]
    for r in bad:
        err.print(f"[red]{r['backend']} {r['status']} on {r['problem']}: {r['reason']}[/red]")
    if doc["load"]["contended"]:
        err.print(f"[bold red]fastconv bench: {doc['load']['verdict']}[/bold red]")
    return 1 if bad else 0


def _choose_wait_policy(args) -> tuple[str | None, dict | None]:
    """Read the load before any OpenMP runtime starts; set OMP_WAIT_POLICY; (None, None) to refuse.

    Contended cores switch the runtimes to the passive policy (idle threads sleep instead of
    spinning on cores others need) unless a policy was asked for; ``--omp-wait-policy active`` on
    contended cores is refused without ``--force``.  ``--clock cpu`` also wants passive: a
    spinning thread's CPU time would be billed to the call.
    """
    from .bench import load

    def warn(text):
        print(f"fastconv bench: warning: {text}", file=sys.stderr)

    cpus = load.usable_cpus()
    if args.threads > cpus:
        warn(
            f"--threads {args.threads} is more than the {cpus} CPUs this process may use: threads will "
            f"share cores, and the machine peak is measured at {cpus} threads"
        )
    before = load.assess(load.sample(0.3), args.threads, cpus)
    asked = args.omp_wait_policy or (os.environ.get("OMP_WAIT_POLICY") or "").lower() or None
    policy = asked
    if before["contended"]:
        warn(
            "the cores are contended (" + "; ".join(before["reasons"]) + "): wall-clock figures are not "
            "trustworthy; the results are flagged"
        )
        if asked == "active" and not args.force:
            print(
                "fastconv bench: refusing to measure with the active OpenMP wait policy on contended cores "
                "(spinning threads starve each other: ratios off by 10x and more); use --omp-wait-policy "
                "passive, --clock cpu, or --force to go on",
                file=sys.stderr,
            )
            return None, None
        if asked is None:
            policy = "passive"
            warn("switching OpenMP to the passive wait policy (OMP_WAIT_POLICY=PASSIVE)")
    if args.clock == "cpu" and asked is None:
        policy = "passive"
    if policy and os.environ.get("OMP_WAIT_POLICY", "").lower() != policy:
        if _runtimes_loaded():
            warn("an OpenMP runtime is already loaded in this process; the wait policy may not apply to it")
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return policy or "default", before


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastconv bench compare", description="Compare two saved runs (--json files).")
    p.add_argument("a", help="the earlier run (JSON)")
    p.add_argument("b", help="the later run (JSON)")
    args = p.parse_args(argv)
    from .bench import report, schema

    err = _console(stderr=True)
    try:
        a, b = schema.load(args.a), schema.load(args.b)
    except (OSError, ValueError) as exc:
        err.print(f"[red]fastconv bench compare: {exc}[/red]")
        return 2
    for warning in report.compare_warnings(a, b):
        err.print(f"[yellow]warning: {warning}[/yellow]")
    _console().print(report.compare_table(a, b, args.a, args.b))
    return 0


def show_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastconv bench show", description="Show saved runs again, or convert them.")
    p.add_argument("runs", nargs="+", help="saved runs (JSON)")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown summaries of all runs to FILE")
    p.add_argument("--plot", metavar="FILE", help="plot the (single) run")
    p.add_argument("--csv", metavar="FILE", help="write the (single) run as CSV")
    args = p.parse_args(argv)
    missing = args.plot and _missing_module("matplotlib", "--plot", "fastconv bench show")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from .bench import report, schema

    err = _console(stderr=True)
    try:
        docs = [schema.load(path) for path in args.runs]
    except (OSError, ValueError) as exc:
        err.print(f"[red]fastconv bench show: {exc}[/red]")
        return 2
    if (args.plot or args.csv) and len(docs) != 1:
        err.print("[red]fastconv bench show: --plot and --csv take one run[/red]")
        return 2
    why = _check_writable((args.markdown, args.plot, args.csv))
    if why:
        err.print(f"[red]fastconv bench show: {why}[/red]")
        return 2
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown_document(docs))
        err.print(f"wrote {args.markdown}")
    if args.plot or args.csv:
        _write_outputs(docs[0], argparse.Namespace(plot=args.plot, csv=args.csv), err)
    if not (args.markdown or args.plot or args.csv):
        for doc in docs:
            report.print_run(doc, _console())
    return 0


def list_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastconv bench list", description="The suites and their problems.")
    p.add_argument("suite", nargs="?", help="one suite's problems (default: every suite's)")
    args = p.parse_args(argv)
    from .bench.suites import SUITES, get_suite

    try:
        chosen = [get_suite(args.suite)] if args.suite else list(SUITES.values())
    except ValueError as exc:
        print(f"fastconv bench list: {exc}", file=sys.stderr)
        return 2
    console = _console()
    for suite in chosen:
        console.print(f"[bold]{suite.name}[/bold] v{suite.version}: {suite.description}")
        for case in suite.cases():
            count = f" (x{case.count} in the network)" if case.count > 1 else ""
            console.print(f"  {case.name:40} {case.id}{count}", highlight=False)
    return 0


def info_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastconv info", description="Backends, CPU, threads and library versions.")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    args = p.parse_args(argv)
    import fastconv
    from .bench import machine

    info = {
        "backends": [
            {"name": n, "available": ok, "reason": reason or None} for n, ok, reason in fastconv.backend_status()
        ],
        "machine": machine.describe(),
        "threads": machine.thread_counts(),
        "versions": machine.versions(),
        "cuda": machine.cuda_info(),
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    from rich.table import Table

    console = _console()
    table = Table(title="Backends", title_justify="left")
    for col in ("backend", "available", "why not"):
        table.add_column(col)
    for b in info["backends"]:
        table.add_row(b["name"], "[green]yes[/green]" if b["available"] else "[red]no[/red]", b["reason"] or "")
    console.print(table)
    m = info["machine"]
    console.print(f"[bold]CPU[/bold]: {m['cpu']} ({m['cpus']} CPUs usable; load average {m['load_average']})")
    console.print(
        f"[bold]SIMD[/bold]: {' '.join(m['simd']) or 'unknown'}; torch dispatches {m['torch_cpu_capability'] or '-'}"
    )
    for lib in m["blas"]:
        console.print(
            f"[bold]BLAS[/bold]: {lib['internal_api']} {lib['version']} ({lib['architecture']}, "
            f"{lib['threading_layer']}, {lib['num_threads']} threads)"
        )
    console.print("[bold]Threads[/bold]: " + ", ".join(f"{k}={v}" for k, v in info["threads"].items() if v is not None))
    console.print(
        "[bold]Versions[/bold]: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v is not None)
    )
    missing = [k for k, v in info["versions"].items() if v is None]
    if missing:
        console.print(f"[bold]Not installed[/bold]: {', '.join(missing)}")
    cuda = info["cuda"]
    console.print(
        "[bold]CUDA[/bold]: "
        + (
            f"{cuda['device']} (CUDA {cuda['cuda']}, cuDNN {cuda['cudnn']})"
            if cuda["available"]
            else f"not available: {cuda['reason']}"
        )
    )
    return 0


def resnet_main(argv: list[str]) -> int:
    try:
        from .bench.resnet_command import main as resnet_command
    except ImportError as exc:
        print(
            f"fastconv resnet: not available in this installation (fastconv.bench.resnet_command: {exc})",
            file=sys.stderr,
        )
        return 2
    return resnet_command(argv) or 0


def train_main(argv: list[str]) -> int:
    from .train import main as train_command

    return train_command(argv)


COMMANDS = {"bench": bench_main, "info": info_main, "resnet": resnet_main, "train": train_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch(argv)
    except BrokenPipeError:
        # The reader went away (`fastconv info | head`): no traceback, and no second error when
        # Python flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        from . import __version__

        print(f"fastconv {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(
            f"fastconv: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)} (fastconv --help)",
            file=sys.stderr,
        )
        return 2
    from .threads import get_num_threads

    try:
        get_num_threads()  # a bad FASTCONV_NUM_THREADS is a one-line error, not a traceback
    except ValueError as exc:
        print(f"fastconv: {exc}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except KeyboardInterrupt:
        print("fastconv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
