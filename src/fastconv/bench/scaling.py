"""Thread scaling: the whole networks timed on one thread as well as on the run's thread count.

For a run of the ``models`` suite on more than one thread, every CPU target gets a one-thread
twin named ``<target>@1t``, measured in the same interleaved rounds (so a busy machine slows
both alike).  The twin sets the thread count (fastconv's and torch's) to 1 around each call and
restores the run's count after it; an ONNX Runtime twin gets its own one-thread session.  Its
speed ratio is against ``torch@1t``.

The JSON document gains ``thread_scaling``: per (problem, target) whose both cells ran,
``speedup = time_1 / time_n`` and the parallel efficiency ``time_1 / (n * time_n)`` (1.0: perfect
scaling on n threads).
"""

from __future__ import annotations

import re

from .suites import Case

SUFFIX = "@1t"
_THREADED = re.compile(r"^(?P<base>.+)@(?P<threads>\d+)t$")


def _set_threads(n: int) -> None:
    import sys

    import fastconv

    fastconv.set_num_threads(n)
    torch = sys.modules.get("torch")  # only when some target already uses it
    if torch is not None:
        torch.set_num_threads(n)


def split_name(name: str) -> tuple[str, int | None]:
    """("c", 1) for "c@1t"; (name, None) for a target at the run's thread count."""
    m = _THREADED.match(name)
    return (m["base"], int(m["threads"])) if m else (name, None)


def torch_baseline(name: str) -> str:
    """The torch cell a target's speed is compared with: the one at the same thread count."""
    _, threads = split_name(name)
    return "torch" if threads is None else f"torch@{threads}t"


class ThreadCountTarget:
    """``inner`` at a fixed thread count, whatever the run's."""

    def __init__(self, inner, threads: int):
        self.inner, self.threads = inner, threads
        self.name = f"{inner.name}@{threads}t"
        self.kind, self.device = inner.kind, inner.device

    def skip_reason(self, case: Case) -> str | None:
        return self.inner.skip_reason(case)

    def prepare(self, case: Case, data):
        import dataclasses

        import fastconv

        run_threads, n = fastconv.get_num_threads(), self.threads
        _set_threads(n)  # a session or cache made while preparing is made for n threads
        try:
            prepared = self.inner.prepare(case, data)
        finally:
            _set_threads(run_threads)
        inner_call = prepared.call

        def call():
            _set_threads(n)
            try:
                return inner_call()
            finally:
                _set_threads(run_threads)

        return dataclasses.replace(prepared, call=call, workspace=None)


def with_scaling(targets: list, cases: list[Case], threads: int) -> list:
    """``targets`` plus a one-thread twin of each CPU target, when ``cases`` has whole networks and
    the run uses more than one thread; ``targets`` unchanged otherwise."""
    if threads <= 1 or not any(c.op == "model" for c in cases):
        return list(targets)
    return [*targets, *(ThreadCountTarget(t, 1) for t in targets if t.device == "cpu")]


def table(doc: dict) -> list[dict]:
    """Per (problem, target) measured at both counts: medians, speed-up and parallel efficiency."""
    n = doc["threads"]
    cells = {(r["problem"], r["backend"]): r for r in doc["results"]}
    out = []
    for r in doc["results"]:
        base, threads = split_name(r["backend"])
        if threads != 1 or n <= 1:
            continue
        full = cells.get((r["problem"], base))
        if not (
            full
            and full["median_s"]
            and r["median_s"]
            and full["status"] in ("ok", "unchecked")
            and r["status"] in ("ok", "unchecked")
        ):
            continue
        t1, tn = r["median_s"], full["median_s"]
        out.append(
            {
                "problem": r["problem"],
                "backend": base,
                "threads": n,
                "median_1_s": t1,
                "median_n_s": tn,
                "speedup": t1 / tn,
                "parallel_efficiency": t1 / (n * tn),
            }
        )
    return out


def markdown(doc: dict) -> list[str]:
    """Markdown lines for the document's thread scaling (none when it has none)."""
    rows = doc.get("thread_scaling") or []
    if not rows:
        return []
    labels = {p["id"]: f"{p['label']} n{p['n']}" for p in doc["problems"]}
    n = doc["threads"]
    lines = [
        "",
        f"Thread scaling (parallel efficiency = time at 1 thread / ({n} x time at {n} threads)):",
        "",
        f"| network | target | 1 thread | {n} threads | speed-up | efficiency |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        lines.append(
            f"| {labels.get(s['problem'], s['problem'])} | {s['backend']} | {s['median_1_s'] * 1e3:.1f} ms "
            f"| {s['median_n_s'] * 1e3:.1f} ms | {s['speedup']:.2f}x | {s['parallel_efficiency']:.2f} |"
        )
    return lines


def rich_table(doc: dict):
    """The thread scaling as a rich table, or None when the document has none."""
    rows = doc.get("thread_scaling") or []
    if not rows:
        return None
    from rich import box
    from rich.table import Table

    n = doc["threads"]
    labels = {p["id"]: (p["label"], p["n"]) for p in doc["problems"]}
    t = Table(
        title=f"Thread scaling: parallel efficiency = time at 1 thread / ({n} x time at {n} threads)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for header in ("Network", "n", "Target", "1 thread", f"{n} threads", "Speed-up", "Efficiency"):
        t.add_column(header, justify="left" if header in ("Network", "Target") else "right")
    for s in rows:
        label, batch = labels.get(s["problem"], (s["problem"], ""))
        t.add_row(
            label,
            str(batch),
            s["backend"],
            f"{s['median_1_s'] * 1e3:.1f} ms",
            f"{s['median_n_s'] * 1e3:.1f} ms",
            f"{s['speedup']:.2f}x",
            f"{s['parallel_efficiency']:.2f}",
        )
    return t
