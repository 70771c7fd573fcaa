"""The one differential harness: run an op on a fastconv backend and on torch.nn.functional, compare.

A ``Case`` names the arrays' shapes and the op's keyword arguments.  ``check(case, backend)``
draws inputs from a seeded generator, runs fastconv with ``backend=`` and torch (in float64, so
the reference is more accurate than a float32 result can be), asserts the inputs unmodified and
the outputs equal within a tolerance that grows with the number of terms each output sums.
The same function serves the named edge cases and the Hypothesis-drawn problems of every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


def fastconv_backends() -> list[str]:
    """Every registered backend, available or not (tests skip with reason); the torch backend too --
    its wrapper is code of ours, checked against the same reference."""
    return dispatch.backends()


@dataclass(frozen=True)
class Case:
    """One op call: ``op`` name, input shape, and for conv the weight shape and options."""

    op: str
    name: str
    x: tuple
    w: tuple | None = None
    kwargs: dict = field(default_factory=dict)
    bias: bool = False
    residual: bool = False
    dtype: str = "float32"
    special: str | None = None  # "nan", "inf", "large", "neg": values that stress the kernel

    def __hash__(self):
        return hash((self.op, self.name, self.x, self.w, tuple(sorted(self.kwargs.items())), self.dtype))

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}-{self.dtype[-2:]}"


def make_inputs(case: Case, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dt = np.dtype(case.dtype)
    x = rng.standard_normal(case.x).astype(dt)
    if case.special == "nan" and x.size:
        x.flat[rng.integers(0, x.size, max(1, x.size // 7))] = np.nan
    elif case.special == "inf" and x.size:
        x.flat[rng.integers(0, x.size, max(1, x.size // 7))] = -np.inf
    elif case.special == "neg":
        x = -np.abs(x) - 1  # all negative: max pooling over padding must not see a 0
    elif case.special == "large":
        x *= 1e4
    elif case.special == "ties":  # few distinct values: equal maxima in most windows
        x = np.round(x)
    elif case.special == "all_neg_inf":  # every window -inf: the index is the first tap inside
        x[...] = -np.inf
    inputs = {"x": x}
    _EXTRA_INPUTS.get(case.op, lambda case, rng, dt, inputs: None)(case, rng, dt, inputs)
    return inputs


def _conv_inputs(case, rng, dt, inputs):
    inputs["w"] = rng.standard_normal(case.w).astype(dt)
    if case.bias:
        inputs["b"] = rng.standard_normal(case.w[0]).astype(dt)


def _linear_inputs(case, rng, dt, inputs):
    inputs["w"] = rng.standard_normal(case.w).astype(dt)
    if case.bias:
        inputs["b"] = rng.standard_normal(case.w[0]).astype(dt)


def _bn_inputs(case, rng, dt, inputs):
    c = case.x[1]
    inputs["mean"] = rng.standard_normal(c).astype(dt)
    inputs["var"] = rng.uniform(0.5, 2.0, c).astype(dt)
    if case.special == "zero_var":  # with eps=0: division by zero gives torch's inf/NaN
        inputs["var"][0] = 0
    if case.kwargs.get("affine", True):
        inputs["weight"] = rng.standard_normal(c).astype(dt)
        inputs["bias"] = rng.standard_normal(c).astype(dt)


#: The arrays besides the input that an op's case needs.
_EXTRA_INPUTS = {"conv2d": _conv_inputs, "batch_norm": _bn_inputs, "linear": _linear_inputs}


def require(backend: str, case: Case | None = None) -> None:
    """Skip unless ``backend`` runs here (and, given a case, has the function of its op)."""
    ok, reason = dispatch.status(backend)
    if not ok:
        pytest.skip(f"{backend} unavailable: {reason}")
    if case is None:
        return
    kernel = kernel_of(case)
    if not hasattr(dispatch.get_module(backend), kernel):  # an op this backend leaves to others
        pytest.skip(f"{backend} does not implement {kernel}")


def kernel_of(case: Case) -> str:
    """The backend function a case runs (max_pool2d with return_indices has its own)."""
    if case.op == "max_pool2d" and case.kwargs.get("return_indices"):
        return ops.TABLE[("max_pool2d_with_indices", "fwd")].kernel
    return ops.TABLE[(case.op, "fwd")].kernel


def _t(a):
    return None if a is None else torch.from_numpy(np.array(a, dtype=np.float64))


def torch_reference(case: Case, inputs: dict, residual=None):
    """torch.nn.functional's answer in float64 (and the updated running stats for batch norm).

    Called with the case's own keyword arguments, as a torch user would: the API-level reference,
    independent of how fastconv turns those arguments into a problem.
    """
    with torch.no_grad():
        special = _TORCH_CALLS.get(case.op)
        if special is not None:
            return special(case, inputs, residual)
        return getattr(F, case.op)(_t(inputs["x"]), **case.kwargs).numpy()


def _torch_conv(case, inputs, residual):
    k = dict(case.kwargs)
    x = _t(inputs["x"])
    mode = k.pop("padding_mode", "zeros")
    k.pop("activation", None)
    k.pop("algorithm", None)  # how fastconv computes it; torch picks its own
    if mode != "zeros":
        pad = k.pop("padding", 0)
        r, s = case.w[2:]
        dil = k.get("dilation", 1)
        dh, dw = (dil, dil) if isinstance(dil, int) else dil
        if pad == "same":
            th, tw = dh * (r - 1), dw * (s - 1)
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        elif pad == "valid":
            pads = (0, 0, 0, 0)
        else:
            ph, pw = (pad, pad) if isinstance(pad, int) else pad
            pads = (pw, pw, ph, ph)
        x = F.pad(x if x.dim() == 4 else x[None], pads, mode=mode)
        if len(case.x) == 3:
            x = x[0]
    y = F.conv2d(x, _t(inputs["w"]), _t(inputs.get("b")), **k)
    if residual is not None:
        y = y + _t(residual)
    act = case.kwargs.get("activation")
    if act is not None:
        name, params = (act, ()) if isinstance(act, str) else (act[0], tuple(act[1:]))
        y = getattr(F, name)(y, *params)
    return y.numpy()


def _torch_bn(case, inputs, residual):
    k = dict(case.kwargs)
    k.pop("affine", None)
    mean, var = _t(inputs["mean"]), _t(inputs["var"])
    try:
        y = F.batch_norm(_t(inputs["x"]), mean, var, _t(inputs.get("weight")), _t(inputs.get("bias")), **k)
    except ValueError as exc:  # torch 2.11 refuses eps=0, which 2.13 (and fastconv) accept
        if k.get("eps", 1e-5) <= 0:
            pytest.skip(f"torch {torch.__version__} has no reference for eps={k['eps']}: {exc}")
        raise
    return y.numpy(), mean.numpy(), var.numpy()


def _torch_linear(case, inputs, residual):
    return F.linear(_t(inputs["x"]), _t(inputs["w"]), _t(inputs.get("b"))).numpy()


def _torch_plain(case, inputs, residual):
    """An op whose result may be a tuple (values, indices), as NumPy arrays."""
    out = getattr(F, case.op)(_t(inputs["x"]), **case.kwargs)
    return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


_TORCH_CALLS = {
    "conv2d": _torch_conv,
    "batch_norm": _torch_bn,
    "linear": _torch_linear,
    "max_pool2d": _torch_plain,
    "adaptive_max_pool2d": _torch_plain,
}


def _kernel_terms(case: Case) -> int:
    ks = case.kwargs["kernel_size"]
    return ks * ks if isinstance(ks, int) else math.prod(ks)


#: Terms summed per output element, from a case's shapes (the tolerance grows with it); 1 if absent.
_REDUCTION = {
    "conv2d": lambda case: math.prod(case.w[1:]),
    "max_pool2d": _kernel_terms,
    "avg_pool2d": _kernel_terms,
    "adaptive_avg_pool2d": lambda case: math.prod(case.x[-2:]),
    "adaptive_max_pool2d": lambda case: 1,
    "linear": lambda case: max(1, case.w[1]),
    "batch_norm": lambda case: math.prod(case.x) // case.x[1],
}


def assert_close(actual, expected, case: Case, what: str = "output") -> None:
    if isinstance(expected, tuple):  # (values, indices): indices are exact, torch's choice on ties and NaN
        assert isinstance(actual, tuple) and len(actual) == 2, f"{case.id}: expected (output, indices)"
        assert_close(actual[0], expected[0], case, what)
        assert actual[1].dtype == np.int64, f"{case.id}: indices dtype {actual[1].dtype} != int64"
        np.testing.assert_array_equal(actual[1], expected[1], err_msg=f"{case.id}: indices differ from torch")
        return
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{case.id}: {what} shape {actual.shape} != torch {expected.shape}"
    assert actual.dtype == np.dtype(case.dtype), f"{case.id}: {what} dtype {actual.dtype} != {case.dtype}"
    rtol = ops.tolerance(case.dtype, _REDUCTION.get(case.op, lambda case: 1)(case))
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=f"{case.id}: {what} differs from torch"
    )


def run_fastconv(case: Case, inputs: dict, backend: str, residual=None, running=None):
    k = dict(case.kwargs)
    args = _API_ARGS.get(case.op, lambda inputs, k, residual, running: ((), k))(inputs, k, residual, running)
    return getattr(fastconv, case.op)(inputs["x"], *args[0], backend=backend, **args[1])


def _conv_args(inputs, k, residual, running):
    return (inputs["w"], inputs.get("b")), {**k, "residual": residual}


def _bn_args(inputs, k, residual, running):
    k.pop("affine", None)
    return (*running, inputs.get("weight"), inputs.get("bias")), k


def _linear_args(inputs, k, residual, running):
    return (inputs["w"], inputs.get("b")), k


_API_ARGS = {"conv2d": _conv_args, "batch_norm": _bn_args, "linear": _linear_args}


def check(case: Case, backend: str, seed: int = 0) -> None:
    """Run ``case`` on ``backend`` and on torch; assert agreement and untouched inputs."""
    inputs = make_inputs(case, seed)
    residual = None
    if case.residual:
        out_shape = torch_reference(case, inputs).shape
        residual = np.random.default_rng(seed + 1).standard_normal(out_shape).astype(case.dtype)
        inputs["residual"] = residual
    before = {name: a.copy() for name, a in inputs.items()}
    running = (inputs["mean"].copy(), inputs["var"].copy()) if "mean" in inputs else None
    actual = run_fastconv(case, inputs, backend, residual, running)
    for name, a in inputs.items():
        np.testing.assert_array_equal(a, before[name], err_msg=f"{case.id}: {backend} modified {name}")
    if running is not None:
        expected, mean, var = torch_reference(case, inputs)
        assert_close(actual, expected, case)
        assert_close(running[0], mean, case, "running_mean")
        assert_close(running[1], var, case, "running_var")
    else:
        assert_close(actual, torch_reference(case, inputs, residual), case)


def assert_same_bits_on_thread_counts(call, counts=(1, 2, 3)) -> None:
    """``call()`` returns the same array, bit for bit, on every thread count: the c kernels sum
    each output element in one thread, in a fixed order.  (conftest restores the thread count.)"""
    outs = []
    for n in counts:
        fastconv.set_num_threads(n)
        outs.append(call())
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])
