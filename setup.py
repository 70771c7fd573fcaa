"""setuptools entry point; the C extension (cffi_modules) is added by csrc/build_ffi.py."""
from setuptools import setup

setup()
