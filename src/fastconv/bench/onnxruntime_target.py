"""ONNX Runtime as a second baseline for whole networks, next to torch eager.

The network ONNX Runtime runs is the torch twin of the fastconv model (same weights), exported
once through ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``) and loaded into an
``InferenceSession`` on the CPU execution provider, with:

- ``intra_op_num_threads`` = the run's thread count (``fastconv.get_num_threads()`` when the
  session is made), ``inter_op_num_threads`` = 1 and sequential execution, so it uses exactly as
  many threads as fastconv and torch;
- every graph optimisation on (``ORT_ENABLE_ALL``: BatchNorm folding, Conv+Add+ReLU fusion, the
  blocked NCHWc layout, pre-packed weights), as users run it;
- ``session.force_spinning_stop`` = 1: its worker threads still spin between the parallel
  sections of a run, but stop when the run returns.  Left spinning, they kept a core busy for
  about 50 ms after each run, long past the runner's settle time, and whatever ran next on the
  same two cores took twice as long: measured on a 2-core AMD EPYC (AVX-512), ResNet-50 batch 1,
  a compiled fastconv plan took 58-60 ms right after an ONNX Runtime run against 28 ms alone,
  and 28 ms with the stop set, while ONNX Runtime itself stayed at 19-21 ms either way.

onnxruntime is optional (``pip install 'fastconv[onnxruntime]'``); without it, or without torch
(which the export needs), the target is listed and every case is skipped with the reason.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np

from . import models

NAME = "onnxruntime"
#: The opset the network is exported with: every op of a CNN, supported by onnxruntime >= 1.16.
OPSET = 17


def _onnxruntime():
    try:
        import onnxruntime
    except Exception:  # ImportError, or a broken install (missing shared library)
        return None
    return onnxruntime


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


def unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot run here, or None."""
    if _onnxruntime() is None:
        return "onnxruntime is not installed (pip install 'fastconv[onnxruntime]')"
    if _torch() is None:
        return "torch is not installed (the network reaches ONNX through torch.onnx.export)"
    return None


def export(module, example: np.ndarray) -> bytes:
    """The ONNX bytes of torch ``module`` (eval mode) traced on ``example``; the batch axis stays fixed."""
    torch = _torch()
    buffer = io.BytesIO()
    # The TorchScript exporter on purpose: it needs no onnxscript, is quick, and exports a CNN as
    # the plain Conv/BatchNormalization/Relu/Add graph that ONNX Runtime's optimiser fuses.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen, see above
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["x"],
            output_names=["y"],
        )
    return buffer.getvalue()


def session(onnx_bytes: bytes, threads: int):
    """An InferenceSession on ``threads`` intra-op threads, one inter-op thread, every optimisation on."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the benchmark's output
    # Idle workers stop spinning when a run returns, so they do not slow the next target (above).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def runner(module, x: np.ndarray, threads: int) -> Callable[[], np.ndarray]:
    """A call running torch ``module`` on ``x`` through ONNX Runtime (exported and loaded once, here)."""
    sess = session(export(module, x), threads)
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x)}
    return lambda: sess.run(None, feed)[0]


class OnnxRuntimeTarget:
    """The ``models`` suite's networks on ONNX Runtime (CPU), at the run's thread count or ``threads``."""

    kind, device = "onnxruntime", "cpu"

    def __init__(self, threads: int | None = None):
        self.name = NAME
        self.threads = threads  # None: fastconv.get_num_threads() when a case is prepared

    def skip_reason(self, case) -> str | None:
        why = unavailable_reason()
        if why is not None:
            return why
        if case.op != "model":
            return "ONNX Runtime is compared on whole networks only (the models suite)"
        return models.torch_counterpart(case, _torch())[1]

    def prepare(self, case, data):
        from .. import threads as fc_threads
        from .targets import Prepared

        module = models.torch_counterpart(case, _torch())[0]
        n = self.threads or fc_threads.get_num_threads()
        return Prepared(runner(module, data["x"], n))


def targets() -> list[OnnxRuntimeTarget]:
    """The ONNX Runtime baseline, listed whether or not onnxruntime is installed (then skipped, with why)."""
    return [OnnxRuntimeTarget()]


def try_runner(module, x: np.ndarray, threads: int) -> tuple[Callable[[], np.ndarray] | None, str | None]:
    """(:func:`runner`, None), or (None, why ONNX Runtime cannot run ``module``): for ``fastconv resnet``."""
    why = unavailable_reason()
    if why is not None:
        return None, why
    try:
        return runner(module, x, threads), None
    except Exception as exc:  # an export or session failure is reported as the row's reason
        return None, f"{type(exc).__name__}: {exc}"
