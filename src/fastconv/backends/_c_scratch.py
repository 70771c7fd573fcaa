"""The scratch memory the C kernels will ask for, computed before the call.

Mirrors csrc's sizing (conv_gemm_f32.c's phase planes, which conv_kvec_f32.c also reads,
conv_fewc_f32.c's phase planes and packed weights, conv_direct_impl.h's padded depthwise planes,
pool_impl.h's padded rows, conv_winograd_f32.c's transformed tiles, conv_bwd_impl.h's columns and
per-thread weight gradients) including the limits past which the kernels switch to loops that
clip taps and need no scratch, so that a problem whose scratch cannot fit is refused with a
MemoryError that says how much it needs -- before anything is allocated.  The pooling backward
kernels (pool_bwd_impl.h) write straight into the gradient and need none.
"""

from __future__ import annotations

from .. import _env
from .._args import check_scratch_size

#: Scratch sizes check_scratch_size never refuses (it reads the free memory only above them).
_SMALL = 2**26

# As the kernels: a padded buffer more than this many times the input and output rows/planes
# (plus a constant) is not made; the kernels clip instead.
_CONV_RATIO, _CONV_SLACK = 8.0, 1 << 20
_POOL_RATIO, _POOL_SLACK = 4.0, 4096
#: conv_fewc_f32.c's rule: few input channels, a short reduction, rows of full vectors.
_FEWC_MAX_C, _FEWC_MAX_CRS, _FEWC_MIN_OW = 4, 256, 32


#: conv_kvec_f32.c (the channel-vector kernel; it reads the same phase planes as the GEMM, or the
#: input itself): per thread, a task's partial sums (at most 64 Ki floats), one reduction block
#: of packed weights (vectors x lanes x 96 steps) and the epilogue's transposed runs (vectors x
#: lanes x 48), sized for AVX-512's tile (4 vectors of 16 lanes), the largest.
_KVEC_THREAD_FLOATS = 64 * 1024 + 4 * 16 * (96 + 48)


def _kvec_bytes(nthreads: int) -> int:
    """What the channel-vector kernel adds to the GEMM's planes: no instruction-set table lets
    "auto" choose it yet, so only the FASTCONV_F32_CONV=kvec hook (read per call) runs it."""
    if _env.get("FASTCONV_F32_CONV") != "kvec":
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
    from . import c

    if c.eager_blocked(p):  # the blocked kernel, input and output converted at the call
        return c.eager_blocked_scratch(p, nthreads)
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
    return (p.n * p.c * planes + 48) * 4 + _fewc_bytes(p) + _kvec_bytes(nthreads)


