"""The cupy backend: Caffe's GPU path -- im2col on the device, then one cuBLAS GEMM per group.

Convolution gathers the (groups, C/groups * R * S, pixels) column matrix of every image with one
elementwise kernel (padding modes read in place; 32-bit index arithmetic wherever it fits) and
multiplies it by the weights with strided-batched cuBLAS GEMMs over images (or groups), which
write the output directly in (N, K, OH * OW) order; a 1x1 stride-1 unpadded convolution skips the
gather.  Bias, residual and ReLU are one fused elementwise kernel after it.  Pooling, batch norm
and ReLU are CuPy elementwise kernels, one thread per output.  float32 GEMMs run in plain float32
(the cuBLAS handle's default math mode, never TF32).

Arrays stay where they are, as in the cuda backend: device arrays come back as the same kind,
NumPy arrays are copied to the device and back.  Needs CuPy (``pip install cupy-cuda12x``), a
driver and a device.
"""

from __future__ import annotations

import importlib.util

from types import SimpleNamespace

import numpy as np

from .. import arrays
from .._device import CudaArray, as_kind_of

NAME = "cupy"
DEVICES = ("cuda",)
FUSED_EPILOGUE = True
ALGORITHMS = {"conv2d": ("gemm",)}
#: Host problems (NumPy arrays, requested by name) use NumPy's hooks; autotuning syncs the device
#: before reading the clock, so queued kernels are counted.
ARRAYS = SimpleNamespace(**{**vars(arrays.numpy), "synchronize": lambda: _synchronize()})

_PAD_MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


def available():
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed (pip install cupy-cuda12x)"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or a driver without devices
        return False, f"no CUDA driver or device for CuPy: {type(exc).__name__}: {exc}"
    if count == 0:
        return False, "no CUDA device"
    return True, ""


def supports(p):
    if getattr(p, "direction", "fwd") != "fwd":
        return f"the cupy backend has no {p.direction} kernels"
    algorithm = getattr(p, "algorithm", "auto")
    if p.op == "conv2d" and algorithm not in ("auto", "gemm"):
        return f"the cupy backend only has the im2col GEMM convolution, not {algorithm}"
    return None


# -- arrays --------------------------------------------------------------------------------------


def _cp():
    import cupy

    return cupy


def _to_device(a):
    cp = _cp()
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return cp.asarray(a)
    if isinstance(a, CudaArray):
        return cp.asarray(a)  # through __cuda_array_interface__: no copy
    return cp.asarray(CudaArray.wrap(a, "array"))


def _result(y, like):
    """CuPy array ``y`` as the kind of array ``like`` is."""
    return as_kind_of(y, like, lambda d: d.get())


# -- kernels (compiled by CuPy on first use, cached per process and on disk) ---------------------

_SRC = """
__device__ __forceinline__ IDX src_index(IDX i, IDX size, int mode) {
    if (i >= 0 && i < size) return i;
    if (mode == 0) return -1;
    if (mode == 1) return i < 0 ? -i : 2 * (size - 1) - i;
    if (mode == 2) return i < 0 ? 0 : size - 1;
    return i < 0 ? i + size : i - size;
}
"""

# im2col does six integer divisions per element: 64-bit ones are emulated in many instructions,
# so a 32-bit copy of the kernel runs whenever every index fits (all but huge tensors).
_IM2COL_BODY = """
    // col is (N, groups, cg * r * s, oh * ow)
    IDX P = oh * ow, depth = cg * r * s;
    IDX pix = (IDX)i % P, t = (IDX)i / P;
    IDX q = t % depth; t /= depth;
    IDX g = t % groups, img = t / groups;
    IDX ci = q / (r * s), rem = q % (r * s);
    IDX iy = src_index((pix / ow) * sh - pt + (rem / s) * dh, h, mode);
    IDX ix = src_index((pix % ow) * sw - pl + (rem % s) * dw, w, mode);
    col = (iy < 0 || ix < 0) ? (T)0 : x[((img * c + g * cg + ci) * h + iy) * w + ix];
"""
_IM2COL_PARAMS = ("c", "h", "w", "cg", "r", "s", "oh", "ow", "groups", "sh", "sw", "pt", "pl", "dh", "dw")
_INT32_MAX = 2**31 - 1

