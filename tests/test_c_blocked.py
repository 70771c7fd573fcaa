"""The c backend's convolution on channel-blocked activations (compiled plans keep this layout
between layers): against torch.nn.functional through the shared harness (named edge cases and
Hypothesis), the layout conversions, the zero border it writes, and its refusals.
tests/test_c_isa.py reruns the kernel cases under every instruction set the CPU can force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconv import api
from fastconv.backends import c as cbackend
from fastconv.problem import AdaptivePool2dProblem, Conv2dProblem, Pool2dProblem
from harness import Case, assert_close, assert_same_bits_on_thread_counts, make_inputs, torch_reference


def _needs_c():
    ok, reason = cbackend.available()
    if not ok:
        pytest.skip(f"c unavailable: {reason}")


def _lanes() -> int:
    _needs_c()
    return cbackend.blocked_lanes()


def _problem(case: Case, bias: bool, activation) -> Conv2dProblem:
    kw = case.kwargs
    stride = kw.get("stride", 1)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    dilation = kw.get("dilation", 1)
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    pads = api._conv_padding(kw.get("padding", 0), case.w[2], case.w[3], dilation, stride)
    return Conv2dProblem(
        *case.x, case.w[0], case.w[2], case.w[3], stride, pads, dilation, 1, "float32",
        bias=bias, residual=case.residual, activation=activation,
    )  # fmt: skip


def run_blocked(case: Case, seed: int = 0, extra=(0, 0, 0), winograd: bool = False, in_place: bool = False):
    """(fastconv's answer through the blocked kernel, torch's answer) for ``case``: the inputs
    converted to the blocked layout (with ``extra`` border pixels beyond the needed ones on the
    input, residual and output), one kernel call, the output converted back.  ``winograd``: the
    Winograd kernel on blocked activations instead of the direct one.  ``in_place``: the output
    written over the residual (its buffer, with the output's border), as compiled plans do."""
    from dataclasses import replace

    inputs = make_inputs(case, seed)
    activation = case.kwargs.get("activation")
    p = _problem(case, case.bias, activation)
    if winograd:
        p = replace(p, algorithm="winograd")
    residual = None
    if case.residual:
        residual = np.random.default_rng(seed + 1).standard_normal(p.output_shape).astype(np.float32)
    xb, rb, yb = cbackend.blocked_border(p) + extra[0], extra[1], extra[2]
    x = np.full(cbackend.blocked_shape(p.input_shape, xb), np.nan, np.float32)  # the border must be written
    cbackend.to_blocked(inputs["x"], xb, x)
    r = None
    if residual is not None:
        r = np.full(cbackend.blocked_shape(p.output_shape, rb), np.nan, np.float32)
        cbackend.to_blocked(residual, rb, r)
    y = np.full(cbackend.blocked_shape(p.output_shape, yb), np.nan, np.float32)
    if in_place:
        assert r is not None, "in place needs a residual"
        rb = yb
        y = np.zeros(cbackend.blocked_shape(p.output_shape, yb), np.float32)
        cbackend.to_blocked(residual, yb, y)
        r = y
    w = cbackend.winograd_blocked_transform(p, inputs["w"]) if winograd else cbackend.blocked_weights(p, inputs["w"])
    call = cbackend.BlockedConvCall(p, w, inputs.get("b"), y, xb, rb, yb)
    assert call(x, r) is y
    inner = np.zeros(y.shape, bool)
    inner[:, :, yb : y.shape[2] - yb, yb : y.shape[3] - yb] = True
    assert not y[~inner].any() and not np.isnan(y[~inner]).any(), f"{case.id}: the output border is not zero"
    out = np.empty(p.output_shape, np.float32)
    cbackend.from_blocked(y, p.output_shape, yb, out)
    return out, torch_reference(case, inputs, residual)


def _cases(lanes: int) -> list[Case]:
    L = lanes
    relu = {"activation": "relu"}
    return [
        Case("conv2d", "blocked-3x3", (1, L, 5, 5), (L, L, 3, 3), {"padding": 1, **relu}, bias=True),
        Case("conv2d", "blocked-1x1", (2, 4 * L, 14, 14), (8 * L, 4 * L, 1, 1), {}),
        # Output rows of 1 to 15 pixels: whole and partial tiles of every table.
        *[
            Case("conv2d", f"blocked-row{w}", (1, L, 3, w), (3 * L, L, 3, 3), {"padding": 1, **relu}, bias=True)
            for w in (1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 28)
        ],
        # Output channels: 1 to 9 vectors, so every group size of every table, partial last groups.
        *[Case("conv2d", f"blocked-k{v}", (1, L, 6, 6), (v * L, L, 1, 1), {}, bias=True) for v in range(1, 10)],
        # Several reduction blocks (partial sums left in the output between them), with residual: at
        # least two on every table (blocks of 128-256 steps, 1024 for AVX2's 1x1 filters, isa.c: 8-128
        # channel blocks in a 1x1 layer, 1-3 in a 3x3 one).
        Case("conv2d", "blocked-deep1x1", (1, 130 * L, 7, 7), (2 * L, 130 * L, 1, 1), relu, bias=True, residual=True),
        Case(
            "conv2d", "blocked-deep3x3", (2, 5 * L, 6, 9), (5 * L, 5 * L, 3, 3), {"padding": 1, **relu}, residual=True
        ),
        Case(
            "conv2d",
            "blocked-stride2",
            (3, 2 * L, 15, 13),
            (3 * L, 2 * L, 3, 3),
            {"stride": 2, "padding": 1},
            residual=True,
        ),
        Case("conv2d", "blocked-1x1s2", (2, L, 11, 11), (9 * L, L, 1, 1), {"stride": 2, **relu}, bias=True),
        Case("conv2d", "blocked-dilated", (1, 2 * L, 9, 9), (L, 2 * L, 3, 3), {"padding": 2, "dilation": 2, **relu}),
        Case("conv2d", "blocked-7x7s2", (1, L, 8, 8), (2 * L, L, 7, 7), {"stride": 2, "padding": 3, **relu}, bias=True),
        Case("conv2d", "blocked-rect", (1, L, 6, 10), (L, L, 1, 3), {"padding": (0, 1), "stride": (1, 2)}),
        Case("conv2d", "blocked-same", (1, L, 6, 7), (L, L, 2, 4), {"padding": "same"}, bias=True),
        Case(
            "conv2d", "blocked-1x1plane", (1, 3 * L, 1, 1), (2 * L, 3 * L, 3, 3), {"padding": 1, **relu}, residual=True
        ),
        Case("conv2d", "blocked-nopad", (2, L, 5, 6), (L, L, 3, 3), {}, bias=True),
        # Rows whose filter reads only padding (the first and last output rows: every tap skipped,
        # the sums still started, carried and finished with bias, residual and relu), and rows
        # that skip some of a tall dilated filter's taps, over several channel blocks.
        Case("conv2d", "blocked-padrows", (2, 2 * L, 2, 5), (L, 2 * L, 3, 3), {"padding": 3, **relu}, True, True),
        Case("conv2d", "blocked-tall", (1, 3 * L, 9, 4), (2 * L, 3 * L, 5, 2), {"padding": (4, 1), "dilation": (2, 1)}),
        Case("conv2d", "blocked-nan", (1, L, 5, 5), (2 * L, L, 3, 3), {"padding": 1, **relu}, special="nan"),
        # Weights over the 640 KB a set of groups shares (tasks of one group each), a partial last
        # group of output vectors and a partial last reduction block.
        Case("conv2d", "blocked-wide", (1, 17 * L, 5, 5), (17 * L, 17 * L, 3, 3), {"padding": 1, **relu}, True, True),
        # 16 output vectors: on AVX2 (3-vector tiles) the last four make two groups of two
        # (blocked_split_tail), in a set of groups sharing its weights and, past 640 KB, alone.
        Case("conv2d", "blocked-split", (2, 17 * L, 5, 6), (16 * L, 17 * L, 3, 3), {"padding": 1, **relu}, True, True),
        Case("conv2d", "blocked-split-wide", (1, 19 * L, 5, 5), (16 * L, 19 * L, 3, 3), {"padding": 1}, True, True),
    ]


def test_blocked_kernel_cases():
    for case in _cases(_lanes()):
        actual, expected = run_blocked(case)
        assert_close(actual, expected, case)


def test_eager_calls_on_the_blocked_kernel(monkeypatch, caplog):
    """Eager NCHW calls that run on the blocked kernel, their input (and residual) converted to
    the blocked layout and the output back at the call ("auto" on 3x3 layers on AVX2;
    FASTCONV_F32_CONV=blocked forces it on any table): every kernel case against torch, and the
    route was the one that ran."""
    import logging

    from harness import check

    L = _lanes()
    monkeypatch.setenv("FASTCONV_F32_CONV", "blocked")
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    cbackend.clear_weight_cache()
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        for case in _cases(L):
            caplog.clear()
            check(case, "c")
            ran = [r.getMessage() for r in caplog.records if "ran conv2d" in r.getMessage()]
            assert ran and all("NCHW converted at the call" in m for m in ran), (case.id, ran)
    cbackend.clear_weight_cache()


def test_blocked_kernel_with_wider_borders_than_needed():
    L = _lanes()
    case = Case("conv2d", "blocked-borders", (2, 2 * L, 7, 9), (3 * L, 2 * L, 3, 3), {"padding": 1}, residual=True)
    for extra in [(1, 0, 0), (0, 2, 0), (0, 0, 3), (2, 1, 1)]:
        actual, expected = run_blocked(case, extra=extra)
        assert_close(actual, expected, case, f"borders +{extra}")


def _eager_blocked(case: Case, seed: int = 0) -> np.ndarray:
    """fastconv.conv2d on ``case`` with the inputs run_blocked uses, on the eager blocked route."""
    import fastconv

    inputs = make_inputs(case, seed)
    residual = None
    if case.residual:
        shape = _problem(case, case.bias, case.kwargs.get("activation")).output_shape
        residual = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
    return fastconv.conv2d(inputs["x"], inputs["w"], inputs.get("b"), residual=residual, backend="c", **case.kwargs)


def test_eager_blocked_calls_give_the_plans_bits(monkeypatch):
    """An eager call packs its weights a block at a time as its tasks go; a plan's step reads them
    packed once.  The packing only moves the weights, so both give the same bits, on any thread
    count (each thread packs into its own part of the workspace).  (The eager route writes the
    output over the residual, whose sums start from it, as a plan's in-place step does.)"""
    monkeypatch.setenv("FASTCONV_F32_CONV", "blocked")
    for case in _cases(_lanes()):
        planned = run_blocked(case, in_place=case.residual)[0]
        assert_same_bits_on_thread_counts(lambda case=case: _eager_blocked(case))
        np.testing.assert_array_equal(_eager_blocked(case), planned, err_msg=case.id)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_blocked_kernel_random_problems(data):
    L = _lanes()
    d = data.draw
    r, s = d(st.integers(1, 4)), d(st.integers(1, 4))
    dil = d(st.integers(1, 2))
    stride = d(st.integers(1, 3))
    pad = d(st.integers(0, 3))
    h = d(st.integers(max(1, dil * (r - 1) + 1 - 2 * pad), 16))
    w = d(st.integers(max(1, dil * (s - 1) + 1 - 2 * pad), 16))
    kwargs = {"stride": stride, "padding": pad, "dilation": dil}
    if d(st.booleans()):
        kwargs["activation"] = "relu"
    case = Case(
        "conv2d", "blocked-random", (d(st.integers(1, 3)), d(st.integers(1, 10)) * L, h, w),
        (d(st.integers(1, 10)) * L, 0, r, s), kwargs, bias=d(st.booleans()), residual=d(st.booleans()),
    )  # fmt: skip
    case = Case(case.op, case.name, case.x, (case.w[0], case.x[1], r, s), kwargs, case.bias, case.residual)
    extra = (d(st.integers(0, 2)), d(st.integers(0, 2)), d(st.integers(0, 2)))
    actual, expected = run_blocked(case, seed=d(st.integers(0, 1000)), extra=extra)
    assert_close(actual, expected, case)


def _winograd_cases(lanes: int) -> list[Case]:
    L = lanes
    relu = {"activation": "relu"}
    return [
        Case("conv2d", "wblocked-8", (1, L, 8, 8), (L, L, 3, 3), {"padding": 1}, bias=True),
        # Partial tiles on both edges, several images, residual, relu.
        Case("conv2d", "wblocked-edges", (3, 2 * L, 7, 10), (3 * L, 2 * L, 3, 3), {"padding": 1, **relu}, True, True),
        Case("conv2d", "wblocked-nopad", (2, L, 9, 6), (2 * L, L, 3, 3), relu, residual=True),
        Case("conv2d", "wblocked-1x1plane", (1, 2 * L, 1, 1), (L, 2 * L, 3, 3), {"padding": 1}, bias=True),
        Case("conv2d", "wblocked-14", (2, 4 * L, 14, 14), (2 * L, 4 * L, 3, 3), {"padding": 1, **relu}, True, True),
        # Enough tiles for each thread to take its own chunks (chunks crossing images), and a last
        # group of output vectors narrower than the kernel's tile.
        Case("conv2d", "wblocked-chunks", (3, L, 30, 26), (5 * L, L, 3, 3), {"padding": 1, **relu}, True, True),
        # More input channels than one pass of the products takes (the table's kc: 128-256), the
        # later passes adding to the sums left in M: with up to 128 x 128 channels the products run
        # turned around (channels in the vectors, conv_winograd_f32.c), beyond that as on NCHW.
        Case("conv2d", "wblocked-deep", (1, 130 * L, 4, 4), (2 * L, 130 * L, 3, 3), {"padding": 1}, bias=True),
        Case("conv2d", "wblocked-deep-narrow", (2, 40 * L, 5, 7), (L, 40 * L, 3, 3), {"padding": 1}, True, True),
    ]


def test_blocked_winograd_names_the_order_it_ran():
    """Up to 128 x 128 channels the blocked Winograd runs with the channels in the vectors, beyond
    that in the NCHW kernel's order; the kernel name FASTCONV_VERBOSE logs says which."""
    from dataclasses import replace

    L = _lanes()
    for c, k, channels in [(L, L, True), (128, 128, True), (128, 144, False), (130 * L, 2 * L, False)]:
        p = replace(_problem(Case("conv2d", "name", (1, c, 6, 6), (k, c, 3, 3), {"padding": 1}), False, None),
                    algorithm="winograd")  # fmt: skip
        x = np.zeros(cbackend.blocked_shape(p.input_shape, 1), np.float32)
        y = np.zeros(cbackend.blocked_shape(p.output_shape, 0), np.float32)
        w = np.zeros(p.weight_shape, np.float32)
        call = cbackend.BlockedConvCall(p, cbackend.winograd_blocked_transform(p, w), None, y, 1, 0, 0)
        call(x)
        name = call.call.ffi.string(call.kernel[0]).decode()
        assert name.startswith("conv2d f32 winograd F(4x4,3x3)") and "blocked activations" in name, name
        assert ("channels in vectors" in name) == channels, (c, k, name)


def test_blocked_winograd_gives_the_nchw_winograd_bits():
    """Winograd on blocked activations only reads and writes another layout: the same arithmetic
    in the same order as the NCHW Winograd kernel, so the same bits; and torch's answer within the
    harness's tolerance."""
    import fastconv

    for i, case in enumerate(_winograd_cases(_lanes())):
        for extra in [(0, 0, 0), (2, 1, 3)]:
            actual, expected = run_blocked(case, seed=i, extra=extra, winograd=True)
            assert_close(actual, expected, case, "blocked Winograd")
            inputs = make_inputs(case, i)
            residual = None
            if case.residual:
                residual = np.random.default_rng(i + 1).standard_normal(actual.shape).astype(np.float32)
            nchw = fastconv.conv2d(
                inputs["x"], inputs["w"], inputs.get("b"), residual=residual, backend="c", algorithm="winograd",
                **case.kwargs,
            )  # fmt: skip
            np.testing.assert_array_equal(actual, nchw, err_msg=f"{case.id} borders +{extra}")


def test_blocked_kernels_write_over_the_residual_in_place():
    """A compiled plan gives a convolution its residual's buffer as output when nothing reads the
    residual later: the sums start from the residual (before any partial sum of a later reduction
    block overwrites it), on the direct kernel and on Winograd."""
    L = _lanes()
    relu = {"activation": "relu"}
    direct = [
        Case("conv2d", "inplace-1x1", (2, 4 * L, 7, 7), (8 * L, 4 * L, 1, 1), relu, bias=True, residual=True),
        Case("conv2d", "inplace-deep1x1", (1, 40 * L, 7, 7), (2 * L, 40 * L, 1, 1), relu, True, True),
        Case("conv2d", "inplace-3x3", (2, 5 * L, 6, 9), (5 * L, 5 * L, 3, 3), {"padding": 1}, True, True),
        Case("conv2d", "inplace-stride2", (3, 2 * L, 15, 13), (3 * L, 2 * L, 3, 3), {"stride": 2, "padding": 1}, True, True),
    ]  # fmt: skip
    for i, case in enumerate(direct):
        for extra in [(0, 0, 0), (1, 0, 2)]:
            actual, expected = run_blocked(case, seed=i, extra=extra, in_place=True)
            assert_close(actual, expected, case, f"in place, borders +{extra}")
    for i, case in enumerate(c for c in _winograd_cases(L) if c.residual):
        for extra in [(0, 0, 0), (2, 0, 1)]:
            actual, expected = run_blocked(case, seed=i, extra=extra, winograd=True, in_place=True)
            apart, _ = run_blocked(case, seed=i, extra=extra, winograd=True)
            assert_close(actual, expected, case, f"Winograd in place, borders +{extra}")
            # Winograd reads each block's residual before writing it: the same bits as apart.
            np.testing.assert_array_equal(actual, apart, err_msg=case.id)
    assert_same_bits_on_thread_counts(lambda: run_blocked(direct[1], in_place=True)[0])


def test_a_residual_overlapping_the_output_otherwise_is_refused():
    L = _lanes()
    p = _problem(Case("conv2d", "overlap", (1, L, 4, 4), (L, L, 1, 1), {}, residual=True), False, None)
    shape0 = cbackend.blocked_shape(p.output_shape, 0)
    flat = np.zeros(int(np.prod(cbackend.blocked_shape(p.output_shape, 1))) + L, np.float32)
    y = flat[: flat.size - L].reshape(cbackend.blocked_shape(p.output_shape, 1))
    w = cbackend.blocked_weights(p, np.ones((L, L, 1, 1), np.float32))
    x = np.ones(cbackend.blocked_shape(p.input_shape, 0), np.float32)
    call = cbackend.BlockedConvCall(p, w, None, y, 0, 0, 1)
    n0 = int(np.prod(shape0))
    for res in (flat[:n0].reshape(shape0), flat[L : L + n0].reshape(shape0)):  # y's start, or shifted
        with pytest.raises(ValueError, match="overlaps its output"):
            call(x, res)
    res = np.full(shape0, 2.0, np.float32)  # apart from y: accepted
    assert np.array_equal(call(x, res)[0, 0, 1:-1, 1:-1], np.full((4, 4, L), L + 2.0, np.float32))


def test_blocked_results_do_not_depend_on_the_thread_count():
    L = _lanes()
    for case in (
        Case("conv2d", "threads-deep", (2, 20 * L, 7, 7), (9 * L, 20 * L, 1, 1), {"activation": "relu"}, True, True),
        Case("conv2d", "threads-3x3", (3, 2 * L, 14, 14), (5 * L, 2 * L, 3, 3), {"padding": 1}, residual=True),
    ):
        assert_same_bits_on_thread_counts(lambda case=case: run_blocked(case)[0])


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 3, 37), (1, 2, 2, 16), (3, 1, 1, 1)])
def test_layout_round_trip_and_border(shape):
    # Widths below, at and across the vector transposes' 16 pixels; border 0 runs whole planes as one row.
    L = _lanes()
    n, cb, h, w = shape
    x = np.random.default_rng(0).standard_normal((n, cb * L, h, w)).astype(np.float32)
    for border in (0, 1, 3):
        b = np.full(cbackend.blocked_shape(x.shape, border), np.nan, np.float32)
        cbackend.to_blocked(x, border, b)
        assert b.shape == (n, cb, h + 2 * border, w + 2 * border, L)
        np.testing.assert_array_equal(
            b[:, :, border : border + h, border : border + w].transpose(0, 1, 4, 2, 3).reshape(x.shape), x
        )
        assert np.count_nonzero(b) == np.count_nonzero(x)  # the border is zeros, not NaN
        back = np.full_like(x, np.nan)
        cbackend.from_blocked(b, x.shape, border, back)
        np.testing.assert_array_equal(back, x)


