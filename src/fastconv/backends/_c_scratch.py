"""The scratch memory the C kernels will ask for, computed before the call.

Mirrors csrc's sizing (conv_gemm_f32.c's phase planes, which conv_kvec_f32.c also reads,
conv_direct_impl.h's padded depthwise planes, pool_impl.h's padded rows, conv_winograd_f32.c's
transformed tiles, conv_bwd_impl.h's columns and per-thread weight gradients) including the
limits past which the kernels switch to loops that clip taps and need no scratch, so that a
problem whose scratch cannot fit is refused with a MemoryError that says how much it needs --
before anything is allocated.  The pooling backward kernels (pool_bwd_impl.h) write straight
into the gradient and need none.
"""

from __future__ import annotations

import os

from .._args import check_scratch_size

#: Scratch sizes check_scratch_size never refuses (it reads the free memory only above them).
_SMALL = 2**26

# As the kernels: a padded buffer more than this many times the input and output rows/planes
# (plus a constant) is not made; the kernels clip instead.
_CONV_RATIO, _CONV_SLACK = 8.0, 1 << 20
_POOL_RATIO, _POOL_SLACK = 4.0, 4096


#: conv_kvec_f32.c (the channel-vector kernel; it reads the same phase planes as the GEMM, or the
#: input itself): per thread, a task's partial sums (at most 64 Ki floats), one reduction block
#: of packed weights (vectors x lanes x 96 steps) and the epilogue's transposed runs (vectors x
#: lanes x 48), sized for AVX-512's tile (4 vectors of 16 lanes), the largest.
_KVEC_THREAD_FLOATS = 64 * 1024 + 4 * 16 * (96 + 48)


def _kvec_bytes(nthreads: int) -> int:
    """What the channel-vector kernel adds to the GEMM's planes: no instruction-set table lets
    "auto" choose it yet, so only the FASTCONV_F32_CONV=kvec hook (read per call) runs it."""
    if os.environ.get("FASTCONV_F32_CONV") != "kvec":
        return 0
    return nthreads * _slice(_KVEC_THREAD_FLOATS * 4)


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
    return (p.n * p.c * planes + 48) * 4 + _kvec_bytes(nthreads)


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


#: The per-ISA GEMM tables of csrc/isa.c: (mr, nr, kc).
_GEMM_TILE = {"avx512": (8, 48, 192), "avx2": (6, 16, 256), "generic": (4, 16, 128)}


def _tile(isa: str | None):
    if isa is None:
        from . import c

        isa = c.isa() or "avx512"
    return _GEMM_TILE.get(isa, _GEMM_TILE["avx512"])


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def conv2d_bwd_data_bytes(p, nthreads: int, isa: str | None = None) -> int:
    """Backward-data.  Stride-1 and lightly strided problems run as forward convolutions (checked
    on their own as they run); the rest reach the C kernel.  float32 (bwd_data_f32.c): the
    weights transposed per group (cg rounded up to mr, x r*s x kg), a copy of grad_output and one
    r*s*mr x nr tile per thread.  float64 (conv_bwd_impl.h): each thread's packing buffers and
    the columns of its (image, group) task, cg*r*s x oh*ow."""
    from . import c
    from ._bwd_common import zero_padded

    extra = _padded_copies(p)
    q = zero_padded(p)  # what the kernels see
    if not q.n:
        return extra
    gemm = c._gemm_bwd_data(q)
    if not gemm and (c._transposed(q) is not None or q.stride[0] * q.stride[1] <= c.MAX_PHASES):
        return extra
    rs = q.r * q.s
    if q.dtype == "float32":
        mr, nr, kc = _tile(isa)
        weights = q.groups * _ceil(q.cg, mr) * mr * rs * q.kg
        dy = q.groups * q.kg * q.n * q.oh * q.ow + 48
        team = _team(nthreads, q.groups * _ceil(q.cg, mr))
        return extra + 4 * (weights + dy) + team * _slice(rs * mr * nr * 4) + kc * 8
    pointwise = q.r == q.s == 1 and not (q.padding[0] or q.padding[2]) and q.oh == q.h and q.ow == q.w
    per_thread = _BWD_GEMM_ELEMENTS + (0 if pointwise else q.cg * rs * q.oh * q.ow)
    return extra + _team(nthreads, q.n * q.groups) * _slice(per_thread * _item(q))


