"""Hypothesis strategies that draw valid problems from the whole option space torch accepts.

Each strategy draws the options first and then sizes that make them valid (padded input at least
the dilated kernel, reflect padding below the input size, ...), so nothing is filtered away.
"""

from __future__ import annotations

from hypothesis import strategies as st

from harness import Case

DTYPES = st.sampled_from(["float32", "float64"])
#: conv2d's activation argument beyond relu: names, and tuples with parameters.
ACTIVATION_SPECS = [
    "relu6",
    "leaky_relu",
    ("leaky_relu", 0.3),
    "hardtanh",
    ("hardtanh", -0.4, 0.8),
    "sigmoid",
    "silu",
    "hardswish",
]


def _pair(draw, lo, hi):
    a = draw(st.integers(lo, hi))
    return a if draw(st.booleans()) else (a, draw(st.integers(lo, hi)))


def _both(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@st.composite
def conv_cases(draw, max_size: int = 12) -> Case:
    dtype = draw(DTYPES)
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    depthwise = groups > 1 and draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 4))
    kg = draw(st.integers(1, 3))
    c, k = groups * cg, groups * kg
    n = draw(st.integers(0, 2))
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = _pair(draw, 1, 3)
    dh, dw = _both(dilation)
    mode = draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect", "replicate", "circular"]))
    kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if kind == "same":
        stride, padding = 1, "same"
        pads = ((dh * (r - 1) + 1) // 2, (dw * (s - 1) + 1) // 2)  # the larger side
    elif kind == "valid":
        stride, padding, pads = _pair(draw, 1, 3), "valid", (0, 0)
    else:
        stride = _pair(draw, 1, 3)
        padding = _pair(draw, 0, 3) if kind == "pair" else draw(st.integers(0, 3))
        pads = _both(padding)
    # Sizes that make the options valid: the padded input holds the dilated kernel, and reflect
    # padding stays below the input size (circular: at most it).
    need = [max(1, d * (kk - 1) + 1 - 2 * p) for d, kk, p in ((dh, r, pads[0]), (dw, s, pads[1]))]
    if kind == "same":
        need = [1, 1]
    if mode == "reflect":
        need = [max(nd, p + 1) for nd, p in zip(need, pads)]
    elif mode == "circular":
        need = [max(nd, p) for nd, p in zip(need, pads)]
    h = draw(st.integers(need[0], max(need[0], max_size)))
    w = draw(st.integers(need[1], max(need[1], max_size)))
    unbatched = n == 1 and draw(st.booleans())
    x = (c, h, w) if unbatched else (n, c, h, w)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if mode != "zeros":
        kwargs["padding_mode"] = mode
    activation = draw(st.sampled_from([None, "relu", None, "relu", *ACTIVATION_SPECS]))
    if activation:
        kwargs["activation"] = activation
    return Case(
        "conv2d",
        "hypothesis",
        x,
        (k, cg, r, s),
        kwargs,
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        dtype=dtype,
    )


@st.composite
def pool_cases(draw, max_size: int = 12, indices: bool = True) -> Case:
    dtype = draw(DTYPES)
    op = draw(st.sampled_from(["max_pool2d", "avg_pool2d"]))
    kernel = _pair(draw, 1, 4)
    kh, kw = _both(kernel)
    padding = draw(st.sampled_from([0, "half", "pair"]))
    if padding == "half":
        padding = min(kh, kw) // 2
    elif padding == "pair":
        padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    ph, pw = _both(padding)
    dilation = _pair(draw, 1, 3) if op == "max_pool2d" else 1
    dh, dw = _both(dilation)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), max_size + dh * kh))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), max_size + dw * kw))
    kwargs = dict(
        kernel_size=kernel,
        stride=draw(st.one_of(st.none(), st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)))),
        padding=padding,
        ceil_mode=draw(st.booleans()),
    )
    if op == "max_pool2d":
        kwargs["dilation"] = dilation
        if indices and draw(st.booleans()):  # indices=False: for backends without max_pool2d_with_indices
            kwargs["return_indices"] = True
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        kwargs["divisor_override"] = draw(st.sampled_from([None, None, None, 1, 3, -2]))
    n = draw(st.integers(0, 2))
    c = draw(st.integers(1, 5))
    x = (c, h, w) if n == 1 and draw(st.booleans()) else (n, c, h, w)
    special = draw(st.sampled_from([None, None, None, "nan", "inf", "neg", "ties"]))
    return Case(op, "hypothesis", x, None, kwargs, dtype=dtype, special=special)


