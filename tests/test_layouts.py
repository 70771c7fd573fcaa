"""Array forms: non-contiguous, Fortran-ordered, negative-stride, byte-swapped and read-only inputs give
the same result as a contiguous copy, on every backend; nothing is modified."""

import numpy as np
import pytest

import fastconv
from harness import fastconv_backends, require

rng = np.random.default_rng(7)
X = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
B = rng.standard_normal(4).astype(np.float32)


def _forms(a):
    yield "fortran", np.asfortranarray(a)
    yield "negative_strides", a[..., ::-1].copy()[..., ::-1]
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    yield "strided_view", view
    yield "byteswapped", a.astype(a.dtype.newbyteorder(">"))
    ro = a.copy()
    ro.flags.writeable = False
    yield "readonly", ro


CALLS = {
    "conv2d": lambda x, b: fastconv.conv2d(x, W, B, stride=2, padding=1, groups=2, backend=b),
    "max_pool2d": lambda x, b: fastconv.max_pool2d(x, 3, 2, 1, backend=b),
    "avg_pool2d": lambda x, b: fastconv.avg_pool2d(x, 3, 2, 1, ceil_mode=True, backend=b),
    "adaptive_avg_pool2d": lambda x, b: fastconv.adaptive_avg_pool2d(x, (4, 3), backend=b),
    "batch_norm": lambda x, b: fastconv.batch_norm(x, np.zeros(6, np.float32), np.ones(6, np.float32), backend=b),
    "relu": lambda x, b: fastconv.relu(x, backend=b),
}


@pytest.mark.parametrize("backend", fastconv_backends())
@pytest.mark.parametrize("op", list(CALLS))
def test_input_forms_match_contiguous(backend, op):
    require(backend, None)
    expected = CALLS[op](X, backend)
    for name, x in _forms(X):
        before = x.copy()
        actual = CALLS[op](x, backend)
        np.testing.assert_array_equal(actual, expected, err_msg=f"{op} on {name} input")
        np.testing.assert_array_equal(x, before)
        assert actual.dtype == np.float32 and actual.dtype.isnative


@pytest.mark.parametrize("backend", fastconv_backends())
def test_weight_bias_residual_forms(backend):
    require(backend, None)
    res = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    expected = fastconv.conv2d(X, W, B, 2, 1, groups=2, residual=res, activation="relu", backend=backend)
    for (name, w), (_, b), (_, r) in zip(_forms(W), _forms(B), _forms(res)):
        actual = fastconv.conv2d(X, w, b, 2, 1, groups=2, residual=r, activation="relu", backend=backend)
        np.testing.assert_array_equal(actual, expected, err_msg=name)


def test_batch_norm_updates_strided_running_stats_in_place():
    mean_store, var_store = np.zeros(12, np.float32), np.ones(12, np.float32)
    mean, var = mean_store[::2], var_store[::2]
    fastconv.batch_norm(X, mean, var, training=True, momentum=0.5)
    x64 = X.astype(np.float64)
    np.testing.assert_allclose(mean, 0.5 * x64.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    n = X.size // 6
    np.testing.assert_allclose(var, 0.5 + 0.5 * x64.var(axis=(0, 2, 3)) * n / (n - 1), rtol=1e-5)
    assert not mean_store[1::2].any() and (var_store[1::2] == 1).all()


def test_array_likes_are_accepted():
    y = fastconv.relu([[-1.0, 2.0]])
    assert y.dtype == np.float64 and y.tolist() == [[0.0, 2.0]]
