"""The steps of a compiled plan (fastconv.plan): one kernel call each, over numbered values.

A step reads values from the plan's environment (a list indexed by value id) and writes one.
``prepare`` runs once on the compile pass (zeros of the compiled shape): it builds the problem
descriptor, lets the tuner choose the kernel, pre-packs, and leaves a fresh output in the
environment so the plan learns its shape.  A step whose kernel can write into a given buffer
is ``managed``: the plan then ``bind``s an arena buffer to it and ``run`` writes there.  The
others return a fresh array on every call (``allocates``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import api, dispatch
from .graph import Ref, _conv_epilogue, _map, _refs
from .nn import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from .problem import AdaptivePool2dProblem, Conv2dProblem, Pool2dProblem


class Step:
    kind = ""
    managed = False  # the kernel writes into a buffer the plan gives it
    bound = False  # ... and the plan gave it one
    allocates = True  # when not bound: a fresh array per call (a view, for flatten, is not)
    in_place = False  # the plan gave the output the buffer of the value it overwrites (overwrites)

    def __init__(self, name: str, output: int):
        self.name, self.output, self.out = name, output, None

    def reads(self) -> list[int]:
        raise NotImplementedError

    def bind(self, buf: np.ndarray) -> None:
        self.out, self.bound = buf, True

    def overwrites(self) -> int | None:
        """A value this step's kernel may write its output over, in place, when the step is its
        last reader (fastconv.plan's buffer layout decides); None: none."""
        return None

    def describe(self) -> str:
        return "numpy" if self.bound else "fresh array per call"


def _c():
    from .backends import c

    return c


class Conv(Step):
    """conv2d with bias, residual and activation in the epilogue."""

    kind = "conv"

    def __init__(self, name, layer: Conv2d, x: int, residual: int | None, activation, output):
        super().__init__(name, output)
        self.layer, self.x, self.residual, self.activation = layer, x, residual, activation
        self.fused_into = None
        self.u = None  # Winograd filter transform, made once
        self.wp = None  # the GEMM's pre-packed weights, made once
        self.call = None  # the c call, once bound to its output buffer
        self.fallback = False
        self.blocked = None  # (input border, residual border, output border) on blocked activations
        self.wb = None  # the blocked kernel's pre-packed weights

    def reads(self):
        return [self.x] + ([] if self.residual is None else [self.residual])

    def bind(self, buf):
        super().bind(buf)
        self.call = None

    def overwrites(self):
        # The blocked kernels take the residual as their output buffer (same border): the sums
        # start from it.  ONNX Runtime writes its fused Add's output over an input the same way;
        # the output's lines are then in cache from the residual read, not fetched again to be
        # written.
        if self.blocked is not None and self.residual is not None and self.blocked[1] == self.blocked[2]:
            return self.residual
        return None

    def prepare(self, env, tuner):
        x, layer = env[self.x], self.layer
        dtype = x.dtype
        self.w = np.ascontiguousarray(layer.weight, dtype)
        self.b = None if layer.bias is None else np.ascontiguousarray(layer.bias, dtype)
        res = None if self.residual is None else env[self.residual]
        n, c, h, w = x.shape
        k, cg, r, s = self.w.shape
        if c != cg * layer.groups:  # as the eager call says it (the C kernels trust these sizes)
            raise ValueError(
                f"input_shape: layer {self.name!r} gets {c} channels but its weight of shape {self.w.shape} with "
                f"groups={layer.groups} expects {cg * layer.groups} (weight.shape[1] * groups)"
            )
        pads = api._conv_padding(layer.padding, r, s, layer.dilation, layer.stride)
        act, act_params = api._activation_spec(self.activation)
        p = Conv2dProblem(
            n,
            c,
            h,
            w,
            k,
            r,
            s,
            layer.stride,
            pads,
            layer.dilation,
            layer.groups,
            dtype.name,
            bias=self.b is not None,
            residual=res is not None,
            activation=act,
            activation_params=act_params,
        )
        if res is not None and (not isinstance(res, np.ndarray) or res.shape != p.output_shape):
            self.fallback = True  # a broadcast skip connection: unfused, as the graph runs it
            self.choice = "unfused (broadcast residual)"
            env[self.output] = _conv_epilogue(layer, x, residual=res, activation=self.activation)
            return

        prepared = {}  # algorithm -> (Winograd filters, GEMM weights) made for a timed c candidate

        def c_weights(q):
            if q.algorithm not in prepared:
                if q.algorithm == "winograd":  # pre-packed once: the kernel skips the transform cache
                    prepared[q.algorithm] = (_c().winograd_transform(q, self.w), None)
                else:  # where the GEMM runs: its weights in the order its kernel reads them
                    prepared[q.algorithm] = (None, _c().gemm_weights(q, self.w))
            return prepared[q.algorithm]

        def call(backend, algorithm):
            q = replace(p, algorithm=algorithm)
            if backend != "c":
                return lambda: dispatch.run(q, x, self.w, self.b, res, backend=backend)
            # A c candidate is timed as the plan will run it: weights prepared once, the output
            # written in place.  As eager calls (weights in place, a fresh output each call, whose
            # pages fault in) ResNet-50's 3x3 layers at batch 1 timed 1.14-1.29 ms on the GEMM and
            # 0.59-0.79 on Winograd, against 0.72-0.77 and 0.46-0.56 as the plan runs them.
            conv = _c().ConvCall(q, self.w, self.b, np.empty(q.output_shape, x.dtype), *c_weights(q))
            xc, rc = np.ascontiguousarray(x), None if res is None else np.ascontiguousarray(res)
            return lambda: conv(xc, rc)

        self.backend, algorithm = tuner.choose_conv(p, layer.algorithm, call)
        self.p = replace(p, algorithm=algorithm)
        self.choice = f"{self.backend} {algorithm}"
        if self.backend == "c":
            self.managed = True
            self.u, self.wp = c_weights(self.p)
            if self.u is not None:
                self.choice += " (filters pre-transformed)"
            elif self.wp is not None:
                self.choice += " (weights pre-packed)"
        env[self.output] = dispatch.run(self.p, x, self.w, self.b, res, backend=self.backend)

    def block(self, env, xb: int, rb: int, yb: int, winograd: bool = True) -> None:
        """Run on channel-blocked activations (fastconv.plan's layout pass): input with border xb,
        residual with border rb, output with border yb.  A Winograd layer stays Winograd (its
        transforms read and write the blocked layout) unless ``winograd`` is false; any other
        runs the blocked direct kernel, and the NCHW kernel's packed weights are dropped."""
        c = _c()
        self.blocked = (xb, rb, yb)
        if self.p.algorithm == "winograd" and winograd:
            # The blocked kernel's own filter layout (channels fastest), made once here.
            self.wb = c.winograd_blocked_transform(self.p, self.w)
            self.u = self.wp = None
            self.choice = "c winograd, blocked activations (filters pre-transformed)"
        else:
            self.p = replace(self.p, algorithm="auto")
            self.wb = c.blocked_weights(self.p, self.w)
            self.u = self.wp = None
            self.choice = "c blocked (weights pre-packed)"
        env[self.output] = np.zeros(c.blocked_shape(self.p.output_shape, yb), self.w.dtype)

    def run(self, env):
        x = env[self.x]
        res = None if self.residual is None else env[self.residual]
        if self.blocked is not None:
            if self.call is None:
                xb, rb, yb = self.blocked
                self.call = _c().BlockedConvCall(self.p, self.wb, self.b, self.out, xb, rb, yb)
            env[self.output] = self.call(x, res)
        elif self.fallback:
            env[self.output] = _conv_epilogue(self.layer, x, residual=res, activation=self.activation)
        elif self.bound:
            if self.call is None:  # everything but the input arrays, made once
                self.call = _c().ConvCall(self.p, self.w, self.b, self.out, self.u, self.wp)
            env[self.output] = self.call(np.ascontiguousarray(x), None if res is None else np.ascontiguousarray(res))
        else:
            env[self.output] = dispatch.run(
                self.p,
                np.ascontiguousarray(x),
                self.w,
                self.b,
                None if res is None else np.ascontiguousarray(res),
                backend=self.backend,
            )

    def describe(self):
        epi = "+".join(
            filter(
                None,
                [
                    "bias" if self.layer.bias is not None else "",
                    "residual" if self.residual is not None else "",
                    api._activation_spec(self.activation)[0] or "",
                ],
            )
        )
        where = "arena" if self.bound else "fresh array per call"
        if self.bound and self.in_place:
            where += ", over the residual"
        return f"{self.choice}{', epilogue ' + epi if epi else ''} -> {where}"


class Relayout(Step):
    """NCHW into the c kernels' channel-blocked layout with a zero border, or back (fastconv.plan
    puts one where a blocked convolution reads an NCHW value, or another step a blocked one)."""

    kind = "layout"
    managed = True

    def __init__(self, name, x: int, shape, border: int, to_blocked: bool, output: int):
        super().__init__(name, output)
        self.x, self.shape, self.border, self.to_blocked = x, tuple(shape), border, to_blocked

    def reads(self):
        return [self.x]

    def prepare(self, env, tuner=None):
        c = _c()
        shape = c.blocked_shape(self.shape, self.border) if self.to_blocked else self.shape
        env[self.output] = np.zeros(shape, np.float32)

    def run(self, env):
        c = _c()
        if self.to_blocked:
            env[self.output] = c.to_blocked(env[self.x], self.border, self.out)
        else:
            env[self.output] = c.from_blocked(env[self.x], self.shape, self.border, self.out)

    def describe(self):
        lanes = _c().blocked_lanes()
        what = f"NCHW -> NCHW{lanes}c, border {self.border}" if self.to_blocked else f"NCHW{lanes}c -> NCHW"
        return f"c {what} -> arena"


class Pool(Step):
    """max / average / adaptive average pooling: the c kernels write into the arena."""

    kind = "pool"
    blocked = None  # ("out" | "in", border): the c kernel writes or reads the blocked layout

    def __init__(self, name, layer, x: int, output: int):
        super().__init__(name, output)
        self.layer, self.x = layer, x

    def reads(self):
        return [self.x]

    def prepare(self, env, tuner):
        x, m = env[self.x], self.layer
        y = m(x)  # the layer's own checks and output shape
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            self.p = None
        elif type(m) is MaxPool2d:
            _, _, kernel, stride, padding, dilation, ceil = api._pool_args(
                x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
            )
            self.p = Pool2dProblem("max", *x.shape, kernel, stride, padding, dilation, ceil, dtype=x.dtype.name)
        elif type(m) is AvgPool2d:
            _, _, kernel, stride, padding, dilation, ceil = api._pool_args(
                x, m.kernel_size, m.stride, m.padding, 1, m.ceil_mode
            )
            self.p = Pool2dProblem(
                "avg",
                *x.shape,
                kernel,
                stride,
                padding,
                dilation,
                ceil,
                m.count_include_pad,
                m.divisor_override,
                dtype=x.dtype.name,
            )
        elif type(m) is AdaptiveAvgPool2d:
            self.p = AdaptivePool2dProblem(*x.shape, *y.shape[2:], x.dtype.name)
        else:
            self.p = None
        self.backend = None if self.p is None else tuner.backend_for(self.p)
        self.managed = self.backend == "c"
        env[self.output] = y if self.p is None else dispatch.run(self.p, x, backend=self.backend)

    def block(self, env, side: str, border: int) -> None:
        """Take the blocked side of a layout conversion (fastconv.plan's layout pass): a max pool
        writes its output blocked with ``border`` (side "out"), a global average pool reads its
        input blocked with ``border`` (side "in"); :func:`fastconv.backends.c.blocked_pool_supports`."""
        self.blocked = (side, border)
        if side == "out":
            env[self.output] = np.zeros(_c().blocked_shape(self.p.output_shape, border), np.float32)

    def run(self, env):
        x = env[self.x]
        if self.blocked is not None:
            c, (side, border) = _c(), self.blocked
            if side == "out":
                env[self.output] = c.max_pool2d_blocked_into(self.p, x, border, self.out)
            else:
                shape = (self.p.n, self.p.c, self.p.h, self.p.w)
                env[self.output] = c.blocked_global_avg_pool_into(x, shape, border, self.out)
        elif self.bound:
            c = _c()
            fn = (
                c.adaptive_avg_pool2d_into
                if self.p.op == "adaptive_avg_pool2d"
                else c.max_pool2d_into
                if self.p.kind == "max"
                else c.avg_pool2d_into
            )
            env[self.output] = fn(self.p, np.ascontiguousarray(x), self.out)
        elif self.p is not None:
            env[self.output] = dispatch.run(self.p, np.ascontiguousarray(x), backend=self.backend)
        else:
            env[self.output] = self.layer(x)

    def describe(self):
        where = "arena" if self.bound else "fresh array per call"
        if self.blocked is not None:
            lanes, (side, border) = _c().blocked_lanes(), self.blocked
            layout = f"NCHW{lanes}c, border {border}"
            return f"c, {'NCHW -> ' + layout if side == 'out' else layout + ' -> NCHW'} -> {where}"
        return f"{self.backend or 'layer'} -> {where}"


class Pointwise(Step):
    """relu and add (NumPy ufuncs into the arena), flatten (a view)."""

    def __init__(self, name, op: str, inputs: tuple, output: int):
        super().__init__(name, output)
        self.op, self.inputs = op, inputs
        self.kind = op
        self.allocates = op != "flatten"

    def reads(self):
        return list(self.inputs)

    def prepare(self, env, tuner):
        a = [env[i] for i in self.inputs]
        if not all(isinstance(v, np.ndarray) for v in a):
            raise TypeError(f"{self.name}: {self.op} of non-arrays")
        if self.op == "flatten":
            env[self.output] = a[0].reshape(a[0].shape[0], -1)
            return
        y = np.maximum(a[0], 0) if self.op == "relu" else np.add(a[0], a[1])
        self.managed = y.dtype == a[0].dtype
        env[self.output] = y

    def run(self, env):
        a = [env[i] for i in self.inputs]
        if self.op == "flatten":
            env[self.output] = a[0].reshape(a[0].shape[0], -1)
        elif self.op == "relu":  # np.maximum propagates NaN, as torch's relu does
            env[self.output] = np.maximum(a[0], 0, out=self.out) if self.bound else np.maximum(a[0], 0)
        else:
            env[self.output] = np.add(a[0], a[1], out=self.out) if self.bound else np.add(a[0], a[1])

    def describe(self):
        return "view" if self.op == "flatten" else super().describe()


class Linear(Step):
    """x @ weight.T + bias, written into the arena.

    Where the c backend runs the plan's convolutions it runs this too, as a 1x1 convolution on a
    1x1 image: BLAS's own thread pool would otherwise start while the c kernels' OpenMP threads
    still spin after their last parallel region, and on a machine with one core per thread the
    two pools fight for the cores (ResNet-50's fc, batch 8, right after its convolutions: about
    5 ms through BLAS, 1.3 ms through c; docs/results/inference.md).  Other plans, and float64
    (which the c backend runs on its portable loops), use BLAS."""

    kind = "linear"

    def __init__(self, name, layer, x: int, output: int):
        super().__init__(name, output)
        self.layer, self.x = layer, x
        self.p = self.call = self.wp = None

    def reads(self):
        return [self.x]

    def bind(self, buf):
        super().bind(buf)
        self.call = None

    def prepare(self, env, tuner):
        x = env[self.x]
        y = self.layer(x)  # the layer's own checks
        self.wt = np.ascontiguousarray(self.layer.weight, x.dtype).T
        self.b = None if self.layer.bias is None else np.ascontiguousarray(self.layer.bias, x.dtype)
        self.managed = isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and y.dtype == x.dtype
        if self.managed and x.ndim == 2 and x.dtype == np.float32:  # float64 on c: untuned loops
            n, f = x.shape
            o = self.wt.shape[1]
            p = Conv2dProblem(
                n, f, 1, 1, o, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, x.dtype.name, bias=self.b is not None
            )
            if tuner.backend_for(p) == "c":
                self.p, self.w4 = p, np.ascontiguousarray(self.layer.weight, x.dtype).reshape(o, f, 1, 1)
                # Pre-packed as a convolution's: at batch 1 to 4 the kernel's narrow path reads them.
                self.wp = _c().gemm_weights(p, self.w4)
        env[self.output] = y

    def run(self, env):
        x = env[self.x]
        if not self.bound:
            env[self.output] = self.layer(x)
        elif self.p is not None:
            if self.call is None:
                self.call = _c().ConvCall(
                    self.p, self.w4, self.b, self.out.reshape(*self.out.shape, 1, 1), None, self.wp
                )
            self.call(np.ascontiguousarray(x).reshape(*x.shape, 1, 1))
            env[self.output] = self.out
        else:
            y = np.matmul(x, self.wt, out=self.out)
            if self.b is not None:
                y += self.b
            env[self.output] = y

    def describe(self):
        if self.bound and self.p is not None:
            return "c 1x1 convolution" + (" (weights pre-packed)" if self.wp is not None else "") + " -> arena"
        return "numpy (BLAS) -> arena" if self.bound else "fresh array per call"


class Call(Step):
    """Any other layer, called as the model would call it; its result may view its inputs."""

    kind = "call"

    def __init__(self, name, layer, args, kwargs, output: int):
        super().__init__(name, output)
        self.layer, self.args, self.kwargs = layer, args, kwargs

    def reads(self):
        return _refs((self.args, self.kwargs))

    def prepare(self, env, tuner):
        self.run(env)

    def run(self, env):
        args = _map(self.args, lambda r: env[r.name])
        kwargs = _map(self.kwargs, lambda r: env[r.name])
        if "residual" in kwargs and isinstance(self.layer, Conv2d):
            env[self.output] = _conv_epilogue(self.layer, args[0], **kwargs)
        else:
            env[self.output] = self.layer(*args, **kwargs)

    def describe(self):
        return f"{type(self.layer).__name__} (its own call; fresh array per call)"


def alias_roots(steps) -> dict[int, set[int]]:
    """For each value, the values whose buffers it may be a view of (itself included)."""
    roots: dict[int, set[int]] = {}
    for step in steps:
        if isinstance(step, Pointwise) and step.op == "flatten":
            roots[step.output] = set(roots.get(step.inputs[0], {step.inputs[0]}))
        elif isinstance(step, Call):
            mine = {step.output}
            for v in step.reads():
                mine |= roots.get(v, {v})
            roots[step.output] = mine
    return roots


__all__ = ["Step", "Conv", "Relayout", "Pool", "Pointwise", "Linear", "Call", "alias_roots", "Ref"]
