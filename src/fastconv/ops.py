"""The op table: everything fastconv knows about an op, in one entry per (op, direction).

In the spirit of PyTorch's OpInfo.  The dispatcher finds the backend function by the entry's
``kernel`` name; the benchmark targets build the public-API call, torch's call and the inputs
from it; the tests take the tolerance and the torch reference from it; the naive backend counts
its loop steps with it.  Adding an op is one entry here, the kernels in the backends that
implement it, and its named edge cases (docs/layout.md walks through it).

A backward entry takes the *forward*-shaped problem with another ``direction`` and names the
backend function of the contract (``conv2d_bwd_data``, ...).  A backend that lacks the function
is refused by the dispatcher with that reason; one that has it just works.

This module imports no torch: torch references receive the module as an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import problem as _p

#: Base relative tolerance per dtype, scaled by sqrt(terms summed per output) / 8 above 64 terms.
RTOL = {"float32": 1e-4, "float64": 1e-9}


def tolerance(dtype: str, reduction: int) -> float:
    """The relative tolerance of an output that sums ``reduction`` terms (rounding grows like sqrt)."""
    return RTOL[dtype] * max(1.0, math.sqrt(reduction) / 8)


@dataclass(frozen=True)
class OpInfo:
    """One (op, direction): how to call it, check it and count it.

    ``args`` are the names of the data arrays the backend function takes after the problem, in
    order (None stands for an absent optional array); ``make`` draws them for a problem;
    ``torch(p, t, torch)`` returns a no-argument call computing the reference on tensors ``t``
    (keyed like ``args``); ``api(p, data)`` gives the (args, kwargs) of the public function
    ``fastconv.<op>`` that builds this problem (forward only);
    ``empty(p, dtype, alloc)`` is the result when there is nothing to compute (an empty batch);
    ``steps(p)`` the Python-level loop count of the naive formula; ``wrt`` (backward entries)
    names the forward arrays whose gradients the function returns, in its return order.
    """

    op: str
    direction: str
    kernel: str
    problem: type
    args: tuple[str, ...]
    make: Callable
    torch: Callable
    empty: Callable
    steps: Callable
    api: Callable | None = None
    metric: str = "bytes"  # "flops" (GFLOP/s) or "bytes" (GB/s): the benchmark's throughput unit
    wrt: tuple[str, ...] = ()  # backward: the forward arrays whose gradients it returns, in order

    @property
    def key(self) -> tuple[str, str]:
        return (self.op, self.direction)

    def arrays(self, data: dict) -> list:
        """The positional arrays of the backend call, from a dict keyed by ``args``."""
        return [data.get(name) for name in self.args]

    def tolerance(self, p) -> float:
        return tolerance(p.dtype, p.reduction)


# -- input makers --------------------------------------------------------------------------------


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _conv_data(p, rng) -> dict:
    dt = np.dtype(p.dtype)
    data = {"x": _normal(rng, p.input_shape, dt), "w": _normal(rng, p.weight_shape, dt)}
    if p.bias:
        data["b"] = _normal(rng, p.k, dt)
    if p.residual:
        data["residual"] = _normal(rng, p.output_shape, dt)
    if p.direction != "fwd":
        data["grad_output"] = _normal(rng, p.output_shape, dt)
    return data


def _image_data(p, rng) -> dict:
    dt = np.dtype(p.dtype)
    data = {"x": _normal(rng, p.input_shape, dt)}
    if p.direction != "fwd":
        data["grad_output"] = _normal(rng, p.output_shape, dt)
    return data


def _bn_data(p, rng) -> dict:
    dt = np.dtype(p.dtype)
    data = {
        "x": _normal(rng, p.input_shape, dt),
        "mean": _normal(rng, p.c, dt),
        "var": rng.uniform(0.5, 2.0, p.c).astype(dt),
        "weight": _normal(rng, p.c, dt),
        "bias": _normal(rng, p.c, dt),
    }
    if p.direction != "fwd":
        data["grad_output"] = _normal(rng, data["x"].shape, dt)
        if p.training and p.count:  # the backward pass gets the batch statistics the forward pass used
            x64 = data["x"].reshape(p.n, p.c, p.l).astype(np.float64)
            data["mean"], data["var"] = x64.mean(axis=(0, 2)).astype(dt), x64.var(axis=(0, 2)).astype(dt)
    return data


def _linear_data(p, rng) -> dict:
    dt = np.dtype(p.dtype)
    data = {"x": _normal(rng, p.input_shape, dt), "w": _normal(rng, p.weight_shape, dt)}
    if p.bias:
        data["b"] = _normal(rng, p.out_features, dt)
    return data


def _relu_data(p, rng) -> dict:
    data = _image_data(p, rng)
    if p.direction != "fwd":
        data["y"] = np.maximum(data["x"], 0)
    return data


# -- torch references (forward) ------------------------------------------------------------------


def _torch_conv(p, t, torch):
    F = torch.nn.functional
    x, w, b, res = t["x"], t["w"], t.get("b"), t.get("residual")
    pt, pb, pl, pr = p.padding

    # torch's conv2d pads symmetrically with zeros only: other padding goes through F.pad first.
    explicit = (pt, pl) != (pb, pr) or p.padding_mode != "zeros"
    mode = "constant" if p.padding_mode == "zeros" else p.padding_mode

    def conv():
        xx = F.pad(x, (pl, pr, pt, pb), mode=mode) if explicit else x
        pad = 0 if explicit else (pt, pl)
        y = F.conv2d(xx, w, b, p.stride, pad, p.dilation, p.groups)
        if res is not None:
            y += res
        return torch_activation(torch, p.activation, p.activation_params, y)

    return conv


def torch_activation(torch, kind, params, y):
    """torch.nn.functional's activation ``kind`` (None: identity) with its parameters, on ``y``."""
    if kind is None:
        return y
    return getattr(torch.nn.functional, kind)(y, *params)


