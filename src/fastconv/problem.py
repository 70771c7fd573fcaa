"""Frozen problem descriptors: the shapes and options of one op call, and their arithmetic.

A problem is what every layer of fastconv talks about.  The API builds one from validated user
arguments, the dispatcher keys its choices and caches on it, each backend reads its fields, and
the benchmark suites and tests are lists of them.  All output-size arithmetic lives here, so the
formulas exist exactly once.

Each descriptor checks its own invariants in ``__post_init__`` and raises ValueError naming the
offending argument, so a problem that exists can be run.  ``problem.id`` is the compact string
used as test id, benchmark parameter and log text, e.g. ``n8_c64h56w56_k64r3s3_st1p1d1g1_f32``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

DTYPES = ("float32", "float64")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: The elementwise activations a convolution's epilogue (and the functional API) applies, with
#: their parameters' names and torch's defaults, in torch.nn.functional's argument order.
ACTIVATION_PARAMS = {
    "relu": (),
    "relu6": (),
    "leaky_relu": (("negative_slope", 0.01),),
    "hardtanh": (("min_val", -1.0), ("max_val", 1.0)),
    "sigmoid": (),
    "silu": (),
    "hardswish": (),
}
ACTIVATIONS = (None, *ACTIVATION_PARAMS)
#: oneDNN's prop_kind: the forward pass, the gradient of the input, the gradient of the weights.
DIRECTIONS = ("fwd", "bwd_data", "bwd_weight")
DEVICES = ("cpu", "cuda")
#: How a convolution is computed (cuDNN's "algos"): "auto" lets the backend choose; "direct"
#: sums taps in place, "gemm" runs matrix-multiply kernels over (packed) input windows,
#: "winograd" computes 3x3 stride-1 tiles through Winograd transforms (fewer multiplies, a
#: looser error bound).  Each backend says which it implements (``ALGORITHMS``).
CONV_ALGORITHMS = ("auto", "direct", "gemm", "winograd")


def conv_out_size(n: int, k: int, stride: int, pad_before: int, pad_after: int, dilation: int = 1) -> int:
    """Output length of a convolution along one dimension (torch's formula, floor mode)."""
    return (n + pad_before + pad_after - dilation * (k - 1) - 1) // stride + 1


def pool_out_size(n: int, k: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a max/avg pool along one dimension.

    In ceil mode the division rounds up, but a last window that would start inside the right
    padding is dropped -- it would see no input at all.
    """
    span = n + 2 * pad - dilation * (k - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= n + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    """The [start, end) input ranges of adaptive pooling: bin i spans floor(i*n/O) to ceil((i+1)*n/O)."""
    return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def _dt(dtype: str) -> str:
    return {"float32": "f32", "float64": "f64"}[dtype]


def _pair_id(a: int, b: int) -> str:
    return f"{a}" if a == b else f"{a}x{b}"


def _pad_id(top: int, bottom: int, left: int, right: int) -> str:
    h = f"{top}" if top == bottom else f"{top}-{bottom}"
    w = f"{left}" if left == right else f"{left}-{right}"
    return h if h == w else f"{h}x{w}"


# -- the rules ----------------------------------------------------------------------------------
# Every value check of fastconv lives here, one message per rule.  The descriptors run them in
# ``__post_init__``; the API and the layer constructors convert types and call the same rules for
# values they hold before a problem exists (a layer has no input yet).


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_dtype(dtype: str) -> None:
    _require(dtype in DTYPES, f"dtype must be one of {DTYPES}, got {dtype!r}")


def require_positive(value, name: str) -> None:
    """An int or a tuple of ints, every one at least 1."""
    # min() and plain ifs: these run on every call of every op, so they stay cheap.
    values = value if isinstance(value, tuple) else (value,)
    if min(values) < 1:
        raise ValueError(f"{name} must be positive, got {name}={value!r}")


def require_nonnegative(value, name: str) -> None:
    """An int or a tuple of ints (possibly empty), none below 0."""
    values = value if isinstance(value, tuple) else (value,)
    if values and min(values) < 0:
        raise ValueError(f"{name} must be non-negative, got {name}={value!r}")


def require_divisible(channels: int, groups: int, name: str) -> None:
    if channels % groups:
        raise ValueError(f"{name} must be divisible by groups, got {name}={channels}, groups={groups}")


def require_padding_mode(mode) -> None:
    if not (isinstance(mode, str) and mode in PADDING_MODES):
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got padding_mode={mode!r}")


def require_activation(activation) -> None:
    if not isinstance(activation, (str, type(None))) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got activation={activation!r}")


def activation_params(activation: str | None, params: tuple = ()) -> tuple[float, ...]:
    """Every parameter of ``activation``, torch's defaults where ``params`` stops short."""
    require_activation(activation)
    names = ACTIVATION_PARAMS.get(activation, ())
    _require(
        len(params) <= len(names),
        f"activation {activation!r} takes {len(names)} parameter(s) {tuple(n for n, _ in names)}, got {tuple(params)}",
    )
    full = tuple(float(v) for v in params) + tuple(d for _, d in names[len(params) :])
    if activation == "hardtanh":
        _require(full[1] >= full[0], f"hardtanh needs max_val >= min_val, got min_val={full[0]}, max_val={full[1]}")
    return full


def _activation_id(activation: str | None, params: tuple) -> str:
    """``relu``, ``leaky_relu`` (default parameters) or ``leaky_relu0.2`` (others)."""
    if activation is None:
        return ""
    defaults = tuple(d for _, d in ACTIVATION_PARAMS[activation])
    return activation + ("" if params == defaults else ",".join(f"{v:g}" for v in params))


def require_padding_string(padding: str, stride: tuple[int, int]) -> None:
    _require(
        padding in ("same", "valid"),
        f"padding must be an int, a tuple of 2 ints, 'same' or 'valid', got padding={padding!r}",
    )
    _require(
        padding == "valid" or stride == (1, 1),
        f"padding='same' is not supported for strided convolutions, got stride={stride}",
    )


def require_pool_padding(kernel: tuple[int, int], padding: tuple[int, int]) -> None:
    _require(
        padding[0] <= kernel[0] // 2 and padding[1] <= kernel[1] // 2,
        f"padding should be at most half of kernel_size, but got padding={padding} and kernel_size={kernel}",
    )


def require_divisor(divisor_override) -> None:
    _require(
        divisor_override is None or divisor_override != 0, f"divisor_override must be non-zero, got {divisor_override}"
    )


def require_eps(eps: float) -> None:
    _require(eps >= 0 and math.isfinite(eps), f"eps must be non-negative and finite, got eps={eps}")


def require_algorithm(algorithm) -> None:
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {CONV_ALGORITHMS}, got algorithm={algorithm!r}")


def require_device(device) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got device={device!r}")


def _check_common(p, directions: tuple[str, ...]) -> None:
    if p.dtype not in DTYPES:
        _check_dtype(p.dtype)
    if p.direction not in directions:
        raise ValueError(f"direction must be one of {directions} for {p.op}, got direction={p.direction!r}")
    if p.device != "cpu":
        require_device(p.device)


def _suffix(p) -> str:
    """The id's tail for non-default direction and device (empty for a forward CPU problem)."""
    text = "" if p.direction == "fwd" else f"_{p.direction}"
    return text + ("" if p.device == "cpu" else f"_{p.device}")


@dataclass(frozen=True)
class _Problem:
    """What every descriptor has: a direction and a device (keyword-only, after its own fields)."""

    direction: str = field(default="fwd", kw_only=True)
    device: str = field(default="cpu", kw_only=True)

    @property
    def bytes_moved(self) -> int:
        """Bytes read plus written once each: the memory traffic a perfect kernel needs."""
        item = 4 if self.dtype == "float32" else 8
        return item * (math.prod(self.input_shape) + math.prod(self.output_shape))

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Conv2dProblem(_Problem):
    """One 2-D convolution: input (n, c, h, w), weight (k, c // groups, r, s).

    ``padding`` is explicit per side, (top, bottom, left, right), because padding="same" with an
    even kernel puts the extra row and column at the bottom and right.  ``padding_mode`` other than
    "zeros" is applied by the API before a backend runs, so backends only ever see zero padding.
    ``residual`` and ``activation`` describe the fused epilogue ``act(conv(x) + bias + residual)``.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    bias: bool = False
    residual: bool = False
    activation: str | None = None
    padding_mode: str = "zeros"
    op: str = field(default="conv2d", init=False)
    algorithm: str = field(default="auto", kw_only=True)
    #: The activation's parameters (leaky_relu's slope, hardtanh's bounds), torch's defaults filled in.
    activation_params: tuple = field(default=(), kw_only=True)

    def __post_init__(self):
        _check_common(self, DIRECTIONS)
        _require(self.n >= 0, f"input batch size must be non-negative, got {self.n}")
        _require(self.c >= 1, f"input must have at least one channel, got {self.c}")
        _require(self.h >= 1 and self.w >= 1, f"input spatial size must be positive, got {self.h}x{self.w}")
        _require(self.k >= 1, f"weight must have at least one output channel, got weight.shape[0]={self.k}")
        _require(self.r >= 1 and self.s >= 1, f"weight kernel size must be positive, got {self.r}x{self.s}")
        require_positive(self.groups, "groups")
        require_positive(self.stride, "stride")
        require_positive(self.dilation, "dilation")
        require_nonnegative(self.padding, "padding")
        require_divisible(self.c, self.groups, "in_channels")
        require_divisible(self.k, self.groups, "out_channels")
        require_padding_mode(self.padding_mode)
        # Without an activation its parameters mean nothing (replace(p, activation=None) drops them).
        if self.activation is None:  # the common cases, checked without the general rule's cost
            object.__setattr__(self, "activation_params", ())
        elif self.activation != "relu" or self.activation_params:
            object.__setattr__(self, "activation_params", activation_params(self.activation, self.activation_params))
        _require(
            self.direction == "fwd" or not (self.residual or self.activation),
            f"a {self.direction} problem has no fused epilogue: its backward is composed from the ops' own",
        )
        require_algorithm(self.algorithm)
        pt, pb, pl, pr = self.padding
        if self.padding_mode == "reflect":
            _require(
                max(pt, pb) < self.h and max(pl, pr) < self.w,
                f"padding_mode='reflect' needs padding smaller than the input size, "
                f"got padding {self.padding} (top, bottom, left, right) for input {self.h}x{self.w}",
            )
        if self.padding_mode == "circular":
            _require(
                max(pt, pb) <= self.h and max(pl, pr) <= self.w,
                f"padding_mode='circular' needs padding at most the input size, "
                f"got padding {self.padding} (top, bottom, left, right) for input {self.h}x{self.w}",
            )
        for name, n, k, d, pad in (
            ("height", self.h, self.r, self.dilation[0], pt + pb),
            ("width", self.w, self.s, self.dilation[1], pl + pr),
        ):
            _require(
                n + pad >= d * (k - 1) + 1,
                f"kernel size can't be greater than the padded input size: padded input {name} "
                f"is {n + pad} but the dilated kernel {name} is {d * (k - 1) + 1}",
            )

    # -- derived sizes --------------------------------------------------------------------------
    # Cached: every layer of the call stack asks for them (a frozen dataclass may still hold them).
    @functools.cached_property
    def oh(self) -> int:
        return conv_out_size(self.h, self.r, self.stride[0], self.padding[0], self.padding[1], self.dilation[0])

    @functools.cached_property
    def ow(self) -> int:
        return conv_out_size(self.w, self.s, self.stride[1], self.padding[2], self.padding[3], self.dilation[1])

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def kg(self) -> int:
        """Output channels per group."""
        return self.k // self.groups

    @property
    def depthwise(self) -> bool:
        """One input channel per group (MobileNet's depthwise convolution, channel multiplier k/c)."""
        return self.groups == self.c and self.groups > 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.cg, self.r, self.s)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.oh, self.ow)

    @property
    def reduction(self) -> int:
        """Terms summed per output element (for error bounds)."""
        return self.cg * self.r * self.s

    @property
    def pad_growth(self) -> float:
        """How many times larger than the input a zero-padded copy of it would be.

        Backends that pad explicitly refuse absurd padding by this (a huge stride can make a
        tiny output read a padded input of terabytes).
        """
        pt, pb, pl, pr = self.padding
        return (self.h + pt + pb) * (self.w + pl + pr) / (self.h * self.w)

    @property
    def macs(self) -> int:
        return self.n * self.k * self.oh * self.ow * self.reduction

    @property
    def flops(self) -> int:
        """2 FLOPs per multiply-add (benchdnn's convention)."""
        return 2 * self.macs

    @property
    def id(self) -> str:
        sh, sw = self.stride
        dh, dw = self.dilation
        text = (
            f"n{self.n}_c{self.c}h{self.h}w{self.w}_k{self.k}r{self.r}s{self.s}"
            f"_st{_pair_id(sh, sw)}p{_pad_id(*self.padding)}d{_pair_id(dh, dw)}g{self.groups}"
        )
        if self.padding_mode != "zeros":
            text += f"_{self.padding_mode}"
        text += "".join(tag for flag, tag in ((self.bias, "_bias"), (self.residual, "_res")) if flag)
        if self.activation:
            text += f"_{_activation_id(self.activation, self.activation_params)}"
        text += f"_{_dt(self.dtype)}"
        if self.algorithm != "auto":
            text += f"_{self.algorithm}"
        return text + _suffix(self)


@dataclass(frozen=True)
class Pool2dProblem(_Problem):
    """One max or average pooling: input (n, c, h, w), window ``kernel``, symmetric ``padding``.

    Max pooling pads with -inf and may dilate; average pooling has ``dilation`` (1, 1) and divides
    by the window size counted as torch does (see ``divisor``).
    """

    kind: str
    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    dtype: str = "float32"
    #: Max pooling only: also return each output's arg max, a flat index into its (h, w) plane.
    return_indices: bool = field(default=False, kw_only=True)

    def __post_init__(self):
        _check_common(self, DIRECTIONS[:2])
        _require(self.kind in ("max", "avg"), f"pool kind must be 'max' or 'avg', got {self.kind!r}")
        _require(
            not self.return_indices or (self.kind == "max" and self.direction == "fwd"),
            "return_indices is a forward max pooling option",
        )
        _require(self.n >= 0, f"input batch size must be non-negative, got {self.n}")
        _require(self.c >= 1, f"input must have at least one channel, got {self.c}")
        _require(self.h >= 1 and self.w >= 1, f"input spatial size must be positive, got {self.h}x{self.w}")
        require_positive(self.kernel, "kernel_size")
        require_positive(self.stride, "stride")
        require_positive(self.dilation, "dilation")
        require_nonnegative(self.padding, "padding")
        _require(self.kind == "max" or self.dilation == (1, 1), "avg_pool2d has no dilation")
        require_pool_padding(self.kernel, self.padding)
        require_divisor(self.divisor_override)
        _require(
            self.oh >= 1 and self.ow >= 1,
            f"given input size ({self.c}x{self.h}x{self.w}), the calculated output size "
            f"({self.c}x{self.oh}x{self.ow}) is too small",
        )

    @property
    def oh(self) -> int:
        return pool_out_size(self.h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0], self.ceil_mode)

    @property
    def ow(self) -> int:
        return pool_out_size(self.w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1], self.ceil_mode)

    @property
    def op(self) -> str:
        return "max_pool2d_with_indices" if self.return_indices else f"{self.kind}_pool2d"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.oh, self.ow)

    @property
    def reduction(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def divisor(self, i: int, j: int) -> int:
        """The average pool's divisor for output (i, j), torch's rule.

        divisor_override wins; otherwise count_include_pad counts the padded cells of the window
        but not the part that ceil mode lets hang past the padding; without it only real cells count.
        """
        if self.divisor_override is not None:
            return self.divisor_override
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        h0, w0 = i * sh - ph, j * sw - pw
        h1, w1 = min(h0 + kh, self.h + ph), min(w0 + kw, self.w + pw)
        if self.count_include_pad:
            return (h1 - h0) * (w1 - w0)
        return (min(h1, self.h) - max(h0, 0)) * (min(w1, self.w) - max(w0, 0))

    @property
    def id(self) -> str:
        text = (
            f"{self.kind}_n{self.n}_c{self.c}h{self.h}w{self.w}_k{_pair_id(*self.kernel)}"
            f"_st{_pair_id(*self.stride)}p{_pair_id(*self.padding)}"
        )
        if self.kind == "max":
            text += f"d{_pair_id(*self.dilation)}"
        if self.ceil_mode:
            text += "_ceil"
        if self.kind == "avg" and not self.count_include_pad:
            text += "_nopad"
        if self.divisor_override is not None:
            text += f"_div{self.divisor_override}"
        if self.return_indices:
            text += "_idx"
        return text + f"_{_dt(self.dtype)}" + _suffix(self)


@dataclass(frozen=True)
class AdaptivePool2dProblem(_Problem):
    """Adaptive average (``kind="avg"``) or max pooling of (n, c, h, w) to (n, c, oh, ow); bins
    from ``adaptive_bins``.  Max pooling may also return each output's arg max (flat in its plane)."""

    n: int
    c: int
    h: int
    w: int
    oh: int
    ow: int
    dtype: str = "float32"
    kind: str = field(default="avg", kw_only=True)
    return_indices: bool = field(default=False, kw_only=True)

    def __post_init__(self):
        _check_common(self, DIRECTIONS[:2] if self.kind == "avg" else DIRECTIONS[:1])
        _require(self.kind in ("avg", "max"), f"adaptive pool kind must be 'avg' or 'max', got {self.kind!r}")
        _require(not self.return_indices or self.kind == "max", "return_indices is an adaptive max pooling option")
        _require(self.n >= 0, f"input batch size must be non-negative, got {self.n}")
        _require(self.c >= 1, f"input must have at least one channel, got {self.c}")
        _require(
            self.h >= 1 and self.w >= 1,
            f"adaptive_avg_pool2d expects input with non-zero spatial size, got {self.h}x{self.w}",
        )
        require_nonnegative((self.oh, self.ow), "output_size")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.oh, self.ow)

    @property
    def reduction(self) -> int:
        """The largest bin's cell count."""
        rows = max((b - a for a, b in adaptive_bins(self.h, self.oh)), default=1)
        cols = max((b - a for a, b in adaptive_bins(self.w, self.ow)), default=1)
        return rows * cols

    @property
    def op(self) -> str:
        return f"adaptive_{self.kind}_pool2d"

    @property
    def id(self) -> str:
        return (
            f"a{self.kind}_n{self.n}_c{self.c}h{self.h}w{self.w}_o{_pair_id(self.oh, self.ow)}"
            f"{'_idx' if self.return_indices else ''}_{_dt(self.dtype)}" + _suffix(self)
        )


