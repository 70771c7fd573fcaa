"""Output-size arithmetic against torch, ids, and descriptor invariants."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fastconv.problem import (
    AdaptivePool2dProblem,
    BatchNormProblem,
    Conv2dProblem,
    Pool2dProblem,
    ReluProblem,
    adaptive_bins,
    conv_out_size,
    pool_out_size,
)


def test_conv_out_size_matches_torch():
    for n, k, s, p, d in itertools.product(range(1, 9), range(1, 5), range(1, 4), range(0, 3), range(1, 3)):
        if n + 2 * p < d * (k - 1) + 1:
            continue
        expected = F.conv2d(
            torch.zeros(1, 1, n, 1), torch.zeros(1, 1, k, 1), stride=(s, 1), padding=(p, 0), dilation=(d, 1)
        ).shape[2]
        assert conv_out_size(n, k, s, p, p, d) == expected, (n, k, s, p, d)


def test_pool_out_size_matches_torch_including_ceil_mode():
    for n, k, s, p, d, ceil in itertools.product(
        range(1, 10), range(1, 5), range(1, 5), range(0, 3), range(1, 3), (False, True)
    ):
        if p > k // 2 or n + 2 * p < d * (k - 1) + 1:
            continue
        try:
            expected = F.max_pool2d(torch.zeros(1, 1, n, 1), (k, 1), (s, 1), (p, 0), (d, 1), ceil).shape[2]
        except RuntimeError:  # torch: output too small
            expected = 0
        assert max(pool_out_size(n, k, s, p, d, ceil), 0) == max(expected, 0), (n, k, s, p, d, ceil)


def test_adaptive_bins_match_torch():
    for n, o in itertools.product(range(1, 12), range(1, 12)):
        x = torch.arange(n, dtype=torch.float64).reshape(1, 1, n, 1)
        # Each bin's mean of 0..n-1 pins down its [start, end).
        means = F.adaptive_avg_pool2d(x, (o, 1)).flatten().tolist()
        assert [(a + b - 1) / 2 for a, b in adaptive_bins(n, o)] == pytest.approx(means)


def test_avg_divisor_matches_torch():
    for k, s, p, ceil, cip in itertools.product(range(1, 5), range(1, 4), range(0, 3), (False, True), (False, True)):
        if p > k // 2:
            continue
        prob = Pool2dProblem("avg", 1, 1, 7, 7, (k, k), (s, s), (p, p), ceil_mode=ceil, count_include_pad=cip)
        ones = F.avg_pool2d(torch.ones(1, 1, 7, 7, dtype=torch.float64), k, s, p, ceil, cip)[0, 0]
        for i in range(prob.oh):
            for j in range(prob.ow):
                real = (min(i * s - p + k, 7) - max(i * s - p, 0)) * (min(j * s - p + k, 7) - max(j * s - p, 0))
                assert real / prob.divisor(i, j) == pytest.approx(ones[i, j].item())


def test_ids():
    p = Conv2dProblem(8, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32")
    assert p.id == "n8_c64h56w56_k64r3s3_st1p1d1g1_f32"
    q = Conv2dProblem(
        1, 4, 9, 8, 6, 4, 2, (1, 2), (1, 2, 0, 1), (2, 1), 2, "float64", bias=True, residual=True, activation="relu"
    )
    assert q.id == "n1_c4h9w8_k6r4s2_st1x2p1-2x0-1d2x1g2_bias_res_relu_f64"
    assert Pool2dProblem("max", 1, 64, 112, 112, (3, 3), (2, 2), (1, 1)).id == "max_n1_c64h112w112_k3_st2p1d1_f32"
    assert AdaptivePool2dProblem(2, 3, 7, 7, 1, 1).id == "aavg_n2_c3h7w7_o1_f32"
    assert BatchNormProblem(8, 64, (56, 56), True).id == "bn_n8_c64h56w56_train_f32"
    assert ReluProblem((2, 3)).id == "relu_2x3_f32"


def test_flops_count_two_per_multiply_add():
    p = Conv2dProblem(1, 2, 3, 3, 4, 3, 3, padding=(1, 1, 1, 1))
    assert p.macs == 1 * 4 * 3 * 3 * 2 * 3 * 3 and p.flops == 2 * p.macs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(groups=3), "in_channels must be divisible by groups, got in_channels=4, groups=3"),
        (dict(stride=(0, 1)), "stride must be positive"),
        (dict(padding=(0, 0, -1, 0)), "padding must be non-negative"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(r=9), "kernel size can't be greater"),
    ],
)
def test_conv_problem_invariants(kwargs, match):
    base = dict(n=1, c=4, h=5, w=5, k=4, r=3, s=3)
    with pytest.raises(ValueError, match=match):
        Conv2dProblem(**{**base, **kwargs})


def test_problems_are_frozen_and_hashable():
    p = ReluProblem((3,))
    with pytest.raises(AttributeError):
        p.shape = (4,)
    assert len({p, ReluProblem((3,))}) == 1
