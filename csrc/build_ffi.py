"""cffi builder for fastconv._ckernels (out-of-line API mode), used by setup.py's cffi_modules.

The extension is optional: without a working C compiler `pip install .` still succeeds and the
c backend reports itself unavailable, saying why.  OpenMP is probed with a tiny program first;
without it the kernels build single-threaded.  No -march=native: the SIMD kernels carry their
own per-function target attributes and are chosen at run time from the CPU's features.

Environment: FASTCONV_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer
(``make sanitize``); FASTCONV_NO_OPENMP=1 builds without OpenMP (to test that path);
FASTCONV_PORTABLE=1 builds only the portable kernels (-DFC_NO_X86), as on other architectures.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["conv_direct.c", "conv_fewc_f32.c", "conv_gemm_f32.c", "conv_panels_f32.c", "conv_winograd_f32.c", "gemm_f32_avx512.c", "gemm_f32_narrow.c",
           "gemm_f32_avx2_6x16.c", "gemm_f32_generic.c", "isa.c", "pool.c", "norm.c", "cpu.c", "conv_bwd.c",
           "bwd_weight_f32.c", "bwd_weight_cl_f32.c", "bwd_data_f32.c", "activation.c", "conv_kvec_f32.c",
           "kvec_f32_avx512.c", "kvec_f32_avx2.c", "kvec_f32_generic.c", "conv_blocked_f32.c"]


def cdef_text() -> str:
    """fastconv.h without its preprocessor lines (the include guard and #include), which cdef rejects."""
    header = (HERE / "fastconv.h").read_text()
    return "\n".join(line for line in header.splitlines() if not line.lstrip().startswith("#"))


def _compiles(flags: list[str], code: str) -> bool:
    """Whether the configured C compiler builds and links `code` with `flags`."""
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:  # very old setuptools
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    try:
        compiler = new_compiler()
        customize_compiler(compiler)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp, "probe.c")
            src.write_text(code)
            objects = compiler.compile([str(src)], output_dir=tmp, extra_postargs=flags)
            compiler.link_shared_object(objects, str(Path(tmp, "probe.so")), extra_postargs=flags)
        return True
    except Exception:  # no compiler, no OpenMP runtime, ...: the probe simply fails
        return False


def _openmp_flags() -> list[str]:
    if os.environ.get("FASTCONV_NO_OPENMP") == "1":
        return []
    probe = "#include <omp.h>\nint probe(void) { return omp_get_max_threads(); }\n"
    return ["-fopenmp"] if _compiles(["-fopenmp"], probe) else []


def build_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags)."""
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    omp = _openmp_flags()
    compile_args = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-fvisibility=hidden", "-Wall",
                    "-Wno-unknown-pragmas", *omp]
    link_args = [*omp]
    if os.environ.get("FASTCONV_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        # ifunc resolvers run before the sanitizer runtime is ready: use one plain version.
        compile_args += [*san, "-g", "-DFC_NO_CLONES"]
        link_args += san
    if os.environ.get("FASTCONV_PORTABLE") == "1":
        compile_args.append("-DFC_NO_X86")
    return compile_args, link_args


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
_compile_args, _link_args = build_flags()
ffibuilder.set_source(
    "fastconv._ckernels",
    '#include "fastconv.h"',
    sources=[str(Path("csrc") / name) for name in SOURCES],
    include_dirs=["csrc"],
    depends=[str(Path("csrc") / p.name) for p in sorted(HERE.glob("*.h"))],
    extra_compile_args=_compile_args,
    extra_link_args=_link_args,
    # A failed compile (no compiler) is a warning, not a failed install: the c backend then
    # reports itself unavailable.
    optional=True,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent / "build" / "cffi"), verbose=True)