@dataclass(frozen=True)
class BatchNormProblem(_Problem):
    """Batch norm over channel axis 1 of an (n, c, *spatial) input, viewed by backends as (n, c, l).

    ``training`` normalises with the batch's own statistics (biased variance); otherwise with the
    running statistics.  Updating the running statistics is the API's job, not a backend's.
    """

    n: int
    c: int
    spatial: tuple[int, ...] = ()
    training: bool = False
    eps: float = 1e-5
    dtype: str = "float32"
    op: str = field(default="batch_norm", init=False)

    def __post_init__(self):
        _check_common(self, DIRECTIONS[:2])
        _require(self.n >= 0, f"input batch size must be non-negative, got {self.n}")
        _require(self.c >= 1, f"input must have at least one channel, got {self.c}")
        _require(all(v >= 0 for v in self.spatial), f"input sizes must be non-negative, got {self.spatial}")
        require_eps(self.eps)

    @property
    def l(self) -> int:  # noqa: E743 - the flattened spatial length, as in (n, c, l)
        return math.prod(self.spatial)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.c, *self.spatial)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.input_shape

    @property
    def count(self) -> int:
        """Values per channel that a batch statistic averages over."""
        return self.n * self.l

    @property
    def reduction(self) -> int:
        return self.count if self.training else 1

    @property
    def bytes_moved(self) -> int:
        item = 4 if self.dtype == "float32" else 8
        passes = 3 if self.training else 2  # training reads the input once more for its statistics
        return item * passes * self.n * self.c * self.l

    @property
    def id(self) -> str:
        dims = (
            "".join(f"{a}{v}" for a, v in zip("hwd", self.spatial))
            if len(self.spatial) <= 3
            else "x".join(map(str, self.spatial))
        )
        mode = "train" if self.training else "eval"
        return f"bn_n{self.n}_c{self.c}{dims}_{mode}_{_dt(self.dtype)}" + _suffix(self)