def _torch_max_pool(p, t, torch):
    return lambda: torch.nn.functional.max_pool2d(t["x"], p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)


def _torch_max_pool_indices(p, t, torch):
    return lambda: torch.nn.functional.max_pool2d(
        t["x"], p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode, return_indices=True
    )


def _torch_adaptive_max(p, t, torch):
    return lambda: torch.nn.functional.adaptive_max_pool2d(t["x"], (p.oh, p.ow), return_indices=p.return_indices)


def _torch_activation(p, t, torch):
    return lambda: torch_activation(torch, p.kind, p.params, t["x"])


def _torch_linear(p, t, torch):
    return lambda: torch.nn.functional.linear(t["x"], t["w"], t.get("b"))


def _torch_avg_pool(p, t, torch):
    return lambda: torch.nn.functional.avg_pool2d(
        t["x"], p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override
    )


def _torch_adaptive(p, t, torch):
    return lambda: torch.nn.functional.adaptive_avg_pool2d(t["x"], (p.oh, p.ow))


def _torch_bn(p, t, torch):
    # Copies: training updates the running statistics in place (None: no running statistics).
    mean, var = (None if t.get(k) is None else t[k].clone() for k in ("mean", "var"))
    return lambda: torch.nn.functional.batch_norm(t["x"], mean, var, t["weight"], t["bias"], p.training, 0.1, p.eps)


def _torch_relu(p, t, torch):
    return lambda: torch.nn.functional.relu(t["x"])


# -- torch references (backward): autograd through the forward reference --------------------------


def _grads(forward_call, t, torch, wrt: tuple[str, ...], grad_out: str = "grad_output"):
    """A call returning d(forward)/d(t[name]) . t[grad_out] for each name in ``wrt`` (None if unused)."""

    def call():
        with torch.enable_grad():
            leaves = {k: (v.detach().clone().requires_grad_(k in wrt) if v is not None else None) for k, v in t.items()}
            y = forward_call(leaves)()
            inputs = [leaves[k] for k in wrt if leaves.get(k) is not None]
            got = iter(torch.autograd.grad(y, inputs, t[grad_out], allow_unused=True))
            out = tuple(next(got) if leaves.get(k) is not None else None for k in wrt)
        return out[0] if len(out) == 1 else out

    return call


def _bwd(forward_ref, wrt):
    """A backward reference: autograd through the forward reference, with respect to ``wrt``."""

    def ref(p, t, torch):
        fp = replace(p, direction="fwd")
        return _grads(lambda leaves: forward_ref(fp, leaves, torch), t, torch, wrt)

    return ref


def _torch_bn_bwd(p, t, torch):
    # The batch statistics are inputs of the backward pass, not functions of x: in training mode
    # the gradient flows through them, so recompute them inside the graph, as torch's forward does.
    fp = replace(p, direction="fwd")

    def forward(leaves):
        x = leaves["x"]
        if fp.training:
            return lambda: torch.nn.functional.batch_norm(
                x, None, None, leaves["weight"], leaves["bias"], True, 0.0, fp.eps
            )
        return lambda: torch.nn.functional.batch_norm(
            x, leaves["mean"], leaves["var"], leaves["weight"], leaves["bias"], False, 0.0, fp.eps
        )

    bias = t.get("bias")
    if bias is None:
        bias = torch.zeros_like(t["weight"])
    return _grads(forward, {**t, "bias": bias}, torch, ("x", "weight", "bias"))


