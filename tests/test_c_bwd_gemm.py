"""The c backend's float32 backward GEMMs (weight: each mode; data: both routes), against torch.

The kernel picks a mode per problem (direct planes, packed im2col rows, swap for 1x1 layers, A
read in place for large 1x1 images, the channels-last copy for small images and few channels,
folded or not); FASTCONV_BWD_WEIGHT=direct|packed|cl|clfold forces one, so every shape here
runs through each, and FASTCONV_BWD_WEIGHT_PARTS the channels-last mode's pixel parts.  Shapes sit on the tile edges (channels around mr = 8/6/4,
output channels around the 16/32/48-wide panels) and cover groups, strides, dilation, padding
and non-finite inputs (which leave the direct mode for the portable kernel).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastconv.backends import c as cbackend
from fastconv.problem import Conv2dProblem

#: (n, c, h, w, k, r, s, stride, pad, dilation, groups)
SHAPES = [
    (2, 16, 9, 9, 24, 3, 3, 1, 1, 1, 1),
    (3, 64, 8, 8, 50, 1, 1, 1, 0, 1, 1),
    (2, 16, 11, 10, 32, 3, 3, 2, 1, 1, 1),
    (1, 32, 12, 12, 16, 3, 3, 1, 2, 2, 1),
    (2, 32, 10, 10, 64, 3, 3, 1, 1, 1, 4),
    (4, 8, 7, 7, 100, 3, 3, 1, 1, 1, 1),
    (2, 12, 9, 9, 32, 2, 3, 3, 0, 1, 2),
    (2, 5, 9, 9, 20, 3, 3, 1, 1, 1, 1),
    (2, 9, 6, 6, 112, 3, 3, 1, 1, 1, 1),
    (2, 16, 24, 24, 24, 1, 1, 1, 0, 1, 1),  # swap, dy read in place
    (2, 32, 24, 24, 16, 1, 1, 1, 0, 1, 1),  # direct 1x1, x read in place
    (2, 64, 24, 24, 16, 1, 1, 1, 0, 1, 2),
    (2, 64, 48, 48, 16, 1, 1, 2, 0, 1, 1),
    (2, 7, 23, 22, 17, 1, 1, 1, 0, 1, 1),
    (2, 3, 30, 29, 20, 7, 7, 2, 3, 1, 1),  # the stem's shape: 3 channels, folded rows
    (2, 3, 12, 12, 16, 3, 3, 1, 1, 2, 1),  # folded and dilated
    (3, 24, 7, 7, 40, 3, 3, 1, 1, 1, 1),  # small image: channels last, dy copied
    (1, 8, 17, 17, 32, 3, 3, 1, 1, 1, 1),  # dy read in place (17 x 17 >= 256 pixels)
]
MODES = ["auto", "direct", "packed", "cl", "clfold"]
#: Shapes the channels-last mode splits into pixel parts by itself (few panels).
PARTS_SHAPES = [(2, 3, 30, 29, 20, 7, 7, 2, 3, 1, 1), (4, 16, 16, 16, 24, 1, 1, 1, 0, 1, 1)]


def _needs_c():
    ok, reason = cbackend.available()
    if not ok:
        pytest.skip(f"c unavailable: {reason}")


def _check(shape, special=None, seed=0):
    n, c, h, w, k, r, s, st, pad, dil, g = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    if special == "inf":
        x[0, 0, 0, -1] = np.inf  # read only by taps that torch's sum also reaches
    if special == "nan":
        x[-1, -1, h // 2, w // 2] = np.nan
    p = Conv2dProblem(n, c, h, w, k, r, s, (st, st), (pad,) * 4, (dil, dil), g, "float32", bias=True)
    gy = rng.standard_normal(p.output_shape).astype(np.float32)
    gw, gb = cbackend.conv2d_bwd_weight(p, x, gy)
    tx, tw = torch.from_numpy(x), torch.zeros(p.weight_shape)
    ref = torch.ops.aten.convolution_backward(
        torch.from_numpy(gy), tx, tw, [k], [st, st], [pad, pad], [dil, dil], False, [0, 0], g, [False, True, True]
    )
    want = ref[1].numpy()
    scale = np.sqrt(n * p.oh * p.ow) * 4e-6 * max(1.0, float(np.nanmax(np.abs(np.where(np.isinf(want), 0, want)))))
    np.testing.assert_allclose(gw, want, rtol=0, atol=scale, equal_nan=True)
    assert np.array_equal(np.isnan(gw), np.isnan(want)) and np.array_equal(np.isinf(gw), np.isinf(want))
    np.testing.assert_allclose(gb, ref[2].numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bwd_weight_modes_match_torch(shape, mode, monkeypatch):
    _needs_c()
    if mode != "auto":
        monkeypatch.setenv("FASTCONV_BWD_WEIGHT", mode)
    _check(shape)


@pytest.mark.parametrize("special", ["inf", "nan"])
@pytest.mark.parametrize("mode", MODES)
def test_bwd_weight_non_finite_input(special, mode, monkeypatch):
    _needs_c()
    if mode != "auto":
        monkeypatch.setenv("FASTCONV_BWD_WEIGHT", mode)
    _check((2, 16, 9, 9, 24, 3, 3, 1, 1, 1, 1), special)


@pytest.mark.parametrize("parts", ["1", "3", "16"])
@pytest.mark.parametrize("shape", PARTS_SHAPES + SHAPES[:1], ids=lambda s: "x".join(map(str, s)))
def test_bwd_weight_pixel_parts(shape, parts, monkeypatch):
    """The channels-last mode's pixel parts (their sums added in order at the end), forced."""
    _needs_c()
    monkeypatch.setenv("FASTCONV_BWD_WEIGHT", "cl")
    monkeypatch.setenv("FASTCONV_BWD_WEIGHT_PARTS", parts)
    _check(shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", PARTS_SHAPES + SHAPES[4:6], ids=lambda s: "x".join(map(str, s)))
def test_bwd_weight_same_bits_on_any_thread_count(shape, mode, monkeypatch):
    """Every mode sums in an order fixed by the problem: 1, 2 and 3 threads give the same bits."""
    _needs_c()
    import fastconv

    if mode != "auto":
        monkeypatch.setenv("FASTCONV_BWD_WEIGHT", mode)
    n, c, h, w, k, r, s, st, pad, dil, g = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    p = Conv2dProblem(n, c, h, w, k, r, s, (st, st), (pad,) * 4, (dil, dil), g, "float32")
    gy = rng.standard_normal(p.output_shape).astype(np.float32)
    before = fastconv.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            fastconv.set_num_threads(t)
            results.append(cbackend.conv2d_bwd_weight(p, x, gy)[0])
    finally:
        fastconv.set_num_threads(before)
    for other in results[1:]:
        assert np.array_equal(results[0], other)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_bwd_gemms_on_other_kernel_tables(isa):
    """The AVX2 6x16 and portable 4x16 tables (FASTCONV_ISA is read once per process: a child
    runs them); on the portable one, every backward-data test and backward-weight's modes."""
    _needs_c()
    if cbackend.isa() not in ("avx512", "avx2") or os.environ.get("FASTCONV_ISA"):
        pytest.skip("needs an AVX2 machine and no forced ISA")
    env = {**os.environ, "FASTCONV_ISA": isa}
    both = "b_sources or thread_count or pixel_parts"
    tests = f"modes_match or non_finite or {both}" if isa == "avx2" else f"modes_match or {both}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            tests,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


#: Backward-data shapes beyond SHAPES: tasks of several channel blocks with a partial last one
#: and a reduction longer than one kc block (1x1 layers store their tiles, no col2im), strided
#: 1x1 layers with groups, and large images whose panels are split between tasks.
DATA_SHAPES = SHAPES + [
    (2, 9, 14, 14, 70, 3, 3, 2, 1, 1, 1),
    (2, 10, 15, 15, 17, 3, 3, 2, 0, 1, 1),
    (2, 200, 7, 7, 300, 1, 1, 1, 0, 1, 1),
    (3, 70, 12, 12, 40, 1, 1, 2, 0, 1, 2),
    (1, 24, 40, 40, 16, 3, 3, 2, 1, 1, 1),
    (2, 44, 9, 9, 520, 3, 3, 1, 1, 1, 1),
]


def _bwd_data(shape, seed=1, special=None):
    n, c, h, w, k, r, s, st, pad, dil, g = shape
    rng = np.random.default_rng(seed)
    wt = rng.standard_normal((k, c // g, r, s)).astype(np.float32)
    p = Conv2dProblem(n, c, h, w, k, r, s, (st, st), (pad,) * 4, (dil, dil), g, "float32")
    gy = rng.standard_normal(p.output_shape).astype(np.float32)
    if special == "inf":
        gy[0, -1, 0, 0] = np.inf
    if special == "nan":
        gy[-1, 0, -1, -1] = np.nan
    return p, wt, gy


@pytest.mark.parametrize("route", ["gemm", "forward"])
@pytest.mark.parametrize("special", [None, "inf", "nan"])
@pytest.mark.parametrize("shape", DATA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bwd_data_routes_match_torch(shape, special, route, monkeypatch):
    """Backward-data by the C GEMM + col2im (bwd_data_f32.c) and by the forward kernels, with
    non-finite gradients (which reach every input cell their taps read, as torch's)."""
    _needs_c()
    monkeypatch.setenv("FASTCONV_BWD_DATA", route)
    n, c, h, w, k, r, s, st, pad, dil, g = shape
    p, wt, gy = _bwd_data(shape, special=special)
    gx = cbackend.conv2d_bwd_data(p, gy, wt)
    ref = torch.ops.aten.convolution_backward(
        torch.from_numpy(gy),
        torch.zeros(p.input_shape),
        torch.from_numpy(wt),
        None,
        [st, st],
        [pad, pad],
        [dil, dil],
        False,
        [0, 0],
        g,
        [True, False, False],
    )[0].numpy()
    finite = np.isfinite(ref)
    scale = max(1.0, float(np.abs(ref[finite]).max()))
    np.testing.assert_allclose(gx[finite], ref[finite], rtol=0, atol=4e-6 * np.sqrt(k * r * s) * scale)
    assert np.array_equal(np.isnan(gx), np.isnan(ref)) and np.array_equal(np.isinf(gx), np.isinf(ref))
    assert np.array_equal(gx[np.isinf(ref)], ref[np.isinf(ref)])


@pytest.mark.parametrize("b_source", ["in_place", "copy"])
@pytest.mark.parametrize("shape", DATA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bwd_data_gemm_b_sources(shape, b_source, monkeypatch):
    """The GEMM's B rows read from grad_output in place (panels within one image; the last
    image's tail panels packed, not read past the end) or from a copy whose panels span images
    (FASTCONV_BWD_DATA_B forces one): the same gradient as the forward route's."""
    _needs_c()
    p, wt, gy = _bwd_data(shape, seed=3)
    monkeypatch.setenv("FASTCONV_BWD_DATA", "forward")
    want = cbackend.conv2d_bwd_data(p, gy, wt)
    monkeypatch.setenv("FASTCONV_BWD_DATA", "gemm")
    monkeypatch.setenv("FASTCONV_BWD_DATA_B", b_source)
    got = cbackend.conv2d_bwd_data(p, gy, wt)
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-6 * np.sqrt(p.k * p.r * p.s) * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("route", ["gemm", "forward"])
@pytest.mark.parametrize("shape", DATA_SHAPES[-6:], ids=lambda s: "x".join(map(str, s)))
def test_bwd_data_does_not_depend_on_thread_count(shape, route, monkeypatch):
    """Each input cell is summed by one task in a fixed order: 1 and 3 threads agree bit for bit."""
    _needs_c()
    from fastconv import threads

    monkeypatch.setenv("FASTCONV_BWD_DATA", route)
    p, wt, gy = _bwd_data(shape, seed=2)
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        one = cbackend.conv2d_bwd_data(p, gy, wt)
        threads.set_num_threads(3)
        three = cbackend.conv2d_bwd_data(p, gy, wt)
    finally:
        threads.set_num_threads(before)
    assert np.array_equal(one, three)


SCRATCH_RSS = """
import sys
import numpy as np
import fastconv
from fastconv.backends import _c_scratch, c
from fastconv.problem import Conv2dProblem
fastconv.set_num_threads(1)
n, cc, h, w, k, r, s, st, pad = map(int, sys.argv[1:10])
p = Conv2dProblem(n, cc, h, w, k, r, s, (st, st), (pad,) * 4, (1, 1), 1, "float32", direction="bwd_weight")
x, gy = np.ones(p.input_shape, np.float32), np.ones(p.output_shape, np.float32)
small = Conv2dProblem(1, 1, 4, 4, 1, 1, 1, (1, 1), (0,) * 4, (1, 1), 1, "float32", direction="bwd_weight")
c.conv2d_bwd_weight(small, np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 4, 4), np.float32))
def peak():  # VmHWM: this process image's peak
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
before = peak()
c.conv2d_bwd_weight(p, x, gy)
print(peak() - before - 4 * int(np.prod(p.weight_shape)), _c_scratch.conv2d_bytes(p, 1))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason="AddressSanitizer's allocator and shadow")
@pytest.mark.parametrize("shape", ["8 3 224 224 64 7 7 2 3", "8 512 7 7 512 3 3 1 1"], ids=["stem", "7x7"])
def test_bwd_weight_scratch_estimate_matches_the_kernel(shape):
    """The Python mirror of the channels-last mode's sizing (folded stem, small image with dy
    copied) is what the kernel takes: peak RSS of a fresh process, less the weight gradient."""
    _needs_c()
    proc = subprocess.run([sys.executable, "-c", SCRATCH_RSS, *shape.split()], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    grown, estimate = map(int, proc.stdout.split())
    assert estimate > 2**23
    assert 0.75 * estimate < grown < 1.25 * estimate + 2**22, (grown, estimate)
