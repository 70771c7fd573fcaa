"""Every backend's backward ops against torch's autograd, on the named cases and drawn problems.

The reference is autograd through torch.nn.functional's forward (padding modes through F.pad),
never a backend of ours.  float64 is held tight; float32 to the forward's tolerance, scaled by
the terms each gradient element sums.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backward_cases import BwdCase, _conv, all_cases
from harness import fastconv_backends, require

from fastconv import ops

F = torch.nn.functional
CASES = all_cases()
BACKWARD_FUNCTIONS = {
    "conv2d": ("conv2d_bwd_data", "conv2d_bwd_weight"),
    "max_pool2d": ("max_pool2d_bwd_data",),
    "avg_pool2d": ("avg_pool2d_bwd_data",),
    "adaptive_avg_pool2d": ("adaptive_avg_pool2d_bwd_data",),
    "batch_norm": ("batch_norm_bwd_data",),
    "relu": ("relu_bwd_data",),
}


def make_inputs(case: BwdCase, seed: int = 0) -> dict:
    p, rng = case.problem, np.random.default_rng(seed)
    dt = np.dtype(p.dtype)
    x = rng.standard_normal(p.input_shape).astype(dt)
    if case.special == "nan" and x.size:
        x.flat[rng.integers(0, x.size, max(1, x.size // 7))] = np.nan
        if p.op == "relu":
            x.flat[rng.integers(0, x.size, max(1, x.size // 7))] = 0.0  # relu's kink: torch passes no gradient
    elif case.special == "inf" and x.size:
        x.flat[rng.integers(0, x.size, max(1, x.size // 5))] = -np.inf
    elif case.special == "all_inf":
        x[...] = -np.inf
    elif case.special == "ties":
        x = rng.integers(0, 3, p.input_shape).astype(dt)  # many windows hold their max twice
    elif case.special == "neg":
        x = -np.abs(x) - 1
    elif case.special == "large":
        x *= 1e4
    inputs = {"x": x, "gy": rng.standard_normal(p.output_shape).astype(dt)}
    if p.op == "conv2d":
        inputs["w"] = rng.standard_normal(p.weight_shape).astype(dt)
    if p.op == "batch_norm":
        inputs["weight"] = rng.standard_normal(p.c).astype(dt)
        inputs["bias"] = rng.standard_normal(p.c).astype(dt)
        inputs["mean"] = rng.standard_normal(p.c).astype(dt)
        inputs["var"] = rng.uniform(0.5, 2.0, p.c).astype(dt)
    return inputs


def _leaf(a):
    return torch.from_numpy(a.copy()).requires_grad_(True)


def _backprop(out, gy, leaves) -> list[np.ndarray]:
    if out.numel():
        out.backward(torch.from_numpy(gy))
    return [
        np.zeros(t.shape, t.dtype == torch.float32 and np.float32 or np.float64) if t.grad is None else t.grad.numpy()
        for t in leaves
    ]


def reference(case: BwdCase, inputs: dict) -> dict:
    """{function name: torch autograd's gradients} for the case."""
    p, gy = case.problem, inputs["gy"]
    x = _leaf(inputs["x"])
    if p.op == "conv2d":
        w = _leaf(inputs["w"])
        b = _leaf(np.zeros(p.k, p.dtype)) if p.bias else None
        pt, pb, pl, pr = p.padding
        mode = "constant" if p.padding_mode == "zeros" else p.padding_mode
        y = F.conv2d(F.pad(x, (pl, pr, pt, pb), mode=mode), w, b, p.stride, 0, p.dilation, p.groups)
        gx, gw, *gb = _backprop(y, gy, [x, w] + ([b] if p.bias else []))
        return {"conv2d_bwd_data": gx, "conv2d_bwd_weight": (gw, gb[0] if p.bias else None)}
    if p.op == "max_pool2d":
        y = F.max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
    elif p.op == "avg_pool2d":
        y = F.avg_pool2d(x, p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override)
    elif p.op == "adaptive_avg_pool2d":
        y = F.adaptive_avg_pool2d(x, (p.oh, p.ow))
    elif p.op == "relu":
        y = F.relu(x)
    else:
        w, b = _leaf(inputs["weight"]), _leaf(inputs["bias"])
        running = [torch.from_numpy(inputs[k].copy()) for k in ("mean", "var")]
        y = F.batch_norm(x, *(running if not p.training else (None, None)), w, b, training=p.training, eps=p.eps)
        return {"batch_norm_bwd_data": tuple(_backprop(y, gy, [x, w, b]))}
    return {f"{p.op}_bwd_data": _backprop(y, gy, [x])[0]}


def call(module, name: str, case: BwdCase, inputs: dict):
    p, x, gy = case.problem, inputs["x"], inputs["gy"]
    fn = getattr(module, name)
    if name == "conv2d_bwd_data":
        return fn(p, gy, inputs["w"])
    if name in ("conv2d_bwd_weight", "max_pool2d_bwd_data"):
        return fn(p, x, gy)
    if name in ("avg_pool2d_bwd_data", "adaptive_avg_pool2d_bwd_data"):
        return fn(p, gy)
    if name == "relu_bwd_data":
        return fn(p, np.maximum(x, 0, where=~np.isnan(x), out=x.copy()), gy)
    if p.training:  # the statistics the training forward normalised with
        x64 = x.astype(np.float64).reshape(p.n, p.c, p.l)
        with warnings.catch_warnings():  # an empty batch: NaN statistics
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    else:
        mean, var = inputs["mean"], inputs["var"]
    return fn(p, x, gy, mean, var, inputs["weight"])


def terms(case: BwdCase, name: str) -> int:
    """Products summed per gradient element, for the tolerance."""
    p = case.problem
    if name == "conv2d_bwd_data":
        return p.kg * p.r * p.s
    if name == "conv2d_bwd_weight":
        return max(1, p.n * p.oh * p.ow)
    if name == "batch_norm_bwd_data":
        return max(1, p.count)
    return 1 if p.op == "relu" else p.reduction


def assert_close(actual, expected, case: BwdCase, name: str, what: str) -> None:
    if expected is None:
        assert actual is None, f"{case.id}: {name} gave a {what} where torch has none"
        return
    dtype = case.problem.dtype
    assert isinstance(actual, np.ndarray), f"{case.id}: {name} {what} is {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{case.id}: {name} {what} shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{case.id}: {name} {what} dtype {actual.dtype} != {dtype}"
    rtol = ops.tolerance(dtype, terms(case, name))
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=rtol,
        atol=rtol * scale,
        equal_nan=True,
        err_msg=f"{case.id}: {name} {what} differs from torch autograd",
    )


