"""Load-aware measurement: contention read before and during a run, the wait policy, noisy figures,
the CPU clock and the settled autotuning.  A load generator (busy subprocesses) makes the machine
busy; the tests assert the warnings, never a timing."""

import json
import subprocess
import sys
import time

import pytest

from fastconv import cli, dispatch, timing
from fastconv.bench import load, report, runner, schema, suites, targets
from fastconv.problem import Conv2dProblem

pytest.importorskip("torch")

TINY = [suites.Case("tiny conv", Conv2dProblem(1, 3, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1)))]
FAST = dict(threads=1, min_time=0.001, min_repeats=3, max_repeats=3, sample_time=1e-5)
TINY_RUN = [
    "bench",
    "--suite",
    "quick",
    "--problems",
    "small",
    "--backends",
    "im2col",
    "--threads",
    "1",
    "--min-time",
    "0.01",
    "--min-repeats",
    "2",
    "--max-repeats",
    "2",
    "--no-peak",
    "--quiet",
]


pytestmark = pytest.mark.usefixtures("restore_wait_policy")


@pytest.fixture
def busy_machine():
    """One busy-looping process per usable CPU: the cores are contended while it lasts."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load.usable_cpus())]
    time.sleep(0.3)
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def test_assess_names_the_reason():
    assert not load.assess(0.0, 2, cpus=2, loadavg=[0.1, 0.1, 0.1])["contended"]
    busy = load.assess(1.0, 2, cpus=2, loadavg=[0.1, 0.1, 0.1])
    assert busy["contended"] and "1.0 of 2 CPUs" in busy["reasons"][0]
    assert not load.assess(1.0, 1, cpus=2)["contended"]  # one thread leaves a CPU for the others
    assert "64 threads asked on 2 usable CPUs" in load.assess(0.0, 64, cpus=2)["reasons"]
    assert load.assess(None, 1, cpus=2, loadavg=[4.0, 1, 1])["contended"]  # no /proc/stat: the load average
    assert load.spread(1.0, 2.0, 3.0) == 1.0 and load.spread(None, 1.0, 2.0) is None


def test_a_load_generator_is_seen_and_flagged(busy_machine, tmp_path, monkeypatch, capsys):
    others = load.sample(0.5)
    if others is None:
        pytest.skip("no /proc/stat: the load average alone is read here")
    assert load.assess(others, load.usable_cpus())["contended"]
    out = tmp_path / "run.json"
    monkeypatch.setenv("FASTCONV_PEAK_CACHE", str(tmp_path / "peak.json"))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main([*TINY_RUN, "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "cores are contended" in err and "passive wait policy" in err and "NOT TRUSTWORTHY" in err
    doc = schema.load(out)
    assert doc["load"]["contended"] and doc["load"]["wait_policy"] == "passive"
    assert doc["load"]["before"]["contended"] and "NOT TRUSTWORTHY" in doc["load"]["verdict"]
    assert all("contended" in r["flags"] for r in doc["results"] if r["median_s"] is not None)


def test_active_policy_on_contended_cores_needs_force(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FASTCONV_PEAK_CACHE", str(tmp_path / "peak.json"))
    monkeypatch.setattr(load, "sample", lambda seconds=0.5: 8.0)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main([*TINY_RUN, "--json", str(tmp_path / "r.json")]) == 2
    assert "refusing" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert cli.main([*TINY_RUN, "--force", "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "contended" in err and "NOT TRUSTWORTHY" in err
    doc = schema.load(tmp_path / "r.json")
    assert doc["load"]["contended"] and doc["load"]["wait_policy"] == "active"


def test_threads_above_the_usable_cpus_warn(monkeypatch, capsys):
    monkeypatch.setattr(load, "usable_cpus", lambda: 1)
    monkeypatch.setattr(load, "sample", lambda seconds=0.5: 0.0)
    assert cli.main([*TINY_RUN, "--threads", "2"]) == 0
    assert "--threads 2 is more than the 1 CPUs" in capsys.readouterr().err


def test_noisy_figures_are_flagged():
    a = runner._Active(
        target=None,
        prepared=None,
        cell=runner.Measurement("p", "b", "fastconv", "cpu", "ok"),
        estimate=1.0,
        number=1,
        samples=[1.0, 1.0, 2.0, 3.0, 3.0],
    )
    runner._summarise(None, a)
    assert a.cell.spread == pytest.approx(1.0) and a.cell.flags == ["noisy"]
    b = runner._Active(
        None, None, runner.Measurement("p", "b", "fastconv", "cpu", "ok"), 1.0, 1, samples=[1.0, 1.01, 1.0, 1.02, 1.0]
    )
    runner._summarise(None, b)
    assert b.cell.flags == []


def test_cpu_clock_run_records_its_clock():
    settings = runner.Settings(clock="cpu", **FAST)
    free = load.assess(0.0, 1, cpus=2, loadavg=[0.0, 0.0, 0.0])
    run = runner.run_cases(
        runner.new_run(
            {"name": "t", "version": 1, "description": "", "dtype": "float32", "batch_sizes": None},
            TINY,
            targets.fastconv_targets(["im2col"]) + targets.torch_targets(),
            settings,
            peak=False,
            load_before=free,
        ),
        targets.fastconv_targets(["im2col"]) + targets.torch_targets(),
    )
    doc = schema.to_dict(run)
    assert doc["load"]["clock"] == "cpu" and doc["settings"]["clock"] == "cpu"
    assert all(r["median_s"] > 0 for r in doc["results"] if r["status"] == "ok")
    clock = timing.cpu_clock(2)
    assert clock() == pytest.approx(time.process_time() / 2, abs=0.05)


def test_compare_warns_about_policy_load_isa_and_clock():
    settings = runner.Settings(**FAST)
    free = load.assess(0.0, 1, cpus=2, loadavg=[0.0, 0.0, 0.0])
    run = runner.run_cases(
        runner.new_run(
            {"name": "t", "version": 1, "description": "", "dtype": "float32", "batch_sizes": None},
            TINY,
            targets.torch_targets(),
            settings,
            peak=False,
            load_before=free,
        ),
        targets.torch_targets(),
    )
    a = schema.to_dict(run)
    a["load"].update(wait_policy="active", clock="wall", contended=False)
    a["load"]["before"]["other_busy_cpus"] = 0.0
    b = json.loads(json.dumps(a))
    b["load"].update(wait_policy="passive", clock="cpu", contended=True, verdict="NOT TRUSTWORTHY: busy")
    b["load"]["before"]["other_busy_cpus"] = 1.5
    # Another table than the one this run used (FASTCONV_ISA may have forced "generic").
    b["machine"]["isa"] = "avx2" if a["machine"]["isa"] == "generic" else "generic"
    assert a["settings"]["steady_heap"] is True
    b["settings"]["steady_heap"] = False  # --default-heap
    text = " | ".join(report.compare_warnings(a, b))
    for word in (
        "OpenMP wait policy differs",
        "clock differs",
        "steady heap differs",
        "ISA differs",
        "run B ran on contended cores",
        "load differs",
    ):
        assert word in text


_REUSE = """
import resource, sys, numpy as np
from fastconv.bench import machine
if sys.argv[1] == "steady" and not machine.steady_heap():
    print(-1); sys.exit()
