"""The CPU this process runs on, as /proc/cpuinfo names it (Linux; elsewhere what platform knows).

One place for the name that results are labelled with and that the per-machine caches (the
tuner's ``FASTCONV_TUNE_CACHE``, the benchmarks' peak) are keyed by.
"""

from __future__ import annotations

import platform


def cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty off Linux)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's name, with its x86 family and model where /proc/cpuinfo gives them.

    A cloud guest may name every generation alike ("AMD EPYC" for Zen 3, 4 and 5): the family and
    model tell them apart, in results and in the keys of the per-machine caches (peak, tuning).
    """
    info = cpuinfo()
    name = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    if info.get("cpu family") and info.get("model"):
        name += f" (family {info['cpu family']} model {info['model']})"
    return name
