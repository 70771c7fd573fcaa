"""asv benchmarks: every backend x every problem of a suite from fastconv.bench.suites.

The suite is ``quick`` unless FASTCONV_ASV_SUITE names another (``resnet50``, ``conv-zoo``,
``pool-bn``).  Problems are parameters by the names ``fastconv bench`` prints and plots
(``res2a 3x3 64 n8``: the layer's label and the batch size; ``fastconv bench list`` maps them to
the problems' ids).  Backends are the dispatcher's registry, so a new backend joins without edits
here; torch takes part as the baseline (torch.nn.functional, as in ``fastconv bench``).  An
unavailable backend, or one that refuses a problem, is skipped (NotImplementedError in setup,
with the reason).

Each benchmark runs in a fresh process: setup makes the inputs and makes the first call there
(JIT compilation, thread pools), so ``time_`` measures the steady state.  ``track_throughput``
reports GFLOP/s (2 FLOPs per multiply-add) or GB/s, the median of settled timed calls after setup.

What one commit shows: asv graphs a benchmark over commits, so with one commit recorded each
line is a single dot.  For one commit, read the table (``asv show`` or the dashboard's
benchmark page, one row per backend and problem) or run ``fastconv bench``; the graphs become
lines from the second recorded commit on (``benchmarks/history.sh main~10..main``).
"""

import os

import fastconv
from fastconv import timing
from fastconv.bench import suites, targets

SUITE = os.environ.get("FASTCONV_ASV_SUITE", "quick")
THREADS = int(os.environ.get("FASTCONV_ASV_THREADS", "2"))
CASES = {case.name: case for case in suites.get_suite(SUITE).cases()}
BACKENDS = [t.name for t in targets.fastconv_targets()] + ["torch"]


def _target(name):
    return targets.TorchTarget("cpu") if name == "torch" else targets.FastconvTarget(name)


class _Ops:
    param_names = ["backend", "problem"]
    processes = 1
    repeat = (3, 10, 5.0)  # at least 3 samples, at most 10 or 5 seconds
    warmup_time = 0.1
    timeout = 300

    def setup(self, backend, problem):
        if problem not in CASES:
            raise NotImplementedError(f"suite {SUITE} has no problem {problem!r}")
        case = CASES[problem]
        target = _target(backend)
        fastconv.set_num_threads(THREADS)
        if backend == "torch":
            import torch

            torch.set_num_threads(THREADS)
        reason = target.skip_reason(case)
        if reason is not None:
            raise NotImplementedError(f"{backend} skips {problem}: {reason}")
        self.case = case
        self.prepared = target.prepare(case, targets.make_inputs(case))
        self.prepared.call()  # first call: compilation, caches, thread pools

    def time_call(self, backend, problem):
        self.prepared.call()

    def peakmem_call(self, backend, problem):
        self.prepared.call()

    def _throughput(self):
        samples = timing.interleaved({"call": self.prepared.call}, 5, settle_s=0.02)["call"]
        return self.case.throughput(timing.median(samples))


def _problems(unit):
    # asv needs a non-empty parameter list: a suite without such problems gets a placeholder
    # that every setup skips.
    return [name for name, c in CASES.items() if c.unit == unit] or ["none"]


class Compute(_Ops):
    """Convolutions (and models): track_throughput in GFLOP/s."""

    params = [BACKENDS, _problems(suites.GFLOPS)]

    def track_throughput(self, backend, problem):
        return self._throughput()

    track_throughput.unit = "GFLOP/s"


class MemoryBound(_Ops):
    """Pooling, batch norm, relu: track_throughput in GB/s."""

    params = [BACKENDS, _problems(suites.GBPS)]

    def track_throughput(self, backend, problem):
        return self._throughput()

    track_throughput.unit = "GB/s"
