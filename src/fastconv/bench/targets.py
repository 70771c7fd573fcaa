"""What a benchmark times: a fastconv backend through the public API, or torch on its own terms.

A *target* is one column of the comparison.  ``skip_reason(case)`` says up front why it cannot
run a case (the naive backend refuses big problems); ``prepare(case, data)`` returns a
:class:`Prepared` call on arrays made once, so the timed call does only what a user's call does:

- a fastconv backend is called through ``fastconv.conv2d(..., backend=name)`` and friends, so
  argument checks, dispatch and layout conversion are part of its time, as they are for users;
- torch is the baseline, called as torch users call it: ``torch.nn.functional`` on tensors made
  once (on CPU: oneDNN; with ``--device cuda``: cuDNN, with ``cudnn.benchmark`` off and on,
  timed with CUDA events).  The fastconv ``torch`` backend is not listed separately.

Backward problems (``direction`` bwd_data or bwd_weight) have no public-API builder: fastconv
is timed through ``dispatch.run`` (what ``fastconv.grad`` calls), torch through autograd of the
same op -- the forward runs once, untimed, and each timed call is ``torch.autograd.grad`` of its
output with respect to the input (bwd_data) or the weight and bias (bwd_weight), the graph kept.
"""

from __future__ import annotations

import copy
import math
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastconv

from .. import dispatch, ops, timing
from . import models, onnxruntime_target, scaling

#: A whole network compounds rounding over ~50 layers.
MODEL_RTOL = {"float32": 1e-3, "float64": 1e-8}


class BenchError(RuntimeError):
    """A benchmark cannot run as asked (e.g. --device cuda without a CUDA device)."""


def wall_time(call: Callable[[], object], number: int) -> float:
    """Seconds per call over ``number`` back-to-back calls, by the wall clock."""
    return timing.time_calls(call, number)


def _no_sync() -> None:
    pass


@dataclass
class Prepared:
    """A ready-to-time call: ``call()`` runs the op once; the rest is untimed bookkeeping."""

    call: Callable[[], object]
    output: Callable[[object], np.ndarray] = np.asarray  # a call's result as a NumPy array
    timer: Callable[[Callable[[], object], int], float] = wall_time
    sync: Callable[[], None] = _no_sync  # waits for queued device work (CUDA)
    workspace: Callable[[], tuple[int | None, str | None]] | None = None


# -- inputs and the reference --------------------------------------------------------------------


def make_inputs(case, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal arrays for ``case`` (batch norm variances in [0.5, 2]), from the op table."""
    p = case.problem
    rng = np.random.default_rng(seed)
    if case.op == "model":
        return {"x": rng.standard_normal(p.input_shape).astype(p.dtype)}
    return ops.get(p).make(p, rng)


def tolerance(case) -> float:
    p = case.problem
    if case.op == "model":
        return MODEL_RTOL[p.dtype]
    return ops.get(p).tolerance(p)


def outputs(y) -> object:
    """A call's result as NumPy: an array, or a list of arrays (None kept) for a tuple."""
    if isinstance(y, (tuple, list)):
        return [None if a is None else np.asarray(a.numpy() if hasattr(a, "numpy") else a) for a in y]
    return np.asarray(y)


def relative_error(y, ref) -> float:
    """max |y - ref| / max |ref|: the error relative to the output's scale (inf on a shape or NaN mismatch).

    Several outputs (a backward's weight and bias gradients): the largest of their errors.
    """
    if isinstance(ref, list) or isinstance(y, list):
        if not (isinstance(ref, list) and isinstance(y, list)) or len(y) != len(ref):
            return math.inf
        if any((a is None) != (b is None) for a, b in zip(y, ref)):
            return math.inf
        return max((relative_error(a, b) for a, b in zip(y, ref) if b is not None), default=0.0)
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        return math.inf
    finite = np.isfinite(ref)
    same_special = (np.isnan(y) & np.isnan(ref)) | (y == ref)
    if np.any(~finite & ~same_special) or np.any(finite & ~np.isfinite(y)):
        return math.inf
    if not finite.any():
        return 0.0
    scale = max(float(np.abs(ref[finite]).max()), np.finfo(np.float64).tiny)
    return float(np.abs(y[finite] - ref[finite]).max() / scale)


def reference(case, data) -> tuple[np.ndarray | None, str | None]:
    """torch's answer in float64 (more accurate than any float32 result), or (None, why not)."""
    torch = _torch()
    if torch is None:
        return None, "torch is not installed: results are unchecked"
    p = case.problem
    if case.op == "model":
        model, why = models.torch_counterpart(case, torch)
        if model is None:
            return None, why
        with torch.inference_mode():
            return copy.deepcopy(model).double()(torch.from_numpy(data["x"].astype(np.float64))).numpy(), None
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in data.items()}
    with torch.no_grad():
        return outputs(torch_call(p, t, torch)()), None