def check(case: BwdCase, backend: str, seed: int = 0) -> None:
    module = importlib.import_module(f"fastconv.backends.{backend}")
    inputs = make_inputs(case, seed)
    expected = reference(case, inputs)
    for name, want in expected.items():
        frozen = {k: v.copy() for k, v in inputs.items()}
        got = call(module, name, case, inputs)
        for k, v in inputs.items():
            np.testing.assert_array_equal(v, frozen[k], err_msg=f"{case.id}: {name} modified its input {k}")
        if isinstance(want, tuple):
            assert isinstance(got, tuple) and len(got) == len(want), f"{case.id}: {name} returned {type(got)}"
            for i, (a, e) in enumerate(zip(got, want)):
                assert_close(a, e, case, name, f"output {i}")
        else:
            assert_close(got, want, case, name, "gradient")


BACKENDS = [b for b in fastconv_backends() if b in ("naive", "im2col", "numba", "c", "torch")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_backward_matches_torch_autograd(backend, case):
    require(backend)
    check(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backward_function_exists(backend):
    module = importlib.import_module(f"fastconv.backends.{backend}")
    for names in BACKWARD_FUNCTIONS.values():
        for name in names:
            assert callable(getattr(module, name, None)), f"{backend} lacks {name}"


@st.composite
def conv_problems(draw) -> BwdCase:
    dtype = draw(st.sampled_from(["float32", "float64"]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = 1 if groups > 1 and draw(st.booleans()) else draw(st.integers(1, 4))
    kg = draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    if draw(st.booleans()):
        stride, padding = (1, 1), "same"
        need = [max(1, (d * (kk - 1) + 1) // 2 + 1) for d, kk in ((dh, r), (dw, s))]
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        need = [max(1, d * (kk - 1) + 1 - 2 * pd, pd + 1) for d, kk, pd in ((dh, r, padding[0]), (dw, s, padding[1]))]
    h, w = draw(st.integers(need[0], need[0] + 8)), draw(st.integers(need[1], need[1] + 8))
    n = draw(st.integers(0, 2))
    return _conv(
        "drawn",
        (n, groups * cg, h, w),
        (groups * kg, cg, r, s),
        dtype,
        stride,
        padding,
        (dh, dw),
        groups,
        draw(st.booleans()),
        mode,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_drawn_conv_backward_matches_torch_autograd(backend):
    require(backend)

    @settings(max_examples=max(5, settings.default.max_examples // 8))
    @given(case=conv_problems(), seed=st.integers(0, 2**16))
    def run(case, seed):
        check(case, backend, seed)

    run()
