"""The c backend beyond the shared cases: its build, its own tile edges, threads, random problems.

The float32 convolution packs GEMM panels: a microkernel computes MR output channels x NR output
pixels (pixels flattened over the batch, so a panel may straddle two images), summing KC
reduction terms (input channel x tap) per pass.  The cases below sit one below, at and one
above each of those sizes and their multiples.
"""

from __future__ import annotations

import shutil
import sysconfig
import threading
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch
from fastconv.backends import c as cbackend
from harness import Case, assert_same_bits_on_thread_counts, check

#: The float32 GEMM tiles (csrc/isa.c: AVX-512 8x48, AVX2 6x16, portable 4x16): output channels
#: x pixels, and the forward GEMM's longest reduction block (conv_kc: 1024, 512 and 128 rows; the
#: reduction is cut into equal blocks of whole input channels, at most that long).  The cases
#: cover every table's edges whatever the CPU runs.
MR, NR, KC = 8, 48, 1024
TILES = ((8, 48), (6, 16), (4, 16))
CONV_KC = (1024, 256, 128)


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("cc") or shutil.which("gcc")


def test_extension_built_where_a_compiler_exists():
    if _compiler() is None:
        pytest.skip("no C compiler on this machine: the c backend may legitimately be missing")
    ok, reason = cbackend.available()
    assert cbackend._ckernels is not None, f"fastconv._ckernels did not build although a compiler exists: {reason}"
    assert ok, reason
    assert "c" in fastconv.available_backends()


def _needs_c():
    ok, reason = cbackend.available()
    if not ok:
        pytest.skip(f"c unavailable: {reason}")


def test_reports_isa_openmp_and_peak():
    _needs_c()
    assert cbackend.isa() in ("avx512", "avx2", "generic")
    peak = cbackend.peak_gflops(1)
    assert peak is not None and peak > 0.1


# -- the GEMM tile edges -------------------------------------------------------------------------


