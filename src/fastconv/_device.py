"""Arrays that live on a CUDA device, as the API passes them to device backends.

fastconv imports no GPU library here: a device array is recognised by its protocols, the
``__cuda_array_interface__`` (CuPy, Numba, torch CUDA tensors, ...) or DLPack with a CUDA device.
``CudaArray`` is a checked, C-contiguous view of one: its shape and NumPy dtype for the API's
validation, the interface for the kernels, and the caller's object, so a backend can hand its
result back as the same kind of array.
"""

from __future__ import annotations

import math

import numpy as np

_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def is_cuda_array(a) -> bool:
    """Whether ``a`` is a CUDA array (not a NumPy array, not a CPU tensor)."""
    if isinstance(a, (np.ndarray, CudaArray)):
        return isinstance(a, CudaArray)
    if hasattr(type(a), "__cuda_array_interface__"):
        try:
            a.__cuda_array_interface__  # noqa: B018 -- reading it is the test
            return True
        except Exception:  # e.g. a torch CPU tensor: the attribute exists but raises
            return False
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None:
        try:
            return dev()[0] in _DLPACK_CUDA
        except Exception:
            return False
    return False


def _interface(a, name: str) -> dict:
    try:
        return a.__cuda_array_interface__
    except Exception as exc:  # torch: a tensor that requires grad refuses
        raise TypeError(f"{name}: cannot read the CUDA array interface of {type(a).__name__}: {exc}") from None


def _from_dlpack(a, name: str):
    """An object with the CUDA array interface for a DLPack-only array (CuPy or torch does it)."""
    for module in ("cupy", "torch"):
        try:
            lib = __import__(module)
            return lib.from_dlpack(a)
        except ImportError:
            continue
    raise TypeError(f"{name}: a DLPack CUDA array needs CuPy or torch to be read, neither is installed")


def _contiguous(a, name: str):
    """A C-contiguous copy on the device, made by the array's own library."""
    module = type(a).__module__.split(".")[0]
    if module == "torch":
        return a.contiguous()
    if module == "cupy":
        import cupy

        return cupy.ascontiguousarray(a)
    raise ValueError(
        f"{name} must be C-contiguous on the device, got strides "
        f"{a.__cuda_array_interface__.get('strides')} ({type(a).__name__})"
    )


class CudaArray:
    """A C-contiguous float32/float64 CUDA array: ``owner`` is the caller's object."""

    __slots__ = ("owner", "shape", "dtype", "_cai")
    #: Whether any device array has been wrapped in this process (until then dispatch skips the check).
    seen = False

    def __init__(self, owner, shape, dtype, cai):
        self.owner, self.shape, self.dtype, self._cai = owner, tuple(shape), np.dtype(dtype), cai
        CudaArray.seen = True  # from now on the dispatcher looks for device arrays among its inputs

    @classmethod
    def wrap(cls, a, name: str) -> "CudaArray":
        if isinstance(a, CudaArray):
            return a
        if not hasattr(type(a), "__cuda_array_interface__"):
            a = _from_dlpack(a, name)
        cai = _interface(a, name)
        dtype = np.dtype(cai["typestr"])
        shape = tuple(cai["shape"])
        if cai.get("strides") is not None and not _c_contiguous(shape, cai["strides"], dtype.itemsize):
            a = _contiguous(a, name)
            cai = _interface(a, name)
        return cls(a, shape, dtype, cai)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": self._cai["data"],
            "strides": None,
            "version": 3,
            "stream": self._cai.get("stream"),
        }

    def reshape(self, *shape) -> "CudaArray":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = np.empty((self.size,), np.int8).reshape(shape).shape  # resolves -1, checks the size
        return CudaArray(self.owner, shape, self.dtype, self._cai)

    def __getitem__(self, key):
        if key is None:  # x[np.newaxis]: a leading axis of 1
            return self.reshape((1, *self.shape))
        raise TypeError("a CudaArray only supports [np.newaxis]; index the caller's array instead")

    def __repr__(self) -> str:
        return f"CudaArray({type(self.owner).__name__}, shape={self.shape}, dtype={self.dtype})"


def _c_contiguous(shape, strides, itemsize: int) -> bool:
    expected = itemsize
    for n, st in zip(reversed(shape), reversed(strides)):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


def device_linear(x: CudaArray, weight, bias):
    """``x @ weight.T + bias`` on the device, by the library that owns ``x`` (torch or CuPy);
    NumPy weights are copied to the device."""
    module = type(x.owner).__module__.split(".")[0]
    if module == "torch":
        import torch

        dev = x.owner.device
        xt = torch.as_tensor(x.owner).reshape(x.shape)
        y = xt @ torch.as_tensor(_host_or_owner(weight), device=dev).T
        return y if bias is None else y + torch.as_tensor(_host_or_owner(bias), device=dev)
    try:
        import cupy
    except ImportError:
        raise TypeError(f"a linear layer on a {type(x.owner).__name__} needs CuPy or a torch CUDA tensor") from None
    xc = cupy.asarray(x)
    y = xc @ cupy.asarray(_host_or_owner(weight)).T
    return y if bias is None else y + cupy.asarray(_host_or_owner(bias))


def _host_or_owner(a):
    return a.owner if isinstance(a, CudaArray) else a


def as_kind_of(y, like, to_host):
    """Device array ``y`` handed back as the kind of array ``like`` is: NumPy through ``to_host``
    (the backend's copy to the host), torch and CuPy tensors sharing ``y``'s memory, Numba device
    arrays; any other interface gets ``y`` itself."""
    if isinstance(like, np.ndarray):
        return to_host(y)
    owner = like.owner if isinstance(like, CudaArray) else like
    kind = type(owner).__module__.split(".")[0]
    if kind == "torch":
        import torch

        return torch.as_tensor(y, device=owner.device)
    if kind == "cupy":
        import cupy

        return cupy.asarray(y)
    if kind.startswith("numba"):  # numba's own CUDA target or the numba-cuda package
        from numba import cuda

        return cuda.as_cuda_array(y)
    return y
