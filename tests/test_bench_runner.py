"""The benchmark runner and targets on tiny problems: method, checks, skips, errors (no timing assertions)."""

import math
import sys
import types

import numpy as np
import pytest

import fastconv
from fastconv import dispatch
from fastconv.backends import naive
from fastconv.bench import machine, runner, suites, targets
from fastconv.problem import AdaptivePool2dProblem, BatchNormProblem, Conv2dProblem, Pool2dProblem, ReluProblem

pytest.importorskip("torch")

TINY = [
    suites.Case("conv", Conv2dProblem(2, 3, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1))),
    suites.Case("conv strided dilated grouped", Conv2dProblem(1, 4, 9, 9, 4, 3, 3, (2, 2), (2, 2, 2, 2), (2, 2), 2)),
    suites.Case("max pool", Pool2dProblem("max", 1, 3, 8, 8, (3, 3), (2, 2), (1, 1))),
    suites.Case("avg pool", Pool2dProblem("avg", 1, 3, 8, 8, (2, 2), (2, 2))),
    suites.Case("global pool", AdaptivePool2dProblem(2, 5, 4, 4, 1, 1)),
    suites.Case("bn eval", BatchNormProblem(2, 3, (4, 4), False)),
    suites.Case("bn train", BatchNormProblem(2, 3, (4, 4), True)),
    suites.Case("relu", ReluProblem((2, 3, 4, 4))),
]
FAST = runner.Settings(threads=1, min_time=0.001, min_repeats=2, max_repeats=3, sample_time=1e-5)


def _backend(name, *, refuse=None, available=True, transform=None, fail=False, record=None):
    """A backend built on the naive one: recording, refusing, unavailable, wrong or raising."""

    def op(opname):
        def run(p, *arrays):
            if record is not None:
                record.append(p)
            if fail:
                raise RuntimeError("kernel exploded")
            out = getattr(naive, opname)(p, *arrays)
            if transform is not None:
                out = (transform(out[0]), *out[1:]) if isinstance(out, tuple) else transform(out)
            return out

        return run

    ops = {o: op(o) for o in dispatch.OPS}
    return types.SimpleNamespace(
        NAME=name,
        FUSED_EPILOGUE=True,
        available=lambda: (available, "" if available else "no such hardware"),
        supports=lambda p: refuse,
        **ops,
    )


@pytest.fixture
def register():
    names = []

    def add(module):
        names.append(fastconv.register_backend(module))
        return names[-1]

    yield add
    for name in names:
        fastconv.unregister_backend(name)


def _run(cases, names):
    chosen = [t for t in targets.fastconv_targets() if t.name in names]
    return runner.run_suite({"name": "tiny"}, cases, chosen + targets.torch_targets(), FAST, peak=False)


def test_public_api_call_builds_exactly_the_suite_problem(register):
    seen = []
    register(_backend("recorder", record=seen))
    run = _run(TINY, {"recorder"})
    assert [p for p in seen[:1]] == [TINY[0].problem]
    assert {p.id for p in seen} == {c.id for c in TINY}  # every op went through the API unchanged
    assert all(m.status == "ok" for m in run.measurements), [
        (m.problem, m.backend, m.reason) for m in run.measurements if m.status != "ok"
    ]


def test_run_measures_every_target_and_relates_to_torch():
    run = _run(TINY[:3], {"naive", "im2col"})
    assert {m.backend for m in run.measurements} == {"naive", "im2col", "torch"}
    for m in run.measurements:
        assert m.status == "ok" and m.max_rel_error <= m.tolerance
        assert m.first_call_s > 0 and m.q1_s <= m.median_s <= m.q3_s and m.repeats >= 1
        assert m.throughput > 0 and m.speed_vs_torch > 0
    assert all(m.speed_vs_torch == 1.0 for m in run.measurements if m.backend == "torch")


def test_a_wrong_result_is_flagged_and_never_ranked(register):
    from fastconv.bench import report, schema

    register(_backend("offbyone", transform=lambda y: y + 1))
    run = _run(TINY[:1], {"offbyone"})
    bad = run.cell(TINY[0].id, "offbyone")
    assert bad.status == "wrong" and "tolerance" in bad.reason and bad.speed_vs_torch is None
    doc = schema.to_dict(run)
    assert report.best_backend(doc, TINY[0].id) == "torch"


