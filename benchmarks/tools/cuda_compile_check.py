"""Compile every CUDA kernel for sm_90 without a GPU: a check between device runs.

    python -m venv /tmp/cc && /tmp/cc/bin/pip install numba numba-cuda nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12
    /tmp/cc/bin/python benchmarks/tools/cuda_compile_check.py

The cuda backend's Numba kernels go through Numba's typing and NVVM to PTX (and the GEMM's
register tile is checked to stay out of local memory); the cupy backend's kernel bodies go through
NVRTC inside a stand-in for CuPy's elementwise wrapper (raw pointers for its CArray).  Neither
needs a driver.
"""

from __future__ import annotations

import sys
import types as pytypes
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
CC = (9, 0)


def numba_kernels() -> None:
    from numba import cuda, types

    from fastconv.backends import _cuda_kernels as k
    from fastconv.backends.cuda import GEMM_TILE

    i, b, f64v = types.int64, types.boolean, types.Array(types.float64, 1, "C")
    for dt, nt in (("float32", types.float32), ("float64", types.float64)):
        a4, a3, a1 = (types.Array(nt, d, "C") for d in (4, 3, 1))
        conv = (a4, a4, a1, a4, a4) + (i,) * 8 + (b, b)
        jobs = {
            "conv direct": (k.conv_direct, conv),
            "conv gemm": (k.conv_gemm(dt, GEMM_TILE), conv),
            "max pool": (k.max_pool, (a4, a4) + (i,) * 8),
            "avg pool": (k.avg_pool, (a4, a4) + (i,) * 6 + (b, i)),
            "adaptive avg pool": (k.adaptive_avg_pool, (a4, a4)),
            "batch norm stats": (k.channel_stats(k.STATS_THREADS), (a3, f64v, f64v)),
            "batch norm": (k.normalize, (a3, a1, a1, a3)),
            "relu": (k.relu, (a1, a1)),
        }
        for name, (kernel, sig) in jobs.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
            spills = ptx.count("ld.local") + ptx.count("st.local")
            print(f"numba {dt:8s} {name:18s} ok ({len(ptx)} bytes of PTX, {spills} local-memory accesses)")
            if name == "conv gemm" and spills:
                raise SystemExit("the GEMM's register tile spilled to local memory")


def _params(spec: str):
    out = []
    for p in spec.split(","):
        toks = p.split()
        raw = toks[0] == "raw"
        ctype, name = toks[-2], toks[-1]
        out.append(({"int64": "long long", "int32": "int"}.get(ctype, ctype), name, raw))
    return out


def cupy_kernels() -> None:
    from cuda.bindings import nvrtc

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, operation, name, preamble=""):
            self.args = in_params, out_params, operation, name, preamble

    real = sys.modules.get("cupy")
    sys.modules["cupy"] = pytypes.SimpleNamespace(ElementwiseKernel=ElementwiseKernel)
    try:
        import fastconv.backends.cupy as cb

        for name in ("im2col", "epilogue", "max_pool", "avg_pool", "adaptive_avg_pool", "normalize", "relu"):
            cb._kernels.clear()
            in_params, out_params, operation, kname, preamble = cb._kernel(name).args
            decl, binds = [], []
            for ctype, n, raw in _params(in_params):
                if ctype == "T":
                    decl.append(f"T* {n}_ptr")
                    binds.append(f"T* {n} = {n}_ptr;" if raw else f"T {n} = {n}_ptr[i];")
                else:
                    decl.append(f"{ctype} {n}")
            for _, n, _ in _params(out_params):
                decl.append(f"T* {n}_ptr")
                binds.append(f"T& {n} = {n}_ptr[i];")
            for T in ("float", "double"):
                src = (
                    f'{preamble}\ntypedef {T} T;\nextern "C" __global__ void {kname}({", ".join(decl)}, '
                    f"long long n_) {{\nfor (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; "
                    f"i < n_; i += (long long)blockDim.x * gridDim.x) {{\n"
                    + "\n".join(binds)
                    + f"\n{operation}\n}}\n}}\n"
                )
                _, prog = nvrtc.nvrtcCreateProgram(src.encode(), b"kernel.cu", 0, [], [])
                (err,) = nvrtc.nvrtcCompileProgram(prog, 1, [f"--gpu-architecture=compute_{CC[0]}{CC[1]}".encode()])
                _, size = nvrtc.nvrtcGetProgramLogSize(prog)
                log = b" " * size
                nvrtc.nvrtcGetProgramLog(prog, log)
                if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                    raise SystemExit(f"cupy {name} ({T}) does not compile:\n{log.decode()}")
                print(f"cupy  {T:8s} {name:18s} ok")
    finally:
        if real is not None:
            sys.modules["cupy"] = real
        else:
            sys.modules.pop("cupy", None)


if __name__ == "__main__":
    numba_kernels()
    cupy_kernels()
