"""The prepared device check: the GPU test subset and the GPU benchmark suites, in one run.

    PYTHONPATH=src python benchmarks/gpu_check.py --out benchmarks/results/gpu     (make gpu-check)

Written for an offline CUDA machine with NumPy, torch (CUDA build), CuPy, numba and numba-cuda,
and nothing else: no C extension (the c backend reports itself unavailable), no install step,
and pytest, hypothesis, rich and matplotlib only when present (without pytest + hypothesis the
conformance cases run through the shared harness directly; without matplotlib no plots).
Everything lands in ``--out``:

    env.json        versions, the device, every backend's status
    tests.txt       the test run's output (tests.xml: JUnit, when pytest ran)
    bandwidth.json  the device's copy bandwidth (torch: y.copy_(x) on 256 MiB, CUDA events)
    layers.json     ResNet-50's distinct convolutions at batch 1 and 8 (+ .png)
    pool-bn.json    pooling, batch norm and relu (+ .png)
    models.json     ResNet-50 forward, whole network on the device (+ .png)
    summary.json    the figures the README quotes: geometric-mean speed against cuDNN (TF32 off)
    summary.md      on the batch-8 layers, and pool/bn/relu bandwidth against the copy bandwidth

Each step has its own time budget; the whole check stays under 8 minutes on an H200.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module)
    except Exception:
        return None


def environment() -> dict:
    import fastconv
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            m: _version(m)
            for m in (
                "numpy",
                "numba",
                "numba-cuda",
                "cupy-cuda12x",
                "cupy-cuda13x",
                "cupy",
                "torch",
                "pytest",
                "hypothesis",
                "cffi",
            )
        },
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backends": [{"name": n, "available": ok, "reason": r} for n, ok, r in fastconv.backend_status()],
    }
    return env


def run_tests(out: Path, budget: float) -> dict:
    """The GPU subset: tests/test_cuda_backend.py and the conformance cases of cuda and cupy."""
    t0 = time.time()
    if importlib.util.find_spec("pytest") and importlib.util.find_spec("hypothesis"):
        # addopts replaced: the project's own names pytest-benchmark, which the machine may lack.
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-o",
            "addopts=-ra",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            str(out / "tests.xml"),
            "tests/test_cuda_backend.py",
            "tests/test_conformance.py",
            "-k",
            "cuda or cupy",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget)
            text, ok = proc.stdout + proc.stderr, proc.returncode == 0
        except subprocess.TimeoutExpired as exc:
            text, ok = f"{exc.stdout or ''}\n... stopped after {budget:.0f} s", False
        (out / "tests.txt").write_text(text)
        last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
        return {"runner": "pytest", "ok": ok, "summary": last[0], "seconds": round(time.time() - t0, 1)}
    return _harness_tests(out, budget, t0)


def _harness_tests(out: Path, budget: float, t0: float) -> dict:
    """Without pytest: every named case on cuda (both algorithms) and cupy, through the harness."""
    import types

    class Skipped(Exception):
        pass

    def skip(reason):
        raise Skipped(reason)

    sys.modules.setdefault("pytest", types.SimpleNamespace(importorskip=importlib.import_module, skip=skip))
    sys.path.insert(0, str(ROOT / "tests"))
    from cases import all_cases
    from harness import check, kernel_of

    from fastconv import dispatch
    from fastconv.backends import cuda as cuda_backend

    lines, passed, failed = [], 0, 0
    runs = [("cuda", "direct"), ("cuda", "gemm"), ("cupy", None)]
    for backend, algorithm in runs:
        ok, reason = dispatch._status(dispatch._registry[backend])
        if not ok:
            lines.append(f"SKIP {backend}: {reason}")
            continue
        original = cuda_backend.conv_algorithm
        if algorithm:
            cuda_backend.conv_algorithm = lambda p, a=algorithm: a
        try:
            for case in all_cases():
                if time.time() - t0 > budget:
                    lines.append("... stopped: out of time")
                    break
                if algorithm == "gemm" and case.op != "conv2d":
                    continue
                if not hasattr(dispatch.get_module(backend), kernel_of(case)):  # an op left to others
                    continue
                try:
                    check(case, backend)
                    passed += 1
                except Skipped as exc:
                    lines.append(f"SKIP {backend} {algorithm or ''} {case.id}: {exc}")
                except Exception as exc:
                    failed += 1
                    lines.append(f"FAIL {backend} {algorithm or ''} {case.id}: {type(exc).__name__}: {exc}"[:2000])
        finally:
            cuda_backend.conv_algorithm = original
    lines.append(f"{passed} passed, {failed} failed")
    (out / "tests.txt").write_text("\n".join(lines) + "\n")
    return {
        "runner": "harness",
        "ok": failed == 0 and passed > 0,
        "summary": lines[-1],
        "seconds": round(time.time() - t0, 1),
    }


def copy_bandwidth() -> dict:
    """Device-to-device copy bandwidth (bytes read + written per second), median of 20 copies."""
    import torch

    x = torch.empty(2**26, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    samples = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    seconds = sorted(samples)[len(samples) // 2]
    return {
        "bytes": 2 * x.numel() * 4,
        "seconds": seconds,
        "gb_per_s": 2 * x.numel() * 4 / seconds / 1e9,
        "method": "torch y.copy_(x), 256 MiB float32, CUDA events, median of 20",
    }


def bench(
    suite_name: str, batch_sizes, out_json: Path, min_time: float, only=None, flush_l2=False, backends=("cuda", "cupy")
) -> dict:
    from fastconv.bench import runner, schema, suites, targets

    suite = suites.get_suite(suite_name)
    cases = suite.cases(batch_sizes, "float32")
    if only:
        cases = [c for c in cases if only(c)]
    chosen = targets.fastconv_targets(list(backends), "cuda", flush_l2)
    chosen += [t for t in targets.torch_targets("cuda", flush_l2) if t.device == "cuda"]
    settings = runner.Settings(threads=os.cpu_count() or 1, min_time=min_time, min_repeats=3, max_repeats=30)
    meta = {
        "name": suite.name,
        "version": suite.version,
        "description": suite.description,
        "dtype": "float32",
        "batch_sizes": list(batch_sizes) if batch_sizes else None,
    }
    run = runner.new_run(meta, cases, chosen, settings, "cuda", peak=False)

    def progress(done, total, text):
        print(f"  [{suite_name} {done}/{total}] {text}", flush=True)

    runner.run_cases(run, chosen, progress)
    doc = schema.to_dict(run)
    schema.dump(doc, out_json)
    try:
        from fastconv.bench.plot import plot

        plot(doc, out_json.with_suffix(".png"))
    except Exception as exc:  # no matplotlib / rich on the machine: the JSON is the record
        print(f"  no plot for {suite_name}: {type(exc).__name__}: {exc}")
    return doc


def _geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarise(layers: dict | None, poolbn: dict | None, models: dict | None, bandwidth: dict | None) -> dict:
    """Speed against cuDNN (torch-cuda: benchmark off, TF32 off) and memory-bound ops against copy bandwidth."""
    summary = {"reference": "torch-cuda (cuDNN, benchmark off, TF32 off); ratio = torch time / backend time"}

    def medians(doc, backend, pick=lambda r: True):
        return {
            r["problem"]: r["median_s"]
            for r in doc["results"]
            if r["backend"] == backend and r["median_s"] and r["status"] in ("ok", "unchecked") and pick(r)
        }

    if layers:
        batch = {p["id"]: p.get("n") for p in layers["problems"]}
        for n in (1, 8):
            ref = medians(layers, "torch-cuda", lambda r, n=n: batch.get(r["problem"]) == n)
            ref_bench = medians(layers, "torch-cuda-benchmark", lambda r, n=n: batch.get(r["problem"]) == n)
            for backend in ("cupy", "cuda", "torch-cuda-benchmark", "torch-cuda-benchmark-tf32"):
                got = medians(layers, backend)
                summary[f"resnet50_layers_b{n}_{backend}_vs_cudnn"] = _geomean(
                    [ref[p] / got[p] for p in ref if p in got]
                )
            summary[f"resnet50_layers_b{n}_layers"] = len(ref)
            for backend in ("cupy", "cuda"):
                got = medians(layers, backend)
                summary[f"resnet50_layers_b{n}_{backend}_vs_cudnn_benchmark"] = _geomean(
                    [ref_bench[p] / got[p] for p in ref_bench if p in got]
                )
    if poolbn and bandwidth:
        for backend in ("cuda", "cupy", "torch-cuda"):
            rows = {}
            for r in poolbn["results"]:
                if r["backend"] == backend and r["throughput"]:
                    rows[r["problem"]] = r["throughput"] / bandwidth["gb_per_s"]
            summary[f"pool_bn_relu_{backend}_fraction_of_copy_bandwidth"] = rows
            summary[f"pool_bn_relu_{backend}_min_fraction"] = min(rows.values()) if rows else None
    if models:
        for r in models["results"]:
            if r["median_s"]:
                summary[f"model_{r['problem']}_{r['backend']}_ms"] = r["median_s"] * 1e3
            elif r["status"] in ("skipped", "error", "wrong"):
                summary[f"model_{r['problem']}_{r['backend']}_status"] = f"{r['status']}: {r['reason']}"
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"))
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--min-time", type=float, default=0.4, help="seconds of samples per problem (all targets)")
    ap.add_argument("--flush-l2", action="store_true", help="overwrite L2 before every timed call")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: torch {torch.__version__} sees no CUDA device; nothing to check here")
        return 2
    env = environment()
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    print(
        f"device: {env['device']}; backends: "
        + ", ".join(f"{b['name']}={'ok' if b['available'] else b['reason']}" for b in env["backends"]),
        flush=True,
    )
    status = {"env": env}
    if not args.skip_tests:
        print("tests ...", flush=True)
        status["tests"] = run_tests(out, budget=170)
        print(f"tests: {status['tests']}", flush=True)
    bandwidth = copy_bandwidth()
    (out / "bandwidth.json").write_text(json.dumps(bandwidth, indent=2) + "\n")
    print(f"copy bandwidth: {bandwidth['gb_per_s']:.0f} GB/s", flush=True)
    docs = {}
    for key, suite, batches, only in (
        ("layers", "resnet50", (1, 8), None),
        ("pool-bn", "pool-bn", (8,), None),
        ("models", "models", (1, 8), lambda c: "resnet50" in c.id),
    ):
        print(f"{suite} ...", flush=True)
        try:
            docs[key] = bench(suite, batches, out / f"{key}.json", args.min_time, only, args.flush_l2)
        except Exception as exc:
            print(f"  {suite} failed: {type(exc).__name__}: {exc}", flush=True)
            status[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
    summary = summarise(docs.get("layers"), docs.get("pool-bn"), docs.get("models"), bandwidth)
    summary["copy_bandwidth_gb_per_s"] = bandwidth["gb_per_s"]
    summary["tests"] = status.get("tests")
    summary["errors"] = {k: v for k, v in status.items() if k.endswith("_error")}
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [
        f"# GPU check: {env['device']}",
        "",
        f"torch {env['versions']['torch']} (CUDA {env['torch_cuda']}, "
        f"cuDNN {env['cudnn']}), numba {env['versions']['numba']}, numba-cuda {env['versions']['numba-cuda']}, "
        f"CuPy {env['versions']['cupy-cuda12x'] or env['versions']['cupy'] or env['versions']['cupy-cuda13x']}",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    for k, v in summary.items():
        if isinstance(v, float):
            lines.append(f"| {k} | {v:.3g} |")
        elif isinstance(v, (int, str)):
            lines.append(f"| {k} | {v} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = (status.get("tests") or {}).get("ok") is False or summary["errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
