"""The c backend's kernels for every instruction set, and its portable build.

FASTCONV_ISA caps the instruction set once per process (the kernel tables must not change under
a running program), so each lower ISA the CPU offers reruns the c backend's kernel tests in a
child process.  The portable build (-DFC_NO_X86, as on other architectures) is built into a
temporary copy of the package and checked on a few problems.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fastconv.backends import c as cbackend

ROOT = Path(__file__).resolve().parents[1]
#: What the child runs: the tile edges, the fused epilogue, the Winograd and channel-vector cases.
KERNEL_TESTS = [
    "tests/test_c_backend.py",
    "tests/test_algorithms.py",
    "tests/test_c_few_channels.py",
    "tests/test_c_blocked.py",
    "-k",
    "tile_edges or epilogue or winograd or kernel_name or kvec or prepacked or blocked",
]


def _needs_c():
    ok, reason = cbackend.available()
    if not ok:
        pytest.skip(f"c unavailable: {reason}")


def _child_isa(env: dict) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "from fastconv.backends import c; print(c.isa())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip()


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_forced_isa_passes_the_kernel_tests(isa):
    _needs_c()
    if os.environ.get("FASTCONV_ISA"):
        pytest.skip("already running under a forced instruction set")
    env = {**os.environ, "FASTCONV_ISA": isa}
    got = _child_isa(env)
    if got != isa:
        pytest.skip(f"this CPU cannot run the {isa} kernels (it gets {got})")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *KERNEL_TESTS],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


def test_forced_isa_is_read_once():
    _needs_c()
    code = (
        "import os; from fastconv.backends import c; a = c.isa(); os.environ['FASTCONV_ISA'] = 'generic'; "
        "print(a, c.isa())"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_ISA"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out[0] == out[1]


PORTABLE_CHECK = """
import numpy as np, torch, fastconv
from fastconv.backends import c
import fastconv._ckernels as m
assert "{where}" in m.__file__, m.__file__
assert c.isa() == "generic", c.isa()
rng = np.random.default_rng(0)
for (n, ch, h, w, k, r, pad, alg) in [(2, 5, 9, 11, 7, 3, 1, "auto"), (1, 17, 6, 5, 9, 1, 0, "gemm"),
                                      (1, 6, 10, 9, 5, 3, 1, "winograd"), (1, 4, 7, 7, 4, 3, 1, "direct")]:
    x = rng.standard_normal((n, ch, h, w), dtype=np.float32)
    wt = rng.standard_normal((k, ch, r, r), dtype=np.float32)
    b = rng.standard_normal(k, dtype=np.float32)
    res = rng.standard_normal((n, k, h + 2 * pad - r + 1, w + 2 * pad - r + 1), dtype=np.float32)
    y = fastconv.conv2d(x, wt, b, padding=pad, residual=res, activation="relu", algorithm=alg, backend="c")
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wt).double(),
                     torch.from_numpy(b).double(), padding=pad) + torch.from_numpy(res).double()).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
# The channel-vector kernel, forced: a strided, grouped problem with channel and pixel tails.
import os
os.environ["FASTCONV_F32_CONV"] = "kvec"
x = rng.standard_normal((2, 12, 11, 9), dtype=np.float32)
wt = rng.standard_normal((42, 6, 3, 3), dtype=np.float32)
y = fastconv.conv2d(x, wt, stride=2, padding=1, groups=2, activation="relu", backend="c")
ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wt).double(), stride=2,
                 padding=1, groups=2)).numpy()
np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
print("portable ok")
"""


def test_portable_build(tmp_path):
    """-DFC_NO_X86: no intrinsics, only the generic table; builds and computes correctly."""
    _needs_c()
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not (shutil.which(cc) or shutil.which("gcc")):
        pytest.skip("no C compiler")
    where = tmp_path / "lib"
    shutil.copytree(
        ROOT / "src" / "fastconv", where / "fastconv", ignore=shutil.ignore_patterns("_ckernels*", "__pycache__")
    )
    env = {**os.environ, "FASTCONV_PORTABLE": "1"}
    env.pop("FASTCONV_ISA", None)
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--force",
            "--build-lib",
            str(where),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert list((where / "fastconv").glob("_ckernels*")), build.stderr[-3000:]
    run = subprocess.run(
        [sys.executable, "-c", PORTABLE_CHECK.format(where=where)],
        env={**env, "PYTHONPATH": str(where)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "portable ok" in run.stdout