def _bwd_weight_f32_bytes(q, isa: str | None) -> int | None:
    """bwd_weight_f32.c's buffers (None when it leaves the problem to the portable kernel): the
    GEMM's A (a padded, phase-split copy of the input in direct mode; blocks of im2col rows in
    packed mode; of the input in swap mode; nothing when read in place), B (blocks of dy^T
    panels) and the output tiles, floats, plus small int64 tables."""
    mr, nr, kc = _tile(isa)
    (sh, sw), (dh, dw) = q.stride, q.dilation
    if not (q.kg >= 16 and 2 * q.cg >= mr) or sh > 64 or sw > 64:
        return None
    na, nb = _phases(q.r, dh, sh), _phases(q.s, dw, sw)
    hq, wq = q.oh + (q.r - 1) * dh // sh, q.ow + (q.s - 1) * dw // sw
    if na * nb * hq * wq > _CONV_RATIO * (q.h * q.w + q.oh * q.ow) + _CONV_SLACK:
        return None
    rs, ohw = q.r * q.s, q.oh * q.ow
    unpadded_1x1 = q.r == q.s == 1 and not any(q.padding)
    cgp, crsp = _ceil(q.cg, mr) * mr, _ceil(q.cg * rs, mr) * mr
    virt, real = (q.n - 1) * hq * wq + (q.oh - 1) * wq + q.ow, q.n * ohw
    if unpadded_1x1 and q.cg <= q.kg:
        mode = "swap"
    elif (virt * cgp / (real * q.cg) - crsp / (q.cg * rs)) * q.kg > 32:
        mode = "packed"
    else:
        mode = "direct"
    cols = q.cg if mode == "swap" else q.kg
    full, rest = cols // nr, _ceil(cols % nr, 16) * 16
    npad, npan = full * nr + rest, full + (rest > 0)
    if nr == 48 and rest == 16 and full >= 1:
        npan = full + 2
    rows = {"direct": rs * cgp, "packed": crsp, "swap": _ceil(q.kg, mr) * mr}[mode]
    in_place = (
        ohw >= 512
        and unpadded_1x1
        and (
            (mode == "swap" and q.kg % mr == 0)
            or (mode == "direct" and q.stride == (1, 1) and q.cg % mr == 0 and (q.oh, q.ow) == (q.h, q.w))
        )
    )
    span = ohw if in_place else (virt if mode == "direct" else real)
    kc2 = _ceil(span, _ceil(span, max(kc, 393216 // (q.groups * npad))))
    if in_place:
        a = 0
    elif mode == "direct":
        a = q.groups * cgp * na * nb * q.n * hq * wq
    else:
        a = q.groups * rows * kc2
    b = q.groups * npad * kc2
    tiles = q.groups * (rows // mr) * npan * mr * nr
    return 4 * (a + b + tiles) + 8 * (2 * (cols // 16 + 2) + rs + 3 * kc)


def conv2d_bwd_weight_bytes(p, nthreads: int, isa: str | None = None) -> int:
    """Backward-weight: float32 on the GEMM microkernels where it applies (above); otherwise
    each thread sums its images into a private weight gradient (k*cg*r*s) next to a copy of a
    chunk of grad_output (kg x images x oh*ow)."""
    from ._bwd_common import zero_padded

    q = zero_padded(p)
    if q.dtype == "float32" and q.n:
        gemm = _bwd_weight_f32_bytes(q, isa)
        if gemm is not None:
            return _padded_copies(p) + gemm
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
        nbytes = conv2d_bytes(p, nthreads)
    elif p.op in ("max_pool2d", "avg_pool2d"):
        nbytes = pool_bytes(p, nthreads)
    elif p.op == "adaptive_avg_pool2d" and p.direction == "fwd":
        nbytes = nthreads * p.w * _item(p)
    else:
        return
    if nbytes > _SMALL:  # below it the check cannot refuse: skip building its message
        check_scratch_size(nbytes, f"c backend: {p.op} {p.id}")