def _max_pool_cases(lanes: int) -> list[Case]:
    stem = dict(kernel_size=3, stride=2, padding=1)  # ResNet's: the SIMD kernel where the CPU has it
    return [
        Case("max_pool2d", "stem", (2, lanes, 12, 12), kwargs=stem),
        Case("max_pool2d", "stem-nan", (1, 2 * lanes, 9, 11), kwargs=stem, special="nan"),
        Case("max_pool2d", "stem-neg-inf", (1, lanes, 7, 7), kwargs=stem, special="inf"),
        Case("max_pool2d", "stem-wide-row", (1, lanes, 5, 70), kwargs=stem),  # several 32-column blocks
        Case("max_pool2d", "2x2", (1, lanes, 8, 7), kwargs=dict(kernel_size=2, stride=2)),
        Case(
            "max_pool2d",
            "ceil-dilated",
            (2, lanes, 10, 9),
            kwargs=dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
        ),  # fmt: skip
    ]


def _max_pool_problem(case: Case, x: np.ndarray) -> Pool2dProblem:
    k = case.kwargs
    _, _, kernel, stride, padding, dilation, ceil = api._pool_args(
        x, k["kernel_size"], k.get("stride"), k.get("padding", 0), k.get("dilation", 1), k.get("ceil_mode", False)
    )
    return Pool2dProblem("max", *x.shape, kernel, stride, padding, dilation, ceil)