def tile_cases() -> list[Case]:
    cases = []

    def add(name, x, w, dtype="float32", **kw):
        cases.append(Case("conv2d", name, x, w, kw, bias=True, dtype=dtype))

    for k in sorted({v for mr, _ in TILES for v in (mr - 1, mr, mr + 1, 2 * mr - 1, 2 * mr + 1)} | {3}):
        add(f"k{k}", (1, 5, 7, 9), (k, 5, 3, 3), padding=1)
    # Output pixels per image (and over a batch of 3) around the panel widths and their vectors.
    for pixels in (15, 16, 17, 31, 33, NR - 1, NR, NR + 1, 2 * NR - 1, 2 * NR + 1):
        add(f"pixels{pixels}", (1, 4, 1, pixels), (MR, 4, 1, 1))
        add(f"pixels{pixels}_n3", (3, 4, 1, pixels), (MR + 1, 4, 1, 3), padding=(0, 1))
    add("straddle_7x7_n5", (5, 16, 7, 7), (2 * MR, 16, 3, 3), padding=1)
    # Panels of 1 to 4 columns take the narrow kernel on pre-packed weights (5 does not): weight
    # blocks around its passes of 8/6/4/3 blocks, a partial last block, two reduction blocks.
    for cols in (1, 2, 3, 4, 5):
        add(f"narrow{cols}", (1, KC + 5, 1, cols), (9 * MR + 3, KC + 5, 1, 1))
    add("narrow_7x7_n2", (2, 16, 7, 7), (3 * MR, 16, 1, 1))
    # On AVX-512, a narrow panel right after a full one rides in its pass (gemm_tail): 1-4 tail
    # columns, two reduction blocks, a partial last weight block; a 7x7 3x3 layer that packs.
    for cols in (1, 2, 3, 4):
        add(f"tail{cols}", (1, KC + 5, 1, NR + cols), (2 * MR + 3, KC + 5, 1, 1))
    add("tail_packed_7x7", (1, 4, 7, 7), (40 * MR, 4, 3, 3), padding=1)
    add("straddle_1x1_n4", (4, 3, 1, 1), (MR, 3, 1, 1))
    # Reduction terms (C * R * S) around every table's longest block: one block, two equal
    # blocks (kc + 1 rows: kc/2 + 1 and kc/2), three; 3x3 filters in whole channels.  (AVX2 cuts
    # in-place 1x1 blocks at 128 rows, MIN_BLOCK_ROWS in conv_gemm_f32.c: the generic table's kc.)
    terms = {}
    for kc in CONV_KC:
        terms.update({kc - 1: (kc - 1, 1, 1), kc: (kc, 1, 1), kc + 1: (kc + 1, 1, 1), 2 * kc + 1: (2 * kc + 1, 1, 1)})
        ch = kc // 9
        terms.update({9 * ch: (ch, 3, 3), 9 * (ch + 1): (ch + 1, 3, 3)})
    terms.update({147: (3, 7, 7), 196: (4, 7, 7)})
    for crs, (c, r, s) in terms.items():
        add(f"crs{crs}", (1, c, 4, 5), (MR + 3, c, r, s), padding=(r // 2, s // 2))
    # Tasks of several panels and weight blocks over several reduction blocks: each table's loop
    # order (gemm_panel_outer) meets partial sums left between blocks, a partial last weight
    # block and a short last panel.
    add("tasks_1x1", (2, 600, 5, 21), (9 * MR + 5, 600, 1, 1))
    add("tasks_3x3", (1, 70, 11, 23), (5 * MR - 1, 70, 3, 3), padding=1)
    # Strided and dilated gathers into the panels, and groups (one GEMM per group).
    add("stride2_pack", (2, 6, 13, 15), (MR + 1, 6, 3, 3), stride=2, padding=1)
    # Stride 2 on planes wider than a panel: 6 runs a channel, so AVX2 cuts the 40 channels into
    # reduction blocks of 14, 14 and 12 (MAX_BLOCK_RUNS in conv_gemm_f32.c).
    add("stride2_wide_runs", (1, 40, 40, 40), (MR + 1, 40, 3, 3), stride=2, padding=1)
    add("stride3x2_dil2", (1, 5, 17, 16), (MR, 5, 3, 2), stride=(3, 2), dilation=2, padding=(2, 1))
    add("pointwise_s2_pad", (2, 7, 9, 10), (MR + 1, 7, 1, 1), stride=2, padding=1)
    add("groups4_k9", (2, 8, 6, 6), (36, 2, 3, 3), groups=4, padding=1)
    add("groups2_big", (1, 64, 9, 9), (34, 32, 3, 3), groups=2, padding=1)
    add("wide_row", (1, 3, 2, 130), (MR, 3, 1, 5), padding=(0, 2))
    add("stem_like", (1, 3, 31, 31), (MR + 1, 3, 7, 7), stride=2, padding=3)
    add("tiny_f64", (1, 1, 1, 1), (1, 1, 1, 1), dtype="float64")
    # The depthwise kernel's 3x3 fast path (dilated rows, strided columns, channel multiplier).
    for dtype in ("float32", "float64"):
        add(
            f"dw3x3_dilh2_{dtype}", (2, 8, 10, 11), (8, 1, 3, 3), dtype=dtype, groups=8, dilation=(2, 1), padding=(2, 1)
        )
        add(f"dw3x3_s2_mult2_{dtype}", (1, 5, 9, 12), (10, 1, 3, 3), dtype=dtype, groups=5, stride=2, padding=1)
        add(f"dw3x3_wide17_{dtype}", (1, 3, 4, 17), (3, 1, 3, 3), dtype=dtype, groups=3, padding=1)
    return cases


TILE_CASES = tile_cases()


@pytest.mark.parametrize("case", TILE_CASES, ids=[c.id for c in TILE_CASES])
def test_tile_edges(case):
    _needs_c()
    check(case, "c")


#: FASTCONV_F32_CONV forces the float32 convolution's B source (read per call), the
#: channel-vector kernel (kvec), or the blocked kernel with the input and output converted at the
#: call (blocked; cases it cannot take run the GEMM), so each meets the tile edges with this
#: process's kernels; tests/test_c_isa.py reruns this module under every instruction set the CPU
#: has (FASTCONV_ISA is read once per process).
@pytest.mark.parametrize("mode", ["direct", "packed", "kvec", "blocked"])
def test_b_sources_on_tile_edges(mode, monkeypatch):
    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_CONV", mode)
    for case in TILE_CASES:
        if case.dtype == "float32":
            check(case, "c")


#: FASTCONV_F32_WEIGHTS (read per call) forces how an eager float32 GEMM reads its weights: in
#: place, or packed by each task per reduction block (the AVX2 table's gemm_pack; where a table has
#: none, both run in place).  Either meets every tile edge, with both B sources, and the fused
#: epilogue.
@pytest.mark.parametrize("weights", ["inplace", "task"])
@pytest.mark.parametrize("mode", ["direct", "packed"])
def test_weights_in_place_or_packed_per_task_on_tile_edges(weights, mode, monkeypatch):
    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_WEIGHTS", weights)
    monkeypatch.setenv("FASTCONV_F32_CONV", mode)
    for case in TILE_CASES:
        if case.dtype == "float32":
            check(case, "c")
    relu = {"padding": 1, "activation": "relu"}
    check(Case("conv2d", "epilogue", (3, 9, 5, 7), (MR + 1, 9, 3, 3), relu, bias=True, residual=True), "c")


@pytest.mark.parametrize("residual,relu", [(True, True), (True, False), (False, True)])
def test_fused_epilogue_on_panel_edges(residual, relu):
    _needs_c()
    kw = {"padding": 1}
    if relu:
        kw["activation"] = "relu"
    check(Case("conv2d", "epilogue", (3, 9, 5, 7), (MR + 1, 9, 3, 3), kw, bias=True, residual=residual), "c")


@pytest.mark.parametrize("weights", ["inplace", "task"])
def test_plain_1x1_input_anywhere_in_a_cache_line(weights, monkeypatch):
    """A plain 1x1 layer's GEMM reads its input in place; where every plane is a multiple of 16
    floats, each image's first panel is cut short so that the others start on a cache line
    (conv_gemm_f32.c).  Wherever the input starts (every float offset within 64 bytes) the result
    is the same bits, with bias, residual and relu, and matches torch; a plane of 36 floats (no
    such cut) and weights packed per task (narrow last panels) too."""
    import torch

    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_CONV", "direct")  # the GEMM reading x in place (not kvec)
    monkeypatch.setenv("FASTCONV_F32_WEIGHTS", weights)
    rng = np.random.default_rng(0)
    for n, c, h, w_, k in ((2, 20, 8, 8, 13), (3, 7, 12, 12, 30), (1, 9, 4, 16, 5), (2, 5, 6, 6, 7), (1, 3, 8, 10, 9)):
        x0 = rng.standard_normal((n, c, h, w_)).astype(np.float32)
        w = rng.standard_normal((k, c, 1, 1)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        res = rng.standard_normal((n, k, h, w_)).astype(np.float32)
        expected = torch.relu(
            torch.nn.functional.conv2d(torch.from_numpy(x0), torch.from_numpy(w), torch.from_numpy(b))
            + torch.from_numpy(res)
        ).numpy()
        raw = np.empty(x0.nbytes + 128, np.uint8)
        start = (-raw.ctypes.data) % 64
        first = None
        for off in range(16):
            x = raw[start + 4 * off : start + 4 * off + x0.nbytes].view(np.float32).reshape(x0.shape)
            x[...] = x0
            y = fastconv.conv2d(x, w, b, residual=res, activation="relu", backend="c", algorithm="gemm")
            if first is None:
                first = y
                np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(y, first, err_msg=f"{(n, c, h, w_, k)} at float offset {off}")


# -- the GEMM with pre-packed weights (compiled plans) ---------------------------------------------


def _problem(case, x, w, bias, residual, activation):
    from fastconv import api
    from fastconv._args import positive_pair
    from fastconv.problem import Conv2dProblem

    kw = case.kwargs
    stride = positive_pair(kw.get("stride", 1), "stride")
    dilation = positive_pair(kw.get("dilation", 1), "dilation")
    pads = api._conv_padding(kw.get("padding", 0), w.shape[2], w.shape[3], dilation, stride)
    return Conv2dProblem(
        *x.shape,
        w.shape[0],
        w.shape[2],
        w.shape[3],
        stride,
        pads,
        dilation,
        kw.get("groups", 1),
        case.dtype,
        bias=bias is not None,
        residual=residual is not None,
        activation=activation,
    )


def test_tile_edges_prepacked_weights_give_the_same_bits(monkeypatch):
    """Weights packed once (cbackend.gemm_weights) give the in-place GEMM's result bit for bit on
    every tile edge, with and without the fused epilogue; packings made for another problem are
    not used.  The ISA's own tables: tests/test_c_isa.py reruns this under each forced ISA."""
    from harness import make_inputs

    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_FEWC", "off")  # the few-channel kernel would take the small cases
    packed = 0
    cases = [c for c in TILE_CASES if c.dtype == "float32"]
    depthwise = [c for c in cases if c.kwargs.get("groups", 1) == c.x[1] > 1]
    for i, case in enumerate(cases):
        inputs = make_inputs(case)
        x, w, b = inputs["x"], inputs["w"], inputs.get("b")
        kw = {k: v for k, v in case.kwargs.items()}
        ref = fastconv.conv2d(x, w, b, backend="c", **kw)
        residual = np.random.default_rng(i).standard_normal(ref.shape).astype(np.float32) if i % 2 else None
        activation = "relu" if i % 3 else None
        # "gemm": the GEMM itself ("auto" may run an eager call on the blocked kernel instead).
        ref = fastconv.conv2d(x, w, b, residual=residual, activation=activation, backend="c", algorithm="gemm", **kw)
        p = replace(_problem(case, x, w, b, residual, activation), algorithm="gemm")
        wp = cbackend.gemm_weights(p, w)
        if wp is None:
            continue
        packed += 1
        y = cbackend.conv2d_into(p, x, w, b, residual, np.empty_like(ref), gemm_weights=wp)
        np.testing.assert_array_equal(y, ref, err_msg=case.id)
        # A packing of another size (made for more output channels) is never read: the call
        # falls back to the weights themselves.
        k2 = p.k + 16 * p.groups
        other = cbackend.gemm_weights(replace(p, k=k2), np.zeros((k2, *w.shape[1:]), np.float32))
        assert other is not None and other.size != wp.size
        y = cbackend.conv2d_into(p, x, w, b, residual, np.empty_like(ref), gemm_weights=other)
        np.testing.assert_array_equal(y, ref, err_msg=f"{case.id}, another problem's packing")
    if cbackend.isa() == "generic":
        assert packed == 0  # the portable kernel reads weights in place only
    else:
        assert packed == len(cases) - len(depthwise), f"{packed} of {len(cases)} cases ran the pre-packed GEMM"


def test_prepacked_kernel_name_is_logged(monkeypatch, caplog):
    import logging

    _needs_c()
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    x, w = np.ones((1, 8, 9, 9), np.float32), np.ones((16, 8, 3, 3), np.float32)
    p = _problem(Case("conv2d", "n", x.shape, w.shape, {"padding": 1}), x, w, None, None, None)
    wp = cbackend.gemm_weights(p, w)
    if cbackend.isa() == "generic":
        assert wp is None
        return
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        y = cbackend.conv2d_into(p, x, w, None, None, np.empty((1, 16, 9, 9), np.float32), gemm_weights=wp)
    assert y[0, 0, 4, 4] == 72.0
    assert any("weights pre-packed" in r.getMessage() for r in caplog.records)
    # 49 output pixels: the last panel has one column, which the narrow kernel takes (AVX-512: in
    # the pass of the full panel before it).
    x7, w1 = np.ones((1, 8, 7, 7), np.float32), np.ones((16, 8, 1, 1), np.float32)
    p7 = _problem(Case("conv2d", "n7", x7.shape, w1.shape, {}), x7, w1, None, None, None)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        y7 = cbackend.conv2d_into(
            p7, x7, w1, None, None, np.empty((1, 16, 7, 7), np.float32), gemm_weights=cbackend.gemm_weights(p7, w1)
        )
    assert (y7 == 8.0).all()
    tail = "last 1-4 columns in the full tile's pass" if cbackend.isa() == "avx512" else "narrow"
    assert any(tail in r.getMessage() for r in caplog.records)
    depthwise = _problem(Case("conv2d", "dw", x.shape, (8, 1, 3, 3), {"groups": 8}), x, w[:8, :1], None, None, None)
    assert cbackend.gemm_weights(depthwise, w[:8, :1].copy()) is None  # depthwise never runs the GEMM
    assert cbackend.gemm_weights(replace(p, dtype="float64"), w.astype(np.float64)) is None


# -- the channel-vector kernel (kvec) ---------------------------------------------------------------

#: Its tiles (csrc/isa.c): output pixels x vectors of output channels x lanes: AVX-512 7 x 4 x 16,
#: AVX2 4 x 3 x 8, portable 4 x 2 x 8; the reduction runs in blocks of 96 steps (whole channels).
KVEC_TILES = ((7, 4, 16), (4, 3, 8), (4, 2, 8))
KVEC_STEPS = 96


def kvec_cases() -> list[Case]:
    cases = []

    def add(name, x, w, bias=True, residual=False, **kw):
        cases.append(Case("conv2d", f"kvec_{name}", x, w, kw, bias=bias, residual=residual))

    # Pixels per output row around each tile's width (a row's last, narrower tile).
    for ow in sorted({v for p, _, _ in KVEC_TILES for v in (p - 1, p, p + 1, 2 * p + 1)} | {1}):
        add(f"ow{ow}", (2, 5, 3, ow), (16, 5, 3, 3), padding=1)
    # Output channels around the lanes and the vector blocks (zero lanes past the last channel).
    for k in sorted({v for _, nv, lanes in KVEC_TILES for v in (lanes - 1, lanes + 1, nv * lanes, nv * lanes + 1)}):
        add(f"k{k}", (1, 6, 5, 7), (k, 6, 3, 3), padding=1)
    add("k129_n3", (3, 4, 4, 9), (129, 4, 2, 3), padding=(1, 0), residual=True, activation="relu")
    # Reduction steps around the block, and several blocks.
    for c, r in ((KVEC_STEPS - 1, 1), (KVEC_STEPS, 1), (KVEC_STEPS + 1, 1), (11, 3), (23, 3)):
        add(f"crs{c * r * r}", (1, c, 4, 5), (20, c, r, r), padding=r // 2)
    # Strides, dilation and padding (read through the stride-split phase planes), groups.
    add("stride2", (2, 16, 15, 13), (40, 16, 3, 3), stride=2, padding=1, residual=True, activation="relu")
    add("stride3x2_dil2", (1, 8, 17, 16), (24, 8, 3, 2), stride=(3, 2), dilation=2, padding=(2, 1))
    add("dil3_pad3", (2, 9, 11, 10), (17, 9, 3, 3), dilation=3, padding=3)
    add("groups4", (2, 32, 7, 7), (64, 8, 3, 3), groups=4, padding=1, residual=True)
    add("groups3_k10", (1, 12, 6, 6), (30, 4, 3, 3), groups=3, padding=1)
    add("pointwise", (3, 40, 7, 7), (70, 40, 1, 1), residual=True, activation="relu")
    add("pointwise_s2_pad", (2, 24, 9, 9), (33, 24, 1, 1), stride=2, padding=1)
    add("no_bias", (2, 10, 7, 7), (32, 10, 3, 3), bias=False, padding=1)
    add("wide_row", (1, 4, 2, 100), (20, 4, 1, 3), padding=(0, 1), residual=True)  # epilogue in 48-pixel runs
    add("row_past_buffer", (1, 2, 1, 2100), (17, 2, 1, 3), padding=(0, 1))  # too long a row: the GEMM takes it
    for kind in ("silu", "hardswish", "sigmoid", "relu6"):
        add(f"act_{kind}", (2, 12, 7, 7), (40, 12, 3, 3), padding=1, residual=True, activation=kind)
    return cases


KVEC_CASES = kvec_cases()


@pytest.mark.parametrize("case", KVEC_CASES, ids=[c.id for c in KVEC_CASES])
def test_kvec_tile_edges(case, monkeypatch):
    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_CONV", "kvec")
    check(case, "c")


def test_kvec_kernel_name_is_logged(monkeypatch, caplog):
    """FASTCONV_VERBOSE names the channel-vector kernel when it runs (forced here), the GEMM otherwise."""
    import logging

    _needs_c()
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    x, w = np.zeros((1, 8, 7, 7), np.float32), np.zeros((16, 8, 3, 3), np.float32)
    isa = cbackend.isa()
    tile = {"avx512": "7x64", "avx2": "4x24", "generic": "4x16"}[isa]
    for mode, name in (("kvec", f"conv2d f32 kvec {tile} {isa}"), ("direct", "conv2d f32 gemm")):
        monkeypatch.setenv("FASTCONV_F32_CONV", mode)
        with caplog.at_level(logging.DEBUG, logger="fastconv"):
            caplog.clear()
            fastconv.conv2d(x, w, padding=1, backend="c")
        assert any(name in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_kvec_scratch_is_counted_when_it_runs(monkeypatch):
    """Python's scratch estimate adds the channel-vector kernel's per-thread buffers when it runs."""
    from fastconv.backends import _c_scratch
    from fastconv.problem import Conv2dProblem

    p = Conv2dProblem(2, 64, 7, 7, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    monkeypatch.setenv("FASTCONV_F32_CONV", "direct")
    gemm = _c_scratch.conv2d_bytes(p, 2)
    monkeypatch.setenv("FASTCONV_F32_CONV", "kvec")
    assert _c_scratch.conv2d_bytes(p, 2) - gemm >= 2 * 64 * 1024 * 4


def test_kvec_thread_count_does_not_change_the_result(monkeypatch):
    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_CONV", "kvec")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 40, 7, 9), dtype=np.float32)
    w = rng.standard_normal((150, 40, 3, 3), dtype=np.float32)
    assert_same_bits_on_thread_counts(lambda: fastconv.conv2d(x, w, padding=1, backend="c"))


# -- threads ---------------------------------------------------------------------------------------


def test_concurrent_calls_from_python_threads_are_identical():
    _needs_c()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 32, 20, 20), dtype=np.float32)
    w = rng.standard_normal((40, 32, 3, 3), dtype=np.float32)
    b = rng.standard_normal(40, dtype=np.float32)

    w_dw = rng.standard_normal((32, 1, 3, 3), dtype=np.float32)

    def work():
        return (
            fastconv.conv2d(x, w, b, padding=1, backend="c"),
            fastconv.conv2d(x, w_dw, groups=32, padding=1, backend="c"),
            fastconv.max_pool2d(x, 3, 2, 1, backend="c"),
            fastconv.batch_norm(x, None, None, training=True, backend="c"),
        )

    expected = work()
    results, errors = [None] * 8, []

    def run(i):
        try:
            for _ in range(3):
                results[i] = work()
        except Exception as exc:  # surfaced below: an exception in a thread would be lost
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    for got in results:
        for a, b_ in zip(got, expected):
            np.testing.assert_array_equal(a, b_)


def test_thread_count_does_not_change_the_result():
    _needs_c()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 24, 15, 17), dtype=np.float32)
    w = rng.standard_normal((20, 24, 3, 3), dtype=np.float32)
    assert_same_bits_on_thread_counts(lambda: fastconv.conv2d(x, w, padding=1, backend="c"))


# -- random problems -------------------------------------------------------------------------------


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg = draw(st.integers(1, 9))
    kg = draw(st.integers(1, 10))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, dh * (r - 1) + 1 - 2 * ph), 14))
    w = draw(st.integers(max(1, dw * (s - 1) + 1 - 2 * pw), 14))
    depthwise = draw(st.booleans()) and groups > 1
    c, k = (groups, groups * kg) if depthwise else (groups * cg, groups * kg)
    kw = {
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": (ph, pw),
        "dilation": (dh, dw),
        "groups": groups,
    }
    if draw(st.booleans()):
        kw["activation"] = "relu"
    return Case(
        "conv2d",
        "hypothesis",
        (draw(st.integers(1, 3)), c, h, w),
        (k, c // groups, r, s),
        kw,
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])),
    )