block = 64 << 20  # bytes: above glibc's default mmap threshold, below the one steady_heap sets
np.ones(block // 4, np.float32)  # allocated and freed once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(block // 4, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_steady_heap_keeps_freed_memory():
    """With the heap kept (the benchmark default), a large block freed and allocated again reuses
    its pages: no page faults, where glibc's default maps (and faults in) a fresh block."""

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _REUSE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    steady, default = faults("steady"), faults("default")
    if steady < 0:
        pytest.skip("the C library has no mallopt")
    assert steady < 20, f"{steady} page faults for a reused 64 MiB block with the heap kept"
    if default < 100:
        pytest.skip(f"this allocator reuses the block by default too ({default} faults): nothing to compare")
    assert steady < default // 10


def test_autotune_settles_each_candidate(monkeypatch):
    seen = {}
    real = timing.interleaved

    def spy(calls, repeats, **kwargs):
        seen.update(kwargs, names=list(calls))
        return real(calls, repeats, **kwargs)

    monkeypatch.setattr(timing, "interleaved", spy)
    monkeypatch.setattr(dispatch, "_autotune", True)
    monkeypatch.setattr(dispatch, "_auto_candidates", lambda op: ["im2col", "torch"])  # nothing to compile
    dispatch.clear_autotune_cache()
    try:
        import numpy as np

        import fastconv

        x = np.ones((1, 2, 5, 5), np.float32)
        w = np.ones((2, 2, 3, 3), np.float32)
        fastconv.conv2d(x, w)
    finally:
        dispatch.clear_autotune_cache()
    if len(seen.get("names", [])) < 2:
        pytest.skip("one candidate only: nothing to tune")
    assert seen["settle_s"] == dispatch.AUTOTUNE_SETTLE_S > 0


def test_meter_subtracts_this_process(monkeypatch):
    ticks = iter([0, int(0.2 * load.os.sysconf("SC_CLK_TCK"))])
    monkeypatch.setattr(load, "_busy_ticks", lambda: next(ticks))
    others = load.sample(0.1)  # 0.2 CPU-seconds of busy time over about 0.1 s, none of it ours (asleep)
    assert 1.0 < others <= 2.1
    monkeypatch.setattr(load, "_busy_ticks", lambda: None)
    assert load.sample(0.06) is None  # off Linux: unknown, and the load average decides