def torch_call(p, t: dict, torch) -> Callable[[], object]:
    """torch.nn.functional's call for problem ``p`` on the tensors ``t`` (made once, outside the timing)."""
    return ops.get(p).torch(p, t, torch)


# -- fastconv ------------------------------------------------------------------------------------


def api_call(problem, data: dict, backend: str) -> Callable[[], np.ndarray]:
    """The public-API call that builds ``problem`` from ``data``, with ``backend=``."""
    entry = ops.get(problem)
    if entry.api is None:
        if problem.direction == "fwd":
            raise ValueError(f"no public-API call for {problem.op} {problem.direction}")
        arrays = entry.arrays(data)  # a backward: what fastconv.grad runs
        return lambda: dispatch.run(problem, *arrays, backend=backend)
    fn = getattr(fastconv, entry.op)
    args, kwargs = entry.api(problem, data)
    return lambda: fn(*args, backend=backend, **kwargs)


def _traced_workspace(call: Callable[[], object]) -> tuple[int | None, str | None]:
    """Peak memory NumPy and Python allocated during one call, beyond its output.

    Memory a backend allocates outside Python's allocators (C malloc, Numba's runtime, BLAS
    buffers) is invisible here, hence the method in the record.
    """
    if tracemalloc.is_tracing():
        return None, None  # someone else is tracing: do not disturb their numbers
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out = sum(a.nbytes for a in (y if isinstance(y, tuple) else (y,)) if isinstance(a, np.ndarray))
    return max(0, peak - base - out), "tracemalloc"


class FastconvTarget:
    """A fastconv backend, timed through the public API."""

    kind, device = "fastconv", "cpu"

    def __init__(self, name: str):
        self.name = name

    def skip_reason(self, case) -> str | None:
        ok, reason = dispatch.status(self.name)
        if not ok:
            return f"not available: {reason}"
        if case.op == "model":
            return models.fastconv_model_reason(case)
        try:
            dispatch.select(case.problem, self.name)
        except dispatch.BackendError as exc:
            return str(exc).split(": ", 1)[-1]
        return None

    def prepare(self, case, data) -> Prepared:
        if case.op == "model":
            model = models.fastconv_model(case)
            x = data["x"]

            def call():
                with fastconv.use_backend(self.name):
                    return model(x)
        else:
            call = api_call(case.problem, data, self.name)
        if getattr(case.problem, "direction", "fwd") != "fwd":
            return Prepared(call, output=outputs, workspace=lambda: _traced_workspace(call))
        module = dispatch.get_module(self.name)
        custom = getattr(module, "workspace_bytes", None)
        if custom is not None and case.op != "model":
            return Prepared(call, workspace=lambda: (int(custom(case.problem)), "backend"))
        return Prepared(call, workspace=lambda: _traced_workspace(call))