@settings(max_examples=max(10, int(settings.default.max_examples * 0.6)))
@given(conv_problems())
def test_random_conv_problems_match_torch(case):
    _needs_c()
    check(case, "c")


@st.composite
def prepacked_problems(draw):
    """Problems at the pre-packed GEMM's panel edges: output rows around multiples of the 48-pixel
    panel (narrow panels of 1-4 columns, alone or riding on the full panel before them), 1x1 and
    3x3 filters (direct and packed panels), reductions across one to three blocks."""
    r = draw(st.sampled_from([1, 1, 3]))
    stride = draw(st.sampled_from([1, 1, 2]))
    ow = draw(st.sampled_from([1, 2, 4, 5, 7, 14, 16, 33, 47, 48, 49, 50, 52, 53, 96, 97, 100]))
    oh = draw(st.integers(1, 3))
    pad = r // 2 if draw(st.booleans()) else 0
    w = (ow - 1) * stride + r - 2 * pad
    h = (oh - 1) * stride + r - 2 * pad
    c = draw(st.sampled_from([8, 64, 130, 515, 1030, 2100]))  # 1-4 channels: the few-channel kernel
    return Case(
        "conv2d",
        "prepacked",
        (draw(st.integers(1, 3)), c, max(h, 1), max(w, 1)),
        (draw(st.integers(1, 40)), c, r, r),
        {"stride": stride, "padding": pad},
        bias=True,
        dtype="float32",
    )


