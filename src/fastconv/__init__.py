"""fastconv: convolution, pooling, batch norm and relu, four ways, behind one dispatcher.

NCHW NumPy arrays in, NumPy arrays out, with torch.nn.functional's names and semantics::

    import numpy as np, fastconv
    y = fastconv.conv2d(x, w, b, stride=1, padding=1, backend="im2col")
"""

from .api import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    batch_norm,
    conv2d,
    hardswish,
    hardtanh,
    leaky_relu,
    linear,
    max_pool2d,
    relu,
    relu6,
    sigmoid,
    silu,
    warmup,
)
from .dispatch import (
    BackendError,
    available_backends,
    backend_status,
    get_autotune,
    get_backend,
    register_backend,
    set_autotune,
    set_backend,
    unregister_backend,
    use_backend,
)
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

_SUBPACKAGES = ("nn", "models", "interop")


def __getattr__(name):
    # fastconv.nn, fastconv.models and fastconv.interop load on first use: `import fastconv` stays
    # light, and never imports torch.
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "compile":  # fastconv.compile(model, input_shape): the plan module loads models and graphs
        import importlib

        return importlib.import_module(".plan", __name__).compile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "batch_norm",
    "relu",
    "relu6",
    "leaky_relu",
    "hardtanh",
    "sigmoid",
    "silu",
    "hardswish",
    "linear",
    "warmup",
    "available_backends",
    "backend_status",
    "set_backend",
    "get_backend",
    "use_backend",
    "register_backend",
    "unregister_backend",
    "set_autotune",
    "get_autotune",
    "BackendError",
    "set_num_threads",
    "get_num_threads",
    "__version__",
]
