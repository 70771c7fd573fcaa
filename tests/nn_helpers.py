"""Shared helpers for the layer, model and interop tests: backends to run, tolerances, a spy backend."""

from __future__ import annotations

import contextlib
import types
from dataclasses import replace

import numpy as np
import pytest

from harness import fastconv_backends

from fastconv.ops import RTOL

from fastconv import dispatch
from fastconv.backends import im2col

#: Every registered backend (torch.nn.functional included), available or not: tests skip with the reason.
BACKENDS = [*fastconv_backends(), "torch"]


def require(backend: str) -> None:
    ok, reason = dispatch.status(backend)
    if not ok:
        pytest.skip(f"{backend} unavailable: {reason}")


def fast_backend() -> str:
    """The fastest backend available here, for the deep networks."""
    available = dispatch.available_backends()
    return next(b for b in ("c", "numba", "im2col") if b in available)


def assert_matches(actual, expected, dtype: str = "float32", what: str = "output", rtol: float | None = None):
    """harness.py's tolerance style for a whole network: rtol per dtype, atol = rtol x the output's scale.

    ``expected`` comes from torch, in float64 where affordable; the relative error reached is in
    the message, so a failure shows how far off it is.
    """
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {dtype}"
    rtol = RTOL[dtype] if rtol is None else rtol
    scale = max(1e-30, float(np.abs(expected).max()))
    rel = float(np.abs(actual - expected).max()) / scale
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=rtol,
        atol=rtol * scale,
        err_msg=f"{what} differs from torch (max relative error {rel:.2e})",
    )


@contextlib.contextmanager
def spy_backend(name: str = "spy"):
    """A backend that runs im2col and records (op, problem) for every call it receives."""
    calls = []

    def op(op_name):
        def run(p, *arrays):
            calls.append((op_name, p))
            if op_name == "conv2d":  # claims a fused epilogue, so it sees residual and activation
                x, w, b, res = arrays
                y = im2col.conv2d(replace(p, residual=False, activation=None), x, w, b, None)
                return dispatch.apply_epilogue(y, res, p.activation)
            return getattr(im2col, op_name)(p, *arrays)

        return run

    module = types.SimpleNamespace(
        NAME=name,
        available=lambda: (True, ""),
        supports=im2col.supports,
        FUSED_EPILOGUE=True,
        **{o: op(o) for o in dispatch.OPS},
    )
    dispatch.register_backend(module, name)
    try:
        yield calls
    finally:
        dispatch.unregister_backend(name)