_kernels: dict = {}


def _kernel(name: str):
    if name in _kernels:
        return _kernels[name]
    cp = _cp()
    if name in ("im2col", "im2col32"):
        idx, dtype = ("int", "int32") if name == "im2col32" else ("long long", "int64")
        k = cp.ElementwiseKernel(
            "raw T x, " + ", ".join(f"{dtype} {a}" for a in _IM2COL_PARAMS) + ", int32 mode",
            "T col",
            _IM2COL_BODY,
            f"fastconv_{name}",
            preamble=f"typedef {idx} IDX;\n" + _SRC,
        )
    elif name == "epilogue":
        k = cp.ElementwiseKernel(
            "raw T bias, raw T res, int64 k, int64 plane, bool has_res, bool do_relu",
            "T y",
            """
            T v = y + bias[(i / plane) % k];
            if (has_res) v += res[i];
            y = (do_relu && v < (T)0) ? (T)0 : v;  // NaN passes, as in torch.relu
            """,
            "fastconv_conv_epilogue",
        )
    elif name == "max_pool":
        k = cp.ElementwiseKernel(
            "raw T x, int64 h, int64 w, int64 oh, int64 ow, int64 kh, int64 kw, int64 sh, int64 sw, "
            "int64 ph, int64 pw, int64 dh, int64 dw",
            "T y",
            """
            long long j = i % ow, r0 = (i / ow) % oh, plane = i / (ow * oh);
            const T* src = &x[plane * h * w];
            // Start from the first input cell of the window (padding counts as -inf).
            T m = 0;
            bool found = false, nan = false;
            for (long long a = 0; a < kh && !nan; ++a) {
                long long iy = r0 * sh - ph + a * dh;
                if (iy < 0 || iy >= h) continue;
                for (long long b = 0; b < kw; ++b) {
                    long long ix = j * sw - pw + b * dw;
                    if (ix < 0 || ix >= w) continue;
                    T v = src[iy * w + ix];
                    if (v != v) { m = v; nan = true; break; }
                    if (!found || v > m) { m = v; found = true; }
                }
            }
            if (!found && !nan) m = (T)(-__longlong_as_double(0x7ff0000000000000LL));  // -inf, as torch
            y = m;
            """,
            "fastconv_max_pool",
        )
    elif name == "avg_pool":
        k = cp.ElementwiseKernel(
            "raw T x, int64 h, int64 w, int64 oh, int64 ow, int64 kh, int64 kw, int64 sh, int64 sw, "
            "int64 ph, int64 pw, bool count_include_pad, int64 divisor_override",
            "T y",
            """
            long long j = i % ow, r0 = (i / ow) % oh, plane = i / (ow * oh);
            const T* src = &x[plane * h * w];
            long long h0 = r0 * sh - ph, w0 = j * sw - pw;
            long long h1 = min(h0 + kh, h + ph), w1 = min(w0 + kw, w + pw);
            long long ha = max(h0, 0LL), hb = min(h1, h), wa = max(w0, 0LL), wb = min(w1, w);
            double acc = 0;
            for (long long iy = ha; iy < hb; ++iy)
                for (long long ix = wa; ix < wb; ++ix) acc += src[iy * w + ix];
            long long d = divisor_override != 0 ? divisor_override
                        : count_include_pad ? (h1 - h0) * (w1 - w0) : (hb - ha) * (wb - wa);
            y = (T)(acc / (double)d);
            """,
            "fastconv_avg_pool",
        )
    elif name == "adaptive_avg_pool":
        k = cp.ElementwiseKernel(
            "raw T x, int64 h, int64 w, int64 oh, int64 ow",
            "T y",
            """
            long long j = i % ow, r0 = (i / ow) % oh, plane = i / (ow * oh);
            const T* src = &x[plane * h * w];
            long long ha = (r0 * h) / oh, hb = ((r0 + 1) * h + oh - 1) / oh;
            long long wa = (j * w) / ow, wb = ((j + 1) * w + ow - 1) / ow;
            double acc = 0;
            for (long long iy = ha; iy < hb; ++iy)
                for (long long ix = wa; ix < wb; ++ix) acc += src[iy * w + ix];
            y = (T)(acc / (double)((hb - ha) * (wb - wa)));
            """,
            "fastconv_adaptive_avg_pool",
        )
    elif name == "normalize":
        k = cp.ElementwiseKernel(
            "T x, raw T scale, raw T shift, int64 c, int64 l",
            "T y",
            "long long ch = (i / l) % c; y = x * scale[ch] + shift[ch];",
            "fastconv_batch_norm",
        )
    elif name == "relu":
        k = cp.ElementwiseKernel("T x", "T y", "y = x < (T)0 ? (T)0 : x;", "fastconv_relu")
    else:
        raise KeyError(name)
    _kernels[name] = k
    return k


