"""setuptools entry point; the C extension (cffi_modules) is defined by csrc/build_ffi.py."""

from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"])
