"""The JSON form of a benchmark run (``fastconv bench --json``): versioned, documented, validated.

Schema ``fastconv-bench``, version 1 (docs/bench-schema.md describes every field)::

    {
      "schema": "fastconv-bench", "schema_version": 1, "created": ISO-8601 time (UTC),
      "suite":   {"name", "version", "description", "dtype", "batch_sizes" (list or null: the suite's own)},
      "device":  "cpu" | "cuda",        "threads": int (every target ran at this count),
      "settings": {"min_time", "min_repeats", "max_repeats", "sample_time", "seed", "check", "settle"},
      "units":   {"time": "s", "flops": "2 FLOPs per multiply-add", "throughput": "10^9 per second"},
      "machine": {"hostname", "platform", "cpu", "cpus", "simd", "blas", "torch_cpu_capability",
                  "load_average", "load_average_end"},
      "versions": {"fastconv", "python", "numpy", "torch", ...: version string or null},
      "thread_counts": {...},          "peak": {"gflops": float or null, "source", "threads"},
      "backends": [{"name", "kind": "fastconv" | "torch", "device", "available", "reason"}],
      "problems": [{"id", "label", "op", "n", "dtype", "count", "unit": "GFLOP/s" | "GB/s", "flops", "bytes"}],
      "results":  [{"problem", "backend", "kind", "device", "status", "reason", "first_call_s", "median_s",
                    "q1_s", "q3_s", "iqr_s", "repeats", "number", "throughput", "percent_of_peak",
                    "speed_vs_torch", "max_rel_error", "tolerance", "workspace_bytes", "workspace_method"}],
      "notes": {problem id: why its results are unchecked},
      "thread_scaling": [{"problem", "backend", "threads", "median_1_s", "median_n_s", "speedup",
                          "parallel_efficiency"}]  (optional; the models suite on more than one thread)
    }

``status`` is one of ok (checked against torch, within tolerance), unchecked (no reference),
wrong (outside tolerance: never ranked, no speed ratio), skipped (the target cannot run the
problem; ``reason`` says why) and error (it raised; ``reason`` has the exception).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict

from . import scaling

SCHEMA = "fastconv-bench"
SCHEMA_VERSION = 1
STATUSES = ("ok", "unchecked", "wrong", "skipped", "error")

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

#: field -> allowed types, for the top level, each backend, each problem and each result.
TOP = {"schema": str, "schema_version": int, "created": str, "suite": dict, "device": str, "threads": int,
       "settings": dict, "units": dict, "machine": dict, "versions": dict, "thread_counts": dict, "peak": dict,
       "backends": list, "problems": list, "results": list, "notes": dict}
SUITE = {"name": str, "version": int, "description": str, "dtype": str, "batch_sizes": (list, type(None))}
PEAK = {"gflops": _OPT_NUM, "source": str, "threads": int}
BACKEND = {"name": str, "kind": str, "device": str, "available": bool, "reason": _OPT_STR}
PROBLEM = {"id": str, "label": str, "op": str, "n": int, "dtype": str, "count": int, "unit": str,
           "flops": (int, type(None)), "bytes": (int, type(None))}
RESULT = {"problem": str, "backend": str, "kind": str, "device": str, "status": str, "reason": _OPT_STR,
          "first_call_s": _OPT_NUM, "median_s": _OPT_NUM, "q1_s": _OPT_NUM, "q3_s": _OPT_NUM,
          "iqr_s": _OPT_NUM, "repeats": int, "number": int, "throughput": _OPT_NUM,
          "percent_of_peak": _OPT_NUM, "speed_vs_torch": _OPT_NUM, "max_rel_error": _OPT_NUM,
          "tolerance": _OPT_NUM, "workspace_bytes": (int, type(None)), "workspace_method": _OPT_STR}


def _finite(value):
    """JSON has no inf/NaN: a non-finite float becomes None (the status and reason say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def problem_dict(case) -> dict:
    p = case.problem
    return {"id": case.id, "label": case.label, "op": case.op, "n": case.n, "dtype": p.dtype,
            "count": case.count, "unit": case.unit, "flops": getattr(p, "flops", None),
            "bytes": getattr(p, "bytes_moved", None)}


def to_dict(run) -> dict:
    """The JSON document of a :class:`fastconv.bench.runner.Run`."""
    settings = asdict(run.settings)
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": run.created,
        "suite": run.suite, "device": run.device, "threads": settings.pop("threads"), "settings": settings,
        "units": {"time": "s", "flops": "2 FLOPs per multiply-add", "throughput": "10^9 per second"},
        "machine": run.machine, "versions": run.versions, "thread_counts": run.threads, "peak": run.peak,
        "backends": run.backends, "problems": [problem_dict(c) for c in run.cases],
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


def validate(doc) -> dict:
    """``doc`` unchanged when it is a valid version-1 document; ValueError listing every problem otherwise."""
    errors: list[str] = []
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"not a fastconv benchmark run (expected \"schema\": {SCHEMA!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"schema_version {doc.get('schema_version')!r} is not supported (this is version "
                         f"{SCHEMA_VERSION})")
    _check_fields(doc, TOP, "run", errors)
    if errors:
        raise ValueError("invalid benchmark run: " + "; ".join(errors))
    _check_fields(doc["suite"], SUITE, "suite", errors)
    _check_fields(doc["peak"], PEAK, "peak", errors)
    for i, b in enumerate(doc["backends"]):
        _check_fields(b, BACKEND, f"backends[{i}]", errors)
    for i, p in enumerate(doc["problems"]):
        _check_fields(p, PROBLEM, f"problems[{i}]", errors)
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
        if r.get("status") in ("ok", "unchecked") and not isinstance(r.get("median_s"), _NUM):
            errors.append(f"results[{i}]: status {r['status']!r} needs a median_s")
    if errors:
        raise ValueError("invalid benchmark run: " + "; ".join(errors[:20]) +
                         (f"; and {len(errors) - 20} more" if len(errors) > 20 else ""))
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
