"""The layer base class: parameters, buffers and child layers on NumPy arrays, as torch.nn.Module.

A ``Module`` keeps three ordered registries -- parameters (learnable arrays), buffers (state such
as batch norm's running statistics) and child modules -- filled by plain attribute assignment, so
a model reads like its torch definition.  The dotted names of ``state_dict()`` follow from the
attribute names, which is what lets a torchvision checkpoint load unchanged.

Every module has a ``backend`` (None: follow the dispatcher, i.e. ``use_backend``/``set_backend``/
"auto"); layers pass it to the functional API.  ``to_backend(name)`` sets it for a whole subtree.

Training: a forward in training mode (or inside ``enable_grad()``) keeps what its backward needs;
``model.backward(grad_output)`` returns the gradient with respect to the input and adds each
parameter's gradient to ``named_grads()`` (same names as ``named_parameters()``), until
``zero_grad()``.  Each layer's backward sits next to its forward.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import namedtuple
from typing import Iterator

import numpy as np

from .. import dispatch

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

# None: a forward keeps what backward needs exactly when its module is in training mode.
_keep_for_backward: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fastconv_grad", default=None)


@contextlib.contextmanager
def enable_grad():
    """Forwards in this block keep what backward needs, in eval mode too (e.g. frozen batch norm)."""
    token = _keep_for_backward.set(True)
    try:
        yield
    finally:
        _keep_for_backward.reset(token)


@contextlib.contextmanager
def no_grad():
    """Forwards in this block keep nothing for backward, in training mode too."""
    token = _keep_for_backward.set(False)
    try:
        yield
    finally:
        _keep_for_backward.reset(token)


def check_backend(name):
    """``name`` if it is None, "auto" or an available backend; else ValueError/TypeError/BackendError."""
    name = dispatch._check_name(name, "backend")
    if name not in (None, "auto"):
        dispatch.get_module(name)  # BackendError with the reason when it cannot run here
    return name


def as_array(value, key: str) -> np.ndarray:
    """A NumPy array from an array, a torch tensor (without importing torch) or a number."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor or Parameter
        try:
            value = value.detach().cpu()
            if value.is_floating_point() and value.element_size() < 4:  # float16/bfloat16
                value = value.float()
            value = value.numpy()
        except Exception as exc:
            raise TypeError(f"{key}: cannot convert {type(value).__name__} to a NumPy array: {exc}") from None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{key} must hold real numbers, got dtype {arr.dtype}")
    return arr


