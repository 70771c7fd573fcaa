"""Resources: memory stays flat over many calls, and Ctrl-C during a long call leaves the process usable.

(Forked children are in test_hardening.py.)  Every op in every direction (the backward ones
through ``fastconv.grad``) and conv2d's Winograd, where the backend has them.  Call counts are kept
small enough for make test; FASTCONV_RESOURCE_CALLS raises them (``make resources``: 10,000).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, grad

CALLS = int(os.environ.get("FASTCONV_RESOURCE_CALLS", "30"))
#: The plain-Python reference and the torch wrapper are slow per call: fewer of them.
SLOW = {"naive": 10, "torch": 4}
#: Calls before measuring: JIT, thread pools, caches (the Winograd filter cache: 1 entry here).
WARMUP = int(os.environ.get("FASTCONV_RESOURCE_WARMUP", "5"))
rng = np.random.default_rng(0)
X = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
W = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
STATS = np.zeros(4, np.float32), np.ones(4, np.float32)
GY = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)  # conv2d's output gradient (padding 1)
GP = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)  # pooling's (3, 2, 1)
GA = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)  # adaptive pooling's (3, 5)
W3 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)

OPS = {
    "conv2d": lambda b: fastconv.conv2d(X, W, padding=1, groups=2, activation="relu", backend=b),
    "max_pool2d": lambda b: fastconv.max_pool2d(X, 3, 2, 1, backend=b),
    "avg_pool2d": lambda b: fastconv.avg_pool2d(X, 3, 2, 1, backend=b),
    "adaptive_avg_pool2d": lambda b: fastconv.adaptive_avg_pool2d(X, (3, 5), backend=b),
    "batch_norm": lambda b: fastconv.batch_norm(X, *STATS, backend=b),
    "relu": lambda b: fastconv.relu(X, backend=b),
    "conv2d winograd": lambda b: fastconv.conv2d(X, W3, padding=1, algorithm="winograd", backend=b),
    "conv2d bwd_data": lambda b: grad.conv2d_input(X.shape, W, GY, padding=1, groups=2, backend=b),
    "conv2d bwd_weight": lambda b: grad.conv2d_weight(X, W.shape, GY, padding=1, groups=2, backend=b),
    "max_pool2d bwd_data": lambda b: grad.max_pool2d_input(X, GP, 3, 2, 1, backend=b),
    "avg_pool2d bwd_data": lambda b: grad.avg_pool2d_input(X.shape, GP, 3, 2, 1, backend=b),
    "adaptive_avg_pool2d bwd_data": lambda b: grad.adaptive_avg_pool2d_input(X.shape, GA, backend=b),
    "batch_norm bwd_data": lambda b: grad.batch_norm_input(X, X, training=True, backend=b),
    "relu bwd_data": lambda b: grad.relu_input(np.maximum(X, 0), X, backend=b),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available():
    return [b for b in dispatch._registry if dispatch._status(dispatch._registry[b])[0]]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("backend", _available())
def test_rss_flat_over_many_calls(backend):
    """No op leaks: after a warm-up (JIT, thread pools, caches), CALLS more calls of every op
    grow the resident set by less than 16 MiB (one leaked output per call would be far more).
    Ops the backend refuses (BackendError: no Winograd, no backward kernel) are left out."""
    ops = []
    for name, op in OPS.items():
        try:
            for _ in range(WARMUP):
                op(backend)
        except dispatch.BackendError:
            continue
        ops.append(name)
    assert "conv2d" in ops and "relu" in ops, ops
    calls = max(5, CALLS // SLOW.get(backend, 1))
    start = _rss()
    for _ in range(calls):
        for name in ops:
            OPS[name](backend)
    grown = _rss() - start
    print(f"{backend}: {calls} calls of each of {len(ops)} ops ({', '.join(ops)}), RSS grew {grown / 2**20:.1f} MiB")
    assert grown < 16 * 2**20, f"{backend}: RSS grew {grown / 2**20:.1f} MiB over {calls} calls of each op"


INTERRUPTED = textwrap.dedent("""
    import signal, sys, time
    import numpy as np
    import fastconv
    # Python's own Ctrl-C handler, whatever the parent left: a shell starts background jobs
    # with SIGINT ignored, and the child would then never see the signal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    backend = sys.argv[1]
    x = np.ones((8, 64, 96, 96), np.float32)
    w = np.ones((64, 64, 3, 3), np.float32)
    print("ready", flush=True)
    try:
        for _ in range(1000):  # long: the parent interrupts it
            fastconv.conv2d(x, w, padding=1, backend=backend)
        sys.exit(3)
    except KeyboardInterrupt:
        pass
    small = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = fastconv.conv2d(small, np.ones((1, 1, 3, 3), np.float32), backend=backend)
    ok = np.array_equal(y, np.array([[[[45, 54], [81, 90]]]], np.float32))
    print("usable" if ok else "wrong", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT")
@pytest.mark.parametrize("backend", ["c", "im2col", "numba"])
def test_ctrl_c_during_a_long_call_leaves_the_process_usable(backend):
    if backend not in _available():
        pytest.skip(f"{backend} not available")
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{backend}: the process did not come back from Ctrl-C")
    assert proc.returncode == 0 and "usable" in out, out