@pytest.mark.parametrize("border", [0, 1, 2])
def test_blocked_max_pool_is_the_nchw_pool_converted(border):
    # Max pooling NCHW -> blocked (a plan's stem pool): the NCHW kernel's bits in the blocked
    # layout, the border zeros, and torch's answer.
    for case in _max_pool_cases(_lanes()):
        inputs = make_inputs(case)
        x = inputs["x"]
        p = _max_pool_problem(case, x)
        assert cbackend.blocked_pool_supports(p)

        def pooled():
            out = np.full(cbackend.blocked_shape(p.output_shape, border), np.nan, np.float32)
            return cbackend.max_pool2d_blocked_into(p, x, border, out)

        out = pooled()
        want = np.full_like(out, np.nan)
        cbackend.to_blocked(cbackend.max_pool2d_into(p, x, np.empty(p.output_shape, np.float32)), border, want)
        np.testing.assert_array_equal(out, want, err_msg=case.id)
        back = cbackend.from_blocked(out, p.output_shape, border, np.empty(p.output_shape, np.float32))
        assert_close(back, torch_reference(case, inputs), case)
        assert_same_bits_on_thread_counts(pooled)


@pytest.mark.parametrize("special", [None, "nan", "inf", "large"])
def test_blocked_global_avg_pool(special):
    # Global average pooling blocked -> NCHW (a plan's classifier head) against torch.
    lanes = _lanes()
    for shape in [(2, lanes, 7, 7), (1, 3 * lanes, 1, 1), (3, 2 * lanes, 4, 9)]:
        case = Case("adaptive_avg_pool2d", f"global-{shape}", shape, kwargs=dict(output_size=1), special=special)
        inputs = make_inputs(case)
        for border in (0, 1):
            xb = np.empty(cbackend.blocked_shape(shape, border), np.float32)
            cbackend.to_blocked(inputs["x"], border, xb)
            assert cbackend.blocked_pool_supports(AdaptivePool2dProblem(*shape, 1, 1, "float32"))

            def pooled():
                out = np.full((shape[0], shape[1], 1, 1), np.nan, np.float32)
                return cbackend.blocked_global_avg_pool_into(xb, shape, border, out)

            assert_close(pooled(), torch_reference(case, inputs), case)
            assert_same_bits_on_thread_counts(pooled)


