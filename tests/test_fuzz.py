"""Differential fuzzing against torch: any options, valid or not, on every op, backend and array form.

Each op is one row of ``FUZZ_OPS`` (keyed by op and direction, so backward ops and new backends
plug in as rows): how to draw a call from the *whole* option space -- zero, negative and
mismatched sizes, strings, padding modes, ceil mode, NaN and inf values -- how to run it on
fastconv and on torch, and which refusals of fastconv's are deliberate.  The properties:

- torch raises if and only if fastconv raises (fastconv's error is a ValueError, TypeError or
  MemoryError: never a crash, a RuntimeError or an IndexError from deep inside);
- when both succeed the results agree (torch in float64 as the reference) and no input changed;
- every backend (and "auto"), every array form (Fortran order, negative strides, strided views,
  byte-swapped, misaligned, read-only, unbatched);
- every direction: the backward rows call ``fastconv.grad``'s public functions and compare with
  torch autograd (the gradient of a torch forward on the same arrays, seeded grad_output, now and
  then of the wrong shape); conv2d's ``algorithm=`` option is drawn too;
- the cuda backend, where no device is present under Numba's CUDA simulator in a child process
  (a few examples per forward op, small shapes).

``make test`` runs a bounded profile (FASTCONV_FUZZ_EXAMPLES per op, derandomized);
``make fuzz`` runs many more, drawn afresh.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch, grad

torch = pytest.importorskip("torch")
F = torch.nn.functional

EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "40"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
#: What fastconv may raise for bad input; anything else is a fault.
CLEAN_ERRORS = (ValueError, TypeError, MemoryError)


def _backends() -> list[str | None]:
    """Every available backend and "auto" (None); FASTCONV_FUZZ_BACKENDS=c,naive picks some."""
    chosen = os.environ.get("FASTCONV_FUZZ_BACKENDS")
    if chosen:
        for name in chosen.split(","):  # else every call would be refused, and nothing checked
            ok, why = dispatch._status(dispatch._registry[name])
            assert ok, f"FASTCONV_FUZZ_BACKENDS names {name}, which is unavailable: {why}"
        return chosen.split(",")
    return [None] + [b for b in dispatch._registry if dispatch._status(dispatch._registry[b])[0]]


# -- array forms -----------------------------------------------------------------------------------


def _misaligned(a: np.ndarray) -> np.ndarray:
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    return m


def _strided(a: np.ndarray) -> np.ndarray:
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "contiguous": lambda a: a,
    "fortran": np.asfortranarray,
    "negative_strides": lambda a: a[..., ::-1].copy()[..., ::-1],
    "strided_view": _strided,
    "byteswapped": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "misaligned": _misaligned,
    "readonly": _readonly,
}


# -- one call ------------------------------------------------------------------------------------


@dataclass
class Call:
    arrays: dict  # name -> np.ndarray (float64 values; cast to dtype on use)
    options: dict  # keyword options, passed to both libraries as drawn
    dtype: str = "float32"
    form: str = "contiguous"
    unbatched: bool = False  # drop the batch axis of "input" (n == 1 only)
    extra: dict = field(default_factory=dict)  # fastconv-only options (residual, activation, algorithm)
    formed: tuple = ("input",)  # the arrays given the drawn form

    def numpy(self, name):
        a = self.arrays[name]
        return a if a is None else a.astype(self.dtype)


def _values(draw, shape, special: bool) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal(shape)
    if special and a.size:
        a.flat[rng.integers(0, a.size, max(1, a.size // 5))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return a


def _opt(draw, lo, hi, allow_bad=True):
    """An int or a pair in [lo, hi], now and then a value torch rejects."""
    bad = allow_bad and draw(st.integers(0, 9)) == 0
    if bad:
        return draw(st.sampled_from([0, -1, (1, 0), (1, 2, 3), (), 1.5, "2", None, True]))
    a = draw(st.integers(lo, hi))
    return a if draw(st.booleans()) else (a, draw(st.integers(lo, hi)))


def _image(draw, lo_c=1):
    n = draw(st.sampled_from([1, 1, 2, 0, 3]))
    c = draw(st.integers(lo_c, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    return n, c, h, w


def _common(draw, call: Call) -> Call:
    call.dtype = draw(st.sampled_from(["float32", "float64"]))
    call.form = draw(st.sampled_from(list(FORMS)))
    x = call.arrays["input"]
    call.unbatched = x.ndim == 4 and x.shape[0] == 1 and draw(st.integers(0, 4)) == 0
    return call


# -- conv2d --------------------------------------------------------------------------------------

#: conv2d's algorithm option: the default, each named algorithm, and one no backend knows.
ALGORITHMS = ["auto", "direct", "gemm", "winograd", "fft"]


def _conv_call(draw, backward: bool = False) -> Call:
    """A conv2d call; ``backward``: only what the grad functions take (zero padding, no epilogue)."""
    algorithm = "auto" if backward else draw(st.sampled_from(["auto"] * 4 + ALGORITHMS[1:]))
    # Winograd's tiles are 4x4 outputs of a 3x3, stride-1 kernel: draw mostly problems it can run.
    winograd = algorithm == "winograd" and draw(st.integers(0, 3)) > 0
    n, c, h, w = _image(draw)
    if winograd:
        h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    # Now and then channels in whole vectors (16: a multiple of every instruction set's lanes), so
    # that the c backend's channel-blocked kernel (eager calls converted to its layout at the call)
    # meets the same hostile geometry as the rest; the planes stay small for the naive backend.
    wide = draw(st.integers(0, 4)) == 0
    if wide:
        c, h, w = 16 * draw(st.integers(1, 2)), min(h, 6), min(w, 6)
    groups = 1 if winograd or wide else draw(st.sampled_from([1, 1, 1, 2, 3, c, 0, -1]))
    k = 16 * draw(st.integers(1, 2)) if wide else draw(st.integers(1, 6))
    cg = c // groups if groups > 0 and draw(st.integers(0, 5)) else draw(st.integers(1, 3))
    r, s = (3, 3) if winograd else (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    padding = draw(st.one_of(st.just(None), st.sampled_from(["same", "valid", "full"])))
    if padding is None:
        padding = _opt(draw, 0, 4)
    options = dict(
        stride=1 if winograd else _opt(draw, 1, 3),
        padding=padding,
        dilation=1 if winograd else _opt(draw, 1, 3),
        groups=groups,
    )
    mode = "zeros" if backward else draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    if mode != "zeros":
        options["padding_mode"] = mode
    special = draw(st.integers(0, 6)) == 0
    arrays = {
        "input": _values(draw, (n, c, h, w), special),
        "weight": _values(draw, (k, cg, r, s), False),
        "bias": _values(draw, (k,), False) if not backward and draw(st.booleans()) else None,
    }
    extra = {}
    if algorithm != "auto":
        extra["algorithm"] = algorithm
    if not backward and draw(st.integers(0, 3)) == 0:
        extra["activation"] = "relu"
    if not backward and draw(st.integers(0, 3)) == 0:
        extra["residual"] = draw(st.integers(0, 2**32 - 1))  # a seed: the output's shape is known later
    call = _common(draw, Call(arrays, options, extra=extra))
    if winograd:
        call.dtype = "float32" if draw(st.integers(0, 3)) else call.dtype
    return call


@st.composite
def draw_conv2d(draw) -> Call:
    return _conv_call(draw)


def torch_conv2d(call: Call, t: dict):
    o = dict(call.options)
    mode = o.pop("padding_mode", "zeros")
    if mode == "zeros":
        return F.conv2d(t["input"], t["weight"], t["bias"], **o)
    w = t["weight"]
    m = torch.nn.Conv2d(
        w.shape[1] * o["groups"] if isinstance(o["groups"], int) else 1,
        w.shape[0],
        tuple(w.shape[2:]),
        bias=t["bias"] is not None,
        padding_mode=mode,
        dtype=torch.float64,
        **o,
    )
    m.weight.data = w
    if t["bias"] is not None:
        m.bias.data = t["bias"]
    with torch.no_grad():
        return m(t["input"])


def fastconv_conv2d(call: Call, a: dict, backend):
    return fastconv.conv2d(a["input"], a["weight"], a["bias"], backend=backend, **call.options, **a["extra"])


def conv2d_terms(call: Call) -> int:
    return int(np.prod(call.arrays["weight"].shape[1:]))


#: numpy.pad's name for each padding mode.
_NP_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def winograd_poisoned(call: Call, x: np.ndarray, out_shape) -> np.ndarray | None:
    """Where a Winograd result may differ from a direct sum (docs/results/winograd.md): every output
    of the 4x4 blocks whose 6x6 padded-input tile holds a NaN or inf (the transforms spread it over
    the tile, as NaN, inf or, after relu, 0).  None where no such output exists."""
    if call.extra.get("algorithm") != "winograd" or np.isfinite(x).all():
        return None
    x = x[None] if x.ndim == 3 else x
    pad = call.options["padding"]
    top, left = {"same": (1, 1), "valid": (0, 0)}.get(pad, (0, 0)) if isinstance(pad, str) else (
        (pad, pad) if isinstance(pad, int) else tuple(pad))  # fmt: skip
    oh, ow = out_shape[-2:]
    # The padded input the tiles read: the padding mode's values, or zeros.
    mode = call.options.get("padding_mode", "zeros")
    padded = np.pad(x, ((0, 0), (0, 0), (top, top), (left, left)), mode=_NP_PAD[mode])
    bad = ~np.isfinite(padded).all(axis=1)  # (n, rows, cols): any channel non-finite
    mask = np.zeros((x.shape[0], oh, ow), bool)
    for n, i, j in zip(*np.nonzero(bad)):
        # Blocks b whose tile rows 4b .. 4b + 5 hold padded row i: ceil((i - 5) / 4) <= b <= i // 4.
        for bi in range(max(0, (i - 5 + 3) // 4), i // 4 + 1):
            for bj in range(max(0, (j - 5 + 3) // 4), j // 4 + 1):
                mask[n, 4 * bi : 4 * bi + 4, 4 * bj : 4 * bj + 4] = True
    mask = np.broadcast_to(mask[:, None], (x.shape[0], out_shape[-3], oh, ow))
    return mask[0] if len(out_shape) == 3 else mask


def _negative(v) -> bool:
    values = v if isinstance(v, (tuple, list)) else (v,)
    return any(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e < 0 for e in values)


def conv2d_own_error(call: Call):
    """fastconv's own refusals, ValueErrors whatever torch thinks: an unknown algorithm, and negative
    padding in every padding mode (torch.nn.functional.conv2d refuses it too; torch.nn.Conv2d with
    padding_mode reflect, replicate or circular crops the input by it instead, through F.pad)."""
    if call.extra.get("algorithm") not in (None, *ALGORITHMS[:-1]):
        return "algorithm"
    if call.options.get("padding_mode", "zeros") != "zeros" and _negative(call.options.get("padding")):
        return "padding"
    return None


# -- pooling ---------------------------------------------------------------------------------------


@st.composite
def draw_max_pool2d(draw) -> Call:
    n, c, h, w = _image(draw)
    options = dict(
        kernel_size=_opt(draw, 1, 4),
        stride=draw(st.one_of(st.none(), st.just(None))) or _opt(draw, 1, 3),
        padding=_opt(draw, 0, 2),
        dilation=_opt(draw, 1, 3),
        ceil_mode=draw(st.booleans()),
    )
    if draw(st.integers(0, 3)) == 0:
        options.pop("stride")
    return _common(draw, Call({"input": _values(draw, (n, c, h, w), draw(st.integers(0, 4)) == 0)}, options))


@st.composite
def draw_avg_pool2d(draw) -> Call:
    n, c, h, w = _image(draw)
    options = dict(
        kernel_size=_opt(draw, 1, 4),
        stride=_opt(draw, 1, 3),
        padding=_opt(draw, 0, 2),
        ceil_mode=draw(st.booleans()),
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.sampled_from([None, None, 1, 3, 0, -2])),
    )
    return _common(draw, Call({"input": _values(draw, (n, c, h, w), draw(st.integers(0, 4)) == 0)}, options))


@st.composite
def draw_adaptive_avg_pool2d(draw) -> Call:
    n, c, h, w = _image(draw)
    size = draw(
        st.one_of(
            st.integers(-1, 12),
            st.tuples(st.one_of(st.none(), st.integers(-1, 12)), st.one_of(st.none(), st.integers(0, 12))),
        )
    )
    return _common(
        draw, Call({"input": _values(draw, (n, c, h, w), draw(st.integers(0, 4)) == 0)}, {"output_size": size})
    )


# -- batch norm and relu ---------------------------------------------------------------------------


@st.composite
def draw_batch_norm(draw) -> Call:
    n, c = draw(st.integers(0, 4)), draw(st.integers(1, 5))
    spatial = draw(st.sampled_from([(), (3,), (2, 3), (1, 1, 2)]))
    training = draw(st.booleans())
    stats = draw(st.booleans()) or not training
    arrays = {
        "input": _values(draw, (n, c, *spatial), draw(st.integers(0, 5)) == 0),
        "running_mean": _values(draw, (c,), False) if stats else None,
        "running_var": np.abs(_values(draw, (c,), False)) if stats else None,
        "weight": _values(draw, (c,), False) if draw(st.booleans()) else None,
        "bias": _values(draw, (c,), False) if draw(st.booleans()) else None,
    }
    options = dict(
        training=training,
        momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.5])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
    )
    call = Call(arrays, options, dtype=draw(st.sampled_from(["float32", "float64"])))
    call.form = draw(st.sampled_from(list(FORMS)))
    return call


@st.composite
def draw_relu(draw) -> Call:
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=5)))
    call = Call(
        {"input": _values(draw, shape, draw(st.booleans()))}, {}, dtype=draw(st.sampled_from(["float32", "float64"]))
    )
    call.form = draw(st.sampled_from(list(FORMS)))
    return call


def _array_args(names):
    return lambda call, t: [t[n] for n in names]


@dataclass(frozen=True)
class FuzzOp:
    draw: Callable  # hypothesis strategy factory -> Call
    fastconv: Callable  # (call, arrays, backend) -> result
    torch: Callable  # (call, tensors) -> result
    terms: Callable = lambda call: 9  # terms each output sums (tolerance)
    stateful: tuple = ()  # arrays the op updates in place (compared too)
    forward: Callable | None = None  # backward rows: the forward (shapes grad_output)
    own_error: Callable = lambda call: None  # call -> what fastconv alone must refuse (a match)
    #: torch skips its option checks (dilation=0, ...) on an empty batch; fastconv checks them
    #: always, deliberately: an empty batch counts as refused when a batch of one is.
    empty_batch_checked: bool = True


FUZZ_OPS: dict[tuple[str, str], FuzzOp] = {
    ("conv2d", "fwd"): FuzzOp(draw_conv2d, fastconv_conv2d, torch_conv2d, conv2d_terms, own_error=conv2d_own_error),
    ("max_pool2d", "fwd"): FuzzOp(
        draw_max_pool2d,
        lambda c, a, b: fastconv.max_pool2d(a["input"], backend=b, **c.options),
        lambda c, t: F.max_pool2d(t["input"], **c.options),
    ),
    ("avg_pool2d", "fwd"): FuzzOp(
        draw_avg_pool2d,
        lambda c, a, b: fastconv.avg_pool2d(a["input"], backend=b, **c.options),
        lambda c, t: F.avg_pool2d(t["input"], **c.options),
    ),
    ("adaptive_avg_pool2d", "fwd"): FuzzOp(
        draw_adaptive_avg_pool2d,
        lambda c, a, b: fastconv.adaptive_avg_pool2d(a["input"], backend=b, **c.options),
        lambda c, t: F.adaptive_avg_pool2d(t["input"], **c.options),
        lambda c: 81,
    ),
    ("batch_norm", "fwd"): FuzzOp(
        draw_batch_norm,
        lambda c, a, b: fastconv.batch_norm(
            a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"], backend=b, **c.options
        ),
        lambda c, t: F.batch_norm(t["input"], t["running_mean"], t["running_var"], t["weight"], t["bias"], **c.options),
        lambda c: max(1, c.arrays["input"].size),
        stateful=("running_mean", "running_var"),
        empty_batch_checked=False,
    ),
    ("relu", "fwd"): FuzzOp(
        draw_relu, lambda c, a, b: fastconv.relu(a["input"], backend=b), lambda c, t: F.relu(t["input"]), lambda c: 1
    ),
}


# -- backward: fastconv.grad against torch autograd --------------------------------------------------


def _with_grad(draw, call: Call, formed: tuple, deltas=("longer", "batchless")) -> Call:
    """A backward call: the forward's arrays plus a seeded grad_output, 1 in 8 of a wrong shape,
    1 in 7 holding NaN or inf."""
    call.extra = {
        "grad_seed": draw(st.integers(0, 2**32 - 1)),
        "grad_delta": draw(st.sampled_from([None] * 7 + list(deltas))),
        "grad_special": draw(st.integers(0, 6)) == 0,
    }
    call.formed = formed
    return call


def _grad_output(call: Call, shape) -> np.ndarray:
    """grad_output for a forward output of ``shape`` (kept in the call: both sides use it)."""
    shape, delta = tuple(shape), call.extra["grad_delta"]
    if delta == "longer" and shape:
        shape = (*shape[:-1], shape[-1] + 1)
    elif delta == "batchless" and len(shape) > 1:
        shape = shape[1:]
    rng = np.random.default_rng(call.extra["grad_seed"])
    g = rng.standard_normal(shape)
    if call.extra["grad_special"] and g.size:
        g.flat[rng.integers(0, g.size, max(1, g.size // 5))] = rng.choice([np.nan, np.inf, -np.inf])
    call.extra["grad_output"] = g
    return g


def _autograd(forward, wrt: tuple):
    """torch's gradients w.r.t. the arrays ``wrt`` of ``forward(call, tensors)`` (zeros where unused)."""

    def run(call, t):
        t = {n: v.clone().requires_grad_(True) if n in wrt and v is not None else v for n, v in t.items()}
        y = forward(call, t)
        y.backward(torch.from_numpy(_grad_output(call, y.shape)))
        return tuple(torch.zeros_like(t[n]) if t[n].grad is None else t[n].grad for n in wrt)

    return run


