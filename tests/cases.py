"""The named edge cases every backend is held to (ops x options x sizes around the tile edges).

Sizes one below, equal to and one above the kernels' tiles: 16-channel vector blocks (15/16/17,
31/32/33 channels), output rows of 6, 8, 14 and 16 pixels (5..17 wide), and the degenerate ones:
C=1, K=1, 1x1 images, odd sizes, groups, depthwise, dilation, asymmetric everything.
"""

from __future__ import annotations

from harness import Case


def conv_cases(dtype: str = "float32") -> list[Case]:
    c = []

    def add(name, x, w, bias=True, residual=False, special=None, **kw):
        c.append(Case("conv2d", name, x, w, kw, bias=bias, residual=residual, dtype=dtype, special=special))

    add("basic3x3", (2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    add("no_bias", (2, 3, 7, 9), (5, 3, 3, 3), bias=False)
    add("c1_k1", (1, 1, 5, 5), (1, 1, 3, 3))
    add("image1x1_k1x1", (3, 4, 1, 1), (6, 4, 1, 1))
    add("image1x1_pad", (1, 2, 1, 1), (3, 2, 3, 3), padding=1)
    add("unbatched", (3, 6, 6), (4, 3, 3, 3), padding=1)
    add("batch0", (0, 3, 6, 6), (4, 3, 3, 3))
    add("kernel_eq_input", (2, 3, 5, 5), (2, 3, 5, 5))
    add("rect_kernel", (2, 3, 9, 11), (4, 3, 2, 5), padding=(1, 2))
    add("stride2", (2, 3, 9, 9), (4, 3, 3, 3), stride=2, padding=1)
    add("stride_hw", (1, 2, 10, 11), (3, 2, 3, 3), stride=(1, 3), padding=(0, 1))
    add("stride_gt_kernel", (1, 2, 11, 11), (3, 2, 2, 2), stride=4)
    add("dilation2", (1, 3, 11, 11), (4, 3, 3, 3), dilation=2, padding=2)
    add("dilation_hw", (1, 2, 12, 13), (3, 2, 3, 2), dilation=(3, 2), padding=(1, 3))
    add("pad_gt_kernel", (1, 2, 4, 4), (2, 2, 3, 3), padding=4)
    add("same_odd", (2, 3, 7, 8), (4, 3, 3, 5), padding="same")
    add("same_even", (2, 3, 7, 8), (4, 3, 4, 2), padding="same")
    add("same_even_dil", (1, 2, 9, 9), (3, 2, 4, 4), padding="same", dilation=2)
    add("same_dil3", (1, 2, 9, 9), (3, 2, 2, 3), padding="same", dilation=3)
    add("valid", (1, 3, 6, 7), (2, 3, 3, 3), padding="valid")
    add("groups2", (2, 4, 7, 7), (6, 2, 3, 3), groups=2, padding=1)
    add("groups3_stride", (1, 6, 9, 9), (9, 2, 3, 3), groups=3, stride=2)
    add("depthwise", (2, 5, 8, 8), (5, 1, 3, 3), groups=5, padding=1)
    add("depthwise16", (1, 16, 9, 9), (16, 1, 3, 3), groups=16, padding=1)
    add("depthwise17_s2", (1, 17, 10, 10), (17, 1, 3, 3), groups=17, padding=1, stride=2)
    add("depthwise_mult2", (1, 4, 6, 6), (8, 1, 3, 3), groups=4, padding=1)
    add("depthwise_dil", (1, 8, 10, 10), (8, 1, 3, 3), groups=8, dilation=2, padding=2)
    add("pointwise_s2", (2, 8, 9, 9), (16, 8, 1, 1), stride=2)
    add("pointwise_pad", (1, 3, 4, 4), (5, 3, 1, 1), padding=1)
    for ch in (15, 16, 17, 31, 32, 33):
        add(f"channels{ch}", (1, ch, 6, 6), (ch, ch, 3, 3), padding=1)
        add(f"pointwise{ch}", (2, ch, 5, 5), (ch, ch, 1, 1))
    for width in (5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 28, 29):
        add(f"width{width}", (1, 4, 3, width), (16, 4, 3, 3), padding=1)
    add("rows_odd", (1, 3, 19, 4), (17, 3, 3, 3), padding=(2, 0))
    add("stem7x7s2", (1, 3, 23, 23), (8, 3, 7, 7), stride=2, padding=3)
    add("large_values", (1, 3, 6, 6), (4, 3, 3, 3), special="large")
    add("nan_inputs", (1, 3, 6, 6), (4, 3, 3, 3), special="nan", padding=1)
    for mode in ("reflect", "replicate", "circular"):
        add(f"{mode}", (2, 3, 6, 7), (4, 3, 3, 3), padding=1, padding_mode=mode)
        add(f"{mode}_asym", (1, 2, 5, 6), (3, 2, 3, 2), padding=(2, 1), padding_mode=mode)
        add(f"{mode}_same_even", (1, 2, 6, 6), (3, 2, 4, 4), padding="same", padding_mode=mode)
    add("circular_pad_eq_size", (1, 2, 3, 3), (2, 2, 3, 3), padding=3, padding_mode="circular")
    add("residual", (2, 3, 6, 6), (4, 3, 3, 3), residual=True, padding=1)
    add("residual_relu", (2, 8, 6, 6), (8, 8, 3, 3), residual=True, padding=1, activation="relu")
    add("relu_only", (2, 3, 6, 6), (4, 3, 3, 3), padding=1, activation="relu")
    add("residual_relu_1x1", (2, 16, 5, 5), (32, 16, 1, 1), residual=True, activation="relu")
    # Many input channels, few pixels: "auto" on the c backend takes the blocked kernel (AVX2).
    add("pointwise_wide", (2, 512, 3, 3), (24, 512, 1, 1), residual=True, activation="relu")
    add("pointwise_wide_s2", (1, 512, 5, 5), (32, 512, 1, 1), stride=2)
    add("residual_relu_dw", (1, 6, 5, 5), (6, 1, 3, 3), groups=6, residual=True, padding=1, activation="relu")
    add("residual_relu_unbatched", (4, 5, 5), (4, 4, 3, 3), residual=True, padding=1, activation="relu")
    return c


def pool_cases(dtype: str = "float32") -> list[Case]:
    c = []

    def add(op, name, x, special=None, **kw):
        c.append(Case(op, name, x, None, kw, dtype=dtype, special=special))

    for op in ("max_pool2d", "avg_pool2d"):
        add(op, "k2", (2, 3, 8, 8), kernel_size=2)
        add(op, "k3s2p1", (2, 3, 9, 9), kernel_size=3, stride=2, padding=1)
        add(op, "k3s2p1_even", (1, 4, 10, 10), kernel_size=3, stride=2, padding=1)
        add(op, "rect", (1, 2, 9, 11), kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))
        add(op, "ceil", (1, 2, 5, 5), kernel_size=2, ceil_mode=True)
        add(op, "ceil_pad", (1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True)
        add(op, "ceil_drop_last", (1, 1, 5, 5), kernel_size=2, stride=2, padding=1, ceil_mode=True)
        add(op, "ceil_stride_gt_kernel", (1, 2, 7, 7), kernel_size=2, stride=3, ceil_mode=True)
        add(op, "unbatched", (3, 7, 7), kernel_size=3, stride=2, padding=1)
        add(op, "batch0", (0, 3, 6, 6), kernel_size=2)
        add(op, "image1x1", (2, 3, 1, 1), kernel_size=1)
        add(op, "kernel_eq_input", (1, 2, 4, 5), kernel_size=(4, 5))
        add(op, "pad_half", (1, 2, 4, 4), kernel_size=4, padding=2)
        add(op, "stride1", (1, 17, 6, 7), kernel_size=3, stride=1, padding=1)
        add(op, "channels33", (2, 33, 9, 9), kernel_size=3, stride=2, padding=1)
        add(op, "wide", (1, 2, 3, 37), kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))
        add(op, "negative", (1, 3, 6, 6), special="neg", kernel_size=3, stride=2, padding=1)
        add(op, "nan", (1, 3, 8, 8), special="nan", kernel_size=3, stride=2, padding=1)
        add(op, "neg_inf", (1, 3, 8, 8), special="inf", kernel_size=2)
    add("max_pool2d", "dilation2", (1, 2, 9, 9), kernel_size=3, dilation=2, padding=1)
    add("max_pool2d", "dilation_ceil", (1, 2, 8, 8), kernel_size=2, stride=2, dilation=3, padding=1, ceil_mode=True)
    add("max_pool2d", "dilation_hw", (1, 2, 10, 9), kernel_size=(2, 3), dilation=(2, 1), stride=(2, 1))
    add("avg_pool2d", "no_pad_count", (1, 3, 7, 7), kernel_size=3, stride=2, padding=1, count_include_pad=False)
    add(
        "avg_pool2d",
        "no_pad_count_ceil",
        (1, 3, 6, 6),
        kernel_size=3,
        stride=2,
        padding=1,
        ceil_mode=True,
        count_include_pad=False,
    )
    add("avg_pool2d", "divisor", (1, 2, 6, 6), kernel_size=3, stride=2, padding=1, divisor_override=5)
    add("avg_pool2d", "divisor_neg", (1, 2, 6, 6), kernel_size=2, divisor_override=-3)
    add(
        "avg_pool2d",
        "divisor_ceil",
        (1, 2, 7, 7),
        kernel_size=3,
        stride=2,
        padding=1,
        ceil_mode=True,
        divisor_override=2,
    )
    for name, x, out in (
        ("global", (2, 8, 7, 7), 1),
        ("global_short", (2, 3, 2, 3), 1),  # fewer values than the 8 partial sums
        ("global_nan", (1, 3, 5, 5), (1, 1)),
        ("same", (1, 2, 5, 5), 5),
        ("down", (2, 3, 10, 9), (3, 4)),
        ("up", (1, 2, 3, 2), (5, 7)),
        ("none", (1, 2, 6, 5), (None, 2)),
        ("uneven", (1, 3, 7, 11), (3, 5)),
        ("unbatched", (3, 8, 8), 3),
        ("batch0", (0, 2, 4, 4), 2),
        ("image1x1", (2, 3, 1, 1), (2, 2)),
        ("channels17", (2, 17, 14, 14), 7),
        ("nan", (1, 2, 6, 6), 2),
    ):
        add("adaptive_avg_pool2d", name, x, special="nan" if name.endswith("nan") else None, output_size=out)
    return c


def bn_relu_cases(dtype: str = "float32") -> list[Case]:
    c = []

    def add(op, name, x, special=None, **kw):
        c.append(Case(op, name, x, None, kw, dtype=dtype, special=special))

    add("batch_norm", "eval", (2, 3, 5, 5))
    add("batch_norm", "eval_no_affine", (2, 3, 5, 5), affine=False)
    add("batch_norm", "train", (4, 3, 5, 5), training=True, momentum=0.1)
    add("batch_norm", "train_momentum", (2, 5, 3, 4), training=True, momentum=0.37, eps=1e-3)
    add("batch_norm", "train_no_affine", (3, 2, 4, 4), training=True, affine=False)
    add("batch_norm", "train_n1", (1, 4, 3, 3), training=True)
    add("batch_norm", "train_l1", (5, 4, 1, 1), training=True)
    add("batch_norm", "train_momentum1", (3, 4, 2, 2), training=True, momentum=1.0)
    add("batch_norm", "channels17", (2, 17, 6, 6), training=True)
    add("batch_norm", "eps0", (2, 3, 4, 4), eps=0.0)
    add("batch_norm", "eps0_zero_var", (2, 3, 4, 4), special="zero_var", eps=0.0)
    add("batch_norm", "input2d", (6, 4))
    add("batch_norm", "input2d_train", (6, 4), training=True)
    add("batch_norm", "input3d_train", (3, 4, 7), training=True)
    add("batch_norm", "input5d", (2, 3, 2, 3, 4), training=True)
    add("batch_norm", "batch0", (0, 3, 4, 4), training=True)
    add("batch_norm", "large", (2, 3, 8, 8), special="large", training=True)
    add("batch_norm", "nan", (2, 3, 4, 4), special="nan")
    for name, shape in (
        ("4d", (2, 3, 5, 5)),
        ("1d", (37,)),
        ("scalar", ()),
        ("empty", (0, 4)),
        ("5d", (1, 2, 3, 4, 5)),
        ("odd", (3, 17, 33)),
    ):
        add("relu", name, shape)
    add("relu", "nan", (4, 9), special="nan")
    add("relu", "inf", (4, 9), special="inf")
    return c


#: The activations besides relu, with the parameters a case may give them.
ACTIVATIONS = ("relu6", "leaky_relu", "hardtanh", "sigmoid", "silu", "hardswish")


def api_cases(dtype: str = "float32") -> list[Case]:
    """max_pool2d(return_indices), adaptive_max_pool2d, linear, the activations, and the
    activations fused into convolution epilogues (GEMM, 1x1, depthwise/direct paths)."""
    c = []

    def add(op, name, x, w=None, special=None, bias=False, residual=False, **kw):
        c.append(Case(op, name, x, w, kw, bias=bias, residual=residual, dtype=dtype, special=special))

    for name, x, special, kw in (
        ("idx_k2", (2, 3, 8, 8), None, dict(kernel_size=2)),
        ("idx_k3s2p1", (2, 3, 9, 9), None, dict(kernel_size=3, stride=2, padding=1)),
        ("idx_ceil_pad", (1, 2, 6, 6), None, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
        ("idx_dilation", (1, 2, 9, 9), None, dict(kernel_size=3, dilation=2, padding=1)),
        ("idx_dilation_ceil", (1, 2, 8, 8), None, dict(kernel_size=2, stride=2, dilation=3, padding=1, ceil_mode=True)),
        ("idx_rect", (1, 2, 9, 11), None, dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
        ("idx_unbatched", (3, 7, 7), None, dict(kernel_size=3, stride=2, padding=1)),
        ("idx_batch0", (0, 3, 6, 6), None, dict(kernel_size=2)),
        ("idx_image1x1", (2, 3, 1, 1), None, dict(kernel_size=1)),
        ("idx_nan", (1, 3, 8, 8), "nan", dict(kernel_size=3, stride=2, padding=1)),
        ("idx_neg_inf", (1, 3, 8, 8), "inf", dict(kernel_size=2)),
        ("idx_ties", (2, 3, 7, 7), "ties", dict(kernel_size=3, stride=1, padding=1)),
        ("idx_all_neg_inf", (1, 2, 6, 6), "all_neg_inf", dict(kernel_size=3, stride=2, padding=1)),
        ("idx_negative", (1, 3, 6, 6), "neg", dict(kernel_size=3, stride=2, padding=1)),
        ("idx_channels33", (2, 33, 9, 9), None, dict(kernel_size=3, stride=2, padding=1)),
    ):
        add("max_pool2d", name, x, special=special, return_indices=True, **kw)
    for name, x, out, special in (
        ("global", (2, 8, 7, 7), 1, None),
        ("same", (1, 2, 5, 5), 5, None),
        ("down", (2, 3, 10, 9), (3, 4), None),
        ("up", (1, 2, 3, 2), (5, 7), None),
        ("none", (1, 2, 6, 5), (None, 2), None),
        ("uneven", (1, 3, 7, 11), (3, 5), None),
        ("unbatched", (3, 8, 8), 3, None),
        ("batch0", (0, 2, 4, 4), 2, None),
        ("out0", (1, 2, 4, 4), (0, 2), None),
        ("image1x1", (2, 3, 1, 1), (2, 2), None),
        ("nan", (1, 2, 6, 6), 2, "nan"),
        ("ties", (2, 3, 9, 9), (4, 3), "ties"),
        ("all_neg_inf", (1, 2, 5, 5), 2, "all_neg_inf"),
    ):
        add("adaptive_max_pool2d", name, x, special=special, output_size=out, return_indices=True)
        if name in ("down", "unbatched", "batch0"):
            add("adaptive_max_pool2d", name + "_values", x, special=special, output_size=out)
    for name, x, w, bias, special in (
        ("basic", (4, 8), (5, 8), True, None),
        ("no_bias", (4, 8), (5, 8), False, None),
        ("batch3d", (2, 3, 8), (6, 8), True, None),
        ("vector", (8,), (3, 8), True, None),
        ("in1", (3, 1), (2, 1), True, None),
        ("in0", (3, 0), (2, 0), True, None),
        ("rows0", (0, 8), (4, 8), True, None),
        ("wide", (7, 33), (17, 33), True, None),
        ("large", (3, 16), (4, 16), True, "large"),
        ("nan", (3, 16), (4, 16), True, "nan"),
    ):
        add("linear", name, x, w, special=special, bias=bias)
    for kind in ACTIVATIONS:
        for name, shape, special in (
            ("4d", (2, 3, 5, 5), "large"),
            ("1d", (37,), None),
            ("scalar", (), None),
            ("empty", (0, 4), None),
            ("nan", (4, 9), "nan"),
            ("inf", (4, 9), "inf"),
        ):
            add(kind, name, shape, special=special)
    add("leaky_relu", "slope0.2", (3, 7), negative_slope=0.2)
    add("leaky_relu", "slope_neg", (3, 7), special="inf", negative_slope=-0.5)
    add("hardtanh", "bounds", (3, 7), special="large", min_val=-2.0, max_val=0.5)
    add("hardtanh", "equal_bounds", (3, 7), min_val=0.25, max_val=0.25)
    # Fused epilogues: the GEMM path (3x3, 1x1), the direct loops (depthwise), with and without a residual.
    for kind in ACTIVATIONS:
        add("conv2d", f"act_{kind}", (2, 8, 6, 6), (8, 8, 3, 3), bias=True, residual=True, padding=1, activation=kind)
        if kind in ("relu6", "hardtanh"):  # the clamps share the other activations' paths
            continue
        add("conv2d", f"act_{kind}_1x1", (2, 16, 5, 5), (17, 16, 1, 1), bias=True, activation=kind)
        add(
            "conv2d",
            f"act_{kind}_dw",
            (1, 6, 5, 5),
            (6, 1, 3, 3),
            bias=True,
            residual=True,
            groups=6,
            padding=1,
            activation=kind,
        )
    add("conv2d", "act_leaky_relu0.3", (1, 4, 6, 6), (5, 4, 3, 3), bias=True, padding=1, activation=("leaky_relu", 0.3))
    add(
        "conv2d",
        "act_hardtanh_bounds",
        (1, 4, 6, 6),
        (5, 4, 3, 3),
        bias=True,
        residual=True,
        padding=1,
        activation=("hardtanh", -0.5, 0.5),
    )
    add("conv2d", "act_silu_nan", (1, 3, 6, 6), (4, 3, 3, 3), special="nan", padding=1, activation="silu")
    add("conv2d", "act_sigmoid_large", (1, 3, 6, 6), (4, 3, 3, 3), special="large", activation="sigmoid")
    return c


def all_cases() -> list[Case]:
    return [
        case
        for dtype in ("float32", "float64")
        for case in (*conv_cases(dtype), *pool_cases(dtype), *bn_relu_cases(dtype), *api_cases(dtype))
    ]