def _fewc_bytes(p, isa: str | None = None) -> int:
    """conv_fewc_f32.c's own buffers next to the phase planes (which it shares with the GEMM
    driver): the weights packed in blocks of 8 (AVX-512) or 6 (AVX2) output channels, and the B
    row offsets."""
    if isa is None:
        from . import c

        isa = c.isa()
    crs = p.c * p.r * p.s
    if isa not in ("avx512", "avx2") or p.algorithm not in ("auto", "gemm") or p.groups != 1 or crs > _FEWC_MAX_CRS:
        return 0
    force = _env.get("FASTCONV_F32_FEWC")
    if force == "off" or (force != "on" and (p.c > _FEWC_MAX_C or p.ow < _FEWC_MIN_OW)):
        return 0
    mr = 8 if isa == "avx512" else 6
    return -(-p.k // mr) * mr * crs * 4 + crs * 8 + 64 + 60  # + its header, + rounding the planes


# -- Winograd F(4x4, 3x3) (conv_winograd_f32.c) ------------------------------------------------

#: The instruction set's microkernel width (nr): a chunk of tiles is a multiple of it; and its
#: rows (mr): U's rows per element are k rounded up to them.
_WINOGRAD_NR = {"avx512": 48, "avx2": 16, "generic": 16}
_WINOGRAD_MR = {"avx512": 8, "avx2": 6, "generic": 4}
_WINOGRAD_CHUNK = 2 << 20


def winograd_bytes(p, nthreads: int, isa: str | None = None) -> int:
    """The transformed filters U (36 x k rounded up to mr x c, made in Python, cached) plus the
    kernel's transformed input and output tiles V and M: per chunk of tiles 36 x (c + kp) floats
    per tile, at least one microkernel panel of tiles -- so huge channel counts on tiny images
    need 36 x c x nr floats however few tiles there are -- one chunk per thread when there are
    enough tiles, one shared otherwise."""
    if isa is None:
        from . import c

        isa = c.isa() or "avx512"
    nr = _WINOGRAD_NR.get(isa, max(_WINOGRAD_NR.values()))
    mr = _WINOGRAD_MR.get(isa, 24)  # 24: a multiple of every table's mr, an upper bound
    kp = -(-p.k // mr) * mr
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
_GEMM_TILE = {"avx512": (8, 48, 192), "avx2": (6, 16, 256), "generic": (4, 16, 128)}  # kc: the backward kernels


def _tile(isa: str | None):
    if isa is None:
        from . import c

        isa = c.isa() or "avx512"
    return _GEMM_TILE.get(isa, _GEMM_TILE["avx512"])


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


#: bwd_data_f32.c's MAX_TASK_TILES and MAX_TASK_A.
_BWD_DATA_TILES, _BWD_DATA_A_BYTES = 32, 512 << 10


def _bwd_data_in_place(ohw: int, nr: int) -> bool:
    """bwd_data_f32.c's choose_in_place: dy read in place unless panels within one image waste
    more than 1/8 of their columns (then dy is copied so that panels span images)."""
    force = _env.get("FASTCONV_BWD_DATA_B")
    if force in ("in_place", "copy"):
        return force == "in_place"
    return 8 * (ohw // nr * nr + _ceil(ohw % nr, 16) * 16) <= 9 * ohw


def conv2d_bwd_data_bytes(p, nthreads: int, isa: str | None = None) -> int:
    """Backward-data.  Stride-1 and lightly strided problems run as forward convolutions (checked
    on their own as they run); the rest reach the C kernel.  float32 (bwd_data_f32.c): a copy
    of grad_output (unless read in place), and per thread the tiles and packed weight blocks of
    one task (mt channel blocks x r*s x mr x (nr + kg)) and, in place, one packed panel (kg x nr).
    float64 (conv_bwd_impl.h): each thread's packing buffers and
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
        ohw = q.oh * q.ow
        in_place = _bwd_data_in_place(ohw, nr)
        ncb, npanels = _ceil(q.cg, mr), q.n * _ceil(ohw, nr) if in_place else _ceil(q.n * ohw, nr)
        dy = 0 if in_place else q.groups * q.kg * q.n * ohw + 48
        # task_shape: channel blocks per task (mt) and panel chunks, then the team.
        mt = max(1, min(ncb, _BWD_DATA_TILES // rs, _BWD_DATA_A_BYTES // (mr * rs * q.kg * 4)))
        want = 4 * _team(nthreads, q.groups * ncb * npanels)
        if rs > 1:
            while mt > 1 and q.groups * _ceil(ncb, mt) < want:
                mt = (mt + 1) // 2
            tasks = q.groups * _ceil(ncb, mt)
        else:
            mtasks = q.groups * _ceil(ncb, mt)
            tasks = mtasks * _ceil(npanels, _ceil(npanels, min(npanels, _ceil(want, mtasks))))
        per_thread = _slice((mt * rs * mr * (nr + q.kg) + (q.kg * nr if in_place else 0)) * 4)
        return extra + 4 * dy + _team(nthreads, tasks) * per_thread + kc * 16
    pointwise = q.r == q.s == 1 and not (q.padding[0] or q.padding[2]) and q.oh == q.h and q.ow == q.w
    per_thread = _BWD_GEMM_ELEMENTS + (0 if pointwise else q.cg * rs * q.oh * q.ow)
    return extra + _team(nthreads, q.n * q.groups) * _slice(per_thread * _item(q))


def _bwd_weight_cl_bytes(q, isa: str | None, fold: bool | None = None) -> int | None:
    """bwd_weight_cl_f32.c's buffers (None when the channels-last copy would be out of
    proportion: then the caller's other mode runs): the zero-padded channels-last input (r times
    over when folded), dy's rows unless read in place, the tiles of each pixel part, and int64
    tables (panels, their columns, each output pixel's offset)."""
    mr, nr, kc = _tile(isa)
    (sh, sw), (dh, dw) = q.stride, q.dilation
    if fold is None:
        fold = q.cg * q.s < 48
    fold = fold and q.r > 1
    rows = q.oh if fold else (q.oh - 1) * sh + (q.r - 1) * dh + 1
    wp = (q.ow - 1) * sw + (q.s - 1) * dw + 1
    times = q.r if fold else 1
    xs = q.n * q.c * rows * wp * times
    if xs > 8 * (q.n * q.c * q.h * q.w * times + q.n * q.k * q.oh * q.ow) + 2**20:
        return None
    e = q.r * q.cg if fold else q.cg
    nruns = (1 if fold else q.r) * (q.s if dw > 1 else 1)
    runlen = e * (1 if dw > 1 else q.s)
    full, rest = runlen // nr, _ceil(runlen % nr, 16) * 16
    npan = nruns * (full + 1 if nr == 48 and rest == 16 and full >= 1 else full + (rest > 0))
    maxpan = nruns * (runlen // nr + 2)
    ohw, kgp = q.oh * q.ow, _ceil(q.kg, mr) * mr
    npix = q.n * ohw
    in_place = q.kg % mr == 0 and ohw >= 256
    nblk = q.n * _ceil(ohw, kc) if in_place else _ceil(npix, kc)
    parts = 1
    while npan * parts < 8 and nblk >= 8 * parts:
        parts *= 2
    forced = _env.get("FASTCONV_BWD_WEIGHT_PARTS", "")
    if forced.isdigit() and 1 <= int(forced) <= 16:
        parts = min(int(forced), nblk)
    tiles = parts * q.groups * (kgp // mr) * npan * mr * nr
    a = 0 if in_place else q.groups * kgp * npix
    return 4 * (xs + 64 + tiles + a) + 8 * (3 * maxpan + maxpan * nr + npix)


def _bwd_weight_f32_bytes(q, isa: str | None) -> int | None:
    """bwd_weight_f32.c's buffers (None when it leaves the problem to the portable kernel): the
    GEMM's A (a padded, phase-split copy of the input in direct mode; blocks of im2col rows in
    packed mode; of the input in swap mode; nothing when read in place), B (blocks of dy^T
    panels) and the output tiles, floats, plus small int64 tables."""
    mr, nr, kc = _tile(isa)
    (sh, sw), (dh, dw) = q.stride, q.dilation
    forced = _env.get("FASTCONV_BWD_WEIGHT", "")
    if forced in ("cl", "clfold"):
        return _bwd_weight_cl_bytes(q, isa, forced == "clfold")
    if q.kg >= 16 and 2 * q.cg < mr and q.r * q.s > 1:
        return _bwd_weight_cl_bytes(q, isa)
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
    if forced in ("direct", "packed"):
        mode = forced
    elif rs > 1:  # handed to the channels-last mode where it takes the problem
        cl = _bwd_weight_cl_bytes(q, isa)
        if cl is not None:
            return cl
    cols = q.cg if mode == "swap" else q.kg
    full, rest = cols // nr, _ceil(cols % nr, 16) * 16
    npad, npan = full * nr + rest, full + (rest > 0)
    if nr == 48 and rest == 16 and full >= 1:
        npan = full + 2
    rows = {"direct": rs * cgp, "packed": crsp, "swap": _ceil(q.kg, mr) * mr}[mode]
    in_place = (
        ohw >= (196 if mode == "swap" else 49)
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


#: The test hooks the sizes above read (kernel choices forced per call), by direction.
_HOOKS = {
    "fwd": ("FASTCONV_F32_CONV", "FASTCONV_F32_FEWC"),
    "bwd_data": ("FASTCONV_F32_CONV", "FASTCONV_F32_FEWC", "FASTCONV_BWD_DATA_B", "FASTCONV_BWD_DATA"),
    "bwd_weight": ("FASTCONV_BWD_WEIGHT_PARTS", "FASTCONV_BWD_WEIGHT"),
}
#: check's byte counts by (problem, threads, hooks): an eager layer called again skips the
#: arithmetic, about a fifth of a small call's Python time.  Bounded: cleared when full.
_MEMO: dict = {}
_MEMO_ENTRIES = 4096


def scratch_bytes(p, nthreads: int) -> int:
    """The bytes of scratch the c kernels allocate for ``p`` on ``nthreads`` threads."""
    hooks = _HOOKS.get(p.direction, ()) if p.op == "conv2d" else ()
    key = (p, nthreads, *[_env.get(h) for h in hooks])
    nbytes = _MEMO.get(key)
    if nbytes is not None:
        return nbytes
    if p.op == "conv2d":
        nbytes = conv2d_bytes(p, nthreads)
    elif p.op in ("max_pool2d", "avg_pool2d"):
        nbytes = pool_bytes(p, nthreads)
    elif p.op == "adaptive_avg_pool2d" and p.direction == "fwd":
        nbytes = nthreads * p.w * _item(p)
    else:
        nbytes = 0
    if len(_MEMO) >= _MEMO_ENTRIES:
        _MEMO.clear()
    _MEMO[key] = nbytes
    return nbytes


def check(p, nthreads: int) -> None:
    """MemoryError when the scratch of ``p`` on ``nthreads`` threads cannot fit."""
    nbytes = scratch_bytes(p, nthreads)
    if nbytes > _SMALL:  # below it the check cannot refuse: skip building its message
        check_scratch_size(nbytes, f"c backend: {p.op} {p.id}")