@st.composite
def draw_conv2d_bwd_data(draw) -> Call:
    return _with_grad(draw, _conv_call(draw, backward=True), ("weight", "grad_output"))


@st.composite
def draw_conv2d_bwd_weight(draw) -> Call:
    return _with_grad(draw, _conv_call(draw, backward=True), ("input", "grad_output"))


@st.composite
def draw_max_pool2d_bwd(draw) -> Call:
    """Not a window whose dilated taps all land in the padding: torch's backward then credits an
    index outside the input and writes past its gradient's memory (fastconv's gradient is zero there:
    test_hardening.py).  Probed on one image at least: an empty batch's refusal is checked by
    running torch on one image (_torch_side)."""
    call = draw(draw_max_pool2d())
    n, *chw = call.arrays["input"].shape
    try:
        assume(not np.isneginf(fastconv.max_pool2d(np.zeros((max(n, 1), *chw)), **call.options)).any())
    except (ValueError, TypeError, MemoryError):
        pass
    return _with_grad(draw, call, ("input", "grad_output"))


@st.composite
def draw_avg_pool2d_bwd(draw) -> Call:
    return _with_grad(draw, draw(draw_avg_pool2d()), ("grad_output",))


@st.composite
def draw_adaptive_avg_pool2d_bwd(draw) -> Call:
    """The output size is grad_output's (no option to refuse): valid sizes only, and no grad_output
    of a wrong width (it would just be another output size).  No empty output either: torch's
    forward gives one, its backward refuses it; fastconv's gradient is zeros."""
    n, c, h, w = _image(draw)
    size = draw(
        st.one_of(
            st.integers(1, 12),
            st.tuples(st.one_of(st.none(), st.integers(1, 12)), st.one_of(st.none(), st.integers(1, 12))),
        )
    )
    call = _common(
        draw, Call({"input": _values(draw, (n, c, h, w), draw(st.integers(0, 4)) == 0)}, {"output_size": size})
    )
    return _with_grad(draw, call, ("grad_output",), deltas=("batchless",))