@settings(max_examples=max(10, int(settings.default.max_examples * 0.4)), deadline=None)
@given(prepacked_problems(), st.booleans(), st.booleans())
def test_random_prepacked_problems_give_the_in_place_bits(case, with_residual, relu):
    """Pre-packed weights (narrow panels, tails, packed or direct panels) against the eager call
    that reads the weights in place: the same sums in the same order, so the same bits."""
    from harness import make_inputs

    _needs_c()
    if cbackend.isa() == "generic":
        return  # the portable kernel takes no pre-packed weights
    inputs = make_inputs(case)
    x, w, b = inputs["x"], inputs["w"], inputs["b"]
    ref = fastconv.conv2d(x, w, b, backend="c", **case.kwargs)
    residual = np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32) if with_residual else None
    activation = "relu" if relu else None
    # "gemm": the GEMM itself ("auto" may run an eager call on the blocked kernel instead).
    ref = fastconv.conv2d(
        x, w, b, residual=residual, activation=activation, backend="c", algorithm="gemm", **case.kwargs
    )
    p = replace(_problem(case, x, w, b, residual, activation), algorithm="gemm")
    y = cbackend.conv2d_into(p, x, w, b, residual, np.empty_like(ref), gemm_weights=cbackend.gemm_weights(p, w))
    np.testing.assert_array_equal(y, ref, err_msg=case.id)


