"""The CUDA backends (cuda: Numba-CUDA kernels; cupy: im2col + cuBLAS) against torch.

On a machine with a CUDA device every named case runs on both backends and both cuda convolution
algorithms, with NumPy, torch CUDA, CuPy and Numba device arrays.  Without one, the cuda backend
still runs here, under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, which must be set
before Numba is imported, hence a child pytest process): the same kernels, on a bounded set of
small cases and a few Hypothesis-drawn problems.  The cupy tests then skip, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cases import all_cases, bn_relu_cases, conv_cases, pool_cases
from harness import check, make_inputs, require, torch_reference

import fastconv
from fastconv import dispatch
from fastconv.problem import ReluProblem

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if SIMULATED:  # simulated threads do NumPy scalar arithmetic, which warns where a GPU computes inf/NaN
    pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _status(name):
    return dispatch._status(dispatch._registry[name])


# The simulator runs each CUDA thread as a Python thread: these small cases keep it to well under
# a minute while touching every option (padding modes, same/valid, stride, dilation, groups,
# depthwise, residual + relu, NaN, unbatched, empty batch).
_SIM_CONV = {
    "basic3x3",
    "no_bias",
    "c1_k1",
    "image1x1_pad",
    "unbatched",
    "batch0",
    "stride_hw",
    "stride_gt_kernel",
    "dilation_hw",
    "same_even",
    "valid",
    "groups3_stride",
    "depthwise_mult2",
    "pointwise_pad",
    "reflect_asym",
    "replicate_same_even",
    "circular_pad_eq_size",
    "residual_relu",
    "relu_only",
    "residual_relu_unbatched",
    "nan_inputs",
}
_SIM_POOL = {
    "k3s2p1",
    "rect",
    "ceil_pad",
    "ceil_drop_last",
    "unbatched",
    "batch0",
    "negative",
    "nan",
    "neg_inf",
    "dilation_ceil",
    "no_pad_count_ceil",
    "divisor_neg",
    "divisor_ceil",
    "down",
    "up",
    "none",
    "uneven",
}


def _cases():
    if not SIMULATED:
        return all_cases()
    conv = [c for c in conv_cases() if c.name in _SIM_CONV]
    conv += [c for c in conv_cases("float64") if c.name in ("no_bias", "reflect_asym")]
    pool = [c for c in pool_cases() if c.name in _SIM_POOL]
    pool += [c for c in pool_cases("float64") if c.name in ("k3s2p1", "uneven")]
    bn_relu = [c for c in bn_relu_cases() if c.name not in ("channels17", "large", "input5d")]
    return conv + pool + bn_relu + [c for c in bn_relu_cases("float64") if c.name in ("train", "eval")]


CASES = _cases()


@pytest.fixture(params=["direct", "gemm"])
def algorithm(request, monkeypatch):
    from fastconv.backends import cuda

    monkeypatch.setattr(cuda, "conv_algorithm", lambda p: request.param)
    return request.param


@pytest.mark.parametrize("case", [c for c in CASES if c.op == "conv2d"], ids=lambda c: c.id)
def test_cuda_conv_algorithms(case, algorithm):
    require("cuda")
    check(case, "cuda")


@pytest.mark.parametrize("case", [c for c in CASES if c.op != "conv2d"], ids=lambda c: c.id)
def test_cuda_other_ops(case):
    require("cuda", case)
    check(case, "cuda")


def test_cuda_hypothesis_problems():
    """Problems drawn by the shared strategies (not in this repository), small enough for the simulator."""
    require("cuda")
    from hypothesis import given, settings
    from strategies import conv_cases as drawn_conv
    from strategies import pool_cases as drawn_pool

    @settings(max_examples=5 if SIMULATED else 100, deadline=None, derandomize=True)
    @given(drawn_conv(max_size=5) | drawn_pool(max_size=6, indices=False))
    def run(case):
        check(case, "cuda")

    run()


def _device_arrays():
    """(kind, to_device, to_host) for every CUDA array library usable here (none under the
    simulator, whose arrays do not carry the CUDA array interface)."""
    if SIMULATED:
        return []
    kinds = []
    from numba import cuda

    kinds.append(("numba", cuda.to_device, lambda a: a.copy_to_host()))
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        kinds.append(("torch", lambda a: torch.from_numpy(a).cuda(), lambda a: a.cpu().numpy()))
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount():
            kinds.append(("cupy", cupy.asarray, cupy.asnumpy))
    except Exception:
        pass
    return kinds


class _FakeDeviceArray:
    """Just the CUDA array interface: enough for validation and dispatch, never for a kernel."""

    def __init__(self, shape, typestr="<f4", strides=None):
        self.interface = {"shape": shape, "typestr": typestr, "data": (0, False), "strides": strides, "version": 3}

    @property
    def __cuda_array_interface__(self):
        return self.interface


@pytest.mark.parametrize("backend", ["cuda", "cupy"])
def test_device_arrays_stay_on_the_device(backend):
    """A device array in gives the same kind out, with torch's values; "auto" stays on the device."""
    require(backend)
    by_name = {c.name: c for c in conv_cases()}
    case = by_name["residual_relu"]
    inputs = make_inputs(case)
    rng = np.random.default_rng(1)
    expected_shape = torch_reference(case, inputs).shape
    residual = rng.standard_normal(expected_shape).astype(np.float32)
    expected = torch_reference(case, inputs, residual)
    for kind, to_dev, to_host in _device_arrays():
        if backend == "cupy" and kind == "numba" and SIMULATED:
            continue
        x, w, b, r = (to_dev(a) for a in (inputs["x"], inputs["w"], inputs["b"], residual))
        for name in (backend, None):
            y = fastconv.conv2d(x, w, b, padding=1, residual=r, activation="relu", backend=name)
            assert type(y).__module__.split(".")[0] == type(x).__module__.split(".")[0], (kind, type(y))
            np.testing.assert_allclose(to_host(y), expected, rtol=1e-4, atol=1e-4)
        pooled = fastconv.max_pool2d(x, 2, backend=backend)
        n, c, h, w_ = inputs["x"].shape
        assert tuple(pooled.shape) == (n, c, h // 2, w_ // 2)
        unbatched = fastconv.relu(x, backend=backend)
        assert tuple(unbatched.shape) == tuple(x.shape)


def test_cpu_backends_refuse_device_arrays():
    x = _FakeDeviceArray((1, 1, 4, 4))
    with pytest.raises(fastconv.BackendError, match="not cuda arrays"):
        fastconv.relu(x, backend="naive")
    if not (_status("cuda")[0] or _status("cupy")[0]):
        with pytest.raises(fastconv.BackendError, match="naive: runs on cpu arrays"):
            fastconv.max_pool2d(x, 2)  # "auto" considers only device backends


def test_device_arrays_are_validated():
    with pytest.raises(TypeError, match="weight has dtype float64 but input has dtype float32"):
        fastconv.conv2d(_FakeDeviceArray((1, 1, 4, 4)), _FakeDeviceArray((1, 1, 3, 3), "<f8"))
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        fastconv.relu(_FakeDeviceArray((3,), "<i4"))
    with pytest.raises(ValueError, match="input must be C-contiguous on the device"):
        fastconv.relu(_FakeDeviceArray((2, 3), "<f4", strides=(4, 8)))
    with pytest.raises(ValueError, match="bias must have shape"):
        fastconv.conv2d(_FakeDeviceArray((1, 1, 4, 4)), _FakeDeviceArray((2, 1, 3, 3)), _FakeDeviceArray((3,)))


def test_auto_keeps_numpy_on_the_cpu():
    x = np.ones((1, 2, 4, 4), np.float32)
    p = ReluProblem(x.shape, "float32")
    name, _ = dispatch.select(p)
    assert name not in ("cuda", "cupy")


@pytest.mark.parametrize("backend", ["cuda", "cupy"])
def test_unavailable_backends_say_why(backend):
    ok, reason = _status(backend)
    assert ok or reason, f"{backend} is unavailable without a reason"


def test_cuda_reports_a_numba_cuda_that_cannot_compile(monkeypatch):
    """numba-cuda 0.30 under NumPy 2.5 starts but fails at its first compile (np.row_stack is
    gone): availability loads what a compile loads, so the backend says so instead of failing
    in the first call."""
    pytest.importorskip("numba")
    from numba import cuda as numba_cuda

    from fastconv.backends import cuda

    if SIMULATED or not cuda._numba_cuda_installed():
        pytest.skip("needs numba's real CUDA target")
    real_import = cuda.importlib.import_module

    def broken(name, *args):
        if name == "numba.cuda.cudaimpl":
            raise AttributeError("module 'numpy' has no attribute 'row_stack'")
        return real_import(name, *args)

    monkeypatch.setattr(cuda, "_driver_library", lambda: True)
    monkeypatch.setattr(numba_cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda.importlib, "import_module", broken)
    ok, reason = cuda.available()
    assert not ok
    assert "cannot compile with NumPy" in reason and "row_stack" in reason


def test_cuda_backend_under_the_simulator():
    """Without a device, run this file's cuda tests in a child with the simulator switched on."""
    if SIMULATED:
        pytest.skip("already running under the simulator")
    if _status("cuda")[0]:
        pytest.skip("a CUDA device is present: the tests above ran on it")
    pytest.importorskip("numba.cuda", reason="numba's CUDA target is not installed")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            str(Path(__file__).resolve()),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