class Module:
    """Base of every layer and model; subclasses define ``forward``."""

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = {}
        d["_buffers"] = {}
        d["_modules"] = {}
        d["training"] = True
        d["_backend"] = None
        d["_grads"] = {}
        d["_saved"] = None

    # -- registries ------------------------------------------------------------------------------
    def register_parameter(self, name: str, value) -> None:
        self._buffers.pop(name, None)
        self._parameters[name] = None if value is None else np.asarray(value, order="C")

    def register_buffer(self, name: str, value) -> None:
        self._parameters.pop(name, None)
        self._buffers[name] = None if value is None else np.asarray(value, order="C")

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            self.__dict__.pop(name, None)
            self._modules[name] = value
        elif name in self._modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to child module {name!r} (a Module or None expected)"
                )
            del self._modules[name]
            object.__setattr__(self, name, None)
        elif name in self._parameters:
            self.register_parameter(name, None if value is None else as_array(value, name))
        elif name in self._buffers:
            self.register_buffer(name, None if value is None else as_array(value, name))
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when ordinary lookup fails
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, depth first, with dotted names ("" for this one)."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> Iterator[np.ndarray]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, m in self.named_modules():
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{prefix}.{name}" if prefix else name), b

    # -- state dict ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer by dotted name, torch's order (own first, then children).

        The arrays are the module's own (not copies), as torch returns its tensors.
        """
        out = {}
        for prefix, m in self.named_modules():
            for registry in (m._parameters, m._buffers):
                for name, a in registry.items():
                    if a is not None:
                        out[f"{prefix}.{name}" if prefix else name] = a
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy arrays or torch tensors) into this module's parameters and buffers.

        Values are cast to each parameter's dtype.  With ``strict`` (the default) missing and
        unexpected keys are an error; mismatched shapes always are.  One ValueError lists every
        problem.  A missing ``num_batches_tracked`` is accepted (older torch checkpoints lack it).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        own = self.state_dict()
        given = {str(k): v for k, v in state_dict.items()}
        missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in given if k not in own]
        arrays, mismatched = {}, []
        for key, value in given.items():
            if key not in own:
                continue
            arr = as_array(value, key)
            if arr.shape != own[key].shape:
                mismatched.append(
                    f"{key}: checkpoint has shape {tuple(arr.shape)}, the model has {tuple(own[key].shape)}"
                )
            arrays[key] = arr
        if mismatched or (strict and (missing or unexpected)):
            lines = [f"Error(s) in loading state_dict for {type(self).__name__}:"]
            if missing:
                lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            if mismatched:
                lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
            raise ValueError("\n".join(lines))
        owners = {}
        for prefix, m in self.named_modules():
            for registry in (m._parameters, m._buffers):
                for name in registry:
                    owners[f"{prefix}.{name}" if prefix else name] = (registry, name)
        for key, arr in arrays.items():
            registry, name = owners[key]
            # A fresh array of the model's dtype: the caller's arrays are never shared or modified.
            registry[name] = np.array(arr, dtype=registry[name].dtype, order="C", copy=True)
        return IncompatibleKeys(missing, unexpected)

    # -- modes, backends, dtype ------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (batch norm uses and updates batch statistics) for this subtree."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {type(mode).__name__} {mode!r}")
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self):
        """Evaluation mode (batch norm uses its running statistics) for this subtree."""
        return self.train(False)

    @property
    def backend(self) -> str | None:
        """The backend this layer's ops request; None follows the dispatcher."""
        return self._backend

    @backend.setter
    def backend(self, name) -> None:
        self.__dict__["_backend"] = check_backend(name)

    def to_backend(self, name):
        """Run every layer of this subtree on backend ``name`` (None: follow the dispatcher).

        >>> from fastconv import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).to_backend("im2col")
        >>> [m.backend for m in net.modules()]
        ['im2col', 'im2col', 'im2col']
        """
        name = check_backend(name)
        for m in self.modules():
            m.__dict__["_backend"] = name
        return self

    def astype(self, dtype):
        """Cast every floating-point parameter and buffer to ``dtype`` (float32 or float64)."""
        dtype = as_float_dtype(dtype)
        for m in self.modules():
            for registry in (m._parameters, m._buffers):
                for name, a in registry.items():
                    if a is not None and a.dtype.kind == "f":
                        registry[name] = a.astype(dtype)
        return self

    # -- training --------------------------------------------------------------------------------
    def backward(self, grad_output):
        """The gradient with respect to the last forward's input; parameter gradients accumulate."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def named_grads(self) -> Iterator[tuple[str, np.ndarray | None]]:
        """(name, gradient) for every parameter, named as named_parameters(); None before any backward."""
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{prefix}.{name}" if prefix else name), m._grads.get(name)

    def zero_grad(self) -> None:
        """Forget every accumulated gradient (torch's set_to_none=True)."""
        for m in self.modules():
            m._grads.clear()

    def keeps_for_backward(self) -> bool:
        """Whether a forward now keeps what backward needs: training mode, unless enable_grad/no_grad say."""
        forced = _keep_for_backward.get()
        return self.training if forced is None else forced

    def _save(self, **tensors) -> None:
        if self.keeps_for_backward():
            self.__dict__["_saved"] = tensors
        else:
            self.__dict__["_saved"] = None

    def _saved_for_backward(self) -> dict:
        """What the last forward kept, handed over once (backward frees it, as torch frees its graph)."""
        saved = self.__dict__.get("_saved")
        if saved is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a forward in training mode (or inside "
                f"fastconv.nn.enable_grad()) first, and runs once per forward"
            )
        self.__dict__["_saved"] = None
        return saved

    def _add_grad(self, name: str, grad) -> None:
        if grad is None:
            return
        held = self._grads.get(name)
        self._grads[name] = np.array(grad, copy=True) if held is None else held + grad

    # -- inference optimisation ------------------------------------------------------------------
    def fusable_pairs(self) -> list[tuple[str, str]]:
        """(conv, batch norm) child names whose outputs feed each other directly: fuse() folds them."""
        return []

    def fuse(self):
        """Fold every eval-mode BatchNorm2d into the convolution before it (then an Identity).

        The result is exact up to float32 rounding; it needs eval mode, since a batch norm in
        training mode normalises with batch statistics that no fixed weight can express.
        """
        from .fuse import fold_batch_norm

        for prefix, m in list(self.named_modules()):
            for conv_name, bn_name in m.fusable_pairs():
                if isinstance(getattr(m, bn_name), _identity_type()):
                    continue  # folded by an earlier fuse()
                path = f"{prefix}.{bn_name}" if prefix else bn_name
                fold_batch_norm(getattr(m, conv_name), getattr(m, bn_name), path)
                identity = _identity()
                identity.__dict__["_backend"] = m._modules[bn_name]._backend
                identity.__dict__["training"] = m.training
                setattr(m, bn_name, identity)
        return self

    # -- calling and printing --------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        if self._backend is not None:
            extra = f"{extra}, backend={self._backend!r}" if extra else f"backend={self._backend!r}"
        if not self._modules:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}({extra}"]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def as_float_dtype(dtype) -> np.dtype:
    """float32/float64 from a NumPy dtype, its name, or a torch dtype (None: float32)."""
    if dtype is None:
        return np.dtype(np.float32)
    text = str(dtype).removeprefix("torch.")
    try:
        dt = np.dtype(text if text in ("float32", "float64", "float", "double") else dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _identity_type():
    from .layers import Identity

    return Identity


def _identity():
    return _identity_type()()
