"""ONNX Runtime as a second baseline, and thread scaling, in ``fastconv bench`` and ``fastconv resnet``.

Small networks only (a ResNet-18 on 32x32 images), so the file stays within a few seconds."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fastconv.bench import onnxruntime_target, report, runner, scaling, schema, targets
from fastconv.bench.suites import Case, ModelProblem

torch = pytest.importorskip("torch")

SUITE = {"name": "models", "version": 1, "description": "test", "dtype": "float32", "batch_sizes": None}
QUICK = dict(min_time=0.05, min_repeats=2, max_repeats=2, sample_time=0.0, settle=0.0)


def _small_resnet() -> Case:
    return Case("resnet18", ModelProblem("resnet18", 1, 32))


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """onnxruntime made unimportable (a None entry in sys.modules makes ``import`` raise ImportError)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def test_runner_matches_torch_on_a_small_network():
    pytest.importorskip("onnxruntime")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1, stride=2),
    ).eval()
    with torch.no_grad():  # running statistics unlike a fresh layer's, so BN folding is exercised
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 11)).astype(np.float32)
    y = onnxruntime_target.runner(net, x, threads=1)()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape == (2, 4, 5, 6)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_session_uses_the_threads_asked_for():
    ort = pytest.importorskip("onnxruntime")
    net = torch.nn.Conv2d(1, 1, 1).eval()
    sess = onnxruntime_target.session(onnxruntime_target.export(net, np.zeros((1, 1, 2, 2), np.float32)), 3)
    # The options a session was made with are readable back only through the session's copy.
    options = sess.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Its idle workers must not spin on after a run, slowing whichever target runs next.
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_models_suite_runs_onnxruntime_and_thread_scaling():
    """The models suite gets the compiled network, ONNX Runtime and one-thread twins; the JSON,
    tables and Markdown show them."""
    pytest.importorskip("onnxruntime")
    cases = [_small_resnet()]
    chosen = targets.model_targets(targets.fastconv_targets(["c"]) + targets.torch_targets(), cases, 2)
    assert [t.name for t in chosen] == [
        "c",
        "torch",
        "c-fused",
        "compiled",
        "compiled-winograd",
        "onnxruntime",
        "c@1t",
        "torch@1t",
        "c-fused@1t",
        "compiled@1t",
        "compiled-winograd@1t",
        "onnxruntime@1t",
    ]
    run = runner.run_suite(SUITE, cases, chosen, runner.Settings(threads=2, **QUICK), peak=False)
    doc = schema.validate(schema.to_dict(run))
    results = {r["backend"]: r for r in doc["results"]}
    for name in (
        "onnxruntime",
        "onnxruntime@1t",
        "c@1t",
        "torch@1t",
        "c-fused",
        "c-fused@1t",
        "compiled",
        "compiled@1t",
        "compiled-winograd",
        "compiled-winograd@1t",
    ):
        assert results[name]["status"] == "ok", results[name]
        assert results[name]["max_rel_error"] < 1e-4
    # Each one-thread cell is compared with torch on one thread, the others with torch on two.
    assert results["torch@1t"]["speed_vs_torch"] == pytest.approx(1.0)
    assert results["onnxruntime@1t"]["speed_vs_torch"] == pytest.approx(
        results["torch@1t"]["median_s"] / results["onnxruntime@1t"]["median_s"]
    )
    assert results["onnxruntime"]["speed_vs_torch"] == pytest.approx(
        results["torch"]["median_s"] / results["onnxruntime"]["median_s"]
    )

    scaled = {s["backend"]: s for s in doc["thread_scaling"]}
    assert set(scaled) == {"c", "torch", "c-fused", "compiled", "compiled-winograd", "onnxruntime"}
    for name, s in scaled.items():
        t1, t2 = results[f"{name}@1t"]["median_s"], results[name]["median_s"]
        assert s["threads"] == 2
        assert s["parallel_efficiency"] == pytest.approx(t1 / (2 * t2))
        assert s["speedup"] == pytest.approx(t1 / t2)
    json.dumps(doc, allow_nan=False)  # what --json writes

    md = report.markdown(doc)
    assert "| onnxruntime |" in md and "Thread scaling" in md
    eff = f"{scaled['onnxruntime']['parallel_efficiency']:.2f}"
    assert any(
        line.startswith("| resnet18 n1 | onnxruntime |") and line.rstrip(" |").endswith(eff) for line in md.splitlines()
    )
    from rich.console import Console

    console = Console(width=200, record=True)
    report.print_run(doc, console)
    text = console.export_text()
    assert "Thread scaling" in text and "onnxruntime@1t" in text


def test_onnxruntime_skipped_with_the_reason_when_not_installed(no_onnxruntime):
    cases = [_small_resnet()]
    chosen = targets.model_targets(targets.torch_targets(), cases, 1)
    assert [t.name for t in chosen] == ["torch", "onnxruntime"]  # one thread: no twins
    cells = runner.measure_case(cases[0], chosen, runner.Settings(threads=1, check=False, **QUICK))
    ort = next(c for c in cells if c.backend == "onnxruntime")
    assert ort.status == "skipped" and "onnxruntime is not installed" in ort.reason
    assert next(c for c in cells if c.backend == "torch").status == "unchecked"


def test_onnxruntime_only_on_whole_networks():
    from fastconv.bench.suites import get_suite

    conv = get_suite("quick").cases()[0]
    assert targets.model_targets(["t"], [conv], 2) == ["t"]
    why = onnxruntime_target.OnnxRuntimeTarget().skip_reason(conv)
    assert why is not None and ("whole networks" in why or "not installed" in why)


def test_scaling_names():
    assert scaling.split_name("onnxruntime@1t") == ("onnxruntime", 1)
    assert scaling.split_name("torch") == ("torch", None)
    assert scaling.torch_baseline("c@1t") == "torch@1t"
    assert scaling.torch_baseline("c") == "torch"


def test_resnet_command_has_an_onnxruntime_row(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastconv.bench import resnet_command

    out = tmp_path / "r.json"
    status = resnet_command.main(
        ["--arch", "resnet18", "--size", "32", "--backend", "c", "--threads", "1", "--repeat", "2", "--json", str(out)]
    )
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert status == 0
    assert rows["onnxruntime"]["max_rel_diff"] < 1e-4 and rows["onnxruntime"]["speed_vs_torch"] > 0


def test_resnet_command_says_why_without_onnxruntime(tmp_path, no_onnxruntime, capsys):
    from fastconv.bench import resnet_command

    out = tmp_path / "r.json"
    resnet_command.main(
        ["--arch", "resnet18", "--size", "32", "--backend", "c", "--threads", "1", "--repeat", "1", "--json", str(out)]
    )
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert "onnxruntime is not installed" in rows["onnxruntime"]["error"]
    assert "onnxruntime is not installed" in capsys.readouterr().out