@st.composite
def draw_batch_norm_bwd(draw) -> Call:
    call = draw(draw_batch_norm())
    if call.options["training"]:  # the batch's own statistics, computed by both sides
        call.arrays["running_mean"] = call.arrays["running_var"] = None
    else:  # known fault, test_hardening's xfail: eval-mode input gradients of NaN/inf inputs on c, numba
        call.arrays["input"] = np.nan_to_num(call.arrays["input"], nan=0.5, posinf=2.0, neginf=-2.0)
    return _with_grad(draw, call, ("input", "grad_output"))


@st.composite
def draw_relu_bwd(draw) -> Call:
    call = draw(draw_relu())
    call.arrays["output"] = np.maximum(call.arrays["input"], 0)  # NaN stays NaN, as torch's relu
    return _with_grad(draw, call, ("output", "grad_output"))


def torch_batch_norm_bwd(call: Call, t: dict):
    """Gradients w.r.t. (input, weight, bias); a missing weight is a scale of one, as fastconv's."""
    c = t["input"].shape[1] if t["input"].ndim > 1 else 1
    t = dict(
        t,
        weight=torch.ones(c, dtype=torch.float64) if t["weight"] is None else t["weight"],
        bias=torch.zeros(c, dtype=torch.float64),
    )
    o = call.options
    return _autograd(
        lambda call, t: F.batch_norm(
            t["input"],
            t["running_mean"],
            t["running_var"],
            t["weight"],
            t["bias"],
            training=o["training"],
            eps=o["eps"],
        ),
        ("input", "weight", "bias"),
    )(call, t)


