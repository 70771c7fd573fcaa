"""Backward problems: every backend that implements a backward function of the op table, checked
against central finite differences of fastconv's own forward pass (float64), so the gradients are
held to the forward's definition, not to a second copy of torch."""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest

from harness import fastconv_backends

from fastconv import dispatch, ops
from fastconv.problem import AdaptivePool2dProblem, BatchNormProblem, Conv2dProblem, Pool2dProblem, ReluProblem

F64 = "float64"
PROBLEMS = [
    Conv2dProblem(2, 3, 6, 5, 4, 3, 3, padding=(1, 1, 1, 1), bias=True, dtype=F64),
    Conv2dProblem(1, 4, 7, 7, 6, 3, 2, stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2, dtype=F64),
    Pool2dProblem("max", 2, 2, 7, 7, (3, 3), (2, 2), (1, 1), ceil_mode=True, dtype=F64),
    Pool2dProblem("max", 1, 3, 6, 5, (2, 2), (1, 2), dilation=(2, 1), dtype=F64),
    Pool2dProblem("avg", 2, 2, 7, 6, (3, 2), (2, 1), (1, 1), count_include_pad=False, dtype=F64),
    Pool2dProblem("avg", 1, 2, 5, 5, (2, 2), (2, 2), ceil_mode=True, divisor_override=3, dtype=F64),
    AdaptivePool2dProblem(2, 3, 7, 5, 3, 4, dtype=F64),
    BatchNormProblem(3, 2, (3, 2), training=True, dtype=F64),
    BatchNormProblem(2, 3, (4,), training=False, eps=1e-3, dtype=F64),
    ReluProblem((3, 4, 5), dtype=F64),
]
CASES = [
    (replace(p, direction=e.direction), e)
    for p in PROBLEMS
    for e in ops.entries("bwd_data") + ops.entries("bwd_weight")
    if e.op == p.op
]


def _backend_implements(name: str, entry) -> bool:
    ok, _ = dispatch.status(name)
    return ok and hasattr(dispatch.get_module(name), entry.kernel)


def _as_kernel_arrays(p, data: dict) -> dict:
    # Batch norm's kernels see (N, C, L); every other op's arrays go as they are.
    if isinstance(p, BatchNormProblem):
        return {k: (v.reshape(p.n, p.c, p.l) if k in ("x", "grad_output") else v) for k, v in data.items()}
    return data


def _forward(p, data: dict) -> np.ndarray:
    fwd = replace(p, direction="fwd")
    out = dispatch.run(fwd, *ops.get(fwd).arrays(_as_kernel_arrays(fwd, data)), backend="naive")
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("backend", fastconv_backends())
@pytest.mark.parametrize("p,entry", CASES, ids=[p.id for p, _ in CASES])
def test_gradient_matches_finite_differences(backend, p, entry):
    if not _backend_implements(backend, entry):
        pytest.skip(f"{backend} does not implement {entry.kernel}")
    rng = np.random.default_rng(0)
    data = entry.make(p, rng)
    if entry.op == "batch_norm":
        data["bias"] = np.zeros(p.c)  # the forward's bias: its gradient is the sum of grad_output
    got = dispatch.run(p, *ops.get(p).arrays(_as_kernel_arrays(p, data)), backend=backend)
    got = got if isinstance(got, tuple) else (got,)
    g = data["grad_output"]
    h = 1e-6
    for name, grad in zip(entry.wrt, got, strict=True):
        if data.get(name) is None:
            assert grad is None, f"{entry.kernel}: a gradient for the absent {name}"
            continue
        d = rng.standard_normal(data[name].shape)
        plus = _forward(p, {**data, name: data[name] + h * d})
        minus = _forward(p, {**data, name: data[name] - h * d})
        numeric = float(np.sum((plus - minus).reshape(g.shape) * g)) / (2 * h)
        analytic = float(np.sum(np.asarray(grad).reshape(d.shape) * d))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-6), f"{entry.kernel}: d/d{name}"


@pytest.mark.parametrize("backend", fastconv_backends())
@pytest.mark.parametrize("p,entry", CASES, ids=[p.id for p, _ in CASES])
def test_empty_batch_gives_empty_or_zero_gradients(backend, p, entry):
    if not _backend_implements(backend, entry) or isinstance(p, ReluProblem):
        pytest.skip("not implemented here, or no batch axis")
    p0 = replace(p, n=0)
    data = _as_kernel_arrays(p0, entry.make(p0, np.random.default_rng(0)))
    fn = getattr(dispatch.get_module(backend), entry.kernel)
    for out in (dispatch.run(p0, *entry.arrays(data), backend=backend), fn(p0, *entry.arrays(data))):
        for a in out if isinstance(out, tuple) else (out,):
            assert a is None or a.size == 0 or not np.any(a)


def test_every_backward_function_has_an_entry():
    kernels = {e.kernel for e in ops.entries() if e.direction != "fwd"}
    assert kernels == {
        "conv2d_bwd_data",
        "conv2d_bwd_weight",
        "max_pool2d_bwd_data",
        "avg_pool2d_bwd_data",
        "adaptive_avg_pool2d_bwd_data",
        "batch_norm_bwd_data",
        "relu_bwd_data",
    }
    assert {e.op for e in ops.entries()} == set(ops.OPS)
    assert all(e.wrt for e in ops.entries() if e.direction != "fwd")
    assert len(CASES) >= 10


def test_backends_without_a_backward_function_are_refused_with_the_reason():
    # A forward-only backend: the contract's forward functions, none of the backward ones.
    naive = dispatch.get_module("naive")
    forward_only = types.SimpleNamespace(
        NAME="forward_only",
        available=naive.available,
        supports=naive.supports,
        **{e.kernel: getattr(naive, e.kernel) for e in ops.entries("fwd")},
    )
    dispatch.register_backend(forward_only)
    try:
        p = replace(PROBLEMS[0], direction="bwd_data")
        with pytest.raises(dispatch.BackendError, match="does not implement conv2d_bwd_data"):
            dispatch.select(p, "forward_only")
        assert dispatch.select(replace(p, direction="fwd"), "forward_only") == ("forward_only", "requested")
    finally:
        dispatch.unregister_backend("forward_only")


def test_direction_and_device_in_the_id_and_rules():
    p = PROBLEMS[0]
    assert p.id == "n2_c3h6w5_k4r3s3_st1p1d1g1_bias_f64"
    assert replace(p, direction="bwd_weight").id == p.id + "_bwd_weight"
    assert replace(p, direction="bwd_data", device="cuda").id == p.id + "_bwd_data_cuda"
    with pytest.raises(ValueError, match="direction must be one of"):
        ReluProblem((2,), direction="bwd_weight")
    with pytest.raises(ValueError, match="device must be one of"):
        ReluProblem((2,), device="tpu")
    with pytest.raises(ValueError, match="no fused epilogue"):
        Conv2dProblem(1, 1, 3, 3, 1, 1, 1, activation="relu", direction="bwd_data")


def test_a_cuda_problem_is_refused_by_cpu_backends():
    p = ReluProblem((3,), device="cuda")
    with pytest.raises(dispatch.BackendError, match="runs on cpu arrays, not cuda arrays"):
        dispatch.select(p, "naive")
