"""The scratch memory the C kernels will ask for, computed before the call.

Mirrors csrc's sizing (conv_gemm_f32.c's phase planes, conv_direct_impl.h's padded depthwise
planes, pool_impl.h's padded rows, conv_winograd_f32.c's transformed tiles, conv_bwd_impl.h's
columns and per-thread weight gradients) including the limits past which the kernels switch to
loops that clip taps and need no scratch, so that a problem whose scratch cannot fit is refused
with a MemoryError that says how much it needs -- before anything is allocated.  The pooling
backward kernels (pool_bwd_impl.h) write straight into the gradient and need none.
"""
from __future__ import annotations

from .._args import check_scratch_size

# As the kernels: a padded buffer more than this many times the input and output rows/planes
# (plus a constant) is not made; the kernels clip instead.
_CONV_RATIO, _CONV_SLACK = 8.0, 1 << 20
_POOL_RATIO, _POOL_SLACK = 4.0, 4096


def _phases(taps: int, dil: int, stride: int) -> int:
    # r * dil % stride repeats with a period of at most `stride` taps.
    return len({r * dil % stride for r in range(min(taps, stride))})


def _item(p) -> int:
    return 4 if p.dtype == "float32" else 8


def _slice(nbytes: int) -> int:
    """fc_slice: each thread's part of a shared buffer starts on a 128-byte boundary."""
    return (nbytes + 127) // 128 * 128


