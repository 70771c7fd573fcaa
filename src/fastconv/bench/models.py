"""The networks of the ``models`` suite: fastconv.models' ResNets and torch twins with the same weights.

fastconv.models is written alongside this suite; until it offers ``resnet18()`` / ``resnet50()``
the suite's cases are skipped with the reason.  The torch twin (the baseline and the reference)
comes from the fastconv model's ``to_torch()`` when it has one, else from torchvision's model
of the same name loaded with the fastconv model's ``state_dict()`` (torchvision's names).
"""

from __future__ import annotations

import copy
import importlib
import inspect

_fastconv_models: dict[tuple[str, str], object] = {}
_fused_models: dict[tuple[str, str], object] = {}
_torch_models: dict[tuple[str, str], tuple[object, str | None]] = {}


def fastconv_model(case):
    """The fastconv network for ``case`` (built once per name and dtype, in eval mode)."""
    p = case.problem
    key = (p.name, p.dtype)
    if key not in _fastconv_models:
        build = getattr(importlib.import_module("fastconv.models"), p.name)
        try:
            params = inspect.signature(build).parameters
        except (TypeError, ValueError):
            params = {}
        kwargs = {}
        if "dtype" in params:
            kwargs["dtype"] = p.dtype
        if "num_classes" in params:
            kwargs["num_classes"] = p.num_classes
        model = build(**kwargs)
        if hasattr(model, "eval"):
            model.eval()
        _fastconv_models[key] = model
    return _fastconv_models[key]


def fused_model(case):
    """The fastconv network for ``case`` with its batch norms folded into the convolutions (``fuse()``:
    one conv2d call per convolution, bias, residual and ReLU), built once per name and dtype."""
    p = case.problem
    key = (p.name, p.dtype)
    if key not in _fused_models:
        _fused_models[key] = copy.deepcopy(fastconv_model(case)).fuse()
    return _fused_models[key]


def fastconv_model_reason(case) -> str | None:
    """Why the fastconv network for ``case`` cannot be built, or None."""
    name = case.problem.name
    try:
        module = importlib.import_module("fastconv.models")
    except ImportError as exc:
        return f"fastconv.models is not available ({exc})"
    if not callable(getattr(module, name, None)):
        return f"fastconv.models has no {name}() yet"
    try:
        fastconv_model(case)
    except Exception as exc:
        return f"fastconv.models.{name}() failed: {type(exc).__name__}: {exc}"
    return None


def torch_counterpart(case, torch) -> tuple[object, str | None]:
    """(torch module with the fastconv model's weights, None), or (None, why there is none)."""
    p = case.problem
    key = (p.name, p.dtype)
    if key in _torch_models:
        return _torch_models[key]
    why = fastconv_model_reason(case)
    if why is not None:
        result = (None, why)
    else:
        result = _build_twin(fastconv_model(case), p, torch)
    _torch_models[key] = result
    return result


def _build_twin(model, p, torch) -> tuple[object, str | None]:
    try:
        from ..interop.torch import to_torch

        twin = to_torch(model)
        twin.eval()
        twin.to(torch.float64 if p.dtype == "float64" else torch.float32)
    except Exception as exc:
        return None, f"no torch twin of fastconv.models.{p.name}: {type(exc).__name__}: {exc}"
    return twin, None