def test_what_the_blocked_pools_refuse():
    L = _lanes()
    assert not cbackend.blocked_pool_supports(Pool2dProblem("max", 1, L + 1, 8, 8, (2, 2), (2, 2)))
    assert not cbackend.blocked_pool_supports(Pool2dProblem("max", 1, L, 8, 8, (2, 2), (2, 2), dtype="float64"))
    assert not cbackend.blocked_pool_supports(Pool2dProblem("avg", 1, L, 8, 8, (2, 2), (2, 2)))
    assert not cbackend.blocked_pool_supports(Pool2dProblem("max", 1, L, 8, 8, (2, 2), (2, 2), return_indices=True))
    assert not cbackend.blocked_pool_supports(AdaptivePool2dProblem(1, L, 8, 8, 2, 2, "float32"))
    assert not cbackend.blocked_pool_supports(AdaptivePool2dProblem(1, L, 8, 8, 1, 1, "float32", kind="max"))
    p = Pool2dProblem("avg", 1, L, 8, 8, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="blocked max pool does not take"):
        cbackend.max_pool2d_blocked_into(p, np.zeros((1, L, 8, 8), np.float32), 0, None)
    p = Pool2dProblem("max", 1, L, 8, 8, (2, 2), (2, 2))
    with pytest.raises(TypeError, match="must be a C-contiguous float32 array"):
        cbackend.max_pool2d_blocked_into(
            p, np.zeros((1, L, 8, 8), np.float32), 1, np.zeros((1, 1, 4, 4, L), np.float32)
        )
    with pytest.raises(TypeError, match="must be a C-contiguous float32 array"):
        cbackend.blocked_global_avg_pool_into(
            np.zeros((1, L, 8, 8), np.float32), (1, L, 8, 8), 0, np.zeros((1, L, 1, 1), np.float32)
        )