def _torch_relu_bwd(p, t, torch):
    # relu's gradient from its output, as torch's threshold_backward: zero where y <= 0.
    return lambda: torch.ops.aten.threshold_backward(t["grad_output"], t["y"], 0)


# -- empty results and step counts ---------------------------------------------------------------


def _empty_out(p, dtype, alloc):
    return alloc.empty(p.output_shape, dtype)


def _empty_indexed(p, dtype, alloc):
    y = alloc.empty(p.output_shape, dtype)
    return (y, alloc.empty(p.output_shape, "int64")) if p.return_indices else y


def _empty_in(p, dtype, alloc):
    return alloc.zeros(p.input_shape, dtype)  # no output: no gradient reaches the input


def _empty_bn(p, dtype, alloc):
    return alloc.empty(p.output_shape, dtype), None, None


def _empty_conv_bwd_weight(p, dtype, alloc):
    return alloc.zeros(p.weight_shape, dtype), (alloc.zeros((p.k,), dtype) if p.bias else None)


def _empty_bn_bwd(p, dtype, alloc):
    return alloc.empty(p.input_shape, dtype), alloc.zeros((p.c,), dtype), alloc.zeros((p.c,), dtype)


def _conv_steps(p):
    return p.n * p.k * p.oh * p.ow * p.r * p.s


def _pool_steps(p):
    return p.n * p.c * p.oh * p.ow * p.kernel[0] * p.kernel[1]


def _adaptive_steps(p):
    return p.n * p.c * p.oh * p.ow


def _adaptive_max_steps(p):
    return p.n * p.c * p.oh * p.ow * p.reduction


def _linear_steps(p):
    return p.rows * p.out_features * max(1, p.in_features)


def _bn_steps(p):
    return p.c


def _relu_steps(p):
    return p.size


# -- public-API arguments (what a benchmark of a fastconv backend calls) -----------------------------


def _api_conv(p, data):
    pt, pb, pl, pr = p.padding
    if (pt, pl) != (pb, pr) or p.padding_mode != "zeros":
        raise ValueError(f"{p.id}: the benchmark expresses only symmetric zero padding")
    return (
        (data["x"], data["w"], data.get("b"), p.stride, (pt, pl), p.dilation, p.groups),
        {"residual": data.get("residual"), "activation": p.activation, "algorithm": p.algorithm},
    )


def _api_max_pool(p, data):
    return (data["x"], p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode), {}


def _api_avg_pool(p, data):
    return (data["x"], p.kernel, p.stride, p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override), {}


def _api_adaptive(p, data):
    return (data["x"], (p.oh, p.ow)), {}


def _api_max_pool_indices(p, data):
    return (data["x"], p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode), {"return_indices": True}


def _api_adaptive_max(p, data):
    return (data["x"], (p.oh, p.ow), p.return_indices), {}


def _api_activation(p, data):
    return (data["x"], *p.params), {}


def _api_linear(p, data):
    return (data["x"], data["w"], data.get("b")), {}


def _api_bn(p, data):
    # Copies: training updates the running statistics in place.
    return (
        data["x"].reshape(p.input_shape),
        data["mean"].copy(),
        data["var"].copy(),
        data["weight"],
        data["bias"],
        p.training,
        0.1,
        p.eps,
    ), {}


def _api_relu(p, data):
    return (data["x"],), {}


# -- the table -----------------------------------------------------------------------------------

