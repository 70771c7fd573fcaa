"""The fastconv command: bench (run, compare, show, list), info, resnet routing, errors."""

import json
import subprocess
import sys

import pytest

from fastconv import cli
from fastconv.bench import schema

pytest.importorskip("torch")

TINY_RUN = [
    "bench",
    "--suite",
    "quick",
    "--problems",
    "small",
    "--backends",
    "naive,im2col",
    "--threads",
    "1",
    "--min-time",
    "0.01",
    "--min-repeats",
    "2",
    "--max-repeats",
    "2",
    "--no-peak",
]


pytestmark = pytest.mark.usefixtures("restore_wait_policy")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"run.{k}" for k in ("json", "csv", "md")}
    rc = cli.main(
        [*TINY_RUN, "--json", str(paths["json"]), "--csv", str(paths["csv"]), "--markdown", str(paths["md"]), "--quiet"]
    )
    assert rc == 0
    return paths


def test_bench_writes_valid_files(saved):
    doc = schema.load(saved["json"])
    assert doc["suite"]["name"] == "quick" and doc["threads"] == 1
    assert [p["label"] for p in doc["problems"]] == ["small 3x3 16 (overhead)"]
    assert {r["backend"] for r in doc["results"]} == {"naive", "im2col", "torch"}
    assert all(r["status"] == "ok" for r in doc["results"])
    assert saved["csv"].read_text().count("\n") == 4 and "| small 3x3 16" in saved["md"].read_text()


def test_bench_prints_the_table(capsys):
    assert cli.main([*TINY_RUN, "--backends", "im2col"]) == 0
    out = capsys.readouterr().out
    assert "small 3x3 16 (overhead)" in out and "im2col" in out and "torch" in out and "vs torch" in out


def test_compare_and_show(saved, capsys, tmp_path):
    assert cli.main(["bench", "compare", str(saved["json"]), str(saved["json"])]) == 0
    assert "Speed-up" in capsys.readouterr().out
    assert cli.main(["bench", "show", str(saved["json"])]) == 0
    assert "small 3x3 16" in capsys.readouterr().out
    md = tmp_path / "summary.md"
    assert cli.main(["bench", "show", str(saved["json"]), str(saved["json"]), "--markdown", str(md)]) == 0
    assert md.read_text().count("### Suite `quick`") == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli.main(["bench", "compare", str(saved["json"]), str(bad)]) == 2
    assert "not a fastconv benchmark run" in capsys.readouterr().err


def test_list_and_info(capsys):
    assert cli.main(["bench", "list", "resnet50"]) == 0
    assert "stem 7x7/2 3>64" in capsys.readouterr().out
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {b["name"] for b in info["backends"]} >= {"naive", "im2col", "torch"}
    assert info["threads"]["fastconv"] >= 1 and info["versions"]["numpy"]
    assert cli.main(["info"]) == 0
    assert "Backends" in capsys.readouterr().out


def test_bad_arguments(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--threads", "0"])
    assert cli.main(["bench", "--problems", "no-such-layer"]) == 2
    assert cli.main(["bench", "--backends", "nope", "--problems", "small"]) == 2
    assert "nope" in capsys.readouterr().err


def test_device_cuda_without_gpu_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert cli.main([*TINY_RUN, "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_resnet_routes_to_the_models_command(monkeypatch, capsys):
    import types

    monkeypatch.setitem(sys.modules, "fastconv.bench.resnet_command", None)
    assert cli.main(["resnet", "--help"]) == 2
    assert "not available" in capsys.readouterr().err
    seen = []
    fake = types.ModuleType("fastconv.bench.resnet_command")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "fastconv.models", types.ModuleType("fastconv.models"))
    monkeypatch.setitem(sys.modules, "fastconv.bench.resnet_command", fake)
    assert cli.main(["resnet", "infer", "--batch", "2"]) == 0
    assert seen == [["infer", "--batch", "2"]]


def test_python_dash_m_and_help():
    proc = subprocess.run([sys.executable, "-m", "fastconv", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "fastconv bench" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "fastconv", "bench", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--suite" in proc.stdout and "2 FLOPs per multiply-add" in proc.stdout


def test_resnet_json_is_a_benchmark_run(tmp_path, capsys):
    path = tmp_path / "resnet.json"
    argv = [
        "resnet",
        "--arch",
        "resnet18",
        "--size",
        "32",
        "--num-classes",
        "10",
        "--backend",
        "im2col",
        "--repeat",
        "2",
        "--json",
        str(path),
    ]
    assert cli.main(argv) == 0
    doc = schema.load(path)
    assert doc["command"] == "resnet" and doc["problems"][0]["op"] == "model"
    statuses = {r["backend"]: r["status"] for r in doc["results"]}
    assert statuses.pop("onnxruntime", "ok") in ("ok", "skipped")  # a baseline when installed
    assert statuses == {"im2col": "ok", "torch": "ok"}
    assert cli.main(["bench", "show", str(path)]) == 0
    assert cli.main(["bench", "compare", str(path), str(path)]) == 0
    assert "resnet18 32x32" in capsys.readouterr().out


def test_version_list_errors_and_optional_dependencies(capsys, monkeypatch, tmp_path):
    from fastconv import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastconv {__version__}"
    assert cli.main(["bench", "list", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'nosuch'" in err and "Traceback" not in err
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    out = tmp_path / "r.json"
    assert cli.main([*TINY_RUN, "--plot", str(tmp_path / "r.png"), "--json", str(out)]) == 2
    assert "needs matplotlib" in capsys.readouterr().err and not out.exists()  # refused before any work
    assert cli.main(["bench", "show", str(out), "--plot", str(tmp_path / "r.png")]) == 2


def test_torch_is_accepted_in_the_backend_list(tmp_path):
    path = tmp_path / "r.json"
    assert cli.main([*TINY_RUN, "--backends", "im2col,torch", "--json", str(path), "--quiet"]) == 0
    assert {r["backend"] for r in schema.load(path)["results"]} == {"im2col", "torch"}


def test_csv_has_one_device_column(saved):
    header = saved["csv"].read_text().splitlines()[0].split(",")
    assert header.count("device") == 1 and "direction" in header


def test_a_closed_pipe_is_no_traceback(monkeypatch, capsys):
    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise OSError("no file descriptor")

        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["info", "--json"]) == 141
    assert cli.main(["bench", "list"]) == 141


def test_direction_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--direction", "sideways"])
    assert exc.value.code == 2 and "directions" in capsys.readouterr().err
    assert cli.main(["bench", "--suite", "pool-bn", "--direction", "bwd_data"]) == 2
    assert "no bwd_data problems" in capsys.readouterr().err
    path = tmp_path / "r.json"
    assert cli.main([*TINY_RUN, "--direction", "fwd,bwd_data", "--json", str(path), "--quiet"]) == 0
    assert [p["direction"] for p in schema.load(path)["problems"]] == ["fwd", "bwd_data"]