class _Elementwise:
    """The sizes of an op applied element by element to ``shape`` (relu and the other activations)."""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shape

    reduction = 1


@dataclass(frozen=True)
class ReluProblem(_Elementwise, _Problem):
    """Elementwise max(x, 0) over an array of any shape; NaN stays NaN, as in torch."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    op: str = field(default="relu", init=False)

    def __post_init__(self):
        _check_common(self, DIRECTIONS[:2])

    @property
    def id(self) -> str:
        return f"relu_{'x'.join(map(str, self.shape)) or 'scalar'}_{_dt(self.dtype)}" + _suffix(self)


@dataclass(frozen=True)
class ActivationProblem(_Elementwise, _Problem):
    """An elementwise activation other than relu (``kind``: relu6, leaky_relu, hardtanh, sigmoid,
    silu, hardswish) over an array of any shape, with its parameters (torch's defaults filled in)."""

    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    params: tuple = ()

    def __post_init__(self):
        _check_common(self, DIRECTIONS[:1])
        _require(
            self.kind in ACTIVATION_PARAMS and self.kind != "relu",
            f"activation kind must be one of {tuple(k for k in ACTIVATION_PARAMS if k != 'relu')}, got {self.kind!r}",
        )
        object.__setattr__(self, "params", activation_params(self.kind, self.params))

    @property
    def op(self) -> str:
        return self.kind

    @property
    def id(self) -> str:
        return (
            f"{_activation_id(self.kind, self.params)}_{'x'.join(map(str, self.shape)) or 'scalar'}"
            f"_{_dt(self.dtype)}" + _suffix(self)
        )


@dataclass(frozen=True)
class LinearProblem(_Problem):
    """``y = x @ weight.T + bias`` for x of shape (*batch, in_features), weight (out_features, in_features)."""

    batch: tuple[int, ...]
    in_features: int
    out_features: int
    bias: bool = False
    dtype: str = "float32"
    op: str = field(default="linear", init=False)

    def __post_init__(self):
        _check_common(self, DIRECTIONS[:1])
        _require(all(v >= 0 for v in self.batch), f"input sizes must be non-negative, got {self.batch}")
        _require(
            self.in_features >= 0 and self.out_features >= 0,
            f"features must be non-negative, got in_features={self.in_features}, out_features={self.out_features}",
        )

    @property
    def rows(self) -> int:
        return math.prod(self.batch)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (*self.batch, self.in_features)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (*self.batch, self.out_features)

    @property
    def reduction(self) -> int:
        return max(1, self.in_features)

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.in_features * self.out_features

    @property
    def id(self) -> str:
        batch = "x".join(map(str, self.batch)) or "scalar"
        return (
            f"linear_{batch}_i{self.in_features}o{self.out_features}{'_bias' if self.bias else ''}"
            f"_{_dt(self.dtype)}" + _suffix(self)
        )


Problem = (
    Conv2dProblem
    | Pool2dProblem
    | AdaptivePool2dProblem
    | BatchNormProblem
    | ReluProblem
    | ActivationProblem
    | LinearProblem
)