class FusedModelTarget(FastconvTarget):
    """A fastconv backend on a whole network with its batch norms folded (``model.fuse()``)."""

    def __init__(self, backend: str):
        super().__init__(f"{backend}-fused")
        self.backend = backend

    def skip_reason(self, case) -> str | None:
        if case.op != "model":
            return "a fused network: the models suite only"
        ok, reason = dispatch.status(self.backend)
        return f"not available: {reason}" if not ok else models.fastconv_model_reason(case)

    def prepare(self, case, data) -> Prepared:
        model, x, name = models.fused_model(case), data["x"], self.backend

        def call():
            with fastconv.use_backend(name):
                return model(x)

        return Prepared(call, workspace=lambda: _traced_workspace(call))


class CompiledModelTarget:
    """A whole network through ``fastconv.compile`` (backend and algorithm tuned per layer, batch
    norms folded, weights pre-packed, activations in one arena), compiled when prepared (at the
    thread count it runs at) and timed per forward pass.  ``winograd=True`` ("compiled-winograd")
    lets the tuner pick Winograd F(4x4,3x3) for 3x3 layers too: the fastest plan, within the
    Winograd error bound rather than float32 rounding (docs/results/winograd.md)."""

    kind, device = "fastconv", "cpu"

    def __init__(self, winograd: bool = False):
        self.winograd = winograd
        self.name = "compiled-winograd" if winograd else "compiled"

    def skip_reason(self, case) -> str | None:
        if case.op != "model":
            return "a compiled network: the models suite only"
        return models.fastconv_model_reason(case)

    def prepare(self, case, data) -> Prepared:
        x = data["x"]
        plan = fastconv.compile(models.fastconv_model(case), x.shape, winograd=self.winograd)
        call = lambda: plan(x)  # noqa: E731
        return Prepared(call, workspace=lambda: _traced_workspace(call))


def backend_devices(name: str) -> tuple[str, ...]:
    """The devices backend ``name`` runs on (its DEVICES; a backend that fails to import: by its name)."""
    entry = dispatch._registry[name]
    dispatch._status(entry)
    if entry.module is not None:
        return tuple(getattr(entry.module, "DEVICES", ("cpu",)))
    return ("cuda",) if name in ("cuda", "cupy") else ("cpu",)


def fastconv_targets(names: list[str] | None = None, device: str = "cpu", flush_l2: bool = False) -> list:
    """Every registered fastconv backend (available or not; unavailable ones show as skipped).

    CPU backends always run; device backends only with ``device="cuda"``, twice each: on arrays
    resident on the GPU (kernel time, CUDA events) and on NumPy arrays (``<name>-numpy``: the same
    call plus the copies to the device and back, by the wall clock), so transfers show apart.
    """
    registered = [name for name in dispatch.backends() if name != "torch"]
    if names is not None:
        unknown = sorted(set(names) - set(registered))
        if unknown:
            raise BenchError(f"backends: unknown {unknown}; registered: {registered}")
        registered = [n for n in registered if n in names]
    out = []
    for name in registered:
        if "cpu" in backend_devices(name):
            out.append(FastconvTarget(name))
        elif device == "cuda":
            out += [DeviceTarget(name, resident=True, flush_l2=flush_l2), DeviceTarget(name, resident=False)]
        else:  # listed, as skipped, so every backend has its cell
            out.append(DeviceTarget(name, enabled=False))
    return out