def _team(nthreads: int, work: int, grain: int = 1) -> int:
    """fc_team: threads worth starting for ``work`` units of ``grain``."""
    return max(1, min(nthreads, work // grain))


def conv2d_bytes(p, nthreads: int) -> int:
    if p.direction == "bwd_data":
        return conv2d_bwd_data_bytes(p, nthreads)
    if p.direction == "bwd_weight":
        return conv2d_bwd_weight_bytes(p, nthreads)
    if p.algorithm == "winograd":
        return winograd_bytes(p, nthreads)
    item = _item(p)
    (sh, sw), (dh, dw), pt, pl = p.stride, p.dilation, p.padding[0], p.padding[2]
    if p.groups == p.c and p.groups > 1:  # depthwise: one padded plane per thread
        hp = max(p.h + pt, (p.oh - 1) * sh + (p.r - 1) * dh + 1)
        wp = max(p.w + pl, (p.ow - 1) * sw + (p.s - 1) * dw + 1)
        if hp * wp > _CONV_RATIO * (p.h * p.w + p.k // p.c * p.oh * p.ow) + _CONV_SLACK:
            return 0
        return nthreads * hp * wp * item
    if p.dtype != "float32" or sh > 64 or sw > 64:
        return 0  # the direct loops: no scratch
    hq, wq = p.oh + (p.r - 1) * dh // sh, p.ow + (p.s - 1) * dw // sw
    planes = _phases(p.r, dh, sh) * _phases(p.s, dw, sw) * hq * wq
    if planes > _CONV_RATIO * (p.h * p.w + p.oh * p.ow) + _CONV_SLACK:
        return 0
    return (p.n * p.c * planes + 48) * 4


# -- Winograd F(4x4, 3x3) (conv_winograd_f32.c) ------------------------------------------------

#: The instruction set's microkernel width (nr): a chunk of tiles is a multiple of it.
_WINOGRAD_NR = {"avx512": 48, "avx2": 16, "generic": 16}
_WINOGRAD_KPAD, _WINOGRAD_CHUNK = 24, 2 << 20


def winograd_bytes(p, nthreads: int, isa: str | None = None) -> int:
    """The transformed filters U (36 x k rounded up to 24 x c, made in Python, cached) plus the
    kernel's transformed input and output tiles V and M: per chunk of tiles 36 x (c + kp) floats
    per tile, at least one microkernel panel of tiles -- so huge channel counts on tiny images
    need 36 x c x nr floats however few tiles there are -- one chunk per thread when there are
    enough tiles, one shared otherwise."""
    if isa is None:
        from . import c

        isa = c.isa() or "avx512"
    nr = _WINOGRAD_NR.get(isa, max(_WINOGRAD_NR.values()))
    kp = -(-p.k // _WINOGRAD_KPAD) * _WINOGRAD_KPAD
    tiles = p.n * -(-p.oh // 4) * -(-p.ow // 4)
    team = _team(nthreads, tiles * p.c * p.k * 36, 1 << 16)
    per_tile = 36 * (p.c + kp) * 4
    tcp = max(nr, _WINOGRAD_CHUNK // per_tile // nr * nr)
    own = tiles >= 2 * team * nr
    if own:
        tcp = min(tcp, max(nr, tiles // (2 * team) // nr * nr))
    tcp = min(tcp, -(-tiles // nr) * nr)
    copies = team if own else 1
    tiles_bytes = copies * (_slice(36 * p.c * tcp * 4) + _slice(36 * kp * tcp * 4)) + p.c * 8
    return 36 * kp * p.c * 4 + tiles_bytes


# -- backward (conv_bwd_impl.h) ------------------------------------------------------------------

#: bwd_gemm_impl.h's packing buffers (MC x KC + NC x KC elements), per thread.
_BWD_GEMM_ELEMENTS = 128 * 256 + 1536 * 256
_BWD_MIN_PIXELS = 1024


def _padded_copies(p) -> int:
    """Bytes of the explicitly padded input (and its gradient) that padding modes other than
    zeros make in Python before the kernel runs."""
    if getattr(p, "padding_mode", "zeros") == "zeros":
        return 0
    pt, pb, pl, pr = p.padding
    return 2 * p.n * p.c * (p.h + pt + pb) * (p.w + pl + pr) * _item(p)


def conv2d_bwd_data_bytes(p, nthreads: int) -> int:
    """Backward-data: stride-1 and lightly strided problems run as forward convolutions (checked
    on their own as they run); above c.MAX_PHASES phases the kernel's GEMM writes each (image,
    group) task's columns, cg*r*s x oh*ow, into a private buffer per thread."""
    from .c import MAX_PHASES

    extra = _padded_copies(p)
    if p.stride[0] * p.stride[1] <= MAX_PHASES:
        return extra
    from ._bwd_common import zero_padded

    q = zero_padded(p)  # what the kernel sees
    pointwise = q.r == q.s == 1 and not (q.padding[0] or q.padding[2]) and q.oh == q.h and q.ow == q.w
    per_thread = _BWD_GEMM_ELEMENTS + (0 if pointwise else q.cg * q.r * q.s * q.oh * q.ow)
    return extra + _team(nthreads, q.n * q.groups) * _slice(per_thread * _item(q))


def conv2d_bwd_weight_bytes(p, nthreads: int) -> int:
    """Backward-weight: each thread sums its images into a private weight gradient (k*cg*r*s)
    next to a copy of a chunk of grad_output (kg x images x oh*ow)."""
    team = _team(nthreads, p.n)
    per_img = -(-p.n // team)
    ohw = p.oh * p.ow
    chunk = max(1, min(per_img, -(-_BWD_MIN_PIXELS // max(ohw, 1))))
    per_thread = _BWD_GEMM_ELEMENTS + p.k * p.cg * p.r * p.s + p.kg * chunk * ohw
    return _padded_copies(p) + team * _slice(per_thread * _item(p))


def pool_bytes(p, nthreads: int) -> int:
    if p.direction != "fwd":
        return 0  # pool_bwd_impl.h: no scratch
    item = _item(p)
    kw, sw, pw, dw = p.kernel[1], p.stride[1], p.padding[1], p.dilation[1]
    padded = max(p.w + pw, (p.ow - 1) * sw + (kw - 1) * dw + 1)
    row = p.w if padded > _POOL_RATIO * (p.w + p.ow) + _POOL_SLACK else padded
    return nthreads * (row + p.ow) * item


def check(p, nthreads: int) -> None:
    """MemoryError when the scratch of ``p`` on ``nthreads`` threads cannot fit."""
    if p.op == "conv2d":
        check_scratch_size(conv2d_bytes(p, nthreads), f"c backend: conv2d {p.id}")
    elif p.op in ("max_pool2d", "avg_pool2d"):
        check_scratch_size(pool_bytes(p, nthreads), f"c backend: {p.op} {p.id}")
    elif p.op == "adaptive_avg_pool2d" and p.direction == "fwd":
        check_scratch_size(nthreads * p.w * (4 if p.dtype == "float32" else 8), f"c backend: {p.op} {p.id}")

