"""What a layer suite's geometric mean against torch could be, were a backend at a given share of the peak.

    python benchmarks/tools/suite_ceiling.py benchmarks/results/CPU/resnet50-c-torch.json [--backend c]

A saved run of `fastconv bench --suite resnet50 --backends c,torch` holds, per layer, torch's
throughput as a share of the machine's measured FMA peak (percent_of_peak).  A backend that ran
every layer at q% of the peak would be q / torch's share times torch's speed on it; the geometric
mean of those ratios over the suite is what that backend could reach at best at q%.  Printed per
batch size for 100% of the peak and a few shares below it, beside the backend's own geometric
mean in the run.  Exact algorithms only: Winograd does fewer multiplies than the nominal count
and is not bounded this way.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a saved layer-suite run (JSON) with torch and the backend")
    ap.add_argument("--backend", default="c")
    ap.add_argument("--shares", default="100,95,90,85", help="comma-separated shares of the peak, in percent")
    args = ap.parse_args()
    with open(args.run) as fh:
        run = json.load(fh)
    torch_share: dict[str, float] = {}
    speed: dict[str, float] = {}
    for r in run["results"]:
        if r["status"] != "ok":
            continue
        if r["backend"] == "torch" and r.get("percent_of_peak"):
            torch_share[r["problem"]] = r["percent_of_peak"]
        elif r["backend"] == args.backend and r.get("speed_vs_torch"):
            speed[r["problem"]] = r["speed_vs_torch"]
    by_batch: dict[str, list[str]] = defaultdict(list)
    for problem in torch_share:
        by_batch[problem.split("_")[0]].append(problem)
    if not by_batch:
        raise SystemExit(f"{args.run}: no torch results with a share of the peak (a run made with --no-peak?)")
    shares = [float(s) for s in args.shares.split(",")]
    print(f"{args.run}: geometric mean over the suite against torch")
    header = " | ".join(f"at {s:g}% of peak" for s in shares)
    print(f"| batch | layers | torch's share of peak (median) | {args.backend} in this run | {header} |")
    print("|---|---|---|---|" + "---|" * len(shares))
    for batch, problems in sorted(by_batch.items(), key=lambda kv: int(kv[0][1:])):
        shares_t = sorted(torch_share[p] for p in problems)
        own = [speed[p] for p in problems if p in speed]
        own_s = f"{_geomean(own):.3f}x" if len(own) == len(problems) else "-"
        bounds = " | ".join(f"{_geomean([s / torch_share[p] for p in problems]):.3f}x" for s in shares)
        print(f"| {batch[1:]} | {len(problems)} | {shares_t[len(shares_t) // 2]:.0f}% | {own_s} | {bounds} |")


if __name__ == "__main__":
    main()