def test_refusals_unavailability_and_errors_do_not_stop_the_run(register):
    register(_backend("picky", refuse="only on Tuesdays"))
    register(_backend("absent", available=False))
    register(_backend("broken", fail=True))
    run = _run(TINY[:2], {"picky", "absent", "broken", "im2col"})
    for case in TINY[:2]:
        assert run.cell(case.id, "picky").status == "skipped" and "Tuesdays" in run.cell(case.id, "picky").reason
        assert (
            run.cell(case.id, "absent").status == "skipped" and "no such hardware" in run.cell(case.id, "absent").reason
        )
        assert run.cell(case.id, "broken").status == "error" and "kernel exploded" in run.cell(case.id, "broken").reason
        assert run.cell(case.id, "im2col").status == "ok"


def test_new_backends_join_without_edits(register):
    register(_backend("newcomer"))
    assert "newcomer" in [t.name for t in targets.fastconv_targets()]
    assert "torch" not in [t.name for t in targets.fastconv_targets()]  # the baseline is not listed twice


def test_unknown_backend_names_are_rejected():
    with pytest.raises(targets.BenchError, match="nope"):
        targets.fastconv_targets(["im2col", "nope"])


def test_relative_error():
    ref = np.array([1.0, -2.0, 4.0])
    assert targets.relative_error(ref, ref) == 0.0
    assert targets.relative_error(ref + [0, 0, 0.4], ref) == pytest.approx(0.1)
    assert math.isinf(targets.relative_error(np.array([1.0, np.nan, 4.0]), ref))
    assert math.isinf(targets.relative_error(ref[:2], ref))
    both_nan = np.array([np.nan, 1.0])
    assert targets.relative_error(both_nan, both_nan) == 0.0


def test_slow_targets_take_fewer_samples(monkeypatch):
    settings = runner.Settings(threads=1, min_time=0.05, min_repeats=3, max_repeats=4, sample_time=1e-5)

    class Slow:
        name, kind, device = "slow", "fastconv", "cpu"

        def skip_reason(self, case):
            return None

        def prepare(self, case, data):
            import time

            return targets.Prepared(lambda: time.sleep(0.03) or np.zeros(case.problem.output_shape))

    cells = runner.measure_case(
        TINY[0], [Slow(), *targets.torch_targets()], runner.Settings(**{**settings.__dict__, "check": False})
    )
    slow, torch_cell = cells
    assert slow.status == "unchecked" and slow.repeats == 1
    assert torch_cell.repeats >= settings.min_repeats


def test_whole_networks_settle_longer_than_layers(monkeypatch):
    """Each sample of a whole network waits out OpenBLAS's long idle spin (model_settle); a
    layer's sample settles the usual short while."""
    seen = []
    monkeypatch.setattr(runner, "_sample", lambda a, settle: seen.append(settle) or a.samples.append(1e-3))

    class Quick:
        kind, device = "fastconv", "cpu"

        def __init__(self, name):
            self.name = name

        def skip_reason(self, case):
            return None

        def prepare(self, case, data):
            return targets.Prepared(lambda: None)

    settings = runner.Settings(threads=1, min_time=0.01, min_repeats=2, max_repeats=2, check=False)
    model = suites.get_suite("models").cases(batch_sizes=(1,))[0]
    quick = [Quick("a"), Quick("b")]
    runner.measure_case(model, quick, settings)
    assert seen and set(seen) == {settings.model_settle} and settings.model_settle > settings.settle
    seen.clear()
    runner.measure_case(TINY[0], quick, settings)
    assert seen and set(seen) == {settings.settle}