def _batched_gemm(w, col, y, n, g, kg, depth, plane) -> None:
    """y[i, j] = w[j] @ col[i, j] for every image i and group j, as strided-batched cuBLAS GEMMs.

    One call per group batched over images (or per image batched over groups, whichever is
    fewer): a single stride per operand, the weights' being 0 across images.  cupy.matmul would
    build pointer arrays on the device for a batched product (several kernel launches and a few
    hundred microseconds of host time per call); this is one launch.  Row-major (kg, depth) @
    (depth, plane) is column-major (plane, depth) @ (depth, kg), so A is col and B the weights.
    """
    cp = _cp()
    from cupy_backends.cuda.libs import cublas

    w, col = cp.ascontiguousarray(w), cp.ascontiguousarray(col)
    gemm = cublas.sgemmStridedBatched if y.dtype == np.float32 else cublas.dgemmStridedBatched
    size = y.dtype.itemsize
    one, zero = np.ones(1, y.dtype), np.zeros(1, y.dtype)  # alpha, beta: host pointers
    handle = cp.cuda.device.get_cublas_handle()
    mode, math = cublas.getPointerMode(handle), cublas.getMathMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    cublas.setMathMode(handle, getattr(cublas, "CUBLAS_DEFAULT_MATH", 0))  # float32 stays float32: no TF32
    try:
        a_img, b_grp, c_img = g * depth * plane, kg * depth, g * kg * plane  # strides, elements
        a_grp, c_grp = depth * plane, kg * plane
        if g <= n:  # per group, batched over images
            loops, count, (sa, sb, sc), (la, lb, lc) = g, n, (a_img, 0, c_img), (a_grp, b_grp, c_grp)
        else:  # per image, batched over groups
            loops, count, (sa, sb, sc), (la, lb, lc) = n, g, (a_grp, b_grp, c_grp), (a_img, 0, c_img)
        for j in range(loops):
            gemm(
                handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, plane, kg, depth,
                one.ctypes.data, col.data.ptr + j * la * size, plane, sa,
                w.data.ptr + j * lb * size, depth, sb,
                zero.ctypes.data, y.data.ptr + j * lc * size, plane, sc, count,
            )  # fmt: skip
    finally:
        cublas.setPointerMode(handle, mode)
        cublas.setMathMode(handle, math)


def _synchronize() -> None:
    import cupy as cp

    cp.cuda.get_current_stream().synchronize()


# -- ops -----------------------------------------------------------------------------------------


