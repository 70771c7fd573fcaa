"""Benchmark runs for people: rich tables, a Markdown summary, CSV, and the comparison of two runs.

Everything here reads the JSON document of a run (:mod:`fastconv.bench.schema`), so a live run
and a saved one are shown by the same code.
"""

from __future__ import annotations

import csv
import math

from rich import box
from rich.table import Table
from rich.text import Text

from . import scaling
from .schema import RESULT

_STATUS_STYLE = {"wrong": "bold red", "error": "red", "skipped": "dim", "unchecked": "yellow"}


# -- formatting ----------------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return ""


def fmt_num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def fmt_err(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


# -- reading a run -------------------------------------------------------------------------------


def label(p: dict) -> str:
    """A problem's label with its direction when it is a backward one: ``res2a 3x3 64 bwd_data``."""
    direction = p.get("direction", "fwd")
    return p["label"] if direction == "fwd" else f"{p['label']} {direction}"


def cells(doc: dict) -> dict[tuple[str, str], dict]:
    """(problem id, backend) -> result."""
    return {(r["problem"], r["backend"]): r for r in doc["results"]}


def shown_backends(doc: dict) -> tuple[list[str], list[dict]]:
    """Backends with at least one cell that is not 'unavailable', and the unavailable ones."""
    gone = [b for b in doc["backends"] if not b["available"]]
    gone_names = {b["name"] for b in gone}
    return [b["name"] for b in doc["backends"] if b["name"] not in gone_names], gone


def best_backend(doc: dict, problem: str) -> str | None:
    """The fastest backend whose result was right (a wrong result is never ranked)."""
    ranked = [
        r for r in doc["results"] if r["problem"] == problem and r["status"] in ("ok", "unchecked") and r["median_s"]
    ]
    return min(ranked, key=lambda r: r["median_s"])["backend"] if ranked else None


def machine_label(doc: dict) -> str:
    """CPU and ISA, as every figure is labelled: e.g. 'Intel Xeon ..., c backend avx512, torch AVX512'."""
    m = doc["machine"]
    isa = ", ".join(
        x
        for x in (
            f"c kernels {m['isa']}" if m.get("isa") else "",
            f"torch {m['torch_cpu_capability']}" if m.get("torch_cpu_capability") else "",
        )
        if x
    )
    return f"{m['cpu']} ({m['cpus']} CPUs{'; ' + isa if isa else ''})"


def title(doc: dict) -> str:
    s, peak = doc["suite"], doc["peak"]
    peak_text = (
        f"peak {peak['gflops']:.0f} GFLOP/s at {peak['threads']} threads ({peak['source']})"
        if peak["gflops"]
        else "peak not measured"
    )
    load = doc["load"]
    return (
        f"fastconv {doc['command']}: suite {s['name']} v{s['version']}, {s['dtype']}, {doc['threads']} threads, "
        f"{doc['device']}, {load['clock']} clock, OpenMP wait policy {load['wait_policy']}; {peak_text}\n"
        f"{machine_label(doc)}"
    )


def load_lines(doc: dict) -> list[tuple[str, str]]:
    """(style, text): whether the figures can be trusted, for the top of every report."""
    load = doc["load"]
    style = ("bold red" if load["clock"] == "wall" else "bold yellow") if load["contended"] else "dim"
    out = [(style, load["verdict"])]
    before = load.get("before") or {}
    if before:
        others = before.get("other_busy_cpus")
        out.append(
            (
                "dim",
                f"before the run: other processes busy on {others if others is not None else '?'} of "
                f"{before.get('cpus')} CPUs, load average {before.get('load_average')}",
            )
        )
    noisy = [r for r in doc["results"] if "noisy" in r.get("flags", [])]
    if noisy:
        out.append(
            (
                "yellow",
                f"{len(noisy)} figure(s) flagged noisy (interquartile range above 10% of the median: "
                "marked ~ in the table)",
            )
        )
    return out


def backend_summary(doc: dict) -> list[dict]:
    """Per backend: counts by status, wins, the geometric-mean speed relative to torch, warm-up cost."""
    out = []
    names, _ = shown_backends(doc)
    for name in names:
        rs = [r for r in doc["results"] if r["backend"] == name]
        speeds = [r["speed_vs_torch"] for r in rs if r["speed_vs_torch"]]
        ran = [r for r in rs if r["first_call_s"] is not None]
        extra = [r["first_call_s"] - r["median_s"] for r in ran if r["median_s"] is not None]
        out.append(
            {
                "backend": name,
                "ran": sum(r["status"] in ("ok", "unchecked", "wrong") for r in rs),
                "wrong": sum(r["status"] == "wrong" for r in rs),
                "skipped": sum(r["status"] == "skipped" for r in rs),
                "errors": sum(r["status"] == "error" for r in rs),
                "best": sum(best_backend(doc, p["id"]) == name for p in doc["problems"]),
                "geomean_vs_torch": math.exp(sum(map(math.log, speeds)) / len(speeds)) if speeds else None,
                "first_use_s": ran[0]["first_call_s"] if ran else None,
                "warmup_extra_s": sum(max(0.0, e) for e in extra) if extra else None,
            }
        )
    return out


# -- rich ----------------------------------------------------------------------------------------


def results_table(doc: dict) -> Table:
    names, _ = shown_backends(doc)
    table = Table(title=title(doc), box=box.SIMPLE_HEAD, title_justify="left", show_lines=False)
    for header, justify in (
        ("Layer", "left"),
        ("n", "right"),
        ("Backend", "left"),
        ("First call", "right"),
        ("Median", "right"),
        ("IQR", "right"),
        ("Throughput", "right"),
        ("% peak", "right"),
        ("vs torch", "right"),
        ("Rel. err", "right"),
        ("Note", "left"),
    ):
        table.add_column(header, justify=justify, overflow="fold")
    by_cell = cells(doc)
    for p in doc["problems"]:
        best = best_backend(doc, p["id"])
        for i, name in enumerate(names):
            r = by_cell.get((p["id"], name))
            if r is None:
                continue
            style = "bold green" if name == best else _STATUS_STYLE.get(r["status"], "")
            note = r["reason"] or ("" if r["status"] in ("ok",) else r["status"])
            if r["status"] == "wrong":
                note = f"WRONG: {note}"
            if r["repeats"] == 1:
                note = (note + "; " if note else "") + "1 sample (slow)"
            for flag in r.get("flags", []):
                note = (note + "; " if note else "") + (
                    f"noisy (IQR {100 * r['spread']:.0f}% of median)" if flag == "noisy" else "machine busy"
                )
            table.add_row(
                label(p) if i == 0 else "",
                str(p["n"]) if i == 0 else "",
                Text(name, style=style),
                fmt_time(r["first_call_s"]),
                Text(fmt_time(r["median_s"]), style=style),
                fmt_time(r["iqr_s"]),
                f"{fmt_num(r['throughput'])} {p['unit']}" if r["throughput"] else "",
                fmt_num(r["percent_of_peak"], 2),
                fmt_ratio(r["speed_vs_torch"]) + ("~" if r.get("flags") else ""),
                fmt_err(r["max_rel_error"]),
                Text(note, style=_STATUS_STYLE.get(r["status"], "")),
            )
        table.add_section()
    return table


def summary_table(doc: dict) -> Table:
    table = Table(
        title="Per backend (vs torch: geometric mean of torch time / backend time; first use includes JIT compilation)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for header in ("Backend", "Ran", "Best", "Wrong", "Skipped", "Errors", "vs torch", "First use", "Warm-up extra"):
        table.add_column(header, justify="left" if header == "Backend" else "right")
    for s in backend_summary(doc):
        table.add_row(
            s["backend"],
            str(s["ran"]),
            str(s["best"]),
            str(s["wrong"]),
            str(s["skipped"]),
            str(s["errors"]),
            fmt_ratio(s["geomean_vs_torch"]),
            fmt_time(s["first_use_s"]),
            fmt_time(s["warmup_extra_s"]),
        )
    return table


def footnotes(doc: dict) -> list[str]:
    out = [
        "GFLOP/s count 2 FLOPs per multiply-add; GB/s count each input and output byte once; "
        "vs torch = torch time / backend time (> 1: faster than torch on CPU); "
        "Rel. err = max |y - ref| / max |ref| against torch in float64."
    ]
    _, gone = shown_backends(doc)
    for b in gone:
        out.append(f"{b['name']}: not available ({b['reason']})")
    for problem, why in doc["notes"].items():
        out.append(f"{problem}: {why}")
    load = doc["machine"].get("load_average")
    if load:
        out.append(
            f"load average at start {load[0]:.2f}, at end {(doc['machine'].get('load_average_end') or ['?'])[0]}"
            f" on {doc['machine']['cpus']} CPUs"
        )
    return out


def print_run(doc: dict, console) -> None:
    for style, line in load_lines(doc):
        console.print(f"[{style}]{line}[/{style}]", highlight=False)
    console.print(results_table(doc))
    console.print(summary_table(doc))
    if scaling.rich_table(doc) is not None:
        console.print(scaling.rich_table(doc))
    for line in footnotes(doc):
        console.print(f"[dim]{line}[/dim]", highlight=False)


# -- Markdown and CSV ----------------------------------------------------------------------------


def markdown(doc: dict) -> str:
    """A compact summary: one row per problem, throughput and speed relative to torch per backend."""
    names, gone = shown_backends(doc)
    fastconv_names = [
        n for n in names if n != "torch" and any(r["backend"] == n and r["status"] != "skipped" for r in doc["results"])
    ]
    others = [n for n in names if n != "torch" and n not in fastconv_names]
    by_cell = cells(doc)
    v = doc["versions"]
    lines = [
        f"### Suite `{doc['suite']['name']}` (v{doc['suite']['version']}, {doc['suite']['dtype']}, "
        f"{doc['threads']} threads, {doc['device']})",
        "",
        f"{machine_label(doc)}; "
        f"fastconv {v.get('fastconv')}, torch {v.get('torch')}, numpy {v.get('numpy')}; {doc['created']}.",
        f"Machine peak: {fmt_num(doc['peak']['gflops'])} GFLOP/s ({doc['peak']['source']}). "
        "Median of interleaved repeats; GFLOP/s count 2 FLOPs per multiply-add; "
        "x = torch time / backend time (> 1: faster than torch); ~ marks a noisy figure.",
        f"Load: {doc['load']['verdict']} (OpenMP wait policy {doc['load']['wait_policy']}, "
        f"{doc['load']['clock']} clock).",
        "",
    ]
    header = ["layer", "n", "unit", "torch"] + fastconv_names
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in doc["problems"]:
        t = by_cell.get((p["id"], "torch"))
        row = [
            label(p) + (f" (x{p['count']})" if p["count"] > 1 else ""),
            str(p["n"]),
            p["unit"],
            fmt_num(t["throughput"]) if t and t["throughput"] else "-",
        ]
        best = best_backend(doc, p["id"])
        for name in fastconv_names:
            r = by_cell.get((p["id"], name))
            if r is None or r["status"] == "skipped":
                cell = "skip"
            elif r["status"] == "wrong":
                cell = "WRONG"
            elif r["status"] == "error":
                cell = "error"
            else:
                cell = f"{fmt_num(r['throughput'])} ({fmt_ratio(r['speed_vs_torch'])}{'~' if r.get('flags') else ''})"
                if name == best:
                    cell = f"**{cell}**"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    summary = backend_summary(doc)
    lines += [
        "| backend | ran | best | wrong | skipped | vs torch (geomean) | first use | warm-up extra |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['backend']} | {s['ran']} | {s['best']} | {s['wrong']} | {s['skipped']} | "
            f"{fmt_ratio(s['geomean_vs_torch']) or '-'} | {fmt_time(s['first_use_s']) or '-'} | "
            f"{fmt_time(s['warmup_extra_s']) or '-'} |"
        )
    notes = [f"{b['name']}: not available ({b['reason']})" for b in gone]
    for name in [
        *others,
        *(["torch"] if all(r["status"] == "skipped" for r in doc["results"] if r["backend"] == "torch") else []),
    ]:
        reasons = sorted({r["reason"] for r in doc["results"] if r["backend"] == name and r["reason"]})
        notes.append(f"{name}: skipped on every problem ({'; '.join(reasons) or 'no reason given'})")
    lines += scaling.markdown(doc)
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _load_note(docs: list[dict]) -> str:
    """The 1-minute load averages the runs started under: how quiet the machine was."""
    loads = [d["machine"].get("load_average") for d in docs]
    loads = [load[0] for load in loads if load]
    if not loads:
        return "Machine load not recorded."
    cpus = docs[0]["machine"].get("cpus") or "?"
    return (
        f"1-minute load average at the start of the runs: {min(loads):.2f} to {max(loads):.2f} on {cpus} "
        f"CPUs (a running benchmark itself counts about 1); above that, other processes shared the cores "
        f"and single figures move by 20% or more."
    )


def markdown_document(docs: list[dict]) -> str:
    """Several runs' summaries under one heading, with how they were made (docs/results/bench.md)."""
    cuda = any(d["device"] == "cuda" for d in docs)
    policy = {d["thread_counts"].get("OMP_WAIT_POLICY") for d in docs} - {None}
    head = [
        "## Benchmark results",
        "",
        "Made by `make bench-results` (`fastconv bench --suite S --threads 2 --json "
        "benchmarks/results/S.json --plot benchmarks/results/S.png` per suite, then "
        "`fastconv bench show ... --markdown`); the JSON files hold every figure (quartiles, first "
        "calls, errors, workspace), the PNGs plot them. Cells: throughput (x = torch time / backend "
        "time); bold: fastest correct backend; skip: the backend refuses the problem (see the JSON "
        "for why).",
        "",
        f"OpenMP wait policy: {', '.join(sorted(policy)) or 'runtime default'}. {_load_note(docs)}",
        "",
    ]
    if not cuda:
        head += ["torch on CUDA (`--device cuda`) is not part of these runs, so the CUDA rows are unverified.", ""]
    return "\n".join(head) + "\n" + "\n".join(markdown(doc) for doc in docs)


CSV_PROBLEM_FIELDS = ("label", "op", "direction", "n", "dtype", "count", "unit", "flops", "bytes")


def write_csv(doc: dict, path) -> None:
    """One row per (problem, backend): the run's fields, the problem's, then the result's.

    One ``device`` column: the result's (where the target ran); flags are joined by ``;``.
    """
    problems = {p["id"]: p for p in doc["problems"]}

    def value(v):
        return "" if v is None else (";".join(v) if isinstance(v, list) else v)

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["suite", "threads", "clock", "wait_policy", *CSV_PROBLEM_FIELDS, *RESULT])
        for r in doc["results"]:
            p = problems[r["problem"]]
            writer.writerow(
                [
                    doc["suite"]["name"],
                    doc["threads"],
                    doc["load"]["clock"],
                    doc["load"]["wait_policy"],
                    *(p[k] for k in CSV_PROBLEM_FIELDS),
                    *(value(r[k]) for k in RESULT),
                ]
            )


# -- comparing two runs --------------------------------------------------------------------------


def compare_warnings(a: dict, b: dict) -> list[str]:
    """What differs between two runs besides the code: their numbers may not be comparable."""
    out = []
    for what, get in (
        ("suite", lambda d: (d["suite"]["name"], d["suite"]["version"], d["suite"]["dtype"])),
        ("threads", lambda d: d["threads"]),
        ("device", lambda d: d["device"]),
        ("CPU", lambda d: d["machine"]["cpu"]),
        ("ISA", lambda d: (d["machine"].get("isa"), d["machine"].get("torch_cpu_capability"))),
        ("OpenMP wait policy", lambda d: d["load"]["wait_policy"]),
        ("clock", lambda d: d["load"]["clock"]),
        # Runs from before the setting existed kept the default heap.
        ("steady heap", lambda d: bool((d.get("settings") or {}).get("steady_heap", False))),
        ("torch", lambda d: d["versions"].get("torch")),
    ):
        va, vb = get(a), get(b)
        if what == "ISA":  # a version-1 run did not record the c kernels' ISA: compare what both know
            known = [(x, y) for x, y in zip(va, vb) if x is not None and y is not None]
            va, vb = [x for x, _ in known], [y for _, y in known]
        if va != vb:
            out.append(f"{what} differs: {get(a)} vs {get(b)}")
    for name, d in (("A", a), ("B", b)):
        if d["load"]["contended"]:
            out.append(f"run {name} ran on contended cores: {d['load']['verdict']}")
    la, lb = (_start_load(d) for d in (a, b))
    if la is not None and lb is not None and abs(la - lb) >= 0.5:
        out.append(f"load differs: other processes busy on {la:.1f} vs {lb:.1f} CPUs at the start")
    return out


def _start_load(doc: dict) -> float | None:
    before = doc["load"].get("before") or {}
    if before.get("other_busy_cpus") is not None:
        return before["other_busy_cpus"]
    return None


def compare_rows(a: dict, b: dict) -> list[dict]:
    """Per (problem, backend) in both runs: medians, B's speed relative to A, and whether it is beyond noise."""
    labels = {p["id"]: p for p in (*a["problems"], *b["problems"])}
    cb = cells(b)
    rows = []
    for ra in a["results"]:
        rb = cb.get((ra["problem"], ra["backend"]))
        if rb is None or not ra["median_s"] or not rb["median_s"]:
            continue
        speedup = ra["median_s"] / rb["median_s"]
        # Beyond noise when the interquartile ranges do not overlap.
        if rb["q3_s"] is not None and ra["q1_s"] is not None and rb["q3_s"] < ra["q1_s"]:
            change = "faster"
        elif rb["q1_s"] is not None and ra["q3_s"] is not None and rb["q1_s"] > ra["q3_s"]:
            change = "slower"
        else:
            change = "same"
        p = labels[ra["problem"]]
        rows.append(
            {
                "problem": ra["problem"],
                "label": label(p),
                "n": p["n"],
                "backend": ra["backend"],
                "a_median_s": ra["median_s"],
                "b_median_s": rb["median_s"],
                "speedup": speedup,
                "change": change,
                "a_status": ra["status"],
                "b_status": rb["status"],
            }
        )
    return rows


def compare_table(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> Table:
    table = Table(
        title=f"{name_b} vs {name_a} (speed-up = {name_a} time / {name_b} time; a change counts "
        "when the interquartile ranges do not overlap)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for header in ("Layer", "n", "Backend", name_a, name_b, "Speed-up", "Change"):
        table.add_column(
            header, justify="left" if header in ("Layer", "Backend", "Change") else "right", overflow="fold"
        )
    style = {"faster": "green", "slower": "red", "same": "dim"}
    for row in compare_rows(a, b):
        flag = row["change"]
        if "wrong" in (row["a_status"], row["b_status"]):
            flag += " (WRONG result)"
        table.add_row(
            row["label"],
            str(row["n"]),
            row["backend"],
            fmt_time(row["a_median_s"]),
            fmt_time(row["b_median_s"]),
            fmt_ratio(row["speedup"]),
            Text(flag, style=style[row["change"]]),
        )
    return table
