"""The one timing primitive: settled, interleaved samples and their medians.

Every measurement in fastconv goes through here -- ``fastconv bench``, ``fastconv resnet``, the
asv and pytest-benchmark suites, the tuning scripts and autotuning.  The method:

- a sample is ``number`` back-to-back calls between two readings of the clock, with the device
  synchronised before the first reading and after the last call (a host call needs no sync);
- before each sample the call runs untimed for ``settle`` seconds (at least once): the previous
  candidate's idle threads spin-wait for a while (OpenMP's default) on the cores this one needs,
  and running meanwhile outlasts them and brings this one's thread pool and caches back to the
  state of a program that calls only it (sleeping would let its own pool fall asleep too);
- candidates are interleaved, the order rotated each round, so drift on a busy machine hits all
  alike; results are medians (with quartiles) over the rounds.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

clock = time.perf_counter


def cpu_clock(threads: int) -> Callable[[], float]:
    """A clock reading the process's CPU time divided by ``threads``, for ``timer=``.

    A call's CPU time / its thread count is the wall time it would take with a free core per
    thread: other processes on shared cores do not move it.  It does not see idle waits (load
    imbalance, serial phases, a thread left without a core), and spin-waiting OpenMP threads
    count as busy, so use it with OMP_WAIT_POLICY=passive.
    """
    n = max(1, int(threads))
    return lambda: time.process_time() / n


def _no_sync() -> None:
    pass


def time_calls(
    call: Callable[[], object],
    number: int = 1,
    sync: Callable[[], None] = _no_sync,
    timer: Callable[[], float] | None = None,
) -> float:
    """Seconds per call over ``number`` back-to-back calls, device synchronised.

    ``timer`` is the wall clock by default; ``time.process_time`` gives the process's CPU time
    (what a multi-threaded call costs, unaffected by other processes on shared cores).
    """
    now = timer or clock
    sync()
    t0 = now()
    for _ in range(number):
        call()
    sync()
    return (now() - t0) / number


def settle(call: Callable[[], object], seconds: float) -> None:
    """Untimed calls for ``seconds`` (at least one)."""
    end = clock() + seconds
    call()
    while clock() < end:
        call()


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation as numpy.percentile's default."""
    s = sorted(samples)

    def at(q):
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


def median(samples: list[float]) -> float:
    return quartiles(samples)[1]


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    number: int = 1,
    settle_s: float = 0.0,
    sync: Callable[[], None] = _no_sync,
    timer: Callable[[], float] | None = None,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """``repeats`` samples (seconds per call) of each call, interleaved, order rotated per round;
    ``on_round(rounds done)`` after each round (a progress bar)."""
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if settle_s > 0:
                settle(calls[name], settle_s)
            samples[name].append(time_calls(calls[name], number, sync, timer))
        if on_round is not None:
            on_round(r + 1)
    return samples