def test_what_the_blocked_kernel_refuses():
    L = _lanes()
    assert cbackend.blocked_supports(Conv2dProblem(1, L, 5, 5, L, 3, 3, padding=(1, 1, 1, 1)))
    refused = [
        Conv2dProblem(1, L + 1, 5, 5, L, 3, 3),  # channels not a multiple of L
        Conv2dProblem(1, L, 5, 5, L - 1, 3, 3),
        Conv2dProblem(1, 2 * L, 5, 5, 2 * L, 3, 3, groups=2),
        Conv2dProblem(1, L, 5, 5, L, 3, 3, activation="sigmoid"),
        Conv2dProblem(1, L, 5, 5, L, 3, 3, dtype="float64"),
    ]
    for p in refused:
        assert not cbackend.blocked_supports(p), p.id
        with pytest.raises(ValueError, match="blocked kernel"):
            cbackend.blocked_weights(p, np.zeros((p.k, p.cg, p.r, p.s), np.float32))
    # A border narrower than the padding is refused before any kernel runs.
    p = Conv2dProblem(1, L, 5, 5, L, 3, 3, padding=(1, 1, 1, 1))
    y = np.zeros(cbackend.blocked_shape(p.output_shape, 0), np.float32)
    with pytest.raises(ValueError, match="border"):
        cbackend.BlockedConvCall(p, cbackend.blocked_weights(p, np.zeros((L, L, 3, 3), np.float32)), None, y, 0, 0, 0)
    call = cbackend.BlockedConvCall(
        p, cbackend.blocked_weights(p, np.zeros((L, L, 3, 3), np.float32)), None, y, 1, 0, 0
    )
    with pytest.raises(TypeError, match="shape"):  # an input of the wrong layout never reaches C
        call(np.zeros((1, L, 5, 5), np.float32))


