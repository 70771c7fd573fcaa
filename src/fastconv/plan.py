"""``fastconv.compile``: a model turned into a fixed list of kernel calls for one input shape.

    plan = fastconv.compile(model, (8, 3, 224, 224))   # fastconv ResNet, Graph, Sequential
    y = plan(x)

Compiling works on a copy of the model (the model itself is left as it was) and does, once,
what an eager forward pass redoes on every call:

- folds each eval-mode BatchNorm into the convolution before it and fuses bias, skip connection
  and ReLU into the convolution's epilogue (the models' and graphs' own ``fuse()``);
- picks a backend and algorithm per convolution: with ``backend=None`` it times the candidates
  once (fastconv.timing; another kernel replaces the c backend's default only when clearly
  faster, see fastconv._plan_tune) and remembers the winner in memory and, when the environment
  variable ``FASTCONV_TUNE_CACHE`` names a JSON file, in that file, under a key naming the
  machine (CPU model, instruction set, fastconv version), so another machine or ISA tunes afresh;
- pre-packs the weights: the Winograd filter transform is made once and handed to the kernel
  (no transform-cache lookup, whose byte-for-byte weight check reads the weight every call);
  where the c GEMM runs, its weights are packed once in the order its microkernel reads them
  (one sequential stream per block of output channels instead of one per channel; same
  results, bit for bit; the plan then holds both copies of those weights);
- allocates every intermediate activation once, in an arena of buffers shared by liveness: a
  buffer is reused as soon as the last step that reads its value has run.

Kernels that take an output buffer write into the arena: the c backend's convolutions and
pooling, and the plan's own NumPy steps (add, relu, linear).  The other backends (im2col,
numba, naive, torch) return fresh arrays; those steps allocate on every call, and
``Plan.allocations_per_call`` counts them.

Layout: the c convolutions that can run on channel-blocked activations ((n, c/L, h, w, L), L
channels of a pixel in one vector, with a zero border for the next layer's padding;
csrc/conv_blocked_f32.c) keep them blocked from layer to layer, and one Relayout step converts
where a value enters or leaves them.  That is not faster everywhere (the blocked kernel replaces
the GEMM on those layers), so a tuned plan times whole forward passes of its variants -- NCHW,
blocked (Winograd layers transforming blocked activations), and blocked with its Winograd layers
on the blocked direct kernel instead -- and keeps the fastest (``layout_chosen``; remembered like the per-layer choices).

Semantics: ``plan(x)`` takes exactly the compiled shape and dtype (ValueError / TypeError naming
``x`` otherwise) and returns a new array (or writes into ``out=``).  Calls from several threads
are serialised, since the buffers are shared.  The output matches the uncompiled model within
float32 rounding, or within the documented Winograd bound when ``winograd=True`` lets the tuner
choose it (docs/results/winograd.md).
"""

from __future__ import annotations

import copy
import threading
import numpy as np

from . import dispatch, nn, threads
from ._plan_steps import Call, Conv, Linear, Pool, Pointwise, Relayout, alias_roots
from ._plan_tune import Tuner
from .graph import Graph, Ref, _map
from .models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["compile", "Plan"]