@st.composite
def adaptive_cases(draw) -> Case:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    out = draw(
        st.one_of(
            st.integers(0, 9),
            st.tuples(st.one_of(st.none(), st.integers(0, 9)), st.one_of(st.none(), st.integers(0, 9))),
        )
    )
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 5))
    x = (c, h, w) if n == 1 and draw(st.booleans()) else (n, c, h, w)
    return Case("adaptive_avg_pool2d", "hypothesis", x, None, {"output_size": out}, dtype=draw(DTYPES))


@st.composite
def bn_cases(draw) -> Case:
    training = draw(st.booleans())
    n, c = draw(st.integers(0, 4)), draw(st.integers(1, 6))
    spatial = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=3)))
    count = n * (1 if not spatial else __import__("math").prod(spatial))
    if training and count == 1:
        n = 2
    kwargs = dict(
        training=training,
        momentum=draw(st.floats(0.0, 1.0)),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5] + ([] if training else [0.0]))),
        affine=draw(st.booleans()),
    )
    special = draw(st.sampled_from([None, None, "large"]))
    return Case("batch_norm", "hypothesis", (n, c, *spatial), None, kwargs, dtype=draw(DTYPES), special=special)


@st.composite
def relu_cases(draw) -> Case:
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=5)))
    return Case(
        "relu", "hypothesis", shape, None, {}, dtype=draw(DTYPES), special=draw(st.sampled_from([None, "nan", "inf"]))
    )


@st.composite
def adaptive_max_cases(draw) -> Case:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    out = draw(
        st.one_of(
            st.integers(1, 9),
            st.tuples(st.one_of(st.none(), st.integers(0, 9)), st.one_of(st.none(), st.integers(1, 9))),
        )
    )
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 4))
    x = (c, h, w) if n == 1 and draw(st.booleans()) else (n, c, h, w)
    return Case(
        "adaptive_max_pool2d",
        "hypothesis",
        x,
        None,
        {"output_size": out, "return_indices": draw(st.booleans())},
        dtype=draw(DTYPES),
        special=draw(st.sampled_from([None, "nan", "inf", "ties"])),
    )


@st.composite
def activation_cases(draw) -> Case:
    kind = draw(st.sampled_from(["relu6", "leaky_relu", "hardtanh", "sigmoid", "silu", "hardswish"]))
    kwargs = {}
    if kind == "leaky_relu" and draw(st.booleans()):
        kwargs["negative_slope"] = draw(st.floats(-2, 2, allow_nan=False))
    if kind == "hardtanh" and draw(st.booleans()):
        lo = draw(st.floats(-5, 5, allow_nan=False))
        kwargs.update(min_val=lo, max_val=lo + draw(st.floats(0, 5, allow_nan=False)))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=4)))
    return Case(
        kind,
        "hypothesis",
        shape,
        None,
        kwargs,
        dtype=draw(DTYPES),
        special=draw(st.sampled_from([None, "nan", "inf", "large"])),
    )


@st.composite
def linear_cases(draw) -> Case:
    batch = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    fin, fout = draw(st.integers(0, 40)), draw(st.integers(1, 20))
    return Case(
        "linear",
        "hypothesis",
        (*batch, fin),
        (fout, fin),
        {},
        bias=draw(st.booleans()),
        dtype=draw(DTYPES),
        special=draw(st.sampled_from([None, None, "nan", "large"])),
    )


ALL = {
    "conv2d": conv_cases(),
    "pool": pool_cases(),
    "adaptive_avg_pool2d": adaptive_cases(),
    "batch_norm": bn_cases(),
    "relu": relu_cases(),
    "adaptive_max_pool2d": adaptive_max_cases(),
    "activation": activation_cases(),
    "linear": linear_cases(),
}
