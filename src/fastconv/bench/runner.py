"""The benchmark method: one case at a time, every target interleaved, medians over repeats.

For each case:

1. make the inputs once (seeded) and torch's float64 answer, the reference;
2. for each target: skip it with the reason if it cannot run the case; else time its *first
   call* on its own (JIT compilation, caches, thread pools: reported, never mixed into the
   steady state), check that call's output against the reference (a result outside the
   tolerance is flagged "wrong" and never ranked), and time a second call to size the samples;
3. take ``repeats`` rounds; in each, every target runs one sample (``number`` back-to-back
   calls, enough to last ``sample_time``), in an order rotated every round so that drift, turbo
   and cache state hit every target alike.  Before each sample the target runs untimed for
   ``settle`` seconds (whole networks: ``model_settle``, outlasting OpenBLAS's longer spin), so
   the previous target's spin-waiting threads (OpenMP's default) are not billed to this one;
4. report the median and the interquartile range of the samples.

The workspace (memory beyond the output) is measured on one more, untimed call.

Every target runs at one thread count (``fastconv.set_num_threads`` and ``torch.set_num_threads``).

The load is read before the run and during each case (:mod:`fastconv.bench.load`): a case run
while other processes kept the cores busy is flagged ``contended``, and a figure whose
interquartile range exceeds 10% of its median ``noisy``.  With ``clock="cpu"`` host targets are
timed by the process's CPU time divided by the thread count -- the wall time the call would take
on free cores, unaffected by other processes (but blind to idle waits and load imbalance).
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import fastconv

from .. import dispatch, timing
from . import load, machine, scaling
from .suites import GFLOPS
from .targets import Prepared, make_inputs, reference, relative_error, tolerance


@dataclass
class Settings:
    threads: int
    min_time: float = 1.0  # seconds of timed samples per case, all targets together
    min_repeats: int = 5
    max_repeats: int = 50
    sample_time: float = 0.002  # one sample lasts at least this long (short calls repeat)
    seed: int = 0
    check: bool = True  # compare every output with torch's float64 answer
    max_traced_call: float = 0.1  # measure the workspace (a traced extra call) below this call time
    settle: float = 0.02  # untimed calls this long before each sample (see _sample)
    model_settle: float = 0.15  # the same before each whole network's sample (see _settle_time)
    clock: str = "wall"  # "wall", or "cpu": process CPU time / threads (host targets)
    steady_heap: bool = True  # keep freed memory in the heap (machine.steady_heap)


@dataclass
class Measurement:
    """One (case, target) cell.  Times are seconds per call; None where not measured."""

    problem: str
    backend: str
    kind: str  # "fastconv" or "torch"
    device: str
    status: str  # ok | unchecked | wrong | skipped | error
    reason: str | None = None
    first_call_s: float | None = None
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    iqr_s: float | None = None
    repeats: int = 0
    number: int = 0
    throughput: float | None = None  # GFLOP/s or GB/s (the case's unit) at the median
    percent_of_peak: float | None = None  # GFLOP/s figures only
    speed_vs_torch: float | None = None  # torch CPU median / this median (> 1: faster than torch)
    max_rel_error: float | None = None
    tolerance: float | None = None
    workspace_bytes: int | None = None
    workspace_method: str | None = None
    spread: float | None = None  # iqr_s / median_s
    flags: list[str] = field(default_factory=list)  # "noisy" (spread > 10%), "contended" (busy machine)

    @property
    def ranked(self) -> bool:
        return self.status in ("ok", "unchecked")


@dataclass
class Run:
    """A whole benchmark run: settings, environment and one Measurement per case and target."""

    suite: dict
    settings: Settings
    device: str
    machine: dict
    versions: dict
    threads: dict
    peak: dict
    backends: list[dict]
    cases: list = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    reference_notes: dict[str, str] = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )

    def cell(self, problem: str, backend: str) -> Measurement | None:
        return next((m for m in self.measurements if m.problem == problem and m.backend == backend), None)


Progress = Callable[[int, int, str], None]  # (cases done, cases, what runs now)


def _apply_threads(n: int) -> None:
    fastconv.set_num_threads(n)
    try:
        import torch
    except Exception:
        return
    torch.set_num_threads(n)


def backend_table(targets) -> list[dict]:
    """Each target: name, kind, device, and whether it is available (with the reason)."""
    status = {name: (ok, reason) for name, ok, reason in dispatch.backend_status()}
    out = []
    for t in targets:
        ok, reason = status.get(t.name, (True, "")) if t.kind == "fastconv" else (True, "")
        out.append({"name": t.name, "kind": t.kind, "device": t.device, "available": ok, "reason": reason or None})
    return out


def new_run(
    suite, cases, targets, settings: Settings, device: str = "cpu", peak: bool = True, load_before: dict | None = None
) -> Run:
    """A run with its environment; ``load_before`` is the load read before anything started
    (the CLI reads it before the OpenMP runtimes load), else it is read here."""
    _apply_threads(settings.threads)
    if settings.steady_heap:
        machine.steady_heap()
    before = load_before or load.assess(load.sample(0.3), settings.threads)
    value, source, measured_at = (
        machine.peak_gflops(settings.threads, cache=not before["contended"])
        if peak
        else (None, "not measured", settings.threads)
    )
    return Run(
        suite=suite,
        settings=settings,
        device=device,
        machine=machine.describe(),
        versions=machine.versions(),
        threads=machine.thread_counts(),
        peak={"gflops": value, "source": source, "threads": measured_at},
        backends=backend_table(targets),
        cases=list(cases),
        load={
            "before": before,
            "during": [],
            "contended": before["contended"],
            "wait_policy": wait_policy(),
            "clock": settings.clock,
        },
    )


def wait_policy() -> str:
    """The OpenMP wait policy the runtimes run under (the environment's, else the default)."""
    return (os.environ.get("OMP_WAIT_POLICY") or "default").lower()


def run_cases(run: Run, targets, progress: Progress | None = None) -> Run:
    """Measure every case of ``run`` on every target, appending to ``run.measurements``."""
    _apply_threads(run.settings.threads)
    meter = load.Meter()
    cpus = run.load.get("before", {}).get("cpus") or load.usable_cpus()
    for i, case in enumerate(run.cases):
        meter.start()
        cells = measure_case(
            case, targets, run.settings, run, lambda text: progress and progress(i, len(run.cases), text)
        )
        # Our own threads' CPU time is subtracted; what remains is other processes' work.
        others = meter.read()
        if others is None and "before" in run.load:
            # Too short a problem to read the load over (or no /proc/stat): the reading taken
            # before the run stands for it, not the slow-moving load average.
            during = {"other_busy_cpus": None, "contended": run.load["before"]["contended"]}
        elif others is None:
            during = load.assess(None, run.settings.threads, cpus)
        else:
            during = load.assess_during(others, run.settings.threads, cpus)
        run.load.setdefault("during", []).append(
            {"problem": case.id, "other_busy_cpus": during["other_busy_cpus"], "contended": during["contended"]}
        )
        for c in cells:
            if during["contended"] and c.median_s is not None:
                c.flags.append("contended")
        run.measurements += cells
    run.machine["load_average_end"] = machine.load_average()
    run.load["contended"] = bool(run.load.get("before", {}).get("contended")) or any(
        d["contended"] for d in run.load.get("during", [])
    )
    run.load["verdict"] = verdict(run)
    if progress:
        progress(len(run.cases), len(run.cases), "done")
    return run


@dataclass
class _Active:
    target: object
    prepared: Prepared
    cell: Measurement
    estimate: float  # seconds per call, from the second call
    number: int  # calls per sample
    rounds: int = 0  # rounds this target takes part in
    samples: list[float] = field(default_factory=list)


def measure_case(
    case, targets, settings: Settings, run: Run | None = None, note: Callable[[str], object] | None = None
) -> list[Measurement]:
    """One Measurement per target for ``case`` (the method is the module docstring)."""
    note = note or (lambda text: None)
    note(f"{case.label}: inputs and reference")
    data = make_inputs(case, settings.seed)
    ref, why = reference(case, data) if settings.check else (None, "checking disabled")
    if why and run is not None:
        run.reference_notes[case.id] = why
    cells, active = [], []
    for target in targets:
        cell = Measurement(case.id, target.name, target.kind, target.device, "skipped")
        cells.append(cell)
        cell.reason = target.skip_reason(case)
        if cell.reason is not None:
            continue
        note(f"{case.label}: {target.name} first call")
        entry = _start(case, target, data, ref, cell, settings)
        if entry is not None:
            active.append(entry)
    if active:
        # Enough rounds for min_time of samples.  A target too slow for min_repeats samples
        # within min_time (the naive one) takes only the first rounds that fit, at least one.
        round_time = sum(a.number * a.estimate for a in active)
        repeats = min(settings.max_repeats, max(settings.min_repeats, math.ceil(settings.min_time / round_time)))
        for a in active:
            sample = a.number * a.estimate
            a.rounds = (
                repeats
                if sample * settings.min_repeats <= settings.min_time
                else max(1, min(repeats, int(settings.min_time / sample)))
            )
        for r in range(repeats):
            note(f"{case.label}: round {r + 1}/{repeats}")
            shift = r % len(active)
            for a in active[shift:] + active[:shift]:
                if r < a.rounds and a.cell.status != "error":
                    _sample(a, _settle_time(case, settings) if len(active) > 1 else 0.0)
        for a in active:
            if a.cell.status == "error":
                continue
            _summarise(case, a)
    _derive(case, cells, run.peak.get("gflops") if run else None)
    return cells


def _start(case, target, data, ref, cell: Measurement, settings: Settings) -> _Active | None:
    """First call (timed alone, checked), then a second call to size the samples; None on failure."""
    try:
        prepared = target.prepare(case, data)
        prepared.sync()
        t0 = timing.clock()
        y = prepared.call()
        prepared.sync()
        cell.first_call_s = timing.clock() - t0
        if ref is not None:
            cell.max_rel_error = relative_error(prepared.output(y), ref)
            cell.tolerance = tolerance(case)
            cell.status = "ok" if cell.max_rel_error <= cell.tolerance else "wrong"
            if cell.status == "wrong":
                cell.reason = (
                    f"max relative error {cell.max_rel_error:.2e} > tolerance {cell.tolerance:.1e}"
                    if math.isfinite(cell.max_rel_error)
                    else "wrong shape, or NaN/inf where torch's answer is finite"
                )
        else:
            cell.status = "unchecked"
        if settings.clock == "cpu" and target.device == "cpu":
            prepared.timer = cpu_timer(settings.threads)
        estimate = max(prepared.timer(prepared.call, 1), 1e-9)  # sizes the samples
        if prepared.workspace is not None:
            # Tracing allocations slows Python-heavy calls many times over: spare the slow ones.
            if estimate < settings.max_traced_call:
                cell.workspace_bytes, cell.workspace_method = prepared.workspace()
            else:
                cell.workspace_method = "not measured (slow call)"
    except dispatch.BackendError as exc:  # a model layer the backend refuses
        cell.status, cell.reason = "skipped", str(exc)
        return None
    except Exception as exc:  # a broken target must not stop the others
        cell.status, cell.reason = "error", f"{type(exc).__name__}: {exc}"
        return None
    return _Active(target, prepared, cell, estimate, max(1, math.ceil(settings.sample_time / estimate)))


def _settle_time(case, settings: Settings) -> float:
    """How long each target settles before a sample.  A whole network's targets include BLAS
    (im2col's GEMMs, the classifier of the numba and im2col networks), and OpenBLAS's idle
    threads spin far longer than OpenMP's: measured on 2 cores (AMD EPYC, AVX-512), a ResNet-18
    batch 1 on c took 30-46 ms within 50 ms of an im2col forward pass, 16 ms after 100 ms and
    14.5 ms after 200 ms.  Settling 150 ms costs the models suite about a minute."""
    return max(settings.settle, settings.model_settle) if case.op == "model" else settings.settle


def _sample(a: _Active, settle: float) -> None:
    try:
        # Settle: untimed calls for ``settle`` seconds (at least one).  The previous target's idle
        # threads spin-wait for a while (OpenMP's default: about 10 ms here) on the cores this one
        # needs; running this target meanwhile outlasts them and brings its own thread pool and
        # caches back to the state of a program that calls only it.  Sleeping instead would let
        # this target's own pool fall asleep too.  A call long enough to dwarf the spin (the
        # naive backend's) needs no settling.
        if a.estimate < 5 * settle:
            timing.settle(a.prepared.call, settle)
        a.samples.append(a.prepared.timer(a.prepared.call, a.number))
    except Exception as exc:  # it worked once; report, do not stop the run
        a.cell.status, a.cell.reason = "error", f"{type(exc).__name__}: {exc}"


def _summarise(case, a: _Active) -> None:
    q1, med, q3 = timing.quartiles(a.samples)
    a.cell.median_s, a.cell.q1_s, a.cell.q3_s = float(med), float(q1), float(q3)
    a.cell.iqr_s = float(q3 - q1)
    a.cell.repeats, a.cell.number = len(a.samples), a.number
    a.cell.spread = load.spread(q1, med, q3)
    if a.cell.spread is not None and a.cell.spread > load.NOISY_SPREAD and len(a.samples) >= 3:
        a.cell.flags.append("noisy")


def cpu_timer(threads: int):
    """Seconds per call by the process's CPU time divided by ``threads`` (``Settings.clock == "cpu"``)."""
    clock = timing.cpu_clock(threads)
    return lambda call, number: timing.time_calls(call, number, timer=clock)


def _derive(case, cells: list[Measurement], peak: float | None) -> None:
    """Throughput, share of peak and speed relative to torch on CPU, for the cells that ran."""
    torch_cells = {c.backend: c for c in cells if c.kind == "torch" and c.ranked and c.median_s}
    for c in cells:
        if c.median_s is None or c.repeats == 0:
            continue
        c.throughput = case.throughput(c.median_s)
        if case.unit == GFLOPS and peak:
            c.percent_of_peak = 100.0 * c.throughput / peak
        torch_cell = torch_cells.get(scaling.torch_baseline(c.backend))  # torch at the same thread count
        if torch_cell is not None and c.ranked:
            c.speed_vs_torch = torch_cell.median_s / c.median_s


def verdict(run: Run) -> str:
    """One sentence on whether the figures can be trusted."""
    during = run.load.get("during", [])
    bad = sum(d["contended"] for d in during)
    noisy = sum("noisy" in m.flags for m in run.measurements)
    before = run.load.get("before", {})
    if not run.load.get("contended"):
        return "the cores were free during the run" + (f"; {noisy} noisy figure(s) flagged" if noisy else "")
    why = "; ".join(before.get("reasons", [])) or f"other processes were busy during {bad} of {len(during)} problems"
    if run.settings.clock == "cpu":
        return (
            f"CAUTION: the cores were contended ({why}); CPU-clock figures leave out the other processes' "
            "time but not their use of caches and memory bandwidth: treat differences under about 15% as noise"
        )
    return (
        f"NOT TRUSTWORTHY: the cores were contended ({why}); ratios can be off by any factor. "
        f"Measure on an idle machine, or with --clock cpu"
    )


def run_suite(
    suite, cases, targets, settings: Settings, device: str = "cpu", progress: Progress | None = None, peak: bool = True
) -> Run:
    """Everything: environment, peak, then every case on every target."""
    return run_cases(new_run(suite, cases, targets, settings, device, peak), targets, progress)
