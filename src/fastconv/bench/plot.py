"""``--plot out.png``: how fast each backend is relative to torch, and how close to the machine's peak.

Panel 1 (the answer): speed relative to torch (torch time / backend time) per problem and
backend, on a linear axis with the 1.0 line, the interquartile range as error bars; a problem a
backend skipped, refused, got wrong or failed on is marked where its bar would be.  Bars above the
axis (a ratio far beyond the rest) are cut and labelled with their value.
Panel 2: throughput of every target (torch included) in GFLOP/s against the measured machine
peak (a dashed line), and, for memory-bound problems, GB/s.

matplotlib is imported here only, so the package and the CLI work without it.
"""

from __future__ import annotations

from .report import machine_label, shown_backends

_MARK = {"skipped": "skip", "wrong": "WRONG", "error": "error"}


def _problem_label(p: dict) -> str:
    direction = "" if p.get("direction", "fwd") == "fwd" else f" {p['direction']}"
    return f"{p['label']} n{p['n']}{direction}"


def plot(doc: dict, path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'fastconv[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, _ = shown_backends(doc)
    fastconv_names = [n for n in names if not n.startswith("torch")]
    results = {(r["problem"], r["backend"]): r for r in doc["results"]}
    problems = doc["problems"]
    units = [u for u in ("GFLOP/s", "GB/s") if any(p["unit"] == u for p in problems)]
    width_in = max(9.0, 0.13 * len(problems) * max(1, len(names)) + 4)
    fig, axes = plt.subplots(1 + len(units), 1, figsize=(width_in, 4.0 * (1 + len(units)) + 1.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {n: colors[i % len(colors)] for i, n in enumerate(names)}

    _ratio_panel(axes[0, 0], problems, fastconv_names, results, color)
    for ax, unit in zip(axes[1:, 0], units):
        _throughput_panel(ax, [p for p in problems if p["unit"] == unit], names, results, color, unit, doc)

    suite, load = doc["suite"], doc["load"]
    head = (
        f"fastconv {doc['command']} {suite['name']} v{suite['version']}: {suite['dtype']}, {doc['threads']} "
        f"threads, {load['clock']} clock, OpenMP wait {load['wait_policy']}\n{machine_label(doc)}"
    )
    fig.suptitle(head, fontsize=10, x=0.01, ha="left")
    if load["contended"]:
        warning = (
            "cores contended: figures not trustworthy"
            if load["clock"] == "wall"
            else "cores contended: CPU-clock figures, differences under ~15% are noise"
        )
        fig.text(0.99, 0.995, warning, color="red", fontsize=9, ha="right", va="top", fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _ratio_panel(ax, problems, names, results, color) -> None:
    xs = range(len(problems))
    width = 0.8 / max(1, len(names))
    tops, labelled = [], set()
    for p in problems:
        for n in names:
            r = results.get((p["id"], n))
            if r and r["speed_vs_torch"]:
                tops.append(r["speed_vs_torch"])
    top = max(1.5, min(max(tops, default=1.5) * 1.15, 5.0))  # a linear axis that keeps 1.0 readable
    for i, name in enumerate(names):
        for x, p in zip(xs, problems):
            r = results.get((p["id"], name))
            bx = x - 0.4 + width * (i + 0.5)
            if r is None or not r["speed_vs_torch"]:
                mark = _MARK.get(r["status"], "n/a") if r else "n/a"
                if r and r["status"] in ("ok", "unchecked"):
                    mark = "no torch"
                ax.text(bx, 0.02 * top, mark, rotation=90, ha="center", va="bottom", fontsize=6, color="gray")
                ax.plot([bx], [0], marker="x", color=color[name], markersize=4)
                continue
            ratio = r["speed_vs_torch"]
            torch_time = ratio * r["median_s"]
            lo = torch_time / r["q3_s"] if r.get("q3_s") else ratio
            hi = torch_time / r["q1_s"] if r.get("q1_s") else ratio
            shown = min(ratio, top)
            hatch = "//" if r.get("flags") else None
            ax.bar(
                bx,
                shown,
                width,
                color=color[name],
                hatch=hatch,
                edgecolor="white" if hatch else None,
                label=None if name in labelled else name,
            )
            labelled.add(name)
            if ratio > top:
                ax.text(bx, top * 0.97, f"{ratio:.0f}x", ha="center", va="top", fontsize=6, rotation=90)
            else:
                ax.errorbar(
                    bx,
                    ratio,
                    yerr=[[max(0.0, ratio - lo)], [max(0.0, min(hi, top) - ratio)]],
                    fmt="none",
                    ecolor="black",
                    elinewidth=0.8,
                    capsize=2,
                )
    for name in names:  # legend entries for backends that never drew a bar
        if name not in labelled:
            ax.bar([0], [0], 0, color=color[name], label=f"{name} (no ratio)")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.text(1.0, 1.0, " torch", transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=7)
    ax.set_ylim(0, top)
    ax.set_xlim(-0.6, len(problems) - 0.4)
    ax.set_ylabel("speed relative to torch\n(torch time / backend time)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_problem_label(p) for p in problems], rotation=40, ha="right", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        "above 1: faster than torch; error bars: interquartile range; hatched: noisy or busy machine",
        fontsize=8,
        loc="left",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)


def _throughput_panel(ax, problems, names, results, color, unit, doc) -> None:
    xs = range(len(problems))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        for x, p in zip(xs, problems):
            r = results.get((p["id"], name))
            bx = x - 0.4 + width * (i + 0.5)
            if r is None or not r["throughput"] or r["status"] not in ("ok", "unchecked"):
                ax.plot([bx], [0], marker="x", color=color[name], markersize=4)
                continue
            work = r["throughput"] * r["median_s"]
            lo = work / r["q3_s"] if r.get("q3_s") else r["throughput"]
            hi = work / r["q1_s"] if r.get("q1_s") else r["throughput"]
            ax.bar(bx, r["throughput"], width, color=color[name], label=name)
            ax.errorbar(
                bx,
                r["throughput"],
                yerr=[[max(0.0, r["throughput"] - lo)], [max(0.0, hi - r["throughput"])]],
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=2,
            )
    peak = doc["peak"]
    if unit == "GFLOP/s" and peak["gflops"]:
        ax.axhline(
            peak["gflops"],
            color="red",
            linestyle="--",
            linewidth=1,
            label=f"measured peak {peak['gflops']:.0f} GFLOP/s ({peak['threads']} threads)",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlim(-0.6, len(problems) - 0.4)
    ax.set_ylabel(unit + (" (2 FLOPs per multiply-add)" if unit == "GFLOP/s" else " (bytes in + out)"))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_problem_label(p) for p in problems], rotation=40, ha="right", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("throughput at the median (x: not run)", fontsize=8, loc="left")
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    ax.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
