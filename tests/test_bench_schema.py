"""The JSON schema (versioned, validated), and the reports built from it: tables, CSV, Markdown, plot, compare."""

import copy
import csv
import json

import pytest
from rich.console import Console

from fastconv.bench import report, runner, schema, suites, targets
from fastconv.problem import Conv2dProblem, Pool2dProblem

pytest.importorskip("torch")

CASES = [
    suites.Case("tiny conv", Conv2dProblem(1, 3, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1)), count=2),
    suites.Case("tiny pool", Pool2dProblem("max", 1, 3, 8, 8, (3, 3), (2, 2), (1, 1))),
]


@pytest.fixture(scope="module")
def doc():
    settings = runner.Settings(threads=1, min_time=0.001, min_repeats=3, max_repeats=3, sample_time=1e-5)
    run = runner.run_suite(
        {"name": "tiny", "version": 1, "description": "test", "dtype": "float32", "batch_sizes": None},
        CASES,
        targets.fastconv_targets() + targets.torch_targets(),
        settings,
        peak=False,
    )
    return schema.to_dict(run)


def test_document_is_valid_and_round_trips(doc, tmp_path):
    assert doc["schema"] == "fastconv-bench" and doc["schema_version"] == schema.SCHEMA_VERSION
    path = tmp_path / "run.json"
    schema.dump(doc, path)
    loaded = schema.load(path)
    assert loaded == json.loads(json.dumps(doc))
    assert [p["id"] for p in loaded["problems"]] == [c.id for c in CASES]
    assert loaded["problems"][0]["flops"] == CASES[0].problem.flops and loaded["problems"][1]["bytes"] > 0
    assert loaded["threads"] == 1
    names = {b["name"] for b in loaded["backends"]}
    assert {"naive", "im2col", "torch"} <= names
    for r in loaded["results"]:
        assert set(r) == set(schema.RESULT)


def test_every_registered_backend_has_a_cell(doc):
    from fastconv import dispatch

    expected = {n for n in dispatch.backends() if n != "torch"} | {"torch"}
    for case in CASES:
        assert {r["backend"] for r in doc["results"] if r["problem"] == case.id} == expected


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: d.pop("results"), "missing 'results'"),
        (lambda d: d["results"][0].update(status="fine"), "status"),
        (lambda d: d["results"][0].update(median_s="fast"), "median_s"),
        (lambda d: d["results"][0].update(backend="ghost"), "ghost"),
        (lambda d: d["problems"][0].pop("flops"), "flops"),
        (lambda d: d["peak"].update(threads=None), "peak.threads"),
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d.update(schema="other"), "not a fastconv benchmark run"),
    ],
)
def test_validation_names_what_is_wrong(doc, breakage, message):
    broken = copy.deepcopy(doc)
    breakage(broken)
    with pytest.raises(ValueError, match=message):
        schema.validate(broken)


def test_non_finite_errors_become_null(doc):
    run_like = copy.deepcopy(doc)
    assert schema._finite(float("inf")) is None and schema._finite(1.5) == 1.5
    json.dumps(run_like, allow_nan=False)  # the document as made has no inf/NaN


def test_load_rejects_non_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        schema.load(path)


def test_tables_csv_markdown(doc, tmp_path):
    console = Console(record=True, width=200)
    report.print_run(doc, console)
    text = console.export_text()
    assert "tiny conv" in text and "torch" in text and "too large" not in text
    assert "2 FLOPs per multiply-add" in text
    path = tmp_path / "run.csv"
    report.write_csv(doc, path)
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == len(doc["results"]) and {"label", "backend", "median_s", "speed_vs_torch"} <= set(rows[0])
    md = report.markdown(doc)
    assert "| tiny conv (x2) | 1 | GFLOP/s |" in md and "| backend | ran |" in md


def test_plot_writes_a_png(doc, tmp_path):
    pytest.importorskip("matplotlib")
    from fastconv.bench.plot import plot

    path = tmp_path / "run.png"
    plot(doc, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_flags_changes_beyond_noise(doc):
    faster = copy.deepcopy(doc)
    for r in faster["results"]:
        if r["median_s"] is not None:
            for key in ("median_s", "q1_s", "q3_s"):
                r[key] /= 1000  # far outside any interquartile range
    rows = report.compare_rows(doc, faster)
    assert rows and all(row["change"] == "faster" and row["speedup"] == pytest.approx(1000) for row in rows)
    assert all(row["change"] == "same" for row in report.compare_rows(doc, doc))
    other = copy.deepcopy(doc)
    other["threads"] = 8
    assert any("threads" in w for w in report.compare_warnings(doc, other))


def test_plot_marks_skipped_and_wrong_runs(doc, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from fastconv.bench import plot as plot_module

    marked = copy.deepcopy(doc)
    ranked = [r for r in marked["results"] if r["backend"] != "torch" and r["speed_vs_torch"]]
    ranked[0].update(status="wrong", speed_vs_torch=None, reason="bad")
    ranked[1].update(status="skipped", speed_vs_torch=None, median_s=None, throughput=None, reason="refused")
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    plot_module.plot(marked, tmp_path / "run.png")
    ratio_axis = drawn[0].axes[0]
    texts = [t.get_text() for t in ratio_axis.texts]
    assert "WRONG" in texts and "skip" in texts
    assert ratio_axis.get_yscale() == "linear" and ratio_axis.get_ylim()[0] == 0
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ratio_axis.lines)  # the torch line
    assert ratio_axis.get_legend() is not None and drawn[0]._suptitle is not None
    monkeypatch.undo()
    plt.close(drawn[0])


def test_version_1_documents_are_upgraded(doc):
    old = copy.deepcopy(doc)
    old["schema_version"] = 1
    for key in ("command", "load"):
        old.pop(key)
    old["settings"].pop("clock")
    for p in old["problems"]:
        p.pop("direction"), p.pop("device")
    for r in old["results"]:
        r.pop("spread"), r.pop("flags")
    new = schema.validate(old)
    assert new["schema_version"] == schema.SCHEMA_VERSION and new["command"] == "bench"
    assert {p["direction"] for p in new["problems"]} == {"fwd"} and not new["load"]["contended"]
    report.print_run(new, Console(record=True, width=200))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: d["problems"][0].update(direction="sideways"), "direction"),
        (lambda d: d["results"][0].update(flags=["slow"]), "flags"),
        (lambda d: d["load"].pop("verdict"), "load: missing 'verdict'"),
        (lambda d: d.pop("command"), "missing 'command'"),
    ],
)
def test_version_2_fields_are_checked(doc, breakage, message):
    broken = copy.deepcopy(doc)
    breakage(broken)
    with pytest.raises(ValueError, match=message):
        schema.validate(broken)
