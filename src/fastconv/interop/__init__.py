"""Bridges to other frameworks.  ``fastconv.interop.torch`` imports torch only when first used.

>>> from fastconv.interop import torch as fct       # doctest: +SKIP
>>> model = fct.from_torch(torchvision_resnet50)    # doctest: +SKIP
"""

import importlib

_TORCH_NAMES = ("from_torch", "to_torch", "patch", "unpatch", "patched")


def __getattr__(name):
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(".torch", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["torch", *_TORCH_NAMES]
