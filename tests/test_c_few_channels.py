"""The c backend's few-input-channel convolution (csrc/conv_fewc_f32.c), against torch.

A network's stem (3 channels, 7x7, stride 2) has a short reduction; the driver computes tiles of
8 output channels x 16/32/48 pixels (AVX-512) or 6 x 16 (AVX2) of one output row, its epilogue
fused in registers.  FASTCONV_F32_FEWC=on forces it wherever it can run (read per call), =off
leaves every problem to the GEMM driver; tests/test_c_isa.py reruns these tests under the AVX2
table and the portable one (where the GEMM driver takes them all).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import fastconv
from fastconv.backends import c as cbackend
from harness import Case, assert_same_bits_on_thread_counts, check


def _needs_c():
    ok, reason = cbackend.available()
    if not ok:
        pytest.skip(f"c unavailable: {reason}")


def _cases() -> list[Case]:
    cases = []

    def add(name, x, w, **kw):
        extra = {k: kw.pop(k) for k in ("bias", "residual") if k in kw}
        cases.append(Case("conv2d", name, x, w, kw, **extra))

    # The ResNet stem on smaller images: rows of 40 and 35 outputs (one 48-lane tile, masked).
    add("stem_c3_7x7s2", (1, 3, 80, 80), (64, 3, 7, 7), stride=2, padding=3, bias=True)
    add(
        "stem_c3_7x7s2_b2_relu_res",
        (2, 3, 69, 70),
        (64, 3, 7, 7),
        stride=2,
        padding=3,
        bias=True,
        residual=True,
        activation="relu",
    )
    for c in (1, 2, 3, 4):
        for k in (3, 5, 7):
            for stride in (1, 2):
                pad = k // 2 if (c + k) % 2 else 0
                add(
                    f"c{c}_k{k}_s{stride}_p{pad}",
                    (1 + (c + k + stride) % 2, c, 37, 45),
                    (20, c, k, k),
                    stride=stride,
                    padding=pad,
                    bias=(k != 5),
                )
    # Output widths on every tile split (16, 32, 48, 48+16 -> 32+32, 48+32+32, ...), channel
    # tails (k not a multiple of 8), asymmetric stride, dilation, the other activations.
    for ow in (16, 17, 31, 33, 48, 63, 64, 65, 97, 112, 113):
        add(f"ow{ow}", (1, 3, 5, ow + 2), (13, 3, 3, 3), bias=True)
    add("k1", (2, 3, 20, 40), (1, 3, 3, 3), padding=1)
    add("k9_silu_res", (1, 2, 12, 50), (9, 2, 3, 3), padding=1, bias=True, residual=True, activation="silu")
    add(
        "stride21_dil2_hardtanh",
        (1, 3, 21, 70),
        (24, 3, 3, 5),
        stride=(2, 1),
        dilation=2,
        padding=(1, 4),
        activation="hardtanh",
    )
    add("leaky_relu", (1, 4, 9, 40), (16, 4, 5, 5), padding=2, activation="leaky_relu")
    add("asym_pad", (1, 3, 11, 39), (8, 3, 3, 3), padding=(0, 2), stride=2)
    return cases


CASES = _cases()


@pytest.mark.parametrize("mode", ["on", "off"])
def test_few_channel_tile_edges(mode, monkeypatch):
    _needs_c()
    monkeypatch.setenv("FASTCONV_F32_FEWC", mode)
    for case in CASES:
        check(case, "c")


def test_few_channel_epilogue_on_nan_and_inf():
    _needs_c()
    for special in ("nan", "inf"):
        case = Case(
            "conv2d",
            f"stem_{special}",
            (1, 3, 30, 70),
            (16, 3, 7, 7),
            {"stride": 2, "padding": 3, "activation": "relu"},
            bias=True,
            special=special,
        )
        check(case, "c")


def test_few_channel_result_does_not_depend_on_the_thread_count():
    _needs_c()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 60, 66), dtype=np.float32)
    w = rng.standard_normal((24, 3, 7, 7), dtype=np.float32)
    assert_same_bits_on_thread_counts(lambda: fastconv.conv2d(x, w, stride=2, padding=3, backend="c"))


def test_few_channel_kernel_name(monkeypatch, caplog):
    """FASTCONV_VERBOSE names the driver that ran: the few-channel one on the stem with the AVX-512
    and AVX2 tables, the GEMM with the portable one, and FASTCONV_F32_FEWC=off hands it to the GEMM."""
    _needs_c()
    monkeypatch.setenv("FASTCONV_VERBOSE", "1")
    x = np.zeros((1, 3, 40, 64), np.float32)
    w = np.zeros((16, 3, 7, 7), np.float32)
    isa = cbackend.isa()
    tile = {"avx512": "8x48", "avx2": "6x16", "generic": "4x16"}[isa]
    gemm = f"conv2d f32 gemm {tile} {isa}"
    auto = {"avx512": "conv2d f32 few-channel 8x48 avx512", "avx2": "conv2d f32 few-channel 6x16 avx2"}.get(isa, gemm)
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        for mode, name in (("", auto), ("off", gemm)):
            monkeypatch.setenv("FASTCONV_F32_FEWC", mode)
            caplog.clear()
            fastconv.conv2d(x, w, stride=2, padding=3, backend="c")
            assert any(name in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
