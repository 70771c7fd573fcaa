"""Where one fastconv call's time goes on a CUDA device: its kernels against the call's wall time.

    PYTHONPATH=src python benchmarks/tools/gpu_overhead.py --out DIR [--backends cupy,cuda] [--suites]

For three ResNet-50 layers at batch 8 and 64 it times cuDNN (torch, TF32 off) and each fastconv
backend back to back with CUDA events, the host's own time per call, and the kernels' time per
call (CUPTI, through torch.profiler, which sees every kernel of the process: CuPy's and Numba's
too).  Where the event time is the host time, the call is bound by Python and launch overhead, not
by its kernels.  It also profiles the host side of one batch-8 call (cProfile, top functions by
own time) and times a relu on 4 floats (fastconv's fixed cost per call).  With --suites it then
runs the ResNet-50 layer suite and the ResNet-50 forward on the named backends and cuDNN, as
benchmarks/gpu_check.py does (same runner, same targets), into DIR/layers-*.json, models-*.json.
Needs a CUDA device with torch and the backends' packages (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: (label, in channels, height = width, out channels, kernel size, padding)
LAYERS = (
    ("3x3 64>64 @56", 64, 56, 64, 3, 1),
    ("3x3 256>256 @14", 256, 14, 256, 3, 1),
    ("1x1 1024>256 @14", 1024, 14, 256, 1, 0),
)


def event_and_host_us(torch, call, n=30):
    """Per call: device time between events around ``n`` back-to-back calls, and host time."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        call()
    end.record()
    host = (time.perf_counter() - t0) / n
    end.synchronize()
    return start.elapsed_time(end) / n * 1e3, host * 1e6


def kernel_us(torch, call, n=10):
    """Per call: the summed duration of every kernel and copy the device ran (CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            call()
        torch.cuda.synchronize()
    kernels = []
    for ev in prof.key_averages():
        t = getattr(ev, "self_device_time_total", None)
        t = getattr(ev, "self_cuda_time_total", 0.0) if t is None else t
        if t > 0:
            kernels.append((round(t / n, 1), ev.key[:70], ev.count // n))
    kernels.sort(reverse=True)
    return sum(k[0] for k in kernels), kernels[:4]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--backends", default="cupy,cuda")
    ap.add_argument("--suites", action="store_true", help="also the ResNet-50 layer suite and forward pass")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backends = [b for b in args.backends.split(",") if b]

    import torch
    import torch.nn.functional as F

    import fastconv

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for label, c, hw, k, r, pad in LAYERS:
        for n in (8, 64):
            x = torch.randn(n, c, hw, hw, device="cuda")
            w = torch.randn(k, c, r, r, device="cuda") * 0.05
            b = torch.randn(k, device="cuda")
            calls = {"cudnn": lambda: F.conv2d(x, w, b, padding=pad)}
            for be in backends:
                kw = {"algorithm": "gemm"} if be == "cuda" else {}
                calls[be] = lambda be=be, kw=kw: fastconv.conv2d(x, w, b, padding=pad, backend=be, **kw)
            for name, call in calls.items():
                event, host = event_and_host_us(torch, call)
                kernels, top = kernel_us(torch, call)
                rows.append(
                    {"layer": label, "n": n, "target": name, "event_us": event, "host_us": host,
                     "kernels_us": kernels, "top_kernels": top}
                )  # fmt: skip
                print(
                    f"{label:17s} n={n:2d} {name:6s} event {event:8.1f} us  host {host:8.1f} us  "
                    f"kernels {kernels:8.1f} us  {[t[1][:28] for t in top]}",
                    flush=True,
                )
    fixed = {}
    tiny = torch.randn(4, device="cuda")
    for be in backends:
        fixed[be] = event_and_host_us(torch, lambda be=be: fastconv.relu(tiny, backend=be), 200)[1]
    fixed["torch"] = event_and_host_us(torch, lambda: torch.relu(tiny), 200)[1]
    print("host time of a relu on 4 floats, us/call: " + ", ".join(f"{k} {v:.1f}" for k, v in fixed.items()))
    x = torch.randn(8, 256, 14, 14, device="cuda")
    w = torch.randn(256, 256, 3, 3, device="cuda")
    for be in backends:
        call = lambda be=be: fastconv.conv2d(x, w, padding=1, backend=be)  # noqa: E731
        event_and_host_us(torch, call, 5)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            call()
        torch.cuda.synchronize()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
        (out / f"host-profile-{be}.txt").write_text(text.getvalue())
    (out / "overhead.json").write_text(json.dumps({"layers": rows, "relu4_host_us": fixed}, indent=1) + "\n")
    if args.suites:
        import gpu_check

        for key, suite, only in (("layers", "resnet50", None), ("models", "models", lambda c: "resnet50" in c.id)):
            doc = gpu_check.bench(suite, (1, 8), out / f"{key}-{'-'.join(backends)}.json", 0.2, only, backends=backends)
            for n in (1, 8):
                ref = {
                    r["problem"]: r["median_s"]
                    for r in doc["results"]
                    if r["backend"] == "torch-cuda" and r["median_s"]
                }
                batch = {p["id"]: p.get("n") for p in doc["problems"]}
                for be in backends:
                    got = {r["problem"]: r["median_s"] for r in doc["results"] if r["backend"] == be and r["median_s"]}
                    ratios = [ref[p] / got[p] for p in ref if p in got and batch.get(p) == n]
                    gm = gpu_check._geomean(ratios)
                    if gm:
                        print(f"{key} batch {n}: {be} {gm:.3f}x cuDNN (geometric mean of {len(ratios)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