def test_models_suite_skips_cleanly_without_fastconv_models(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastconv.models", None)  # import fails
    monkeypatch.setattr(targets.models, "_fastconv_models", {})
    monkeypatch.setattr(targets.models, "_torch_models", {})
    case = suites.get_suite("models").cases(batch_sizes=(1,))[0]
    assert "fastconv.models" in targets.FastconvTarget("im2col").skip_reason(case)
    assert "fastconv.models" in targets.TorchTarget().skip_reason(case)


def test_models_suite_runs_a_model_through_use_backend(monkeypatch):
    calls = []

    class TinyNet:
        def eval(self):
            return self

        def __call__(self, x):
            calls.append(fastconv.get_backend())
            return np.zeros((x.shape[0], 1000), x.dtype)

    fake = types.ModuleType("fastconv.models")
    fake.resnet18 = TinyNet
    monkeypatch.setitem(sys.modules, "fastconv.models", fake)
    monkeypatch.setattr(targets.models, "_fastconv_models", {})
    monkeypatch.setattr(targets.models, "_torch_models", {})
    case = suites.get_suite("models").cases(batch_sizes=(1,))[0]
    assert case.problem.name == "resnet18"
    cells = runner.measure_case(case, targets.fastconv_targets(["im2col"]) + targets.torch_targets(), FAST)
    im2col, torch_cell = cells
    assert im2col.status == "unchecked" and set(calls) == {"im2col"}
    assert torch_cell.status == "skipped" and "torch twin" in torch_cell.reason
    other = suites.get_suite("models").cases(batch_sizes=(1,))[1]
    assert "no resnet50()" in targets.FastconvTarget("im2col").skip_reason(other)


def test_cuda_without_a_gpu_fails_clearly(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(targets.BenchError, match="--device cuda: no CUDA device"):
        targets.torch_targets("cuda")
    with pytest.raises(targets.BenchError, match="--device"):
        targets.torch_targets("tpu")


def test_cuda_timer_synchronises_then_times_with_events():
    log = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing
            self.name = "start" if not any(e == "new start" for e in log) else "end"
            log.append(f"new {self.name}")

        def record(self):
            log.append(f"record {self.name}")

        def synchronize(self):
            log.append(f"sync {self.name}")

        def elapsed_time(self, other):
            return 6.0  # milliseconds

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event, synchronize=lambda: log.append("device sync")))
    seconds = targets.cuda_timer(fake)(lambda: log.append("call"), 3)
    assert seconds == pytest.approx(6.0 / 1e3 / 3)
    assert log == [
        "device sync",
        "new start",
        "new end",
        "record start",
        "call",
        "call",
        "call",
        "record end",
        "sync end",
    ]


def test_cuda_targets_when_a_gpu_is_present():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the torch-cuda targets are unverified here")
    names = [t.name for t in targets.torch_targets("cuda")]
    assert names == ["torch", "torch-cuda", "torch-cuda-benchmark"]
    cells = runner.measure_case(TINY[0], targets.torch_targets("cuda"), FAST)
    assert all(c.status == "ok" for c in cells)


def test_peak_prefers_the_c_backend_measured_at_usable_cpus_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCONV_PEAK_CACHE", str(tmp_path / "peak.json"))
    monkeypatch.setattr(machine, "_peak_cache", {})
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    asked = []
    fake_c = types.SimpleNamespace(
        peak_gflops=lambda threads: asked.append(threads) or 100.0 * threads, isa=lambda: "avx2"
    )
    monkeypatch.setitem(sys.modules, "fastconv.backends.c", fake_c)
    value, source, threads = machine.peak_gflops(64)  # more threads than CPUs: measured at 2, not extrapolated
    assert (value, threads) == (200.0, 2) and set(asked) == {2} and "peak_gflops at 2 threads" in source
    monkeypatch.setattr(machine, "_peak_cache", {})  # a new process: the per-machine file answers
    asked.clear()
    assert machine.peak_gflops(2)[0] == 200.0 and not asked and "cached" in machine.peak_gflops(2)[1]
    assert machine.peak_gflops(2, cache=False)[0] == 200.0 and asked  # a busy machine measures, keeps nothing
    monkeypatch.setattr(machine, "_peak_cache", {})
    monkeypatch.setenv("FASTCONV_PEAK_CACHE", str(tmp_path / "other.json"))
    monkeypatch.setitem(sys.modules, "fastconv.backends.c", types.SimpleNamespace(peak_gflops=lambda t: None))
    monkeypatch.setattr(machine, "_numpy_gemm_gflops", lambda threads: 42.0)
    assert machine.peak_gflops(2)[:2] == (42.0, "numpy sgemm 2048^3 at 2 threads (best of 5)")


def test_cpus_of_one_name_are_told_apart_by_family_and_model(monkeypatch):
    """A cloud guest names Zen 3, 4 and 5 alike ("AMD EPYC"): results and the per-machine caches
    (peak, tuning) keep the family and model apart."""
    from fastconv import _cpu, _plan_tune

    zen = {"model name": "AMD EPYC", "cpu family": "25", "model": "1"}
    monkeypatch.setattr(_cpu, "cpuinfo", lambda: zen)
    assert machine.cpu_model() == "AMD EPYC (family 25 model 1)"
    zen3_tune, zen3_peak = _plan_tune.machine_key(), machine._machine_key(2)
    monkeypatch.setattr(_cpu, "cpuinfo", lambda: {**zen, "model": "17"})
    assert machine.cpu_model() == "AMD EPYC (family 25 model 17)"
    assert _plan_tune.machine_key() != zen3_tune and machine._machine_key(2) != zen3_peak
    monkeypatch.setattr(_cpu, "cpuinfo", lambda: {"Model": "Raspberry Pi 4"})  # no family: the name alone
    assert machine.cpu_model() == "Raspberry Pi 4"


