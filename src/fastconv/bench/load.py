"""How busy the machine is besides us: whether a benchmark's cores are contended.

Wall-clock timings of multi-threaded code mean something only when its threads have cores to
themselves.  Two readings tell:

- :func:`sample`: over a short interval, the CPUs other processes kept busy -- the busy time of
  the CPUs this process may run on, from ``/proc/stat`` (user, nice, system, irq, softirq and
  steal, which is time the hypervisor gave to other guests), minus this process's own CPU time
  (a CPU quota set by a container, rather than an affinity mask, is not seen);
- the 1-minute load average (``os.getloadavg``), which counts runnable threads, ours included.

The cores are *contended* when the other processes' busy CPUs plus the threads we ask for exceed
the CPUs this process may run on (``os.sched_getaffinity``) by more than a quarter of a CPU.
Importing this module loads no OpenMP runtime: the CLI reads the load before torch or the C
backend start, so it can still choose the passive wait policy.
"""

from __future__ import annotations

import os
import time

#: Busy CPUs of other processes (above what the run leaves free) that count as contention.
MARGIN = 0.25
#: Interquartile range / median above which a figure is flagged as noisy.
NOISY_SPREAD = 0.10


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _busy_ticks() -> int | None:
    """Busy time, in clock ticks since boot, of the CPUs this process may run on (None off Linux).

    Only those CPUs: on a large host whose other CPUs are busy, ours may still be free.
    """
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:
        mine = None
    total, seen = 0, False
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
                    continue
                if mine is not None and fields[0] not in mine:
                    continue
                user, nice, system, _idle, _iowait, irq, softirq, steal = ([int(v) for v in fields[1:9]] + [0] * 8)[:8]
                total += user + nice + system + irq + softirq + steal
                seen = True
    except (OSError, ValueError):
        return None
    return total if seen else None


class Meter:
    """Other processes' busy CPUs between :meth:`start` and :meth:`read` (None off Linux)."""

    def __init__(self):
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    def start(self) -> None:
        self._t0, self._busy0, self._own0 = time.monotonic(), _busy_ticks(), time.process_time()

    def read(self) -> float | None:
        busy, now, own = _busy_ticks(), time.monotonic(), time.process_time()
        if busy is None or self._busy0 is None or now - self._t0 < 0.05:
            return None
        others = (busy - self._busy0) / self._tick - (own - self._own0)
        return round(max(0.0, others / (now - self._t0)), 2)


def sample(seconds: float = 0.5) -> float | None:
    """Other processes' busy CPUs, averaged over ``seconds`` (this process sleeps meanwhile)."""
    meter = Meter()
    time.sleep(seconds)
    return meter.read()


def assess(others: float | None, threads: int, cpus: int | None = None, loadavg: list[float] | None = None) -> dict:
    """The load record of a run: readings, whether the cores are contended, and why.

    ``others`` (busy CPUs of other processes) decides when it was read; otherwise the 1-minute
    load average stands in for it (it counts our own threads too, so it is compared with the
    CPUs alone).
    """
    cpus = cpus or usable_cpus()
    loadavg = load_average() if loadavg is None else loadavg
    reasons = []
    if threads > cpus:
        reasons.append(f"{threads} threads asked on {cpus} usable CPUs")
    if others is not None:
        if others + min(threads, cpus) > cpus + MARGIN:
            reasons.append(f"other processes kept {others:.1f} of {cpus} CPUs busy")
    elif loadavg is not None and loadavg[0] > cpus + MARGIN:
        reasons.append(f"load average {loadavg[0]:.1f} on {cpus} CPUs")
    return {
        "cpus": cpus,
        "threads": threads,
        "other_busy_cpus": others,
        "load_average": loadavg,
        "contended": bool(reasons),
        "reasons": reasons,
    }


def assess_during(others: float, threads: int, cpus: int) -> dict:
    """The load while a problem ran.  Our own threads then hold their share of the cores, so other
    processes can only take what is left: more than the CPUs our threads leave free (less a
    margin), or more than the margin when we use them all, means they competed with us."""
    used = min(threads, cpus)
    contended = others > max(MARGIN, cpus - used - MARGIN)
    reasons = [f"other processes kept {others:.1f} of {cpus} CPUs busy while it ran"] if contended else []
    return {"cpus": cpus, "threads": threads, "other_busy_cpus": others, "contended": contended, "reasons": reasons}


def spread(q1: float | None, median: float | None, q3: float | None) -> float | None:
    """Interquartile range relative to the median (None when not measured)."""
    if q1 is None or q3 is None or not median:
        return None
    return (q3 - q1) / median
