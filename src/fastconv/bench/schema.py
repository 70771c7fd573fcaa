"""The JSON form of a benchmark run (``fastconv bench --json``): versioned, documented, validated.

Schema ``fastconv-bench``, version 2 (docs/bench-schema.md describes every field); every command
that measures writes it (``fastconv bench``, the ``models`` suite, ``fastconv resnet --json``)::

    {
      "schema": "fastconv-bench", "schema_version": 2, "created": ISO-8601 time (UTC),
      "command": "bench" | "resnet",
      "suite":   {"name", "version", "description", "dtype", "batch_sizes" (list or null: the suite's own)},
      "device":  "cpu" | "cuda",        "threads": int (every target ran at this count),
      "settings": {"min_time", "min_repeats", "max_repeats", "sample_time", "seed", "check", "settle", "clock"},
      "load":    {"before", "during", "contended", "verdict", "wait_policy", "clock"},
      "units":   {"time": "s", "flops": "2 FLOPs per multiply-add", "throughput": "10^9 per second"},
      "machine": {"hostname", "platform", "cpu", "cpus", "simd", "blas", "torch_cpu_capability",
                  "load_average", "load_average_end"},
      "versions": {"fastconv", "python", "numpy", "torch", ...: version string or null},
      "thread_counts": {...},          "peak": {"gflops": float or null, "source", "threads"},
      "backends": [{"name", "kind": "fastconv" | "torch", "device", "available", "reason"}],
      "problems": [{"id", "label", "op", "direction", "device", "n", "dtype", "count", "unit", "flops", "bytes"}],
      "results":  [{"problem", "backend", "kind", "device", "status", "reason", "first_call_s", "median_s",
                    "q1_s", "q3_s", "iqr_s", "repeats", "number", "throughput", "percent_of_peak",
                    "speed_vs_torch", "max_rel_error", "tolerance", "workspace_bytes", "workspace_method",
                    "spread", "flags"}],
      "notes": {problem id: why its results are unchecked},
      "thread_scaling": [{"problem", "backend", "threads", "median_1_s", "median_n_s", "speedup",
                          "parallel_efficiency"}]  (optional; the models suite on more than one thread)
    }

``status`` is one of ok (checked against torch, within tolerance), unchecked (no reference),
wrong (outside tolerance: never ranked, no speed ratio), skipped (the target cannot run the
problem; ``reason`` says why) and error (it raised; ``reason`` has the exception).
Version-1 documents (before ``command``, ``load``, ``direction``, ``spread``, ``flags``) are
read too: :func:`validate` upgrades them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from . import scaling

SCHEMA = "fastconv-bench"
SCHEMA_VERSION = 2
STATUSES = ("ok", "unchecked", "wrong", "skipped", "error")
DIRECTIONS = ("fwd", "bwd_data", "bwd_weight")
FLAGS = ("noisy", "contended")

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

#: field -> allowed types, for the top level, each backend, each problem and each result.
TOP = {
    "schema": str,
    "schema_version": int,
    "created": str,
    "command": str,
    "suite": dict,
    "device": str,
    "threads": int,
    "settings": dict,
    "load": dict,
    "units": dict,
    "machine": dict,
    "versions": dict,
    "thread_counts": dict,
    "peak": dict,
    "backends": list,
    "problems": list,
    "results": list,
    "notes": dict,
}
SUITE = {"name": str, "version": int, "description": str, "dtype": str, "batch_sizes": (list, type(None))}
PEAK = {"gflops": _OPT_NUM, "source": str, "threads": int}
LOAD = {
    "before": (dict, type(None)),
    "during": list,
    "contended": bool,
    "verdict": str,
    "wait_policy": str,
    "clock": str,
}
BACKEND = {"name": str, "kind": str, "device": str, "available": bool, "reason": _OPT_STR}
PROBLEM = {
    "id": str,
    "label": str,
    "op": str,
    "direction": str,
    "device": str,
    "n": int,
    "dtype": str,
    "count": int,
    "unit": str,
    "flops": (int, type(None)),
    "bytes": (int, type(None)),
}
RESULT = {
    "problem": str,
    "backend": str,
    "kind": str,
    "device": str,
    "status": str,
    "reason": _OPT_STR,
    "first_call_s": _OPT_NUM,
    "median_s": _OPT_NUM,
    "q1_s": _OPT_NUM,
    "q3_s": _OPT_NUM,
    "iqr_s": _OPT_NUM,
    "repeats": int,
    "number": int,
    "throughput": _OPT_NUM,
    "percent_of_peak": _OPT_NUM,
    "speed_vs_torch": _OPT_NUM,
    "max_rel_error": _OPT_NUM,
    "tolerance": _OPT_NUM,
    "workspace_bytes": (int, type(None)),
    "workspace_method": _OPT_STR,
    "spread": _OPT_NUM,
    "flags": list,
}


def _finite(value):
    """JSON has no inf/NaN: a non-finite float becomes None (the status and reason say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def problem_dict(case) -> dict:
    p = case.problem
    return {
        "id": case.id,
        "label": case.label,
        "op": case.op,
        "direction": getattr(p, "direction", "fwd"),
        "device": getattr(p, "device", "cpu"),
        "n": case.n,
        "dtype": p.dtype,
        "count": case.count,
        "unit": case.unit,
        "flops": getattr(p, "flops", None),
        "bytes": getattr(p, "bytes_moved", None),
    }


def to_dict(run) -> dict:
    """The JSON document of a :class:`fastconv.bench.runner.Run`."""
    settings = asdict(run.settings)
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": run.created,
        "command": "bench",
        "suite": run.suite,
        "device": run.device,
        "threads": settings.pop("threads"),
        "settings": settings,
        "load": run.load,
        "units": {"time": "s", "flops": "2 FLOPs per multiply-add", "throughput": "10^9 per second"},
        "machine": run.machine,
        "versions": run.versions,
        "thread_counts": run.threads,
        "peak": run.peak,
        "backends": run.backends,
        "problems": [problem_dict(c) for c in run.cases],
        "results": [{k: _finite(v) for k, v in asdict(m).items()} for m in run.measurements],
        "notes": dict(run.reference_notes),
    }
    doc["thread_scaling"] = scaling.table(doc)
    return doc


