"""benchmarks/tools/suite_ceiling.py: the layer suite's best geometric mean at a share of the peak."""

import json
import math
import runpy
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "suite_ceiling.py"


def _row(problem, backend, share=None, speed=None):
    return {"problem": problem, "backend": backend, "status": "ok", "percent_of_peak": share, "speed_vs_torch": speed}


def test_bound_is_the_geometric_mean_of_share_over_torch(tmp_path, monkeypatch, capsys):
    run = {
        "results": [
            _row("n1_a_f32", "torch", share=50.0),
            _row("n1_b_f32", "torch", share=80.0),
            _row("n1_a_f32", "c", share=40.0, speed=0.8),
            _row("n1_b_f32", "c", share=80.0, speed=1.0),
            _row("n8_a_f32", "torch", share=90.0),
            _row("n8_a_f32", "c", share=45.0, speed=0.5),
        ]
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    monkeypatch.setattr(sys, "argv", ["suite_ceiling.py", str(path), "--shares", "100,80"])
    runpy.run_path(str(TOOL), run_name="__main__")
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 ") or line.startswith("| 8 ")
    ]
    assert len(lines) == 2
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    # batch 1: median share 80% (of 50, 80), c's own geomean sqrt(0.8 * 1.0), at 100%: sqrt(2 * 1.25)
    assert cells[:3] == ["1", "2", "80%"]
    assert cells[3] == f"{math.sqrt(0.8):.3f}x"
    assert cells[4] == f"{math.sqrt(100 / 50 * 100 / 80):.3f}x"
    assert cells[5] == f"{math.sqrt(80 / 50 * 80 / 80):.3f}x"
    cells8 = [c.strip() for c in lines[1].strip("|").split("|")]
    assert cells8[3:] == ["0.500x", f"{100 / 90:.3f}x", f"{80 / 90:.3f}x"]
