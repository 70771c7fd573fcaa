"""pytest-benchmark micro-benchmarks: every backend x every problem of a suite, one table per problem.

Skipped by ``make test`` (pyproject's addopts has --benchmark-skip); ``make bench-pytest`` runs
them, saves each run (--benchmark-autosave) and compares it with the previous one.  The suite is
``quick`` unless FASTCONV_PERF_SUITE names another; the thread count is FASTCONV_PERF_THREADS (2).
Each test is grouped by problem, so pytest-benchmark's table for a group ranks the backends.
"""

import os

import pytest

import fastconv
from fastconv.bench import suites, targets

SUITE = os.environ.get("FASTCONV_PERF_SUITE", "quick")
THREADS = int(os.environ.get("FASTCONV_PERF_THREADS", "2"))
CASES = suites.get_suite(SUITE).cases()
BACKENDS = [t.name for t in targets.fastconv_targets()] + ["torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op(benchmark, case, backend):
    target = targets.TorchTarget("cpu") if backend == "torch" else targets.FastconvTarget(backend)
    reason = target.skip_reason(case)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    fastconv.set_num_threads(THREADS)
    if backend == "torch":
        import torch

        torch.set_num_threads(THREADS)
    prepared = target.prepare(case, targets.make_inputs(case))
    prepared.call()  # the first call (JIT compilation, thread pools) stays out of the statistics
    benchmark.group = f"{case.label} n{case.n} ({case.id})"
    benchmark.extra_info.update(problem=case.id, backend=backend, threads=THREADS, unit=case.unit, work=case.work)
    benchmark(prepared.call)
    benchmark.extra_info["throughput"] = case.throughput(benchmark.stats.stats.median)