def compile(model, input_shape, *, backend=None, winograd=False, tune=True, layout="auto"):  # noqa: A001
    """A :class:`Plan` running ``model``'s forward pass on inputs of ``input_shape``.

    ``model``: a fastconv ResNet (fastconv.models), a ``Graph`` (``from_torch``,
    ``fastconv.onnx.load``) or an ``nn.Sequential``; any other ``nn.Module`` runs as one step.
    ``backend``: None times the CPU backends (and the c backend's algorithms) per convolution;
    a name runs every layer on that backend (still choosing among its algorithms).
    ``winograd``: let the tuner pick Winograd F(4x4,3x3) for 3x3 layers (faster, and within the
    documented error bound rather than float32 rounding).  ``tune=False`` skips timing: each
    convolution takes the first candidate ("auto"'s choice).  ``layout``: "auto" keeps the c
    backend's channel-blocked layout between the convolutions that can run on it; "nchw" keeps
    every activation NCHW.

    >>> import numpy as np, fastconv
    >>> from fastconv.models import resnet18
    >>> plan = fastconv.compile(resnet18(num_classes=4).eval(), (1, 3, 32, 32), backend="c")
    >>> plan(np.zeros((1, 3, 32, 32), np.float32)).shape
    (1, 4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a fastconv.nn.Module (a ResNet, a Graph, a Sequential, ...), got {type(model).__name__}"
        )
    shape = _input_shape(input_shape)
    if layout not in ("auto", "nchw"):
        raise ValueError(f'layout must be "auto" or "nchw", got layout={layout!r}')
    backend = dispatch._check_name(backend)
    if backend == "auto":
        backend = None
    if backend is not None:
        dispatch.get_module(backend)  # BackendError saying why, before any work
    dtype = _model_dtype(model)
    work = copy.deepcopy(model).eval()
    work.fuse()
    steps, n_values, inputs, output, consts = _lower(work)
    if len(inputs) != 1:
        raise TypeError(f"model takes {len(inputs)} inputs; compile handles models of one input")
    return Plan(
        work,
        steps,
        n_values,
        inputs[0],
        output,
        consts,
        shape,
        dtype,
        Tuner(backend, bool(winograd), bool(tune)),
        layout,
    )


def _input_shape(input_shape) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in input_shape
    ):
        raise TypeError(f"input_shape must be a tuple of ints, got input_shape={input_shape!r}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (N, C, H, W) with positive sizes, got input_shape={shape}")
    return shape


def _model_dtype(model) -> np.dtype:
    for p in model.parameters():
        if p.dtype.kind == "f":
            return p.dtype
    return np.dtype(np.float32)


# -- lowering: model -> steps over numbered values ------------------------------------------------


class _Builder:
    def __init__(self):
        self.steps, self.n, self.consts = [], 0, {}

    def value(self) -> int:
        self.n += 1
        return self.n - 1

    def add(self, step):
        self.steps.append(step)
        return step.output


def _lower(model):
    """(steps, number of values, input value ids, output spec, constants) for ``model``."""
    b = _Builder()
    if isinstance(model, Graph):
        return _lower_graph(model, b)
    x = b.value()
    if isinstance(model, ResNet):
        out = _lower_resnet(model, b, x)
    elif isinstance(model, nn.Sequential):
        out = _lower_sequence(list(model.named_children()), b, x, "")
    else:
        out = b.add(Call("forward", model, (Ref(x),), {}, b.value()))
    return b.steps, b.n, [x], Ref(out), b.consts


def _conv(b, name, conv, x, residual=None, relu=False, activation=None):
    return b.add(Conv(name, conv, x, residual, "relu" if relu else activation, b.value()))


def _lower_resnet(m: ResNet, b: _Builder, x: int) -> int:
    v = _conv(b, "conv1", m.conv1, x, relu=True)
    v = b.add(Pool("maxpool", m.maxpool, v, b.value()))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(m, stage)):
            name = f"{stage}.{i}"
            identity = v
            if block.downsample is not None:
                identity = _lower_sequence(list(block.downsample.named_children()), b, v, f"{name}.downsample")
            convs = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
            assert isinstance(block, (BasicBlock, Bottleneck))
            for j, c in enumerate(convs):
                last = j == len(convs) - 1
                v = _conv(b, f"{name}.{c}", getattr(block, c), v, residual=identity if last else None, relu=True)
    v = b.add(Pool("avgpool", m.avgpool, v, b.value()))
    v = b.add(Pointwise("flatten", "flatten", (v,), b.value()))
    return b.add(Linear("fc", m.fc, v, b.value()))


def _lower_sequence(children, b: _Builder, v: int, prefix: str) -> int:
    start = len(b.steps)
    for name, layer in children:
        path = f"{prefix}.{name}" if prefix else name
        v = _lower_layer(path, layer, b, (Ref(v),), {}, chain_start=start)
    return v


def _lower_layer(path, layer, b: _Builder, args, kwargs, chain_start: int | None = None) -> int:
    """One layer call: a dedicated step where there is one, else a Call step.  In a chain (a
    Sequential, its steps from ``chain_start`` on) each value made in it has one reader, so a
    ReLU after a convolution of the chain joins its epilogue."""
    refs = [a.name for a in args if isinstance(a, Ref)]
    plain = len(args) == len(refs)
    if plain and len(args) == 1 and isinstance(layer, nn.Identity) and not kwargs:
        return refs[0]
    last = b.steps[-1] if b.steps else None
    if (
        type(layer) is nn.Conv2d
        and plain
        and len(args) == 1
        and layer.padding_mode == "zeros"
        and set(kwargs) <= {"residual", "activation"}
        and (kwargs.get("residual") is None or isinstance(kwargs["residual"], Ref))
    ):
        res = kwargs.get("residual")
        return _conv(
            b, path, layer, refs[0], None if res is None else res.name, activation=kwargs.get("activation")
        )  # any epilogue activation, with its parameters
    if plain and not kwargs and len(args) == 1:
        if (
            chain_start is not None
            and last in b.steps[chain_start:]
            and type(layer) is nn.ReLU
            and isinstance(last, Conv)
            and last.output == refs[0]
            and last.activation is None
            and not last.fused_into
        ):
            last.activation = "relu"  # a Sequential's conv -> (folded bn) -> relu
            last.fused_into = path
            return last.output
        if type(layer) in (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return b.add(Pool(path, layer, refs[0], b.value()))
        if type(layer) is nn.ReLU:
            return b.add(Pointwise(path, "relu", (refs[0],), b.value()))
        if type(layer) is nn.Linear:
            return b.add(Linear(path, layer, refs[0], b.value()))
        if type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
            return b.add(Pointwise(path, "flatten", (refs[0],), b.value()))
    if (
        plain
        and not kwargs
        and len(args) == 2
        and isinstance(layer, nn.Elementwise)
        and layer.op == "add"
        and layer.alpha in (None, 1)
    ):
        return b.add(Pointwise(path, "add", tuple(refs), b.value()))
    return b.add(Call(path, layer, args, kwargs, b.value()))


def _lower_graph(g: Graph, b: _Builder):
    ids: dict[str, int] = {}
    inputs, output = [], None

    def ref(r):
        return Ref(ids[r.name])

    for node in g.nodes:
        if node.op == "input":
            ids[node.name] = b.value()
            inputs.append(ids[node.name])
        elif node.op == "attr":
            ids[node.name] = b.value()
            b.consts[ids[node.name]] = g._get_array(node.target)
        elif node.op == "output":
            output = _map(node.args[0], ref)
            break
        else:
            layer = g.layer_of(node)
            ids[node.name] = _lower_layer(
                node.target or node.name, layer, b, _map(node.args, ref), _map(node.kwargs, ref)
            )
    if output is None:
        raise ValueError("model: the graph has no output node")
    return b.steps, b.n, inputs, output, b.consts


# -- the plan ---------------------------------------------------------------------------------------


class Plan:
    """A compiled forward pass (see the module docstring); call it with an array of ``input_shape``."""

    def __init__(self, model, steps, n_values, input_id, output, consts, input_shape, dtype, tuner, layout="auto"):
        self.model = model  # the fused copy whose weights the steps read
        self.layout = layout
        self.input_shape, self.dtype = input_shape, np.dtype(dtype)
        self.steps, self._input, self._output = steps, input_id, output
        self._env: list = [None] * n_values
        for i, a in consts.items():
            self._env[i] = a
        self._lock = threading.Lock()
        self._prepare(tuner)

    # -- compiling --------------------------------------------------------------------------------
    def _prepare(self, tuner) -> None:
        """One pass on zeros: each step learns its shapes, picks its kernel (timing candidates)
        and pre-packs; then the arena is laid out by liveness and the steps bound to it."""
        env = list(self._env)
        env[self._input] = np.zeros(self.input_shape, self.dtype)
        threads.apply_blas()
        for step in self.steps:
            step.prepare(env, tuner)
        self.tuner_log = tuner.log
        variants = {"nchw": (self.steps, env)}
        if self.layout == "auto":
            # Blocked where the c kernels can (Winograd layers too, their transforms reading and
            # writing the blocked layout); and, where the tuner picked Winograd, also with those
            # layers on the blocked direct kernel instead.
            tuned_winograd = any(
                isinstance(s, Conv) and s.layer.algorithm == "auto" and s.p.algorithm == "winograd"
                for s in self.steps
                if getattr(s, "p", None) is not None
            )
            for name, winograd in (("blocked", True), ("blocked, no winograd", False))[: 1 + tuned_winograd]:
                steps, venv = self._block([copy.copy(s) for s in self.steps], list(env), winograd)
                if steps is not None:
                    variants[name] = (steps, venv)
        states = {}
        for name, (steps, venv) in variants.items():
            self.steps = steps
            self._layout({s.output: venv[s.output] for s in steps if s.managed})
            consts = {i for i, a in enumerate(self._env) if a is not None}
            self._transient = [
                i
                for i in range(len(self._env))
                if i not in consts and not any(s.bound and s.output == i for s in steps)
            ]
            states[name] = self._state()
        if len(states) == 1:
            chosen = next(iter(states))
        elif not tuner.tune:
            chosen = "blocked"
        else:
            chosen = tuner.choose_layout(self._plan_key(), {n: self._timed(st) for n, st in states.items()})
        self._restore(states[chosen])
        self.layout_chosen = chosen
        #: each variant's median timed forward pass in ms (empty when nothing was timed)
        self.layout_ms = dict(tuner.layout_ms) if len(states) > 1 and tuner.tune else {}
        tuner.save()

    def _state(self) -> tuple:
        return (self.steps, self._slots, self._transient, self.value_bytes, self.arena_bytes, self.buffers)

    def _restore(self, state: tuple) -> None:
        self.steps, self._slots, self._transient, self.value_bytes, self.arena_bytes, self.buffers = state

    def _timed(self, state):
        x = np.zeros(self.input_shape, self.dtype)

        def run():
            self._restore(state)
            self(x)

        return run

    def _plan_key(self) -> str:
        """What a layout choice depends on: every step's kernel and problem, and the threads."""
        import hashlib

        text = "\n".join(f"{s.name} {s.kind} {getattr(s, 'p', None)!r} {s.describe()}" for s in self.steps)
        return f"plan {self.input_shape} {hashlib.sha1(text.encode()).hexdigest()[:16]} | threads {threads.get_num_threads()}"

    def _block(self, steps: list, env: list, winograd: bool) -> tuple[list | None, list]:
        """The layout pass over ``steps`` (copies, changed in place): c convolutions that can
        (float32, ungrouped, channels a multiple of the vector width, relu or no activation, an
        algorithm the layer left to fastconv) run on channel-blocked activations -- Winograd ones
        as Winograd when ``winograd``, else on the blocked direct kernel -- and hand them on
        blocked; a value crosses between layouts
        through one Relayout step each way.  A convolution with neither a blocked producer nor a
        blocked reader stays NCHW (two conversions would cost more than the layout saves).  Each
        blocked value carries the zero border its blocked readers' padding needs.  Returns the new
        step list (None where nothing is blocked) and the environment, grown by the new values."""
        from .backends import c

        if not steps or self.dtype != np.float32 or not c.available()[0]:
            return None, env
        cand = {
            i
            for i, s in enumerate(steps)
            if isinstance(s, Conv)
            and s.managed
            and not s.fallback
            and s.layer.algorithm == "auto"
            and c.blocked_supports(s.p)
        }
        producer = {s.output: i for i, s in enumerate(steps)}
        out_values = {r.name for r in _refs(self._output)}

        def conv_reads(i):
            return [v for v in (steps[i].x, steps[i].residual) if v is not None]

        changed = True
        while changed:  # drop isolated convolutions until none is left
            changed = False
            for i in sorted(cand):
                fed = any(producer.get(v) in cand for v in conv_reads(i))
                feeds = any(j in cand and steps[i].output in conv_reads(j) for j in range(len(steps)))
                if not (fed or feeds):
                    cand.discard(i)
                    changed = True
        if not cand:
            return None, env

        def new_value():
            env.append(None)
            self._env.append(None)
            return len(env) - 1

        blocked_of: dict[int, int] = {}  # NCHW value -> its blocked twin
        before: dict[int, list] = {}  # step index -> Relayout steps to run just before it
        after: dict[int, list] = {}
        for i in sorted(cand):
            conv = steps[i]
            v = conv.output
            vb = blocked_of[v] = new_value()
            conv.output = vb
            if v in out_values or any(j not in cand and v in step.reads() for j, step in enumerate(steps)):
                after.setdefault(i, []).append(Relayout(f"{conv.name}:nchw", vb, conv.p.output_shape, 0, False, v))
        borders: dict[int, int] = {}
        for i in sorted(cand):
            conv = steps[i]
            for attr in ("x", "residual"):
                v = getattr(conv, attr)
                if v is None:
                    continue
                if v not in blocked_of:  # an NCHW value: converted once, before its first blocked reader
                    vb = blocked_of[v] = new_value()
                    shape = conv.p.input_shape if attr == "x" else conv.p.output_shape
                    before.setdefault(i, []).append(Relayout(f"{conv.name}:{attr}:blocked", v, shape, 0, True, vb))
                setattr(conv, attr, blocked_of[v])
            borders[conv.x] = max(borders.get(conv.x, 0), c.blocked_border(conv.p))
        # A residual and the output that may overwrite it (Conv.overwrites) need one border: the
        # larger of the two (a reader takes any border at least as wide as its padding).
        changed = True
        while changed:
            changed = False
            for i in cand:
                res, out = steps[i].residual, steps[i].output
                if res is not None and borders.get(res, 0) != borders.get(out, 0):
                    borders[res] = borders[out] = max(borders.get(res, 0), borders.get(out, 0))
                    changed = True
        new_steps = []
        for i, step in enumerate(steps):
            new_steps += before.get(i, [])
            new_steps.append(step)
            new_steps += after.get(i, [])
        new_steps = self._pools_take_conversions(new_steps, borders, out_values, env)
        for step in new_steps:
            if isinstance(step, Relayout):
                if step.to_blocked:
                    step.border = borders.get(step.output, 0)
                else:
                    step.border = borders.get(step.x, 0)
                step.prepare(env)
            elif isinstance(step, Conv) and step.blocked is None and steps.index(step) in cand:
                rb = 0 if step.residual is None else borders.get(step.residual, 0)
                step.block(env, borders.get(step.x, 0), rb, borders.get(step.output, 0), winograd)
        return new_steps, env

    @staticmethod
    def _pools_take_conversions(steps: list, borders: dict, out_values: set, env: list) -> list:
        """A conversion whose other side is a pool the c kernels run on the blocked layout goes:
        a max pool whose output only the conversion to blocked reads writes the blocked value
        itself (ResNet's stem pool), and a global average pool that alone reads a conversion's
        NCHW output reads the blocked value instead (the classifier head).  Either way one pass
        over the tensor in memory is saved."""
        from .backends import c

        def sole_reader(v):
            readers = [s for s in steps if v in s.reads()]
            return readers[0] if len(readers) == 1 and v not in out_values else None

        def blockable(step, kind):
            return (
                isinstance(step, Pool)
                and step.managed
                and step.blocked is None
                and step.p is not None
                and c.blocked_pool_supports(step.p)  # max: a Pool2dProblem; avg: a global adaptive one
                and step.p.kind == kind
            )

        producer = {s.output: s for s in steps}
        dropped = set()
        for r in steps:
            if not isinstance(r, Relayout):
                continue
            if r.to_blocked:
                pool = producer.get(r.x)
                if blockable(pool, "max") and sole_reader(r.x) is r:
                    pool.output = r.output
                    pool.block(env, "out", borders.get(r.output, 0))
                    dropped.add(id(r))
            else:
                pool = sole_reader(r.output)
                if blockable(pool, "avg"):
                    pool.x = r.x
                    pool.block(env, "in", borders.get(r.x, 0))
                    dropped.add(id(r))
        return [s for s in steps if id(s) not in dropped]

    def _layout(self, produced: dict[int, np.ndarray]) -> None:
        """Buffers shared by liveness: value v's buffer is free once the last step reading v (or
        a view of v) has run, and is never handed to a step that reads it -- except a step that
        may write over a value it reads (``Step.overwrites``), which gets that value's buffer
        when it is the value's last reader and the two are the same size."""
        last_use: dict[int, int] = {}
        roots = alias_roots(self.steps)
        end = len(self.steps)
        for i, step in enumerate(self.steps):
            for v in step.reads():
                for root in roots.get(v, {v}):
                    last_use[root] = i
        for r in _refs(self._output):
            for root in roots.get(r.name, {r.name}):
                last_use[root] = end  # the output lives to the end
        slots: list[int] = []  # bytes each slot needs
        free: list[int] = []
        slot_of: dict[int, int] = {}
        releases: dict[int, list[int]] = {}
        for v, root_last in last_use.items():
            releases.setdefault(root_last, []).append(v)
        handed: set[int] = set()  # values whose buffer passed to the output overwriting them
        for i, step in enumerate(self.steps):
            v = step.output
            over = step.overwrites()
            step.in_place = False
            if (
                v in produced
                and over in slot_of
                and last_use.get(over) == i
                and roots.get(over, {over}) == {over}
                and sum(over in roots.get(r, {r}) for r in step.reads()) == 1  # not also its input
                and produced[over].nbytes == produced[v].nbytes
            ):
                slot_of[v] = slot_of[over]
                handed.add(over)
                step.in_place = True
                if v not in last_use:
                    free.append(slot_of[v])
            elif v in produced:
                need = produced[v].nbytes
                fits = [s for s in free if slots[s] >= need]
                if fits:
                    s = min(fits, key=lambda k: slots[k])
                elif free:
                    s = max(free, key=lambda k: slots[k])
                    slots[s] = need
                else:
                    slots.append(need)
                    s = len(slots) - 1
                if s in free:
                    free.remove(s)
                slot_of[v] = s
                if v not in last_use:  # produced, never read
                    free.append(s)
            for dead in releases.get(i, ()):
                if dead in slot_of and dead not in handed:
                    free.append(slot_of[dead])
        # 64-byte aligned slots: whole cache lines and aligned vector loads for every kernel.
        self._slots = []
        for need in slots:
            raw = np.empty(need + 64, np.uint8)
            off = (-raw.ctypes.data) % 64
            self._slots.append(raw[off : off + need])
        for step in self.steps:
            if step.output in slot_of:
                a = produced[step.output]
                buf = self._slots[slot_of[step.output]][: a.nbytes].view(a.dtype).reshape(a.shape)
                step.bind(buf)
        self.value_bytes = sum(a.nbytes for a in produced.values())
        self.arena_bytes = sum(slots)
        self.buffers = len(slots)

    # -- running ----------------------------------------------------------------------------------
    def __call__(self, x, *, out=None):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a NumPy array of shape {self.input_shape}, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} (the plan was compiled for it), got {x.dtype}")
        if x.shape != self.input_shape:
            raise ValueError(
                f"x must have the compiled shape {self.input_shape}, got {x.shape}; "
                f"compile another plan for other shapes"
            )
        if not (x.flags.c_contiguous and x.flags.aligned and x.dtype.isnative):
            x = np.ascontiguousarray(x)
        with self._lock:
            env = self._env
            env[self._input] = x
            threads.apply_blas()
            for step in self.steps:
                step.run(env)
            result = _map(self._output, lambda r: env[r.name])
            if out is not None:
                if not isinstance(result, np.ndarray):
                    raise TypeError("out: this plan's output is not one array")
                if not isinstance(out, np.ndarray) or out.shape != result.shape or out.dtype != result.dtype:
                    raise ValueError(
                        f"out must be an array of shape {result.shape} and dtype {result.dtype}, got "
                        f"{getattr(out, 'shape', type(out).__name__)} {getattr(out, 'dtype', '')}"
                    )
                np.copyto(out, result)
                result = out
            else:
                result = _copy_arrays(result)  # the arena is overwritten by the next call
            for i in self._transient:  # hold neither the caller's array nor backend outputs between calls
                env[i] = None
        return result

    @property
    def allocations_per_call(self) -> int:
        """Steps whose kernel returns a fresh array on every call (backends without an output buffer)."""
        return sum(1 for s in self.steps if not s.bound and s.allocates)

    def choices(self) -> list[tuple[str, str, str]]:
        """(step, kind, what runs it) for every step."""
        return [(s.name, s.kind, s.describe()) for s in self.steps]

    def describe(self) -> str:
        lines = [
            f"plan for input {self.input_shape} {self.dtype}: {len(self.steps)} steps, "
            f"{self.buffers} buffers of {self.arena_bytes / 2**20:.1f} MiB for {self.value_bytes / 2**20:.1f} MiB "
            f"of activations, {self.allocations_per_call} allocating steps, layout {self.layout_chosen}"
        ]
        lines += [f"  {name:<28} {kind:<8} {what}" for name, kind, what in self.choices()]
        return "\n".join(lines)

    def __repr__(self):
        return f"<fastconv Plan {self.input_shape} {self.dtype}, {len(self.steps)} steps>"


def _refs(spec) -> list[Ref]:
    out = []
    _map(spec, lambda r: out.append(r))
    return out


def _copy_arrays(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_arrays(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_arrays(v) for k, v in value.items()}
    return value