class DeviceTarget(FastconvTarget):
    """A device backend through the public API, on torch CUDA tensors made once (``resident``)
    or on NumPy arrays copied to the device and back by every call."""

    kind, device = "fastconv", "cuda"

    def __init__(self, backend: str, resident: bool = True, flush_l2: bool = False, enabled: bool = True):
        super().__init__(backend)
        self.backend, self.resident, self.flush_l2, self.enabled = backend, resident, flush_l2, enabled
        if not resident:
            self.name = f"{backend}-numpy"

    def skip_reason(self, case) -> str | None:
        if not self.enabled:
            return "a CUDA backend: measured with --device cuda"
        ok, reason = dispatch.status(self.backend)
        if not ok:
            return f"not available: {reason}"
        if self.resident and (_torch() is None or not _torch().cuda.is_available()):
            return "device-resident timing needs torch with CUDA"
        if case.op == "model":
            return models.fastconv_model_reason(case)
        try:
            dispatch.select(case.problem, self.backend)
        except dispatch.BackendError as exc:
            return str(exc).split(": ", 1)[-1]
        return None

    def prepare(self, case, data) -> Prepared:
        name = self.backend
        if not self.resident:
            if case.op == "model":
                model = models.fastconv_model(case)

                def call():
                    with fastconv.use_backend(name):
                        return model(data["x"])

                return Prepared(call)
            return Prepared(api_call(case.problem, data, name))
        torch = _torch()
        on_device = {
            k: (torch.from_numpy(v).cuda() if k in ("x", "w", "b", "residual") else v) for k, v in data.items()
        }
        if case.op == "model":
            model = models.fastconv_model(case)
            x = on_device["x"]

            def call():
                with fastconv.use_backend(name):
                    return model(x)
        else:
            call = api_call(case.problem, on_device, name)

        def output(y):
            y = y[0] if isinstance(y, tuple) else y
            return y.cpu().numpy() if hasattr(y, "cpu") else np.asarray(y)

        return Prepared(call, output=output, timer=cuda_timer(torch, self.flush_l2), sync=torch.cuda.synchronize)


# -- torch ---------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch


class TorchTarget:
    """torch on CPU (oneDNN), or on CUDA (cuDNN) with ``cudnn.benchmark`` off or on."""

    kind = "torch"

    def __init__(self, device: str = "cpu", cudnn_benchmark: bool = False, tf32: bool = False, flush_l2: bool = False):
        self.device = device
        self.cudnn_benchmark = cudnn_benchmark
        self.tf32 = tf32
        self.flush_l2 = flush_l2
        self.name = "torch" if device == "cpu" else ("torch-cuda-benchmark" if cudnn_benchmark else "torch-cuda")
        if tf32:
            self.name += "-tf32"

    def skip_reason(self, case) -> str | None:
        torch = _torch()
        if torch is None:
            return "torch is not installed"
        if case.op == "model":
            return models.torch_counterpart(case, torch)[1]
        return None

    def prepare(self, case, data) -> Prepared:
        torch = _torch()
        on_cuda = self.device != "cpu"
        if case.op == "model":
            model = models.torch_counterpart(case, torch)[0]
            if on_cuda:  # .to() moves a module in place: keep the shared CPU twin on the CPU
                model = copy.deepcopy(model).to(self.device)
            x = torch.from_numpy(data["x"]).to(self.device)

            def run():
                with torch.inference_mode():
                    return model(x)
        elif case.problem.direction != "fwd":
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in data.items()}
            run = _autograd_call(case.problem, tensors, torch)
            if not on_cuda:
                return Prepared(run, output=outputs)
        else:
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in data.items()}
            run = torch_call(case.problem, tensors, torch)
        if not on_cuda:

            def call():
                with torch.no_grad():
                    return run()

            return Prepared(call, output=lambda y: y.numpy())

        flag, tf32 = self.cudnn_benchmark, self.tf32

        def cuda_call():
            # The flags are global in torch; set them per call, since the CUDA targets interleave.
            torch.backends.cudnn.benchmark = flag
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.no_grad():
                return run()

        return Prepared(
            cuda_call,
            output=lambda y: y.cpu().numpy(),
            timer=cuda_timer(torch, self.flush_l2),
            sync=torch.cuda.synchronize,
        )


