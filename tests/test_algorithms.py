"""Convolution algorithms as a first-class choice: the problem field, the API, nn, each backend's
refusals, and Winograd F(4x4, 3x3) against torch and against its documented error bound."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, nn
from fastconv.backends import c as cbackend
from fastconv.backends import im2col, naive
from fastconv.backends import torch as torch_backend
from fastconv.problem import CONV_ALGORITHMS, Conv2dProblem
from harness import Case, assert_same_bits_on_thread_counts, check

torch = pytest.importorskip("torch")


def _needs_c():
    ok, reason = cbackend.available()
    if not ok:
        pytest.skip(f"c unavailable: {reason}")


# -- the field, the API, nn ---------------------------------------------------------------------


def test_id_suffix_only_when_not_auto():
    p = Conv2dProblem(1, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1, 1, 1))
    assert p.id == "n1_c64h56w56_k64r3s3_st1p1d1g1_f32"
    for algo in CONV_ALGORITHMS[1:]:
        q = Conv2dProblem(1, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1, 1, 1), algorithm=algo)
        assert q.id == p.id + f"_{algo}"
        assert q != p and hash(q) != hash(p)


@pytest.mark.parametrize("bad", ["fft", "", None, 3, "Winograd"])
def test_unknown_algorithm_is_a_value_error_naming_it(bad):
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="algorithm"):
        fastconv.conv2d(x, w, algorithm=bad)
    with pytest.raises(ValueError, match="algorithm"):
        nn.Conv2d(2, 3, 3, algorithm=bad)
    with pytest.raises(ValueError, match="algorithm"):
        Conv2dProblem(1, 2, 5, 5, 3, 3, 3, algorithm=bad)


def test_algorithm_is_keyword_only():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(TypeError):
        fastconv.conv2d(x, w, None, 1, 0, 1, 1, "zeros", None, None, "gemm")


def test_refusals_say_why():
    p = Conv2dProblem(1, 4, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), algorithm="winograd")
    assert "winograd" in im2col.supports(p)
    assert "algorithm" in torch_backend.supports(p)
    assert naive.supports(p) is None
    strided = Conv2dProblem(1, 4, 8, 8, 4, 3, 3, (2, 2), (1, 1, 1, 1), algorithm="winograd")
    five = Conv2dProblem(1, 4, 8, 8, 4, 5, 5, algorithm="winograd")
    for backend in (naive, cbackend):
        assert "stride" in backend.supports(strided)
        assert "3x3" in backend.supports(five)
    grouped = Conv2dProblem(1, 4, 8, 8, 4, 3, 3, groups=2, algorithm="winograd")
    assert "groups" in cbackend.supports(grouped)
    f64 = Conv2dProblem(1, 4, 8, 8, 4, 3, 3, dtype="float64", algorithm="gemm")
    assert "float32" in cbackend.supports(f64)
    assert "gemm" in naive.supports(f64)
    with pytest.raises(dispatch.BackendError, match="algorithm"):
        fastconv.conv2d(
            np.zeros((1, 4, 8, 8), np.float32),
            np.zeros((4, 4, 3, 3), np.float32),
            algorithm="winograd",
            backend="im2col",
        )


def test_auto_backend_moves_to_one_with_the_algorithm():
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd")
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_nn_conv2d_passes_its_algorithm(monkeypatch):
    seen = []
    real = fastconv.api.dispatch.run

    def spy(problem, *arrays, backend=None):
        seen.append(problem.algorithm)
        return real(problem, *arrays, backend=backend)

    monkeypatch.setattr(fastconv.api.dispatch, "run", spy)
    layer = nn.Conv2d(3, 4, 3, padding=1, algorithm="winograd")
    assert "algorithm='winograd'" in repr(layer)
    layer(np.zeros((1, 3, 5, 5), np.float32))
    assert seen == ["winograd"]


# -- Winograd against torch -----------------------------------------------------------------------


def winograd_cases() -> list[Case]:
    cases = []

    def add(name, x, k, **kw):
        cases.append(Case("conv2d", name, x, (k, x[-3], 3, 3), {"algorithm": "winograd", **kw}, bias=True))

    # Output sizes around the 4x4 block (overhanging blocks are cut), padding 0, 1 and 2.
    for size in (1, 3, 4, 5, 8, 9):
        add(f"out{size}", (1, 3, size + 2, size + 2), 5)
    add("pad1_7x10", (2, 4, 7, 10), 6, padding=1)
    add("pad2_5x6", (1, 4, 5, 6), 3, padding=2)
    add("pad_1x2", (1, 3, 9, 8), 4, padding=(1, 2))
    # Output channels around every table's mr (4 generic, 6 AVX2, 8 AVX-512: U's rows are k
    # rounded up to it); tiles around the 16 lanes and the 16/48-wide panels (12x12 -> 9 tiles
    # per image, 20x20 -> 25).
    for k in (3, 5, 6, 7, 8, 9, 23, 24, 25):
        add(f"k{k}", (1, 5, 8, 8), k, padding=1)
    for n, size in ((2, 12), (4, 14), (1, 28), (3, 20), (7, 14)):
        add(f"tiles_n{n}_{size}", (n, 6, size, size), 7, padding=1)
    # Input channels around the reduction blocks (128, 192, 256 rows).
    for c in (127, 193, 257):
        add(f"c{c}", (1, c, 6, 6), 9, padding=1)
    return cases


WINOGRAD_CASES = winograd_cases()


@pytest.mark.parametrize("backend", ["c", "naive"])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[c.name for c in WINOGRAD_CASES])
def test_winograd_matches_torch(case, backend):
    if backend == "c":
        _needs_c()
    elif case.x[0] * case.x[1] > 200:
        pytest.skip("the naive Winograd is plain Python: small cases only")
    check(case, backend)


@pytest.mark.parametrize("residual,relu", [(True, True), (False, True), (True, False)])
def test_winograd_fused_epilogue(residual, relu):
    _needs_c()
    kw = {"algorithm": "winograd", "padding": 1, **({"activation": "relu"} if relu else {})}
    check(Case("conv2d", "wino_epilogue", (2, 9, 10, 11), (13, 9, 3, 3), kw, bias=True, residual=residual), "c")


@pytest.mark.parametrize("n,h,w", [(1, 28, 28), (1, 8, 8), (1, 4, 4), (2, 20, 20), (1, 13, 16)])
def test_winograd_tile_counts(n, h, w):
    """Tile counts around the GEMM's panels (49 = 48 + 1, 4, 1, 50 = 48 + 2, 16): the last panel
    runs only as wide as its tiles, or on the narrow kernel when it has at most 4 (pre-packed
    filters); 200 channels span two reduction blocks."""
    _needs_c()
    kw = {"algorithm": "winograd", "padding": 1, "activation": "relu"}
    check(Case("conv2d", "wino_tiles", (n, 200, h, w), (13, 200, 3, 3), kw, bias=True, residual=True), "c")


@pytest.mark.parametrize("activation", ["sigmoid", ("leaky_relu", 0.2), ("hardtanh", -0.5, 0.5), "silu"])
def test_winograd_epilogue_activations(activation):
    """The output transform applies bias, residual and the activation to whole lanes at once:
    every activation, with a residual, on tiles that straddle the image border and the batch."""
    _needs_c()
    kw = {"algorithm": "winograd", "padding": 1, "activation": activation}
    check(Case("conv2d", "wino_act", (3, 5, 9, 14), (11, 5, 3, 3), kw, bias=True, residual=True), "c")


def test_winograd_nan_spreads_to_its_blocks_only():
    """A NaN input poisons every output of the 4x4 blocks whose 6x6 tile holds it (the
    transforms multiply it by zeros too); outputs elsewhere are unaffected."""
    _needs_c()
    x = np.ones((1, 2, 16, 16), np.float32)
    x[0, 0, 1, 1] = np.nan  # only the first block's tile (input rows/cols -1..4) holds it
    w = np.ones((2, 2, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd", backend="c")
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    assert np.isnan(y[:, :, :4, :4]).all()
    clean = np.ones_like(y, bool)
    clean[:, :, :4, :4] = False
    np.testing.assert_allclose(y[clean], ref[clean], rtol=1e-5)


#: docs/results/winograd.md: F(4x4, 3x3) in float32 against float64, with ResNet-scaled weights.
WINOGRAD_NORM_BOUND = 2e-5
WINOGRAD_MAX_BOUND = 1e-4


@pytest.mark.parametrize(
    "shape", [(1, 64, 28, 64), (2, 256, 14, 32), (1, 512, 7, 24)], ids=lambda s: f"n{s[0]}c{s[1]}h{s[2]}k{s[3]}"
)
def test_winograd_error_bound_against_float64(shape):
    _needs_c()
    n, c, h, k = shape
    rng = np.random.default_rng(c)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd", backend="c").astype(np.float64)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1).numpy()
    err = y - ref
    assert np.linalg.norm(err) <= WINOGRAD_NORM_BOUND * np.linalg.norm(ref)
    assert np.abs(err).max() <= WINOGRAD_MAX_BOUND * np.abs(ref).max()


#: Winograd's filter transforms are cached per weight; the blocked kernel's eager route packs its
#: weights as it goes and caches nothing (FASTCONV_F32_CONV=blocked forces that route).
@pytest.mark.parametrize("route", ["winograd", "blocked"])
def test_eager_weights_follow_the_weight_contents(route, monkeypatch):
    _needs_c()
    cbackend.clear_weight_cache()
    algorithm = "winograd" if route == "winograd" else "auto"
    if route == "blocked":
        monkeypatch.setenv("FASTCONV_F32_CONV", "blocked")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 8, 9, 9), dtype=np.float32)
    w = rng.standard_normal((8, 8, 3, 3), dtype=np.float32)

    def ref():
        return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()

    y1 = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="c")
    np.testing.assert_allclose(y1, ref(), rtol=1e-4, atol=1e-4)
    assert len(cbackend._WEIGHT_CACHE) == (route == "winograd")
    w *= -2  # changed in place, same address: must not reuse the old preparation
    y2 = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, backend="c")
    np.testing.assert_allclose(y2, ref(), rtol=1e-4, atol=1e-4)
    assert len(cbackend._WEIGHT_CACHE) == (route == "winograd")
    if route == "blocked":
        return
    # Bounded: many weights never hold more than the byte budget (one entry at least).
    budget = cbackend._WEIGHT_CACHE_BYTES
    try:
        cbackend._WEIGHT_CACHE_BYTES = 1
        for _ in range(3):
            fastconv.conv2d(
                x, rng.standard_normal((8, 8, 3, 3), dtype=np.float32), padding=1, algorithm=algorithm, backend="c"
            )
        assert len(cbackend._WEIGHT_CACHE) == 1
    finally:
        cbackend._WEIGHT_CACHE_BYTES = budget
        cbackend.clear_weight_cache()


# -- which kernel ran -----------------------------------------------------------------------------


def test_kernel_name_is_logged(monkeypatch, caplog):
    _needs_c()
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    # 16 channels: a whole channel block on every table (8 lanes on AVX2 and portable, 16 on AVX-512).
    x = np.zeros((1, 16, 10, 10), np.float32)
    w = np.zeros((16, 16, 3, 3), np.float32)
    isa = cbackend.isa()
    tile = {"avx512": "8x48", "avx2": "6x16", "generic": "4x16"}[isa]
    # A 3x3 layer of 16 channels: "auto" runs it on the blocked kernel on the x86 tables
    # (fc_f32_eager_blocked_wanted), on the GEMM on the portable one.
    blocked = {"avx512": "4x64 / 7x48", "avx2": "4x24", "generic": "4x16"}[isa]
    auto = f"conv2d f32 blocked {blocked} {isa}, NCHW converted at the call" if isa != "generic" else None
    expected = {
        "auto": auto or f"conv2d f32 gemm {tile} {isa}",
        "gemm": f"conv2d f32 gemm {tile} {isa}",
        "direct": f"conv2d f32 direct {isa}",
        "winograd": f"conv2d f32 winograd F(4x4,3x3) gemm {tile} {isa}",
    }
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        for algo, name in expected.items():
            caplog.clear()
            fastconv.conv2d(x, w, padding=1, algorithm=algo, backend="c")
            assert any(name in r.getMessage() for r in caplog.records), (algo, [r.getMessage() for r in caplog.records])
        # The test hook takes any table to the blocked route, and any other forced mode keeps the GEMM.
        for force, name in (("blocked", f"conv2d f32 blocked {blocked} {isa}, NCHW"), ("direct", f"gemm {tile}")):
            monkeypatch.setenv("FASTCONV_F32_CONV", force)
            caplog.clear()
            fastconv.conv2d(x, w, padding=1, backend="c")
            assert any(name in r.getMessage() for r in caplog.records), (
                force,
                [r.getMessage() for r in caplog.records],
            )


def test_eager_blocked_rule_keeps_weight_heavy_layers_on_the_gemm(monkeypatch, caplog):
    """The AVX-512 table keeps a 3x3 layer whose c * r * s outweighs its output pixels more than
    32 times (eager_blocked_reuse) on the GEMM; AVX2 takes every 3x3 layer to the blocked kernel."""
    _needs_c()
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    monkeypatch.delenv("FASTCONV_F32_CONV", raising=False)
    isa = cbackend.isa()
    w = np.zeros((16, 64, 3, 3), np.float32)  # c * r * s = 576
    # 2x2 outputs: 576 > 32 * 4, on the GEMM (AVX-512); 6x6: 576 <= 32 * 36, on the blocked kernel.
    for size, heavy in ((2, True), (6, False)):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="fastconv"):
            fastconv.conv2d(np.zeros((1, 64, size, size), np.float32), w, padding=1, backend="c")
        names = " ".join(r.getMessage() for r in caplog.records)
        on_blocked = "NCHW converted at the call" in names
        want = {"avx512": not heavy, "avx2": True, "generic": False}[isa]
        assert on_blocked == want, (isa, size, names)


def test_eager_gemm_names_weights_packed_per_task(monkeypatch, caplog):
    """On the AVX2 table an eager GEMM whose images end in a panel of 1 or 2 columns (a 7x7 output:
    49 = 3 x 16 + 1) packs its weights per task, so the narrow kernel takes that column; a 14x14
    output (last panel 4 columns) reads them in place.  Other tables read them in place."""
    _needs_c()
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    isa = cbackend.isa()
    packs = isa == "avx2"
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        for hw, want in ((7, packs), (14, False)):
            caplog.clear()
            x = np.zeros((1, 64, hw, hw), np.float32)
            fastconv.conv2d(x, np.zeros((32, 64, 1, 1), np.float32), backend="c")
            ran = [r.getMessage() for r in caplog.records if "ran conv2d" in r.getMessage()]
            assert len(ran) == 1 and ("weights packed per task" in ran[0]) == want, (hw, ran)


def test_winograd_result_does_not_depend_on_the_thread_count():
    _needs_c()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 16, 30, 30), dtype=np.float32)  # 192+ tiles: threads own chunks
    w = rng.standard_normal((20, 16, 3, 3), dtype=np.float32)
    assert_same_bits_on_thread_counts(lambda: fastconv.conv2d(x, w, padding=1, algorithm="winograd", backend="c"))