def test_the_cached_peak_names_its_file_without_the_home_directory(monkeypatch, tmp_path):
    """Results are shared: the peak's source names the cache file as ~/..., not the user's home."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FASTCONV_PEAK_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(machine, "_peak_cache", {})
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    fake_c = types.SimpleNamespace(peak_gflops=lambda threads: 100.0 * threads, isa=lambda: "avx2")
    monkeypatch.setitem(sys.modules, "fastconv.backends.c", fake_c)
    machine.peak_gflops(2)
    monkeypatch.setattr(machine, "_peak_cache", {})
    source = machine.peak_gflops(2)[1]
    assert "cached (~/.cache/fastconv/peak.json)" in source and str(tmp_path) not in source


def test_numpy_gemm_peak_is_positive():
    assert machine._numpy_gemm_gflops(1, n=64) > 0


def test_models_suite_checks_against_the_torch_twin(monkeypatch):
    import torch

    weights = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(weights.copy()))

        def forward(self, x):
            return x.mean(dim=(2, 3)) @ self.w

    class PoolNet:  # global average pool (through the public API) and a linear layer
        def __call__(self, x):
            return fastconv.adaptive_avg_pool2d(x, 1)[:, :, 0, 0] @ weights

    from fastconv.interop import torch as interop_torch  # before fastconv.models is replaced below

    monkeypatch.setattr(interop_torch, "to_torch", lambda model: Twin())
    fake = types.ModuleType("fastconv.models")
    fake.resnet18 = PoolNet
    monkeypatch.setitem(sys.modules, "fastconv.models", fake)
    monkeypatch.setattr(targets.models, "_fastconv_models", {})
    monkeypatch.setattr(targets.models, "_torch_models", {})
    case = suites.get_suite("models").cases(batch_sizes=(1,))[0]
    cells = runner.measure_case(case, targets.fastconv_targets(["im2col", "naive"]) + targets.torch_targets(), FAST)
    assert [c.status for c in cells] == ["ok", "ok", "ok"], [(c.backend, c.reason) for c in cells]
    assert all(c.max_rel_error < 1e-5 and c.speed_vs_torch > 0 for c in cells)


@pytest.mark.parametrize("direction", ["bwd_data", "bwd_weight"])
def test_backward_directions_are_timed_and_checked(direction):
    import dataclasses

    from fastconv.bench import schema

    forward = Conv2dProblem(2, 3, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), bias=True)
    case = suites.Case("conv", dataclasses.replace(forward, direction=direction))
    chosen = [t for t in targets.fastconv_targets() if t.name in ("im2col", "naive")] + targets.torch_targets()
    run = runner.run_suite(
        {"name": "tiny", "version": 1, "description": "", "dtype": "float32", "batch_sizes": None},
        [case],
        chosen,
        FAST,
        peak=False,
    )
    assert {c.backend: c.status for c in run.measurements} == {"im2col": "ok", "naive": "ok", "torch": "ok"}
    assert all(c.max_rel_error < 1e-5 for c in run.measurements)
    doc = schema.to_dict(run)
    assert doc["problems"][0]["direction"] == direction and doc["problems"][0]["flops"] == forward.flops


def test_torch_backward_is_autograd_of_the_op_alone():
    torch = pytest.importorskip("torch")
    import dataclasses

    p = dataclasses.replace(Conv2dProblem(1, 2, 5, 5, 3, 3, 3, (1, 1), (0, 0, 0, 0), bias=True), direction="bwd_weight")
    data = targets.make_inputs(suites.Case("c", p))
    got = targets.outputs(targets.TorchTarget().prepare(suites.Case("c", p), data).call())
    ref, _ = targets.reference(suites.Case("c", p), data)
    assert [a.shape for a in got] == [(3, 2, 3, 3), (3,)] and targets.relative_error(got, ref) < 1e-5
    assert targets.relative_error(got, ref[:1]) == math.inf
    assert torch.is_grad_enabled()
