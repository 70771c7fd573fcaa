"""``--plot out.png``: throughput per layer per backend, torch and the machine peak as reference lines.

matplotlib is imported here only, so the package and the CLI work without it.
"""
from __future__ import annotations

from .report import shown_backends


def plot(doc: dict, path) -> None:
    """Bars for the fastconv backends, a line for torch, a dashed line for the machine's peak.

    One panel per unit (GFLOP/s for convolutions and models, GB/s for memory-bound ops) and batch
    size, log scale so the naive backend and the fast ones fit on one axis.  Wrong results are not drawn.
    """
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'fastconv[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names, _ = shown_backends(doc)
    fastconv_names = [n for n in names if not n.startswith("torch")]
    torch_names = [n for n in names if n.startswith("torch")]
    # One panel per unit (GFLOP/s, GB/s) and batch size, stacked, so wide suites stay readable.
    panels = [(u, n) for u in ("GFLOP/s", "GB/s") for n in sorted({p["n"] for p in doc["problems"]})
              if any(p["unit"] == u and p["n"] == n for p in doc["problems"])]
    widest = max(sum(p["unit"] == u and p["n"] == n for p in doc["problems"]) for u, n in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.45 * widest + 3), 4.2 * len(panels) + 1),
                             squeeze=False)
    results = {(r["problem"], r["backend"]): r for r in doc["results"]}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (unit, n) in zip(axes[:, 0], panels):
        problems = [p for p in doc["problems"] if p["unit"] == unit and p["n"] == n]
        xs = range(len(problems))
        width = 0.8 / max(1, len(fastconv_names))

        def values(name):
            out = []
            for p in problems:
                r = results.get((p["id"], name))
                ok = r is not None and r["status"] in ("ok", "unchecked") and r["throughput"]
                out.append(r["throughput"] if ok else float("nan"))
            return out

        for i, name in enumerate(fastconv_names):
            ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], values(name), width, label=name,
                   color=colors[i % len(colors)])
        for j, name in enumerate(torch_names):
            ax.plot(list(xs), values(name), marker="_", markersize=18, linestyle=":", color=["black", "dimgray",
                    "gray"][j % 3], label=f"{name} (baseline)")
        if not any(v == v for name in names for v in values(name)):  # every value NaN: nothing ran
            reasons = sorted({r["reason"] for p in problems for r in doc["results"]
                              if r["problem"] == p["id"] and r["reason"]})
            ax.text(0.5, 0.5, "nothing ran: " + "; ".join(reasons)[:150], transform=ax.transAxes,
                    ha="center", va="center", fontsize=9, wrap=True)
        if unit == "GFLOP/s" and doc["peak"]["gflops"]:
            ax.axhline(doc["peak"]["gflops"], color="red", linestyle="--", linewidth=1,
                       label=f"machine peak {doc['peak']['gflops']:.0f} GFLOP/s")
        ax.set_yscale("log")
        ax.set_ylabel(unit + (" (2 FLOPs per multiply-add)" if unit == "GFLOP/s" else ""))
        ax.set_xticks(list(xs))
        ax.set_xticklabels([p["label"] for p in problems], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"batch {n}", fontsize=9, loc="left")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(plain if high / low < 30 else NullFormatter())  # label minor ticks on short axes
        ax.grid(axis="y", which="both", alpha=0.3)
    handles = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(6, len(handles)),
               fontsize=8, bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
    suite = doc["suite"]
    fig.suptitle(f"fastconv {suite['name']} v{suite['version']} ({suite['dtype']}, {doc['threads']} threads): "
                 f"{doc['machine']['cpu']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
