"""Concurrent calls from Python threads give identical results on every backend, and thread counts hold."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastconv
from harness import fastconv_backends, require

rng = np.random.default_rng(3)
X = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
W = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)


def _work(backend):
    return (
        fastconv.conv2d(X, W, padding=1, residual=X, activation="relu", backend=backend),
        fastconv.max_pool2d(X, 3, 2, 1, backend=backend),
        fastconv.batch_norm(X, np.zeros(16, np.float32), np.ones(16, np.float32), backend=backend),
    )


@pytest.mark.parametrize("backend", [b for b in fastconv_backends() if b != "naive"])
def test_concurrent_calls_are_identical(backend):
    require(backend, None)
    fastconv.set_num_threads(2)
    expected = _work(backend)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _work(backend), range(12)))
    for got in results:
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", [b for b in fastconv_backends() if b != "naive"])
def test_thread_count_does_not_change_results(backend):
    require(backend, None)
    out = []
    for n in (1, 2, 3):
        fastconv.set_num_threads(n)
        out.append(_work(backend))
    for got in out[1:]:
        for a, b in zip(got, out[0]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
