"""C11 + OpenMP + SIMD kernels compiled through cffi (out-of-line API mode): the fast path.

The kernels live in csrc/ (the contract is csrc/fastconv.h); this module only turns a validated
problem into a C descriptor, hands over the arrays and turns a status code into an exception.
Arrays reach C through ``ffi.from_buffer`` after api.py made them C-contiguous, native-order
float32/float64; the output is allocated here.  cffi releases the GIL around every C call, so
calls from several Python threads run in parallel; each C call runs an OpenMP team of
``fastconv.get_num_threads()`` threads.

The float32 convolution runs packed GEMM panels with the microkernel of the CPU's instruction
set (csrc/isa.c: 8x48 on AVX-512, 6x16 on AVX2, 4x16 portable; ``isa()``, capped by
``FASTCONV_ISA``), or Winograd F(4x4, 3x3) on those microkernels; float64 and depthwise
convolutions use direct loops that the compiler vectorises.  With ``FASTCONV_VERBOSE=1`` each
convolution logs the C kernel that ran (e.g. ``conv2d f32 gemm 6x16 avx2``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
from collections import OrderedDict

import numpy as np

from .. import _env, threads
from . import _c_scratch, refuse_algorithm

NAME = "c"
DEVICES = ("cpu",)
ALGORITHMS = {"conv2d": ("direct", "gemm", "winograd")}
FUSED_EPILOGUE = True
#: Every activation runs in the C epilogue (csrc/fc_internal.h, fc_act): on the GEMM tile rows as
#: they are stored, on each finished row of the direct loops, on each Winograd output.
FUSED_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "hardtanh", "sigmoid", "silu", "hardswish")
#: fastconv.h's enum fc_activation.
_ACT = {None: 0, **{name: code for code, name in enumerate(FUSED_ACTIVATIONS, start=1)}}

log = logging.getLogger("fastconv")


# The extension links the process's libgomp.  torch's wheel ships its own copy under the same
# soname, so whichever loads first is the one OpenMP runtime (and thread pool) both use; its
# OMP_WAIT_POLICY decides whether idle threads spin or sleep.  On a shared or oversubscribed
# machine OMP_WAIT_POLICY=PASSIVE avoids spinning threads that hold cores other threads need.
try:
    from .. import _ckernels
except ImportError as exc:  # not built: no compiler at install time, or a broken build
    _ckernels = None
    _IMPORT_ERROR = f"the C extension fastconv._ckernels is not built ({exc}); reinstall with a C compiler"
else:
    _IMPORT_ERROR = ""

_PREFIX = {"float32": "fc_f32_", "float64": "fc_f64_"}

# libgomp has no fork handler: a child forked after any OpenMP region ran (ours or torch's, which
# shares the runtime) inherits a thread pool whose threads do not exist, and its next parallel
# region waits for them forever.  A team of one never touches the pool, so in a forked child
# every call runs on the calling thread.
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _nthreads() -> int:
    return 1 if _forked else threads.get_num_threads()


def available():
    if _ckernels is None:
        return False, _IMPORT_ERROR
    if not _ckernels.lib.fc_openmp():
        return True, "built without OpenMP: every call runs on one thread"
    return True, ""


def supports(p):
    why = refuse_algorithm(p, ALGORITHMS, NAME)
    if why:
        return why
    if p.op == "conv2d" and p.algorithm == "gemm" and p.dtype != "float32":
        return "the c backend's GEMM kernels are float32 only (float64 runs the direct loops)"
    if p.op == "conv2d" and p.algorithm == "gemm" and _ckernels is not None:
        if not _gemm_takes(p):
            return (
                f"the c backend's GEMM reads its input through stride phases, which it cannot build for "
                f"stride {p.stride} and dilation {p.dilation} (at most 64 a side, and not many times the "
                'input\'s size); algorithm="direct" runs it'
            )
    if p.op == "conv2d" and p.algorithm == "winograd":
        if p.dtype != "float32":
            return "the c backend's Winograd is float32 only"
        if p.groups != 1:
            return f"the c backend's Winograd needs groups=1, got groups={p.groups}"
    return None


@functools.lru_cache(maxsize=256)
def _gemm_takes(p) -> bool:
    """fc_f32_gemm_supports(p), asked once per problem."""
    return bool(_ckernels.lib.fc_f32_gemm_supports(_descriptor(p)))


def isa() -> str | None:
    """The instruction set the float32 kernels use here ("avx512", "avx2", "generic")."""
    return None if _ckernels is None else _ckernels.ffi.string(_ckernels.lib.fc_isa()).decode()


def peak_gflops(nthreads: int | None = None) -> float | None:
    """Measured float32 FMA peak of ``nthreads`` threads in GFLOP/s (2 FLOPs per multiply-add).

    A short (tens of ms) register-only FMA loop with the best instruction set the CPU has: the
    roof no convolution can pass.  None when the C extension is not built.
    """
    if _ckernels is None:
        return None
    return float(_ckernels.lib.fc_peak_gflops(int(nthreads or _nthreads())))


# -- plumbing ------------------------------------------------------------------------------------


_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class _Call:
    """Pointers for one C call.  The from_buffer objects keep their arrays alive until the call.

    C indexes every array by the problem's sizes, so each array's dtype and element count are
    checked against them here (cheap): a wrong array reaching C would be read out of bounds.
    """

    def __init__(self, dtype: str):
        self.ffi = _ckernels.ffi
        self.dtype = _DTYPES.get(dtype) or np.dtype(dtype)

    def ptr(self, a: np.ndarray | None, size: int, dtype=None, writable: bool = False):
        if a is None:
            return self.ffi.NULL
        want = self.dtype if dtype is None else np.dtype(dtype)
        flags = a.flags
        if a.dtype != want or a.size != size or not flags.c_contiguous or not flags.aligned:
            raise TypeError(
                f"c backend: expected a C-contiguous {want} array of {size} elements, "
                f"got {a.dtype} of shape {a.shape} (aligned: {a.flags.aligned}); this is a fastconv bug"
            )
        return self.ffi.from_buffer("float[]" if want == np.float32 else "double[]", a, require_writable=writable)


def _fn(dtype: str, op: str):
    return getattr(_ckernels.lib, _PREFIX[dtype] + op)


#: fastconv.h's status codes.
_OK, _ENOMEM, _EINVAL, _EUNSUPPORTED = 0, 1, 2, 3
_ALGO = {"auto": 0, "direct": 1, "gemm": 2}


def _check(status: int, op: str) -> None:
    if status == _OK:
        return
    if status == _ENOMEM:
        raise MemoryError(f"c backend: {op} could not allocate its scratch buffers")
    if status == _EUNSUPPORTED:
        raise RuntimeError(
            f"c backend: {op}: the C kernels cannot run this problem, and supports() did not "
            f"refuse it; this is a fastconv bug"
        )
    raise RuntimeError(f"c backend: {op} rejected its descriptor (status {status}); this is a fastconv bug")


def _log_kernel(p, kernel) -> None:
    if kernel[0] != _ckernels.ffi.NULL and log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s: ran %s", p.op, p.id, _ckernels.ffi.string(kernel[0]).decode())


def _f64(a) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if a.flags.aligned else a.copy()


# -- ops -----------------------------------------------------------------------------------------


def _descriptor(p):
    """The C descriptor of ``p``, made once per problem (about 3 us each; the C functions only
    read it, so calls share it) -- except for problems with activation parameters, whose floats
    compare equal across -0.0 and 0.0 (a leaky_relu slope of either gives another sign of zero)."""
    return _make_descriptor(p) if p.activation_params else _cached_descriptor(p)


def _make_descriptor(p):
    d = _ckernels.ffi.new("fc_conv2d_desc *")
    d.n, d.c, d.h, d.w = p.n, p.c, p.h, p.w
    d.k, d.r, d.s = p.k, p.r, p.s
    d.oh, d.ow = p.oh, p.ow
    d.stride_h, d.stride_w = p.stride
    d.pad_top, d.pad_left = p.padding[0], p.padding[2]
    d.dil_h, d.dil_w = p.dilation
    d.groups = p.groups
    d.relu = 1 if p.activation == "relu" else 0
    d.act = _ACT[p.activation]
    params = (*p.activation_params, 0.0, 0.0)
    d.act_a, d.act_b = params[0], params[1]
    return d


_cached_descriptor = functools.lru_cache(maxsize=512)(_make_descriptor)


def conv2d(p, x, weight, bias, residual):
    return conv2d_into(p, x, weight, bias, residual, np.empty(p.output_shape, p.dtype))


def conv2d_into(p, x, weight, bias, residual, y, winograd_weights=None, gemm_weights=None):
    """conv2d writing into ``y`` (C-contiguous, the output's shape and dtype), which it returns.

    ``winograd_weights`` (algorithm "winograd" only) is the filter transform that
    :func:`winograd_transform` made once for ``weight``: the call then skips the transform
    cache and its byte-for-byte check of the weight.  ``gemm_weights`` is what
    :func:`gemm_weights` packed once for ``weight``: the GEMM reads it instead of the weight's
    rows (same results, bit for bit); a packing of another size (made for another problem or
    instruction set) is not used.  fastconv.compile's plans use all three, through ConvCall.
    """
    return ConvCall(p, weight, bias, y, winograd_weights, gemm_weights)(x, residual)


class ConvCall:
    """One convolution whose weights, bias and output buffer stay the same from call to call
    (a compiled plan's step): the descriptor, the weight and output pointers and the scratch
    check are made once, so a call costs one C call plus the checks of its input arrays."""

    def __init__(self, p, weight, bias, y, winograd_weights=None, gemm_weights=None):
        self.p, self.y, self.weight = p, y, weight
        self.call = call = _Call(p.dtype)
        self.desc = _descriptor(p)
        self.size = p.n * p.k * p.oh * p.ow
        self.kernel = call.ffi.new("const char **")
        self.fixed = (call.ptr(weight, p.k * p.cg * p.r * p.s), call.ptr(bias, p.k))
        self.out = call.ptr(y, self.size, writable=True)
        self.gemm = None
        if gemm_weights is not None and p.algorithm in ("auto", "gemm") and p.dtype == "float32":
            self.gemm = (gemm_weights.size, call.ptr(gemm_weights, gemm_weights.size), gemm_weights)
        self.winograd = None
        if p.algorithm == "winograd" and winograd_weights is not None:
            want = _ckernels.lib.fc_f32_winograd_weights_size(p.k, p.c)
            self.winograd = (call.ptr(winograd_weights, want), winograd_weights)
        self.threads = None  # the thread count the scratch check was made for

    def __call__(self, x, residual=None):
        p, call, lib = self.p, self.call, _ckernels.lib
        nthreads = _nthreads()
        if nthreads != self.threads:
            _c_scratch.check(p, nthreads)
            self.threads = nthreads
        xp = call.ptr(x, p.n * p.c * p.h * p.w)
        tail = (call.ptr(residual if p.residual else None, self.size), self.out, nthreads, self.kernel)
        if self.gemm is not None and lib.fc_f32_gemm_weights_size(self.desc) == self.gemm[0]:
            status = lib.fc_f32_conv2d_prepacked(
                self.desc, xp, self.fixed[0], self.gemm[1], self.gemm[0], self.fixed[1], *tail
            )
        elif p.algorithm == "auto" and p.dtype == "float32" and lib.fc_f32_eager_blocked_wanted(self.desc):
            # Input and output converted to and from the blocked layout around the blocked kernel,
            # which packs the weights as it goes (fc_f32_conv2d_nchw_blocked).
            ws = _workspace(lib.fc_f32_eager_blocked_scratch(self.desc, nthreads))
            status = lib.fc_f32_conv2d_nchw_blocked(
                self.desc, xp, *self.fixed, tail[0], tail[1], call.ffi.from_buffer(ws), ws.nbytes, nthreads, self.kernel
            )
        elif p.algorithm == "winograd":
            if self.winograd is not None:
                u = self.winograd[0]
            else:  # the transform cache, checked against the weight on every call
                u = call.ptr(_winograd_weights(p, self.weight), lib.fc_f32_winograd_weights_size(p.k, p.c))
            status = lib.fc_f32_conv2d_winograd(self.desc, xp, u, self.fixed[1], *tail)
        else:
            status = _fn(p.dtype, "conv2d_algo")(self.desc, _ALGO[p.algorithm], xp, *self.fixed, *tail)
        _check(status, "conv2d")
        _log_kernel(p, self.kernel)
        return self.y


def gemm_weights(p, weight: np.ndarray) -> np.ndarray | None:
    """``weight`` packed once as the GEMM's pre-packed kernels read it (for :func:`conv2d_into`),
    or None where "auto" would not run the GEMM for ``p`` (the few-channel and channel-vector
    kernels, depthwise, float64) or this instruction set reads weights only in place."""
    if p.dtype != "float32" or p.algorithm not in ("auto", "gemm"):
        return None
    call = _Call(p.dtype)
    d = _descriptor(p)
    size = _ckernels.lib.fc_f32_gemm_weights_size(d)
    if size <= 0:
        return None
    raw = np.empty(size * 4 + 64, np.uint8)  # 64-byte aligned: whole cache lines per step
    off = (-raw.ctypes.data) % 64
    out = raw[off : off + size * 4].view(np.float32)
    w = call.ptr(weight, p.k * p.cg * p.r * p.s)
    _check(_ckernels.lib.fc_f32_gemm_weights(d, w, call.ptr(out, size, writable=True), _nthreads()), "conv2d")
    return out


# -- channel-blocked activations (compiled plans) ---------------------------------------------------


def blocked_lanes() -> int:
    """L, the channels per vector of the blocked layout on this instruction set (16 or 8)."""
    return int(_ckernels.lib.fc_f32_blocked_lanes())


def blocked_shape(shape, border: int) -> tuple[int, ...]:
    """The blocked array of a (n, c, h, w) tensor with ``border`` zero pixels round each plane:
    (n, c // L, h + 2 * border, w + 2 * border, L)."""
    n, c, h, w = shape
    lanes = blocked_lanes()
    return (n, c // lanes, h + 2 * border, w + 2 * border, lanes)


def blocked_supports(p) -> bool:
    """Whether :class:`BlockedConvCall` runs ``p``: float32, ungrouped, channels multiples of L,
    activation none or relu (what fc_f32_conv2d_blocked takes)."""
    lanes = blocked_lanes()
    return (
        p.dtype == "float32"
        and p.groups == 1
        and p.c % lanes == 0
        and p.k % lanes == 0
        and p.activation in (None, "relu")
    )


def blocked_border(p) -> int:
    """The border a blocked input needs for ``p``: its padding, and whatever the last taps of a
    row or column reach past the plane."""
    sh, sw = p.stride
    dh, dw = p.dilation
    pt, _, pl, _ = p.padding
    over_h = (p.oh - 1) * sh - pt + (p.r - 1) * dh - (p.h - 1)
    over_w = (p.ow - 1) * sw - pl + (p.s - 1) * dw - (p.w - 1)
    return max(0, pt, pl, over_h, over_w)


def _check_blocked(a: np.ndarray, shape, border: int, name: str) -> None:
    want = blocked_shape(shape, border)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"c backend: {name} must be a float32 array of shape {want}, got {type(a).__name__}")
    if a.dtype != np.float32 or a.shape != want or not a.flags.c_contiguous or not a.flags.aligned:
        raise TypeError(
            f"c backend: {name} must be a C-contiguous float32 array of shape {want}, got {a.dtype} "
            f"{a.shape}; this is a fastconv bug"
        )


def to_blocked(x: np.ndarray, border: int, out: np.ndarray) -> np.ndarray:
    """NCHW float32 ``x`` into ``out`` (:func:`blocked_shape`), border zeroed."""
    n, c, h, w = x.shape
    _check_blocked(out, x.shape, border, "out")
    call = _Call("float32")
    _check(
        _ckernels.lib.fc_f32_to_blocked(
            n, c, h, w, call.ptr(x, x.size), border, call.ptr(out, out.size, writable=True), _nthreads()
        ),
        "to_blocked",
    )
    return out


def from_blocked(xb: np.ndarray, shape, border: int, out: np.ndarray) -> np.ndarray:
    """The blocked array ``xb`` of a ``shape`` tensor back into NCHW ``out``."""
    n, c, h, w = shape
    _check_blocked(xb, shape, border, "xb")
    call = _Call("float32")
    if out.shape != tuple(shape):
        raise TypeError(f"c backend: out must have shape {tuple(shape)}, got {out.shape}; this is a fastconv bug")
    _check(
        _ckernels.lib.fc_f32_from_blocked(
            n, c, h, w, call.ptr(xb, xb.size), border, call.ptr(out, out.size, writable=True), _nthreads()
        ),
        "from_blocked",
    )
    return out


def blocked_pool_supports(p) -> bool:
    """Whether the pools on the blocked layout take ``p``: float32 forward max pooling (NCHW in,
    blocked out: :func:`max_pool2d_blocked_into`) or global average pooling (blocked in, NCHW out:
    :func:`blocked_global_avg_pool_into`), channels a multiple of L."""
    from ..problem import AdaptivePool2dProblem, Pool2dProblem

    if p.dtype != "float32" or p.direction != "fwd" or p.return_indices or p.c % blocked_lanes():
        return False
    if isinstance(p, Pool2dProblem):
        return p.kind == "max"
    return isinstance(p, AdaptivePool2dProblem) and p.kind == "avg" and (p.oh, p.ow) == (1, 1)


def max_pool2d_blocked_into(p, x: np.ndarray, border: int, out: np.ndarray) -> np.ndarray:
    """max_pool2d of the NCHW ``x`` written into ``out``, the output blocked with ``border``."""
    from ..problem import Pool2dProblem

    if not (isinstance(p, Pool2dProblem) and blocked_pool_supports(p)):
        raise ValueError(f"c backend: the blocked max pool does not take {p.id}")
    _check_blocked(out, p.output_shape, border, "out")
    nthreads = _nthreads()
    _c_scratch.check(p, nthreads)
    call = _Call("float32")
    _check(
        _ckernels.lib.fc_f32_max_pool2d_blocked(
            _pool_desc(call, p),
            call.ptr(x, p.n * p.c * p.h * p.w),
            call.ptr(out, out.size, writable=True),
            border,
            nthreads,
        ),
        "max_pool2d_blocked",
    )
    return out


def blocked_global_avg_pool_into(xb: np.ndarray, shape, border: int, out: np.ndarray) -> np.ndarray:
    """The mean of each plane of the blocked ``xb`` (a ``shape`` tensor, ``border``) into the
    NCHW ``out`` of shape (n, c, 1, 1)."""
    n, c, h, w = shape
    _check_blocked(xb, shape, border, "xb")
    call = _Call("float32")
    _check(
        _ckernels.lib.fc_f32_blocked_global_avg_pool(
            n, c, h, w, call.ptr(xb, xb.size), border, call.ptr(out, n * c, writable=True), _nthreads()
        ),
        "blocked_global_avg_pool",
    )
    return out


def blocked_weights(p, weight: np.ndarray) -> np.ndarray:
    """``weight`` (k, c, r, s) packed once in the order the blocked kernel reads it."""
    if not blocked_supports(p):
        raise ValueError(f"c backend: the blocked kernel does not take {p.id}")
    call = _Call("float32")
    d = _descriptor(p)
    size = _ckernels.lib.fc_f32_blocked_weights_size(d)
    raw = np.empty(size * 4 + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off : off + size * 4].view(np.float32)
    w = call.ptr(np.ascontiguousarray(weight, np.float32), p.k * p.c * p.r * p.s)
    _check(_ckernels.lib.fc_f32_blocked_weights(d, w, call.ptr(out, size, writable=True)), "conv2d")
    return out


class BlockedConvCall:
    """A compiled plan's convolution on blocked activations: input with border ``xb``, residual
    (if ``p.residual``) with border ``rb``, output ``y`` with border ``yb``; weights pre-packed by
    :func:`blocked_weights`, or, for algorithm "winograd", the filters transformed by
    :func:`winograd_blocked_transform` (Winograd's transforms then read and write the blocked
    layout).
    The residual may be ``y`` itself when ``rb == yb``: the output then overwrites it in place."""

    def __init__(self, p, wpack, bias, y, xb: int, rb: int, yb: int):
        if not blocked_supports(p) or xb < blocked_border(p):
            raise ValueError(f"c backend: the blocked kernel cannot run {p.id} with border {xb}")
        if p.algorithm == "winograd" and supports(p) is not None:
            raise ValueError(f"c backend: Winograd cannot run {p.id}: {supports(p)}")
        _check_blocked(y, p.output_shape, yb, "y")
        self.p, self.y, self.xb, self.rb, self.yb = p, y, xb, rb, yb
        self.call = call = _Call("float32")
        self.desc = _descriptor(p)
        self.kernel = call.ffi.new("const char **")
        if p.algorithm == "winograd":
            self.fn = _ckernels.lib.fc_f32_conv2d_winograd_blocked
            wsize = _ckernels.lib.fc_f32_winograd_blocked_weights_size(p.k, p.c)
        else:
            self.fn = _ckernels.lib.fc_f32_conv2d_blocked
            wsize = p.k * p.c * p.r * p.s
        self.fixed = (call.ptr(wpack, wsize), call.ptr(bias, p.k))
        self.out = call.ptr(y, y.size, writable=True)
        self.keep = (wpack, bias)
        self.seen = {"x": None, "residual": None}  # name -> (the last array checked, its pointer)

    def _ptr(self, a, name: str):
        """The pointer to ``a``, checked the first time ``a`` comes: a plan passes the same arena
        views on every call (checking and wrapping them anew took 6-17 us a call, about 0.6% of
        ResNet-50 at batch 1).  Holding ``a`` keeps its memory and size as they were checked."""
        seen = self.seen[name]
        if seen is not None and seen[0] is a:
            return seen[1]
        p = self.p
        if name == "x":
            _check_blocked(a, p.input_shape, self.xb, "x")
        else:
            _check_blocked(a, p.output_shape, self.rb, "residual")
            # The output may overwrite the residual in place (the same buffer and border: the
            # kernel starts its sums from it), but must not overlap it in any other way.
            if np.may_share_memory(a, self.y) and not (a.ctypes.data == self.y.ctypes.data and self.rb == self.yb):
                raise ValueError(f"c backend: the residual of {p.id} overlaps its output; this is a fastconv bug")
        ptr = self.call.ptr(a, a.size)
        self.seen[name] = (a, ptr)
        return ptr

    def __call__(self, x, residual=None):
        p, call = self.p, self.call
        xp = self._ptr(x, "x")
        res = self._ptr(residual, "residual") if p.residual else call.ffi.NULL
        status = self.fn(
            self.desc,
            xp,
            self.xb,
            self.fixed[0],
            self.fixed[1],
            res,
            self.rb,
            self.out,
            self.yb,
            _nthreads(),
            self.kernel,
        )
        _check(status, "conv2d")
        _log_kernel(p, self.kernel)
        return self.y


# -- Winograd filter transforms, cached per weight ------------------------------------------------

#: The filter transforms of recently used eager Winograd calls: (address, shape) -> (copy of the
#: weight, transform).  A hit is checked against the copy byte for byte, so weights changed in
#: place (a training step) or a new array at a reused address are transformed afresh.  Bounded in
#: bytes.  (The blocked kernel's eager calls pack their weights as they go and cache nothing.)
_WEIGHT_CACHE: OrderedDict = OrderedDict()
_WEIGHT_CACHE_BYTES = 256 << 20
_weight_lock = threading.Lock()


def _prepared_weights(p, weight: np.ndarray, make) -> np.ndarray:
    key = (weight.__array_interface__["data"][0], weight.shape)
    ffi = _ckernels.ffi
    with _weight_lock:
        hit = _WEIGHT_CACHE.get(key)
        # memcmp, bit for bit (NaN weights compare equal to themselves; -0.0 differs from 0.0).
        if hit is not None and _ckernels.lib.fc_bytes_equal(
            ffi.from_buffer(hit[0]), ffi.from_buffer(weight), weight.nbytes
        ):
            _WEIGHT_CACHE.move_to_end(key)
            return hit[1]
    prepared = make(p, weight)
    entry = (weight.copy(), prepared)
    with _weight_lock:
        _WEIGHT_CACHE[key] = entry
        _WEIGHT_CACHE.move_to_end(key)
        total = sum(w.nbytes + t.nbytes for w, t in _WEIGHT_CACHE.values())
        while total > _WEIGHT_CACHE_BYTES and len(_WEIGHT_CACHE) > 1:
            w, t = _WEIGHT_CACHE.popitem(last=False)[1]
            total -= w.nbytes + t.nbytes
    return prepared


def _winograd_weights(p, weight: np.ndarray) -> np.ndarray:
    return _prepared_weights(p, weight, winograd_transform)


def winograd_transform(p, weight: np.ndarray) -> np.ndarray:
    """The Winograd filter transform of ``weight`` (k, c, 3, 3) float32, made afresh (uncached)."""
    lib = _ckernels.lib
    return _filter_transform(p, weight, lib.fc_f32_winograd_weights_size, lib.fc_f32_winograd_weights)


def winograd_blocked_transform(p, weight: np.ndarray) -> np.ndarray:
    """The same in the layout of the channel-blocked Winograd kernel (:class:`BlockedConvCall`)."""
    lib = _ckernels.lib
    return _filter_transform(p, weight, lib.fc_f32_winograd_blocked_weights_size, lib.fc_f32_winograd_blocked_weights)


def _filter_transform(p, weight: np.ndarray, size_of, transform) -> np.ndarray:
    size = size_of(p.k, p.c)
    if size < 0:
        raise MemoryError(f"c backend: the Winograd transform of a {p.weight_shape} weight is too large")
    u = np.empty(size, np.float32)
    call = _Call("float32")
    _check(
        transform(
            p.k, p.c, call.ptr(weight, p.k * p.c * 9), call.ptr(u, size, writable=True), threads.get_num_threads()
        ),
        "conv2d",
    )
    return u


#: Each calling thread's workspace for eager calls on the blocked kernel (their blocked input and
#: output, each OpenMP thread's packed weights), kept from call to call up to _WORKSPACE_KEEP
#: bytes, as cuDNN's callers keep theirs.
_workspaces = threading.local()
_WORKSPACE_KEEP = 64 << 20


def _workspace(nbytes: int) -> np.ndarray:
    """At least ``nbytes`` of 64-byte-aligned scratch: this thread's kept workspace, grown as
    needed (a larger need than _WORKSPACE_KEEP gets a buffer of its own, dropped after the call)."""
    if nbytes < 0:
        raise MemoryError("c backend: the blocked kernel's scratch is larger than memory")
    buf = getattr(_workspaces, "buf", None)
    if buf is not None and buf.nbytes >= nbytes:
        return buf
    raw = np.empty(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    buf = raw[off : off + nbytes]
    if nbytes <= _WORKSPACE_KEEP:
        _workspaces.buf = buf
    return buf


def clear_weight_cache() -> None:
    """Forget every cached Winograd filter transform."""
    with _weight_lock:
        _WEIGHT_CACHE.clear()


def eager_blocked(p) -> bool:
    """Whether an eager "auto" call of ``p`` runs on the blocked kernel, its input and output
    converted at the call (fc_f32_eager_blocked_wanted: this instruction set's measured rule)."""
    if p.dtype != "float32" or p.algorithm != "auto" or getattr(p, "direction", "fwd") != "fwd":
        return False
    if not blocked_supports(p):
        return False
    return bool(_ckernels.lib.fc_f32_eager_blocked_wanted(_descriptor(p)))


def eager_blocked_scratch(p, nthreads: int) -> int:
    """Bytes an eager call on the blocked kernel allocates on ``nthreads`` threads: its blocked
    input and output, and each thread's buffer of packed weights."""
    scratch = int(_ckernels.lib.fc_f32_eager_blocked_scratch(_descriptor(p), nthreads))
    if scratch < 0:  # past what size_t holds: more than any machine has
        return sys.maxsize
    return scratch


def _pool_desc(call, p):
    d = call.ffi.new("fc_pool2d_desc *")
    d.n, d.c, d.h, d.w = p.n, p.c, p.h, p.w
    d.oh, d.ow = p.oh, p.ow
    d.kh, d.kw = p.kernel
    d.stride_h, d.stride_w = p.stride
    d.pad_h, d.pad_w = p.padding
    d.dil_h, d.dil_w = p.dilation
    d.count_include_pad = 1 if p.count_include_pad else 0
    d.divisor_override = p.divisor_override or 0
    return d


def _pool(p, x, op, y=None):
    nthreads = _nthreads()
    _c_scratch.check(p, nthreads)
    call = _Call(p.dtype)
    y = np.empty(p.output_shape, p.dtype) if y is None else y
    status = _fn(p.dtype, op)(
        _pool_desc(call, p),
        call.ptr(x, p.n * p.c * p.h * p.w),
        call.ptr(y, p.n * p.c * p.oh * p.ow, writable=True),
        nthreads,
    )
    _check(status, op)
    return y


def max_pool2d(p, x):
    return _pool(p, x, "max_pool2d")


def avg_pool2d(p, x):
    return _pool(p, x, "avg_pool2d")


def max_pool2d_into(p, x, y):
    """max_pool2d writing into ``y`` (C-contiguous, the output's shape and dtype)."""
    return _pool(p, x, "max_pool2d", y)


def avg_pool2d_into(p, x, y):
    return _pool(p, x, "avg_pool2d", y)


def max_pool2d_with_indices(p, x):
    call = _Call(p.dtype)
    y = np.empty(p.output_shape, p.dtype)
    idx = np.empty(p.output_shape, np.int64)
    status = _fn(p.dtype, "max_pool2d_indices")(
        _pool_desc(call, p),
        call.ptr(x, p.n * p.c * p.h * p.w),
        call.ptr(y, y.size, writable=True),
        _indices(call, idx),
        _nthreads(),
    )
    _check(status, "max_pool2d_with_indices")
    return y, idx


def _indices(call, idx):
    if idx.dtype != np.int64 or not idx.flags.c_contiguous:
        raise TypeError("c backend: indices must be a C-contiguous int64 array; this is a fastconv bug")
    return call.ffi.from_buffer("int64_t[]", idx, require_writable=True)


def adaptive_max_pool2d(p, x):
    call = _Call(p.dtype)
    y = np.empty(p.output_shape, p.dtype)
    idx = np.empty(p.output_shape, np.int64) if p.return_indices else None
    status = _fn(p.dtype, "adaptive_max_pool2d")(
        p.n * p.c,
        p.h,
        p.w,
        p.oh,
        p.ow,
        call.ptr(x, p.n * p.c * p.h * p.w),
        call.ptr(y, y.size, writable=True),
        call.ffi.NULL if idx is None else _indices(call, idx),
        _nthreads(),
    )
    _check(status, "adaptive_max_pool2d")
    return (y, idx) if p.return_indices else y


def adaptive_avg_pool2d(p, x):
    return adaptive_avg_pool2d_into(p, x, np.empty(p.output_shape, p.dtype))


def adaptive_avg_pool2d_into(p, x, y):
    _c_scratch.check(p, _nthreads())
    call = _Call(p.dtype)
    status = _fn(p.dtype, "adaptive_avg_pool2d")(
        p.n * p.c,
        p.h,
        p.w,
        p.oh,
        p.ow,
        call.ptr(x, p.n * p.c * p.h * p.w),
        call.ptr(y, p.n * p.c * p.oh * p.ow, writable=True),
        _nthreads(),
    )
    _check(status, "adaptive_avg_pool2d")
    return y


def batch_norm(p, x, mean, var, weight, bias):
    call = _Call(p.dtype)
    nthreads = _nthreads()
    if p.training:
        mean, var = np.empty(p.c), np.empty(p.c)
        status = _fn(p.dtype, "batch_stats")(
            p.n,
            p.c,
            p.l,
            call.ptr(x, p.n * p.c * p.l),
            call.ptr(mean, p.c, np.float64, True),
            call.ptr(var, p.c, np.float64, True),
            nthreads,
        )
        _check(status, "batch_norm")
    params = [_f64(a) for a in (mean, var, weight, bias)]
    y = np.empty((p.n, p.c, p.l), p.dtype)
    status = _fn(p.dtype, "batch_norm")(
        p.n,
        p.c,
        p.l,
        call.ptr(x, p.n * p.c * p.l),
        *(call.ptr(a, p.c, np.float64) for a in params),
        float(p.eps),
        call.ptr(y, y.size, writable=True),
        nthreads,
    )
    _check(status, "batch_norm")
    return y, mean, var


def relu(p, x):
    call = _Call(p.dtype)
    y = np.empty(p.shape, p.dtype)
    if y.size:
        status = _fn(p.dtype, "relu")(y.size, call.ptr(x, p.size), call.ptr(y, y.size, writable=True), _nthreads())
        _check(status, "relu")
    return y


def activation(p, x):
    call = _Call(p.dtype)
    y = np.empty(p.shape, p.dtype)
    if y.size:
        params = (*p.params, 0.0, 0.0)
        status = _fn(p.dtype, "activation")(
            y.size,
            call.ptr(x, p.size),
            call.ptr(y, y.size, writable=True),
            _ACT[p.kind],
            params[0],
            params[1],
            _nthreads(),
        )
        _check(status, "activation")
    return y


def linear(p, x, weight, bias):
    """A linear layer is a 1x1 convolution of (rows, in_features, 1, 1) images: the same GEMM kernels."""
    if p.in_features == 0:  # no terms: the bias alone
        y = np.zeros((p.rows, p.out_features), p.dtype)
        return (y + bias if bias is not None else y).reshape(p.output_shape)
    return conv2d(_as_conv(p, bias is not None), x, weight, bias, None).reshape(p.output_shape)


@functools.lru_cache(maxsize=256)
def _as_conv(p, bias: bool):
    """The 1x1 convolution of linear problem ``p``, made once per problem."""
    return Conv2dProblem(p.rows, p.in_features, 1, 1, p.out_features, 1, 1, dtype=p.dtype, bias=bias)


# -- backward ------------------------------------------------------------------------------------

from ..problem import Conv2dProblem  # noqa: E402
from ._bwd_common import as_ncl, empty_batch_norm_grads, fold_padding, pad_input, zero_padded  # noqa: E402


def _transposed(q):
    """For a stride-1 convolution, the forward convolution that computes its backward-data: the
    gradient slides over dy with the kernel flipped and input/output channels swapped per group,
    padded by the dilated kernel's reach less the forward's padding.  None when that padding
    would be negative (padding wider than the kernel) or the convolution is strided."""
    pt, pb, pl, pr = q.padding
    reach_h, reach_w = q.dilation[0] * (q.r - 1), q.dilation[1] * (q.s - 1)
    pads = (reach_h - pt, reach_h - pb, reach_w - pl, reach_w - pr)
    if q.stride != (1, 1) or min(pads) < 0:
        return None
    return Conv2dProblem(q.n, q.k, q.oh, q.ow, q.c, q.r, q.s, (1, 1), pads, q.dilation, q.groups, q.dtype)


def _swap_channels(q, weight, flip=False):
    """weight (k, cg, r', s') -> per group (cg, kg, r', s'): the kernel of the transposed convolution,
    turned by 180 degrees when ``flip``.  float32 in C (tiled, threaded): numpy's strided copy took
    as long as the convolution itself on ResNet-50's 1x1 layers on 7x7 images."""
    r, s = weight.shape[2:]
    if q.dtype == "float32" and weight.flags.c_contiguous and weight.dtype == np.float32:
        wt = np.empty((q.c, q.kg, r, s), np.float32)
        call = _Call("float32")
        status = _ckernels.lib.fc_f32_swap_channels(
            q.groups,
            q.kg,
            q.cg,
            r * s,
            int(flip),
            call.ptr(weight, weight.size),
            call.ptr(wt, wt.size, writable=True),
            _nthreads(),
        )
        _check(status, "conv2d_bwd_data")
        return wt
    if flip:
        weight = weight[:, :, ::-1, ::-1]
    wt = weight.reshape(q.groups, q.kg, q.cg, r, s).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wt.reshape(q.c, q.kg, r, s))


def _phase_axis(n, out, k, stride, pad, dil, a):
    """Along one axis, input cells a, a + stride, ...: the taps that reach them (kernel order
    reversed), their spacing, and how to slice and pad dy so that a stride-1 forward convolution
    yields their gradient.  None when no tap reaches them."""
    taps = [t for t in range(k) if (t * dil - pad - a) % stride == 0]
    count = (n - a + stride - 1) // stride
    if not taps or count <= 0:
        return None
    spacing = dil // math.gcd(dil, stride)
    before = (taps[-1] * dil - pad - a) // stride  # the last tap reads dy[u - before]
    lo = max(0, -before)  # dy rows before lo are never read
    before = max(0, before)
    after = count + spacing * (len(taps) - 1) - before - (out - lo)
    hi = out + min(0, after)
    if hi <= lo:
        return None
    return taps[::-1], spacing, lo, hi, before, max(0, after), count


#: Above this many phases (stride_h * stride_w) each phase's convolution is too small to pay for
#: its call; backward-data then runs the C kernel's packed GEMM into columns and col2im.
MAX_PHASES = 4


def _bwd_data_phases(p, q, grad_output, weight):
    """Strided backward-data as stride_h * stride_w stride-1 forward convolutions, one per phase
    of the input grid (the cells a + i*stride), each with the taps that land on its phase."""
    gx = np.zeros(q.input_shape, p.dtype)
    for a in range(q.stride[0]):
        rows = _phase_axis(q.h, q.oh, q.r, q.stride[0], q.padding[0], q.dilation[0], a)
        for b in range(q.stride[1]):
            cols = _phase_axis(q.w, q.ow, q.s, q.stride[1], q.padding[2], q.dilation[1], b)
            if rows is None or cols is None:
                continue
            (tr, dr, r0, r1, pt, pb, nh), (tc, dc, c0, c1, pl, pr, nw) = rows, cols
            dy = np.ascontiguousarray(grad_output[:, :, r0:r1, c0:c1])
            t = Conv2dProblem(
                q.n, q.k, r1 - r0, c1 - c0, q.c, len(tr), len(tc), (1, 1), (pt, pb, pl, pr), (dr, dc), q.groups, q.dtype
            )
            whole = tr == list(range(q.r))[::-1] and tc == list(range(q.s))[::-1]
            wt = _swap_channels(q, weight, True) if whole else _swap_channels(q, weight[:, :, tr][:, :, :, tc])
            gx[:, :, a :: q.stride[0], b :: q.stride[1]] = conv2d(t, dy, wt, None, None)[:, :, :nh, :nw]
    return gx


def _gemm_bwd_data(q) -> bool:
    """Whether the C kernel's own GEMM + col2im (float32, weight^T read without a transpose)
    beats the forward kernels, which need the kernel transposed first and, for strided layers,
    one small convolution per phase of the input grid.  Measured on ResNet-50's layers (batch 8,
    2 threads, CPU clock): every strided layer (3x3: 0.84-1.2x torch against 0.5-0.8x by phases;
    1x1 projections: 1.2-3.0x, as fast as by phases or slightly faster), and 1x1 layers on images
    up to 16x16 (0.85-1.05x against 0.67-0.85x) or with at least twice as many output as input
    channels (1.25-1.28x against 1.14-1.17x); not the other stride-1 layers (on 56x56 and 28x28 images with few output
    channels each tile's short reduction leaves it 0.6-0.9x the forward route's speed).
    FASTCONV_BWD_DATA=gemm|forward forces one (tests reach both)."""
    force = _env.get("FASTCONV_BWD_DATA")
    if force:
        return force == "gemm" and q.dtype == "float32"
    if q.dtype != "float32" or q.cg < 8:
        return False
    if q.stride != (1, 1):
        return True
    return q.r * q.s == 1 and (q.oh * q.ow <= 256 or q.kg >= 2 * q.cg)


def conv2d_bwd_data(p, grad_output, weight):
    _c_scratch.check(p, _nthreads())
    q = zero_padded(p)
    t = _transposed(q)
    if q.n and _gemm_bwd_data(q):
        t = None
    elif t is not None and q.n:
        gx = conv2d(t, grad_output, _swap_channels(q, weight, True), None, None)
        return fold_padding(p, gx)
    if q.n and q.stride[0] * q.stride[1] <= MAX_PHASES and not _gemm_bwd_data(q):
        return fold_padding(p, _bwd_data_phases(p, q, grad_output, weight))
    call = _Call(p.dtype)
    gx = np.empty(q.input_shape, p.dtype)
    status = _fn(p.dtype, "conv2d_bwd_data")(
        _descriptor(q),
        call.ptr(grad_output, q.n * q.k * q.oh * q.ow),
        call.ptr(weight, q.k * q.cg * q.r * q.s),
        call.ptr(gx, gx.size, writable=True),
        _nthreads(),
    )
    _check(status, "conv2d_bwd_data")
    return fold_padding(p, gx)


def conv2d_bwd_weight(p, x, grad_output):
    _c_scratch.check(p, _nthreads())
    q = zero_padded(p)
    call = _Call(p.dtype)
    xp = np.ascontiguousarray(pad_input(p, x))
    gw = np.empty(q.weight_shape, p.dtype)
    gb = np.empty(q.k, p.dtype) if p.bias else None
    status = _fn(p.dtype, "conv2d_bwd_weight")(
        _descriptor(q),
        call.ptr(xp, q.n * q.c * q.h * q.w),
        call.ptr(grad_output, q.n * q.k * q.oh * q.ow),
        call.ptr(gw, gw.size, writable=True),
        call.ptr(gb, q.k, writable=True),
        _nthreads(),
    )
    _check(status, "conv2d_bwd_weight")
    return gw, gb


def max_pool2d_bwd_data(p, x, grad_output):
    call = _Call(p.dtype)
    gx = np.empty(p.input_shape, p.dtype)
    status = _fn(p.dtype, "max_pool2d_bwd")(
        _pool_desc(call, p),
        call.ptr(x, gx.size),
        call.ptr(grad_output, p.n * p.c * p.oh * p.ow),
        call.ptr(gx, gx.size, writable=True),
        _nthreads(),
    )
    _check(status, "max_pool2d_bwd_data")
    return gx


def avg_pool2d_bwd_data(p, grad_output):
    call = _Call(p.dtype)
    gx = np.empty(p.input_shape, p.dtype)
    status = _fn(p.dtype, "avg_pool2d_bwd")(
        _pool_desc(call, p),
        call.ptr(grad_output, p.n * p.c * p.oh * p.ow),
        call.ptr(gx, gx.size, writable=True),
        _nthreads(),
    )
    _check(status, "avg_pool2d_bwd_data")
    return gx


def adaptive_avg_pool2d_bwd_data(p, grad_output):
    if p.oh == 0 or p.ow == 0:  # no bins: nothing flows back
        return np.zeros(p.input_shape, p.dtype)
    call = _Call(p.dtype)
    gx = np.empty(p.input_shape, p.dtype)
    status = _fn(p.dtype, "adaptive_avg_pool2d_bwd")(
        p.n * p.c,
        p.h,
        p.w,
        p.oh,
        p.ow,
        call.ptr(grad_output, p.n * p.c * p.oh * p.ow),
        call.ptr(gx, gx.size, writable=True),
        _nthreads(),
    )
    _check(status, "adaptive_avg_pool2d_bwd_data")
    return gx


def batch_norm_bwd_data(p, x, grad_output, mean, var, weight):
    if p.count == 0:
        return empty_batch_norm_grads(p, x)
    call = _Call(p.dtype)
    x3, gy = np.ascontiguousarray(as_ncl(p, x)), np.ascontiguousarray(as_ncl(p, grad_output))
    gx = np.empty(x3.shape, p.dtype)
    gw, gb = np.empty(p.c), np.empty(p.c)
    status = _fn(p.dtype, "batch_norm_bwd")(
        p.n,
        p.c,
        p.l,
        call.ptr(x3, x3.size),
        call.ptr(gy, gy.size),
        *(call.ptr(_f64(a), p.c, np.float64) for a in (mean, var, weight)),
        float(p.eps),
        1 if p.training else 0,
        call.ptr(gx, gx.size, writable=True),
        call.ptr(gw, p.c, np.float64, True),
        call.ptr(gb, p.c, np.float64, True),
        _nthreads(),
    )
    _check(status, "batch_norm_bwd_data")
    return gx.reshape(x.shape), gw.astype(p.dtype), gb.astype(p.dtype)


def relu_bwd_data(p, output, grad_output):
    call = _Call(p.dtype)
    gx = np.empty(p.shape, p.dtype)
    if gx.size:
        status = _fn(p.dtype, "relu_bwd")(
            gx.size,
            call.ptr(output, p.size),
            call.ptr(grad_output, p.size),
            call.ptr(gx, gx.size, writable=True),
            _nthreads(),
        )
        _check(status, "relu_bwd_data")
    return gx