FUZZ_OPS.update(
    {
        ("conv2d", "bwd_data"): FuzzOp(
            draw_conv2d_bwd_data,
            lambda c, a, b: grad.conv2d_input(a["input"].shape, a["weight"], a["grad_output"], backend=b, **c.options),
            _autograd(lambda c, t: F.conv2d(t["input"], t["weight"], **c.options), ("input",)),
            lambda c: int(np.prod(c.arrays["weight"].shape[::2])),
            forward=lambda c, a: fastconv.conv2d(a["input"], a["weight"], **c.options),
        ),
        ("conv2d", "bwd_weight"): FuzzOp(
            draw_conv2d_bwd_weight,
            lambda c, a, b: grad.conv2d_weight(a["input"], a["weight"].shape, a["grad_output"], backend=b, **c.options),
            _autograd(lambda c, t: F.conv2d(t["input"], t["weight"], **c.options), ("weight",)),
            lambda c: max(9, c.extra["grad_output"].size // max(1, c.arrays["weight"].shape[0])),
            forward=lambda c, a: fastconv.conv2d(a["input"], a["weight"], **c.options),
        ),
        ("max_pool2d", "bwd_data"): FuzzOp(
            draw_max_pool2d_bwd,
            lambda c, a, b: grad.max_pool2d_input(a["input"], a["grad_output"], backend=b, **c.options),
            _autograd(lambda c, t: F.max_pool2d(t["input"], **c.options), ("input",)),
            lambda c: 16,
            forward=lambda c, a: fastconv.max_pool2d(a["input"], **c.options),
        ),
        ("avg_pool2d", "bwd_data"): FuzzOp(
            draw_avg_pool2d_bwd,
            lambda c, a, b: grad.avg_pool2d_input(a["input"].shape, a["grad_output"], backend=b, **c.options),
            _autograd(lambda c, t: F.avg_pool2d(t["input"], **c.options), ("input",)),
            lambda c: 16,
            forward=lambda c, a: fastconv.avg_pool2d(a["input"], **c.options),
        ),
        ("adaptive_avg_pool2d", "bwd_data"): FuzzOp(
            draw_adaptive_avg_pool2d_bwd,
            lambda c, a, b: grad.adaptive_avg_pool2d_input(a["input"].shape, a["grad_output"], backend=b),
            _autograd(lambda c, t: F.adaptive_avg_pool2d(t["input"], **c.options), ("input",)),
            lambda c: 81,
            forward=lambda c, a: fastconv.adaptive_avg_pool2d(a["input"], **c.options),
        ),
        ("batch_norm", "bwd_data"): FuzzOp(
            draw_batch_norm_bwd,
            lambda c, a, b: grad.batch_norm_input(
                a["input"],
                a["grad_output"],
                a["running_mean"],
                a["running_var"],
                a["weight"],
                training=c.options["training"],
                eps=c.options["eps"],
                backend=b,
            ),
            torch_batch_norm_bwd,
            lambda c: max(1, c.arrays["input"].size),
            forward=lambda c, a: a["input"],
            empty_batch_checked=False,
        ),
        ("relu", "bwd_data"): FuzzOp(
            draw_relu_bwd,
            lambda c, a, b: grad.relu_input(a["output"], a["grad_output"], backend=b),
            _autograd(lambda c, t: F.relu(t["input"]), ("input",)),
            lambda c: 1,
            forward=lambda c, a: a["output"],
        ),
    }
)


# -- the property ----------------------------------------------------------------------------------


def _torch_side(op: FuzzOp, call: Call):
    """torch's result in float64 (with its in-place updates), or the exception it raised."""
    t = {}
    for name, a in call.arrays.items():
        t[name] = None if a is None else torch.from_numpy(np.array(a, np.float64))
    if call.unbatched:
        t["input"] = t["input"][0]
    x = call.arrays["input"]
    if op.empty_batch_checked and x.ndim == 4 and x.shape[0] == 0 and not call.unbatched:
        one = {n: v[:1] if n == "input" else v for n, v in t.items()}
        one["input"] = torch.zeros((1, *x.shape[1:]), dtype=torch.float64)
        try:
            op.torch(call, one)
        except Exception as exc:  # noqa: BLE001
            return None, None, exc
    try:
        y = op.torch(call, t)
    except Exception as exc:  # noqa: BLE001 -- any torch refusal counts as "raises"
        return None, None, exc
    y = tuple(v.detach().numpy() for v in y) if isinstance(y, tuple) else y.numpy()
    return y, {n: t[n].numpy() for n in op.stateful if t[n] is not None}, None


def _form(call: Call, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim == 0 and call.form in ("strided_view", "negative_strides", "misaligned", "fortran"):
        return v  # a 0-d array has no strides to vary (and np.asfortranarray makes it 1-d)
    return FORMS[call.form](v)


def _fastconv_arrays(op: FuzzOp, call: Call, ref) -> dict:
    a = {}
    for name in call.arrays:
        v = call.numpy(name)
        a[name] = None if v is None else _form(call, v) if name in call.formed else v
    if call.unbatched:
        a["input"] = a["input"][0]
    if op.forward is not None:
        if "grad_output" not in call.extra:  # torch refused the forward: shape it from fastconv's
            try:
                shape = np.shape(op.forward(call, a))
            except Exception:  # noqa: BLE001 -- then any grad_output: both must refuse the call
                shape = (1,)
            _grad_output(call, shape)
        g = call.extra["grad_output"].astype(call.dtype)
        a["grad_output"] = _form(call, g) if "grad_output" in call.formed else g
        return a
    extra = dict(call.extra)
    if "residual" in extra:
        if ref is None:
            extra.pop("residual")
        else:
            extra["residual"] = np.random.default_rng(extra["residual"]).standard_normal(ref.shape).astype(call.dtype)
    a["extra"] = extra
    return a


def _reference_with_extras(call: Call, ref, a):
    if ref is None:
        return None
    if a["extra"].get("residual") is not None:
        ref = ref + a["extra"]["residual"].astype(np.float64)
    if a["extra"].get("activation") == "relu":
        ref = np.where(ref < 0, 0.0, ref)
    return ref


def _close(actual, expected, call: Call, terms: int, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch's {expected.shape}"
    rtol = (2e-4 if call.dtype == "float32" else 1e-9) * max(1.0, math.sqrt(terms) / 4)
    finite = np.isfinite(expected)
    scale = float(np.abs(expected[finite]).max()) if finite.any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1.0), equal_nan=True, err_msg=what)


#: FASTCONV_FUZZ_TORCH=0 skips torch (the sanitizer run: torch's C++ exceptions abort under a
#: preloaded ASan runtime); the calls must then only succeed or raise a clean error.
WITH_TORCH = os.environ.get("FASTCONV_FUZZ_TORCH", "1") != "0"


def _check_alone(op: FuzzOp, call: Call, backend) -> None:
    a = _fastconv_arrays(op, call, None)
    try:
        op.fastconv(call, a, backend)
    except (dispatch.BackendError, *CLEAN_ERRORS):
        pass


#: FASTCONV_FUZZ_TRACE=1 prints every call before it runs: the last one printed crashed the process.
TRACE = os.environ.get("FASTCONV_FUZZ_TRACE", "0") != "0"


def check_call(key: tuple[str, str], call: Call, backend) -> None:
    op = FUZZ_OPS[key]
    if TRACE:
        print(f"\n{key} backend={backend} {call!r}", file=sys.stderr, flush=True)
    if not WITH_TORCH:
        return _check_alone(op, call, backend)
    ref, ref_state, torch_error = _torch_side(op, call)
    a = _fastconv_arrays(op, call, ref)
    before = {n: v.copy() for n, v in a.items() if isinstance(v, np.ndarray) and n not in op.stateful}
    own = op.own_error(call)
    try:
        y = op.fastconv(call, a, backend)
    except dispatch.BackendError:
        return  # this backend refuses the problem, with a reason; "auto" would move on
    except CLEAN_ERRORS as exc:
        if own and torch_error is None:  # only fastconv's own option is wrong: that must be what it says
            assert isinstance(exc, ValueError) and own in str(exc), f"{type(exc).__name__}: {exc}"
        else:
            assert torch_error is not None, f"fastconv raised {type(exc).__name__}: {exc}; torch accepted the call"
        return
    assert own is None, f"fastconv accepted a bad {own}"
    assert torch_error is None, f"fastconv accepted a call torch refuses: {type(torch_error).__name__}: {torch_error}"
    for n, v in before.items():
        np.testing.assert_array_equal(a[n], v, err_msg=f"{n} was modified")
    ys = y if isinstance(y, tuple) else (y,)
    expected = ref if isinstance(ref, tuple) else (_reference_with_extras(call, ref, a),)
    assert len(ys) == len(expected), f"{len(ys)} results, torch has {len(expected)}"
    for i, (got, want) in enumerate(zip(ys, expected)):
        assert np.asarray(got).dtype == np.dtype(call.dtype), f"result {i}: dtype {np.asarray(got).dtype}"
        got = np.asarray(got, np.float64)
        poisoned = winograd_poisoned(call, np.asarray(a["input"], np.float64), got.shape)
        if poisoned is not None:  # the documented difference: not compared
            got, want = np.where(poisoned, np.nan, got), np.where(poisoned, np.nan, want)
        _close(got, want, call, op.terms(call), f"result {i}")
    for n, v in (ref_state or {}).items():
        _close(np.asarray(a[n], np.float64), v, call, op.terms(call), n)


@pytest.mark.parametrize("key", list(FUZZ_OPS), ids=lambda k: "-".join(k))
def test_fastconv_raises_iff_torch_raises_and_agrees(key):
    op = FUZZ_OPS[key]

    @FUZZ_SETTINGS
    @given(call=op.draw(), backend=st.sampled_from(_backends()))
    def run(call, backend):
        check_call(key, call, backend)

    run()


SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
if SIMULATED:  # simulated CUDA threads do NumPy scalar arithmetic, which warns where a GPU gives inf/NaN
    pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_cuda_backend_under_the_simulator():
    """Without a CUDA device, the forward rows on the cuda backend in a child process under Numba's
    CUDA simulator (which must be switched on before Numba is imported): a few examples per op
    (FASTCONV_FUZZ_CUDA_EXAMPLES), the fuzzer's small shapes.  The cuda backend has no backward
    kernels; "auto" never picks it for NumPy arrays, so it is named."""
    if SIMULATED:
        pytest.skip("already under the simulator")
    if os.environ.get("FASTCONV_FUZZ_BACKENDS"):
        pytest.skip("FASTCONV_FUZZ_BACKENDS chose the backends")
    if "cuda" not in dispatch._registry:
        pytest.skip("no cuda backend")
    if dispatch._status(dispatch._registry["cuda"])[0]:
        pytest.skip("a CUDA device is present: the rows above ran on it")
    pytest.importorskip("numba.cuda", reason="numba's CUDA target is not installed")
    env = {
        **os.environ,
        "NUMBA_ENABLE_CUDASIM": "1",
        "FASTCONV_FUZZ_BACKENDS": "cuda",
        "FASTCONV_FUZZ_EXAMPLES": os.environ.get("FASTCONV_FUZZ_CUDA_EXAMPLES", "6"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-k",
            "fwd",
            os.path.abspath(__file__),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    forward_rows = sum(direction == "fwd" for _, direction in FUZZ_OPS)
    assert f"{forward_rows} passed" in proc.stdout, proc.stdout[-2000:]