def test_the_eager_blocked_route_refuses_a_short_workspace():
    """fc_f32_conv2d_nchw_blocked writes only into the workspace it is given: one byte short of
    fc_f32_eager_blocked_scratch (for the call's thread count), or none, is refused before
    anything is written."""
    from fastconv import _ckernels

    L = _lanes()
    lib, ffi = _ckernels.lib, _ckernels.ffi
    p = Conv2dProblem(1, L, 5, 5, L, 3, 3, padding=(1, 1, 1, 1))
    call = cbackend._Call("float32")
    d = cbackend._descriptor(p)
    need = lib.fc_f32_eager_blocked_scratch(d, 1)
    # the input with a 1-pixel border, the output, and the thread's packed weights (a second
    # thread packs its own)
    assert need >= 4 * (L * 7 * 7 + L * 5 * 5 + L * L * 9)
    assert lib.fc_f32_eager_blocked_scratch(d, 2) >= need + 4 * L * L * 9
    x, y = np.ones(p.input_shape, np.float32), np.full(p.output_shape, 7.0, np.float32)
    w = np.ones((L, L, 3, 3), np.float32)
    ws = np.zeros(need, np.uint8)
    args = (d, call.ptr(x, x.size), call.ptr(w, w.size), ffi.NULL, ffi.NULL, call.ptr(y, y.size, writable=True))
    for scratch, size in ((ffi.from_buffer(ws), need - 1), (ffi.NULL, need)):
        assert lib.fc_f32_conv2d_nchw_blocked(*args, scratch, size, 1, ffi.NULL) == lib.FC_EINVAL
    assert (y == 7.0).all() and not ws.any()
    assert lib.fc_f32_conv2d_nchw_blocked(*args, ffi.from_buffer(ws), need, 1, ffi.NULL) == lib.FC_OK
    assert y[0, 0, 2, 2] == 9 * L  # an interior pixel: all taps of every channel