def test_auto_prefers_c():
    _needs_c()
    from fastconv.problem import ReluProblem

    assert dispatch.select(ReluProblem((3,)))[0] == "c"


def test_arrays_that_do_not_match_the_problem_never_reach_c():
    # The backend is called with validated arrays; a mismatch is a fastconv bug, and must raise
    # rather than let C read past an array's end.
    _needs_c()
    from fastconv.problem import Conv2dProblem, ReluProblem

    p = Conv2dProblem(1, 2, 5, 5, 3, 3, 3, dtype="float32")
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    assert cbackend.conv2d(p, x, w, None, None).shape == (1, 3, 3, 3)
    with pytest.raises(TypeError, match="fastconv bug"):
        cbackend.conv2d(p, x.astype(np.float64), w, None, None)
    with pytest.raises(TypeError, match="fastconv bug"):
        cbackend.conv2d(p, x[:, :1], w, None, None)
    with pytest.raises(TypeError, match="fastconv bug"):
        cbackend.relu(ReluProblem((4,), "float64"), np.zeros(3))


# -- max pooling: the 3-wide stride-2 rows' SIMD kernel (pool_impl.h) ------------------------------
@pytest.mark.parametrize("w", [1, 2, 15, 16, 17, 31, 32, 33, 34, 63, 64, 65, 112, 113])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_3s2_nan_inf_and_row_tails_match_torch(w, ceil_mode):
    # The kernels read 32 (AVX-512) or 16 (AVX2) columns per block (masked at the row's end) and
    # stop at rows holding a NaN, which the scalar rule redoes: NaN at the corners, the last column
    # and the first/last rows must win; -inf everywhere must stay -inf (padding never wins).
    _needs_c()
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(w)
    h = 7
    x = rng.standard_normal((2, 3, h, w), dtype=np.float32)
    for i, j in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (3, w - 1), (3, w // 2), (h - 1, w // 2)]:
        x[1, 1, i, j] = np.nan
    x[0, 0, ::2, ::3] = np.inf
    x[0, 1] = -np.inf
    x[1, 2, :, -1] = np.nan
    for k, s, p in [(3, 2, 1), (3, 2, 0), (2, 2, 1)]:
        if w + 2 * p < k:
            continue
        got = fastconv.max_pool2d(x, k, s, p, ceil_mode=ceil_mode, backend="c")
        ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=ceil_mode).numpy()
        np.testing.assert_array_equal(got, ref)  # NaN equals NaN here
    # Window rows two apart (dilation down the columns only): the same row kernel, other rows.
    got = fastconv.max_pool2d(x, 3, 2, 1, dilation=(2, 1), ceil_mode=ceil_mode, backend="c")
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, dilation=(2, 1), ceil_mode=ceil_mode)
    np.testing.assert_array_equal(got, ref.numpy())