def conv2d(p, x, weight, bias, residual):
    cp = _cp()
    dx, dw = _to_device(x), _to_device(weight)
    n, g, cg, kg = p.n, p.groups, p.cg, p.kg
    plane = p.oh * p.ow
    depth = cg * p.r * p.s
    y = cp.empty((n, g, kg, plane), p.dtype)
    if y.size:
        pt, _, pl, _ = p.padding
        pointwise = (p.r, p.s, p.stride, p.padding) == (1, 1, (1, 1), (0, 0, 0, 0))
        if pointwise:
            col = dx.reshape(n, g, cg, plane)
        else:
            col = cp.empty((n, g, depth, plane), p.dtype)
            args = (p.c, p.h, p.w, cg, p.r, p.s, p.oh, p.ow, g, *p.stride, pt, pl, *p.dilation)
            small = max(col.size, dx.size) <= _INT32_MAX
            kernel = _kernel("im2col32" if small else "im2col")
            kernel(dx, *(np.int32(a) if small else a for a in args), np.int32(_PAD_MODES[p.padding_mode]), col)
        # (g, kg, depth) @ (n, g, depth, plane) -> (n, g, kg, plane): the output's own layout.
        _batched_gemm(dw, col, y, n, g, kg, depth, plane)
        db = cp.zeros(p.k, p.dtype) if bias is None else _to_device(bias)
        dr = y if residual is None else _to_device(residual)
        if bias is not None or residual is not None or p.activation == "relu":
            _kernel("epilogue")(db, dr, p.k, plane, residual is not None, p.activation == "relu", y)
    return _result(y.reshape(p.output_shape), x)


def max_pool2d(p, x):
    cp = _cp()
    y = cp.empty(p.output_shape, p.dtype)
    if y.size:
        _kernel("max_pool")(_to_device(x), p.h, p.w, p.oh, p.ow, *p.kernel, *p.stride, *p.padding, *p.dilation, y)
    return _result(y, x)


def avg_pool2d(p, x):
    cp = _cp()
    y = cp.empty(p.output_shape, p.dtype)
    if y.size:
        _kernel("avg_pool")(
            _to_device(x),
            p.h,
            p.w,
            p.oh,
            p.ow,
            *p.kernel,
            *p.stride,
            *p.padding,
            p.count_include_pad,
            p.divisor_override or 0,
            y,
        )
    return _result(y, x)


def adaptive_avg_pool2d(p, x):
    cp = _cp()
    y = cp.empty(p.output_shape, p.dtype)
    if y.size:
        _kernel("adaptive_avg_pool")(_to_device(x), p.h, p.w, p.oh, p.ow, y)
    return _result(y, x)


def batch_norm(p, x, mean, var, weight, bias):
    """x (N, C, L).  The batch statistics (training) come back as float64 NumPy arrays (C values)."""
    cp = _cp()
    dx = _to_device(x)
    y = cp.empty(dx.shape, p.dtype)
    if p.training:
        if p.count == 0:
            return _result(y, x), None, None
        # Two passes in float64, as the CPU backends: a one-pass sum of squares loses the variance.
        m64 = dx.mean(axis=(0, 2), dtype=cp.float64)
        v64 = cp.square(dx - m64[None, :, None]).mean(axis=(0, 2))  # float64 throughout
        mean, var = m64.get(), v64.get()
        m, v = mean, var
    else:
        m, v = _host64(mean), _host64(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = _host64(weight) / np.sqrt(v + p.eps)
        shift = _host64(bias) - m * scale
    if y.size:
        _kernel("normalize")(dx, cp.asarray(scale.astype(p.dtype)), cp.asarray(shift.astype(p.dtype)), p.c, p.l, y)
    return _result(y, x), mean, var


def _host64(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a.astype(np.float64)
    return _to_device(a).get().astype(np.float64)


def relu(p, x):
    dx = _to_device(x)
    y = _kernel("relu")(dx)
    return _result(y, x)