def test_a_call_checks_each_new_array_and_reads_its_contents_every_time():
    """BlockedConvCall checks an input array the first time it comes and keeps its pointer: a
    different array is checked again (a wrong one refused after good calls), and the same array
    with new contents gives the new result."""
    L = _lanes()
    p = _problem(Case("conv2d", "reuse", (1, L, 3, 3), (L, L, 1, 1), {}, residual=True), False, None)
    shape = cbackend.blocked_shape(p.output_shape, 0)
    w = np.zeros((L, L, 1, 1), np.float32)
    w[np.arange(L), np.arange(L)] = 1.0  # identity: y = x + residual
    y = np.zeros(shape, np.float32)
    call = cbackend.BlockedConvCall(p, cbackend.blocked_weights(p, w), None, y, 0, 0, 0)
    x, res = np.ones(shape, np.float32), np.full(shape, 2.0, np.float32)
    assert np.array_equal(call(x, res), np.full(shape, 3.0, np.float32))
    x[...] = 5.0
    assert np.array_equal(call(x, res), np.full(shape, 7.0, np.float32))
    with pytest.raises(TypeError, match="shape"):
        call(np.ones(cbackend.blocked_shape(p.input_shape, 1), np.float32), res)
    with pytest.raises(TypeError, match="float32"):
        call(x, res.astype(np.float64))
    with pytest.raises(TypeError, match="residual"):
        call(x, None)
    assert np.array_equal(call(x, res), np.full(shape, 7.0, np.float32))  # the good arrays still run
