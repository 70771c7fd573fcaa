"""The benchmark suite: what is measured (suites), how (runner, targets) and how it is shown (report).

    from fastconv.bench import suites, runner, targets
    cases = suites.get_suite("quick").cases()
    run = runner.run_suite({"name": "quick"}, cases, targets.fastconv_targets() + targets.torch_targets(),
                           runner.Settings(threads=2))

The ``fastconv bench`` command, the asv suite (benchmarks/) and the pytest-benchmark tests
(tests/perf/) all take their problems from :mod:`fastconv.bench.suites`.
"""
