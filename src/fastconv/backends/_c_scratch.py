"""The scratch memory the C kernels will ask for, computed before the call.

Mirrors csrc's sizing (conv_gemm_f32.c's phase planes, conv_direct_impl.h's padded depthwise
planes, pool_impl.h's padded rows) including the limits past which the kernels switch to loops
that clip taps and need no scratch, so that a problem whose scratch cannot fit is refused with a
MemoryError that says how much it needs -- before anything is allocated.
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


def conv2d_bytes(p, nthreads: int) -> int:
    item = 4 if p.dtype == "float32" else 8
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


def pool_bytes(p, nthreads: int) -> int:
    item = 4 if p.dtype == "float32" else 8
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
    elif p.op == "adaptive_avg_pool2d":
        check_scratch_size(nthreads * p.w * (4 if p.dtype == "float32" else 8), f"c backend: {p.op} {p.id}")