_ENTRIES = [
    OpInfo(
        "conv2d",
        "fwd",
        "conv2d",
        _p.Conv2dProblem,
        ("x", "w", "b", "residual"),
        _conv_data,
        _torch_conv,
        _empty_out,
        _conv_steps,
        _api_conv,
        metric="flops",
    ),
    OpInfo(
        "max_pool2d",
        "fwd",
        "max_pool2d",
        _p.Pool2dProblem,
        ("x",),
        _image_data,
        _torch_max_pool,
        _empty_out,
        _pool_steps,
        _api_max_pool,
    ),
    OpInfo(
        "avg_pool2d",
        "fwd",
        "avg_pool2d",
        _p.Pool2dProblem,
        ("x",),
        _image_data,
        _torch_avg_pool,
        _empty_out,
        _pool_steps,
        _api_avg_pool,
    ),
    OpInfo(
        "adaptive_avg_pool2d",
        "fwd",
        "adaptive_avg_pool2d",
        _p.AdaptivePool2dProblem,
        ("x",),
        _image_data,
        _torch_adaptive,
        _empty_out,
        _adaptive_steps,
        _api_adaptive,
    ),
    OpInfo(
        "batch_norm",
        "fwd",
        "batch_norm",
        _p.BatchNormProblem,
        ("x", "mean", "var", "weight", "bias"),
        _bn_data,
        _torch_bn,
        _empty_bn,
        _bn_steps,
        _api_bn,
    ),
    OpInfo("relu", "fwd", "relu", _p.ReluProblem, ("x",), _relu_data, _torch_relu, _empty_out, _relu_steps, _api_relu),
    OpInfo(
        "max_pool2d_with_indices",
        "fwd",
        "max_pool2d_with_indices",
        _p.Pool2dProblem,
        ("x",),
        _image_data,
        _torch_max_pool_indices,
        _empty_indexed,
        _pool_steps,
        _api_max_pool_indices,
    ),
    OpInfo(
        "adaptive_max_pool2d",
        "fwd",
        "adaptive_max_pool2d",
        _p.AdaptivePool2dProblem,
        ("x",),
        _image_data,
        _torch_adaptive_max,
        _empty_indexed,
        _adaptive_max_steps,
        _api_adaptive_max,
    ),
    OpInfo(
        "linear",
        "fwd",
        "linear",
        _p.LinearProblem,
        ("x", "w", "b"),
        _linear_data,
        _torch_linear,
        _empty_out,
        _linear_steps,
        _api_linear,
        metric="flops",
    ),
    # The activations besides relu: one backend function, ``activation(p, x)``, for all of them.
    *(
        OpInfo(
            kind,
            "fwd",
            "activation",
            _p.ActivationProblem,
            ("x",),
            _image_data,
            _torch_activation,
            _empty_out,
            _relu_steps,
            _api_activation,
        )
        for kind in _p.ACTIVATION_PARAMS
        if kind != "relu"
    ),
    # Backward: forward-shaped problems, the contract's function names and argument order.
    OpInfo(
        "conv2d",
        "bwd_data",
        "conv2d_bwd_data",
        _p.Conv2dProblem,
        ("grad_output", "w"),
        _conv_data,
        _bwd(_torch_conv, ("x",)),
        _empty_in,
        _conv_steps,
        metric="flops",
        wrt=("x",),
    ),
    OpInfo(
        "conv2d",
        "bwd_weight",
        "conv2d_bwd_weight",
        _p.Conv2dProblem,
        ("x", "grad_output"),
        _conv_data,
        _bwd(_torch_conv, ("w", "b")),
        _empty_conv_bwd_weight,
        _conv_steps,
        metric="flops",
        wrt=("w", "b"),
    ),
    OpInfo(
        "max_pool2d",
        "bwd_data",
        "max_pool2d_bwd_data",
        _p.Pool2dProblem,
        ("x", "grad_output"),
        _image_data,
        _bwd(_torch_max_pool, ("x",)),
        _empty_in,
        _pool_steps,
        wrt=("x",),
    ),
    OpInfo(
        "avg_pool2d",
        "bwd_data",
        "avg_pool2d_bwd_data",
        _p.Pool2dProblem,
        ("grad_output",),
        _image_data,
        _bwd(_torch_avg_pool, ("x",)),
        _empty_in,
        _pool_steps,
        wrt=("x",),
    ),
    OpInfo(
        "adaptive_avg_pool2d",
        "bwd_data",
        "adaptive_avg_pool2d_bwd_data",
        _p.AdaptivePool2dProblem,
        ("grad_output",),
        _image_data,
        _bwd(_torch_adaptive, ("x",)),
        _empty_in,
        _adaptive_steps,
        wrt=("x",),
    ),
    OpInfo(
        "batch_norm",
        "bwd_data",
        "batch_norm_bwd_data",
        _p.BatchNormProblem,
        ("x", "grad_output", "mean", "var", "weight"),
        _bn_data,
        _torch_bn_bwd,
        _empty_bn_bwd,
        _bn_steps,
        wrt=("x", "weight", "bias"),
    ),
    OpInfo(
        "relu",
        "bwd_data",
        "relu_bwd_data",
        _p.ReluProblem,
        ("y", "grad_output"),
        _relu_data,
        _torch_relu_bwd,
        _empty_in,
        _relu_steps,
        wrt=("x",),
    ),
]

TABLE: dict[tuple[str, str], OpInfo] = {e.key: e for e in _ENTRIES}
#: The forward ops, in the order the public API lists them.
OPS = tuple(e.op for e in _ENTRIES if e.direction == "fwd")


def get(problem) -> OpInfo:
    """The entry of ``problem``'s op and direction."""
    try:
        return TABLE[(problem.op, problem.direction)]
    except KeyError:
        raise ValueError(f"no op {problem.op!r} with direction {problem.direction!r}") from None


def entries(direction: str | None = None) -> list[OpInfo]:
    return [e for e in _ENTRIES if direction is None or e.direction == direction]