def _check_fields(obj, spec: dict, where: str, errors: list[str]) -> None:
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for key, types in spec.items():
        if key not in obj:
            errors.append(f"{where}: missing {key!r}")
        elif not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in _tuple(types)):
            errors.append(f"{where}.{key}: {type(obj[key]).__name__} is not {_names(types)}")


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _tuple(types))


def upgrade(doc: dict) -> dict:
    """A version-1 document in version 2's shape (new fields filled with what version 1 implied)."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("schema_version") != 1:
        return doc
    doc = dict(doc, schema_version=SCHEMA_VERSION, command="bench")
    policy = (doc.get("thread_counts", {}).get("OMP_WAIT_POLICY") or "default").lower()
    doc["load"] = {
        "before": None,
        "during": [],
        "contended": False,
        "wait_policy": policy,
        "clock": "wall",
        "verdict": "not recorded (a version-1 run)",
    }
    doc["problems"] = [
        dict(p, direction="fwd", device="cpu") if isinstance(p, dict) else p for p in doc.get("problems", [])
    ]
    results = []
    for r in doc.get("results", []):
        if isinstance(r, dict):
            med, q1, q3 = r.get("median_s"), r.get("q1_s"), r.get("q3_s")
            nums = all(isinstance(v, _NUM) for v in (med, q1, q3))
            r = dict(r, spread=(q3 - q1) / med if nums and med else None, flags=[])
        results.append(r)
    doc["results"] = results
    return doc


def validate(doc) -> dict:
    """``doc`` when it is a valid document (a version-1 one upgraded); ValueError listing every problem otherwise."""
    errors: list[str] = []
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f'not a fastconv benchmark run (expected "schema": {SCHEMA!r})')
    doc = upgrade(doc)
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {doc.get('schema_version')!r} is not supported (this reads versions "
            f"1 and {SCHEMA_VERSION})"
        )
    _check_fields(doc, TOP, "run", errors)
    if errors:
        raise ValueError("invalid benchmark run: " + "; ".join(errors))
    _check_fields(doc["suite"], SUITE, "suite", errors)
    _check_fields(doc["peak"], PEAK, "peak", errors)
    _check_fields(doc["load"], LOAD, "load", errors)
    for i, b in enumerate(doc["backends"]):
        _check_fields(b, BACKEND, f"backends[{i}]", errors)
    for i, p in enumerate(doc["problems"]):
        _check_fields(p, PROBLEM, f"problems[{i}]", errors)
        if isinstance(p, dict) and p.get("direction") not in DIRECTIONS:
            errors.append(f"problems[{i}].direction: {p.get('direction')!r} is not one of {DIRECTIONS}")
    problems = {p.get("id") for p in doc["problems"] if isinstance(p, dict)}
    backends = {b.get("name") for b in doc["backends"] if isinstance(b, dict)}
    for i, r in enumerate(doc["results"]):
        _check_fields(r, RESULT, f"results[{i}]", errors)
        if not isinstance(r, dict):
            continue
        if r.get("status") not in STATUSES:
            errors.append(f"results[{i}].status: {r.get('status')!r} is not one of {STATUSES}")
        if r.get("problem") not in problems:
            errors.append(f"results[{i}].problem: {r.get('problem')!r} is not in problems")
        if r.get("backend") not in backends:
            errors.append(f"results[{i}].backend: {r.get('backend')!r} is not in backends")
        if isinstance(r.get("flags"), list) and not set(r["flags"]) <= set(FLAGS):
            errors.append(f"results[{i}].flags: {r['flags']!r} has a flag not in {FLAGS}")
        if r.get("status") in ("ok", "unchecked") and not isinstance(r.get("median_s"), _NUM):
            errors.append(f"results[{i}]: status {r['status']!r} needs a median_s")
    if errors:
        raise ValueError(
            "invalid benchmark run: "
            + "; ".join(errors[:20])
            + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
        )
    return doc


def dump(doc: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(validate(doc), f, indent=1, allow_nan=False)
        f.write("\n")


def load(path) -> dict:
    """A saved run, validated (ValueError naming the file when it is not one)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        return validate(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# -- whole-model runs (fastconv resnet --json) ------------------------------------------------------


def model_document(
    *,
    arch: str,
    batch: int,
    size: int,
    dtype: str,
    num_classes: int,
    threads: int,
    rows: list[dict],
    samples: dict[str, list[float]],
    config: dict,
    tolerance: float,
    load_before: dict | None = None,
) -> dict:
    """The ``fastconv resnet --json`` run in this schema: one ``model`` problem, one result per row.

    ``rows`` are the command's table rows (``backend``, ``median_ms``, ``speed_vs_torch``,
    ``max_rel_diff`` or ``error``), also kept as they are under ``rows``; ``samples`` the seconds
    per forward pass of each row that ran.
    The torch eager row is the baseline ``torch``; fastconv's own ``torch`` backend (fastconv's
    layers calling torch.nn.functional) becomes ``fastconv-torch``; a row that is neither a
    registered backend nor torch eager (another runtime) has kind ``other``.
    """
    import datetime
    import os

    from .. import dispatch, timing
    from . import load as load_mod
    from . import machine
    from .suites import ModelProblem

    problem = ModelProblem(arch, batch, size, dtype, num_classes)
    try:
        flops = problem.flops
    except (ValueError, KeyError):  # an architecture the FLOP count does not know
        flops = None
    registered = set(dispatch.backends())

    def name_kind(row_name):
        if row_name == "torch (eager)":
            return "torch", "torch"
        if row_name == "torch":
            return "fastconv-torch", "fastconv"
        return row_name, "fastconv" if row_name in registered else "other"

    backends, results = [], []
    for row in rows:
        name, kind = name_kind(row["backend"])
        backends.append(
            {"name": name, "kind": kind, "device": "cpu", "available": "error" not in row, "reason": row.get("error")}
        )
        cell = {k: None for k in RESULT}
        cell.update(problem=problem.id, backend=name, kind=kind, device="cpu", repeats=0, number=1, flags=[])
        if "error" in row:
            cell.update(status="skipped", reason=row["error"])
        else:
            q1, med, q3 = timing.quartiles(samples[row["backend"]])
            rel = row.get("max_rel_diff")
            status = "unchecked" if rel is None else ("ok" if rel <= tolerance else "wrong")
            if kind == "torch":
                status = "ok"  # the reference itself
            cell.update(
                status=status,
                median_s=med,
                q1_s=q1,
                q3_s=q3,
                iqr_s=q3 - q1,
                repeats=len(samples[row["backend"]]),
                speed_vs_torch=row.get("speed_vs_torch"),
                max_rel_error=_finite(rel),
                tolerance=tolerance if rel is not None else None,
                spread=load_mod.spread(q1, med, q3),
                throughput=flops / med / 1e9 if flops and med else None,
                reason=None if status != "wrong" else f"max relative difference {rel:.2e} > {tolerance:.0e}",
            )
            if cell["spread"] is not None and cell["spread"] > load_mod.NOISY_SPREAD and cell["repeats"] >= 3:
                cell["flags"].append("noisy")
        results.append(cell)
    before = load_before or load_mod.assess(None, threads)
    policy = (os.environ.get("OMP_WAIT_POLICY") or "default").lower()
    verdict = (
        "the cores were free before the run"
        if not before["contended"]
        else "NOT TRUSTWORTHY: the cores were contended (" + "; ".join(before["reasons"]) + ")"
    )
    return validate(
        {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "command": "resnet",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "suite": {
                "name": f"resnet-{arch}",
                "version": 1,
                "description": f"fastconv resnet --arch {arch}",
                "dtype": dtype,
                "batch_sizes": [batch],
            },
            "device": "cpu",
            "threads": threads,
            "settings": {
                "repeat": config.get("repeat"),
                "warmup": config.get("warmup"),
                "seed": config.get("seed"),
                "clock": "wall",
                "config": config,
            },
            "load": {
                "before": before,
                "during": [],
                "contended": before["contended"],
                "verdict": verdict,
                "wait_policy": policy,
                "clock": "wall",
            },
            "units": {"time": "s", "flops": "2 FLOPs per multiply-add", "throughput": "10^9 per second"},
            "machine": dict(machine.describe(), load_average_end=machine.load_average()),
            "versions": machine.versions(),
            "thread_counts": machine.thread_counts(),
            "peak": {"gflops": None, "source": "not measured", "threads": threads},
            "backends": backends,
            "problems": [
                {
                    "id": problem.id,
                    "label": f"{arch} {size}x{size}",
                    "op": "model",
                    "direction": "fwd",
                    "device": "cpu",
                    "n": batch,
                    "dtype": dtype,
                    "count": 1,
                    "unit": "GFLOP/s",
                    "flops": flops,
                    "bytes": None,
                }
            ],
            "results": results,
            "notes": {},
            # The command's own table as printed (milliseconds; "torch" is fastconv's torch backend).
            "rows": [{k: _finite(v) for k, v in row.items()} for row in rows],
        }
    )