def _autograd_call(p, t: dict, torch) -> Callable[[], object]:
    """torch's backward of problem ``p``: the forward once (kept), then each call autograd alone.

    ``torch.autograd.grad`` of the forward's output with respect to the entry's ``wrt`` arrays
    (the input for bwd_data; the weight and bias for bwd_weight), ``retain_graph`` so the graph
    serves every call: what a training step pays for this op's backward, nothing else.
    """
    import dataclasses

    entry = ops.get(p)
    forward = ops.get(dataclasses.replace(p, direction="fwd"))
    with torch.enable_grad():
        leaves = {
            k: (v.detach().clone().requires_grad_(k in entry.wrt) if v is not None else None)
            for k, v in t.items()
            if k != "grad_output"
        }
        y = forward.torch(dataclasses.replace(p, direction="fwd"), leaves, torch)()
    inputs = [leaves[k] for k in entry.wrt if leaves.get(k) is not None]
    grad = t["grad_output"]

    def call():
        got = iter(torch.autograd.grad(y, inputs, grad, retain_graph=True))
        out = tuple(next(got) if leaves.get(k) is not None else None for k in entry.wrt)
        return out[0] if len(out) == 1 else out

    return call


_l2_buffers: dict = {}


def flush_l2(torch) -> None:
    """Overwrite the GPU's L2 cache (twice its size, at least 64 MiB) so the next call starts cold."""
    dev = torch.cuda.current_device()
    if dev not in _l2_buffers:
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or 2**26
        _l2_buffers[dev] = torch.empty(max(2 * l2, 2**26) // 4, dtype=torch.float32, device="cuda")
    _l2_buffers[dev].zero_()


def cuda_timer(torch, flush: bool = False) -> Callable[[Callable[[], object], int], float]:
    """Seconds per call measured with CUDA events around ``number`` calls, after a synchronisation.

    The events are recorded on the stream the calls are queued on, so the interval is GPU time
    from the first kernel's start to the last one's end, not the host's launch time.  With
    ``flush`` each call is timed on its own, after the L2 cache has been overwritten.
    """

    def timer(call, number: int) -> float:
        torch.cuda.synchronize()  # nothing queued earlier may fall inside the interval
        if flush:
            total = 0.0
            for _ in range(number):
                flush_l2(torch)
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                total += start.elapsed_time(end) / 1e3
            return total / number
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number  # elapsed_time is in milliseconds

    return timer


def torch_targets(device: str = "cpu", flush_l2: bool = False) -> list[TorchTarget]:
    """The baseline: torch on CPU when installed; with device "cuda", torch on the GPU, cuDNN benchmark off and on."""
    torch = _torch()
    if device == "cpu":
        return [TorchTarget("cpu")] if torch is not None else []
    if device != "cuda":
        raise BenchError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if torch is None:
        raise BenchError("--device cuda needs torch with CUDA support, but torch is not installed")
    if not torch.cuda.is_available():
        raise BenchError(
            f"--device cuda: no CUDA device available (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda or 'none: a CPU-only build'}); run without --device cuda"
        )
    # float32 means float32: without this, cuDNN may run fp32 convolutions in TF32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # TF32 off for the comparison (float32 means float32), plus one row with TF32 on, labelled so.
    return [
        TorchTarget("cpu"),
        TorchTarget("cuda", False, flush_l2=flush_l2),
        TorchTarget("cuda", True, flush_l2=flush_l2),
        TorchTarget("cuda", True, tf32=True, flush_l2=flush_l2),
    ]


def model_targets(targets: list, cases: list, threads: int) -> list:
    """For whole networks (the ``models`` suite): each CPU fastconv backend on the fused network too,
    the network compiled (``fastconv.compile``) when any fastconv backend runs, ONNX Runtime next
    to torch as a second baseline, and a one-thread twin of every CPU target (thread scaling);
    ``targets`` unchanged otherwise."""
    if not any(c.op == "model" for c in cases):
        return list(targets)
    fused = [FusedModelTarget(t.name) for t in targets if type(t) is FastconvTarget]
    compiled = [CompiledModelTarget(), CompiledModelTarget(winograd=True)] if fused else []
    return scaling.with_scaling([*targets, *fused, *compiled, *onnxruntime_target.targets()], cases, threads)
