"""Named edge cases for the backward ops: forward-shaped problems plus what stresses the gradient.

Every forward option appears (stride, each padding form and mode, dilation, groups, depthwise,
bias; pooling's ceil mode, dilation, divisors, -inf and NaN inputs, ties; batch norm in both
modes), at sizes small enough for the naive backend, and around the C kernels' tile edges.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastconv.api import _conv_padding
from fastconv.problem import AdaptivePool2dProblem, BatchNormProblem, Conv2dProblem, Pool2dProblem, ReluProblem


@dataclass(frozen=True)
class BwdCase:
    name: str
    problem: object
    special: str | None = None  # "nan", "inf", "ties", "neg", "large": values that stress the gradient

    @property
    def id(self) -> str:
        return f"{self.problem.op}-{self.name}-{self.problem.dtype[-2:]}"


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv(name, x, w, dtype, stride=1, padding=0, dilation=1, groups=1, bias=True, mode="zeros", special=None):
    stride, dilation = pair(stride), pair(dilation)
    pads = _conv_padding(padding, w[2], w[3], dilation, stride)
    p = Conv2dProblem(*x, w[0], w[2], w[3], stride, pads, dilation, groups, dtype, bias=bias, padding_mode=mode)
    return BwdCase(name, p, special)


def conv_cases(dtype: str) -> list[BwdCase]:
    c = [
        _conv("basic3x3", (2, 3, 8, 8), (4, 3, 3, 3), dtype, padding=1),
        _conv("no_bias", (2, 3, 7, 9), (5, 3, 3, 3), dtype, bias=False),
        _conv("image1x1_pad", (1, 2, 1, 1), (3, 2, 3, 3), dtype, padding=1),
        _conv("batch0", (0, 3, 6, 6), (4, 3, 3, 3), dtype),
        _conv("kernel_eq_input", (2, 3, 5, 5), (2, 3, 5, 5), dtype),
        _conv("rect_kernel", (2, 3, 9, 11), (4, 3, 2, 5), dtype, padding=(1, 2)),
        _conv("stride2", (2, 3, 9, 9), (4, 3, 3, 3), dtype, stride=2, padding=1),
        _conv("stride_hw", (1, 2, 10, 11), (3, 2, 3, 3), dtype, stride=(1, 3), padding=(0, 1)),
        _conv("stride_gt_kernel", (1, 2, 11, 11), (3, 2, 2, 2), dtype, stride=4),
        _conv("stride3_dil_groups", (2, 4, 13, 12), (6, 2, 3, 3), dtype, stride=3, padding=2, dilation=2, groups=2),
        _conv("dilation_hw", (1, 2, 12, 13), (3, 2, 3, 2), dtype, dilation=(3, 2), padding=(1, 3)),
        _conv("pad_gt_kernel", (1, 2, 4, 4), (2, 2, 3, 3), dtype, padding=4),
        _conv("same_even", (2, 3, 7, 8), (4, 3, 4, 2), dtype, padding="same"),
        _conv("same_even_dil", (1, 2, 9, 9), (3, 2, 4, 4), dtype, padding="same", dilation=2),
        _conv("valid", (1, 3, 6, 7), (2, 3, 3, 3), dtype, padding="valid"),
        _conv("groups3_stride", (1, 6, 9, 9), (9, 2, 3, 3), dtype, groups=3, stride=2),
        _conv("depthwise", (2, 5, 8, 8), (5, 1, 3, 3), dtype, groups=5, padding=1),
        _conv("depthwise_mult2_s2", (1, 4, 7, 7), (8, 1, 3, 3), dtype, groups=4, padding=1, stride=2),
        _conv("pointwise", (2, 17, 5, 5), (33, 17, 1, 1), dtype),
        _conv("pointwise_s2", (2, 8, 9, 9), (16, 8, 1, 1), dtype, stride=2),
        _conv("channels33", (1, 33, 6, 7), (17, 33, 3, 3), dtype, padding=1),
        _conv("stem7x7s2", (1, 3, 23, 23), (8, 3, 7, 7), dtype, stride=2, padding=3),
        _conv("wide_rows", (2, 4, 3, 53), (9, 4, 3, 3), dtype, padding=1),
        _conv("large_values", (1, 3, 6, 6), (4, 3, 3, 3), dtype, special="large"),
        _conv("nan_inputs", (1, 3, 6, 6), (4, 3, 3, 3), dtype, padding=1, special="nan"),
    ]
    for mode in ("reflect", "replicate", "circular"):
        c.append(_conv(mode, (2, 3, 6, 7), (4, 3, 3, 3), dtype, padding=1, mode=mode))
        c.append(_conv(f"{mode}_asym_same", (1, 2, 6, 6), (3, 2, 4, 3), dtype, padding="same", mode=mode))
    c.append(_conv("circular_pad_eq_size", (1, 2, 3, 3), (2, 2, 3, 3), dtype, padding=3, mode="circular"))
    return c


def pool_cases(dtype: str) -> list[BwdCase]:
    c = []

    def add(
        kind,
        name,
        x,
        kernel,
        stride=None,
        padding=0,
        dilation=1,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
        special=None,
    ):
        kernel = pair(kernel)
        p = Pool2dProblem(
            kind,
            *x,
            kernel,
            pair(stride) if stride is not None else kernel,
            pair(padding),
            pair(dilation),
            ceil_mode,
            count_include_pad,
            divisor_override,
            dtype,
        )
        c.append(BwdCase(name, p, special))

    for kind in ("max", "avg"):
        add(kind, "k2", (2, 3, 8, 8), 2)
        add(kind, "k3s2p1", (2, 3, 9, 9), 3, 2, 1)
        add(kind, "overlap_s1", (1, 17, 6, 7), 3, 1, 1)
        add(kind, "rect", (1, 2, 9, 11), (2, 3), (1, 2), (1, 1))
        add(kind, "ceil_pad", (1, 2, 6, 6), 3, 2, 1, ceil_mode=True)
        add(kind, "ceil_drop_last", (1, 1, 5, 5), 2, 2, 1, ceil_mode=True)
        add(kind, "ceil_stride_gt_kernel", (1, 2, 7, 7), 2, 3, ceil_mode=True)
        add(kind, "batch0", (0, 3, 6, 6), 2)
        add(kind, "image1x1", (2, 3, 1, 1), 1)
        add(kind, "pad_half", (1, 2, 4, 4), 4, padding=2)
        add(kind, "nan", (1, 3, 8, 8), 3, 2, 1, special="nan")
        add(kind, "neg_inf", (1, 3, 8, 8), 2, special="inf")
    add("max", "ties", (2, 3, 8, 8), 3, 1, 1, special="ties")
    add("max", "ties_s2", (1, 2, 9, 9), 3, 2, 1, special="ties")
    add("max", "all_neg_inf", (1, 2, 6, 6), 3, 2, 1, special="all_inf")
    add("max", "negative", (1, 3, 6, 6), 3, 2, 1, special="neg")
    add("max", "dilation2", (1, 2, 9, 9), 3, 1, 1, dilation=2)
    add("max", "dilation_ceil", (1, 2, 8, 8), 2, 2, 1, dilation=3, ceil_mode=True)
    add("avg", "no_pad_count", (1, 3, 7, 7), 3, 2, 1, count_include_pad=False)
    add("avg", "no_pad_count_ceil", (1, 3, 6, 6), 3, 2, 1, ceil_mode=True, count_include_pad=False)
    add("avg", "divisor", (1, 2, 6, 6), 3, 2, 1, divisor_override=5)
    add("avg", "divisor_neg_ceil", (1, 2, 7, 7), 3, 2, 1, ceil_mode=True, divisor_override=-3)
    for name, x, out in (
        ("global", (2, 8, 7, 7), (1, 1)),
        ("down", (2, 3, 10, 9), (3, 4)),
        ("up", (1, 2, 3, 2), (5, 7)),
        ("uneven", (1, 3, 7, 11), (3, 5)),
        ("batch0", (0, 2, 4, 4), (2, 2)),
        ("empty_out", (1, 2, 4, 4), (0, 2)),
    ):
        c.append(BwdCase(name, AdaptivePool2dProblem(*x, *out, dtype=dtype)))
    return c


def bn_relu_cases(dtype: str) -> list[BwdCase]:
    def bn(name, shape, training, eps=1e-5, special=None):
        return BwdCase(name, BatchNormProblem(shape[0], shape[1], tuple(shape[2:]), training, eps, dtype), special)

    return [
        bn("eval", (2, 3, 5, 5), False),
        bn("eval_eps0", (2, 3, 4, 4), False, eps=0.0),
        bn("train", (4, 3, 5, 5), True),
        bn("train_eps", (2, 5, 3, 4), True, eps=1e-3),
        bn("train_l1", (5, 4, 1, 1), True),
        bn("train_channels17", (2, 17, 6, 6), True),
        bn("train_2d", (6, 4), True),
        bn("train_5d", (2, 3, 2, 3, 4), True),
        bn("train_large", (2, 3, 8, 8), True, special="large"),
        bn("batch0", (0, 3, 4, 4), True),
        BwdCase("4d", ReluProblem((2, 3, 5, 5), dtype)),
        BwdCase("odd", ReluProblem((3, 17, 33), dtype)),
        BwdCase("scalar", ReluProblem((), dtype)),
        BwdCase("empty", ReluProblem((0, 4), dtype)),
        BwdCase("nan_zero", ReluProblem((4, 9), dtype), special="nan"),
    ]


def all_cases() -> list[BwdCase]:
    return [
        case
        for dtype in ("float32", "float64")
        for case in (*conv_cases(dtype), *pool_cases(dtype), *bn_relu_cases(dtype))
    ]
