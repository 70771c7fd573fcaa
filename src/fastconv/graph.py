"""A model as an ordered list of fastconv ops: what ``from_torch`` and ``fastconv.onnx.load`` build.

A ``Graph`` is a ``fastconv.nn.Module``.  Its layers that hold weights sit in a tree of child
modules under the source model's names (``layer1.0.conv1``), so ``state_dict()`` has torch's keys;
the parameter-free ops (``add``, ``cat``, ``view`` ...) are layers held by their nodes.  Each
``Node`` has a name, an op (``"input"``, ``"attr"``, ``"call"``, ``"output"``), its inputs (other
nodes by ``Ref``, nested in lists/tuples/dicts, or constants) and a layer: a child module by
dotted path (``target``) or a node-owned one (``layer``).  Nodes run in list order.

``fuse()`` rewrites the list for inference: a BatchNorm2d fed only by a Conv2d folds into it, and
``conv -> add(other) -> act`` (or ``conv -> add``, ``conv -> act``) becomes one convolution call
whose epilogue adds the skip connection and applies the activation (ReLU, ReLU6, LeakyReLU,
Hardtanh, Sigmoid, SiLU, Hardswish: every activation conv2d's epilogue takes).

Training: a forward in training mode keeps, per node, what that node's layer kept for its
backward (a layer called by several nodes -- torchvision's shared ``relu`` -- keeps one state per
call); ``backward(grad_output)`` walks the nodes in reverse, hands each layer its own call's state
and gradient, sums the gradients of values read by several nodes, adds the gradients of arrays
read through ``attr`` nodes (``F.conv2d(x, self.w)``) to their owners' parameters, and returns the
gradient of the input (a tuple for several inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import arrays, nn
from .nn.fuse import fold_batch_norm
from .nn.module import Module


def epilogue_activation(layer):
    """The conv2d ``activation=`` argument that does what ``layer`` does, or None if none does."""
    kind = type(layer)
    if kind is nn.ReLU:
        return "relu"
    if kind is nn.ReLU6:
        return "relu6"
    if kind is nn.Hardtanh:
        lo = -np.inf if layer.min_val is None else layer.min_val
        hi = np.inf if layer.max_val is None else layer.max_val
        return ("hardtanh", lo, hi)
    if kind is nn.LeakyReLU:
        return ("leaky_relu", layer.negative_slope)
    return {nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Hardswish: "hardswish"}.get(kind)


class UnsupportedOpError(TypeError):
    """A model holds an op the converter has no fastconv equivalent for."""


@dataclass(frozen=True)
class Ref:
    """An input that is another node's output."""

    name: str


@dataclass
class Node:
    name: str
    op: str  # "input", "attr", "call" or "output"
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    target: str | None = None  # dotted path of a child module ("call") or of an array ("attr")
    layer: Module | None = None  # a node-owned, parameter-free layer ("call" without target)
    source: str = ""  # where the op came from, for messages


def _map(value, fn):
    """``value`` with every Ref replaced by ``fn(ref)``, through lists, tuples, dicts and slices."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_map(value.start, fn), _map(value.stop, fn), _map(value.step, fn))
    return value


def _route(slot, g, grads: dict) -> None:
    """Add gradient ``g`` to the node(s) ``slot`` refers to (a Ref, or Refs nested in lists/tuples)."""
    if g is None:
        return
    if isinstance(slot, Ref):
        held = grads.get(slot.name)
        grads[slot.name] = g if held is None else _add(held, g)
    elif isinstance(slot, (list, tuple)) and isinstance(g, (list, tuple)):
        for s, gi in zip(slot, g):
            _route(s, gi, grads)


def _add(a, b):
    """The sum of two gradients; a tuple output's gradients are tuples with None for unused pieces."""
    if isinstance(a, tuple):
        return tuple(y if x is None else x if y is None else x + y for x, y in zip(a, b))
    return a + b


def _dtype(x):
    return x.dtype if isinstance(x, np.ndarray) else None


def _refs(value) -> list[str]:
    out = []
    _map(value, lambda r: out.append(r.name))
    return out


class _Container(Module):
    """A level of the name tree (``layer1``, ``layer1.0``): holds children, runs nothing itself."""

    def forward(self, *args, **kwargs):
        raise TypeError("this part of a converted graph holds layers only; call the whole graph")


class Graph(Module):
    """A model run as a list of nodes (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.__dict__["nodes"] = []

    # -- building ----------------------------------------------------------------------------------
    def add_module(self, path: str, module: Module) -> None:
        """Place ``module`` at dotted ``path``, creating the levels above it."""
        *parents, leaf = path.split(".")
        owner = self
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = _Container()
                setattr(owner, part, child)
            owner = child
        setattr(owner, leaf, module)

    def add_array(self, path: str, array, parameter: bool = True) -> None:
        """Place a parameter (or buffer) at dotted ``path`` (e.g. a weight read by F.conv2d)."""
        *parents, leaf = path.split(".")
        owner = self
        for part in parents:
            if part not in owner._modules:
                setattr(owner, part, _Container())
            owner = owner._modules[part]
        (owner.register_parameter if parameter else owner.register_buffer)(leaf, np.asarray(array))

    def get_module(self, path: str) -> Module:
        m = self
        for part in path.split("."):
            m = m._modules[part]
        return m

    def _get_array(self, path: str):
        *parents, leaf = path.split(".")
        m = self.get_module(".".join(parents)) if parents else self
        return m._parameters[leaf] if leaf in m._parameters else m._buffers[leaf]

    def layer_of(self, node: Node) -> Module | None:
        return self.get_module(node.target) if node.op == "call" and node.target else node.layer

    # -- Module interface --------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        """The name tree, then the node-owned layers (named after their nodes) so that ``to_backend``,
        ``eval`` and ``astype`` reach them; they hold no parameters, so ``state_dict`` is torch's."""
        yield from super().named_modules(prefix)
        for node in self.nodes:
            if node.layer is not None:
                yield (f"{prefix}.{node.name}" if prefix else node.name), node.layer

    def forward(self, *inputs):
        inputs_needed = [n for n in self.nodes if n.op == "input"]
        if len(inputs) != len(inputs_needed):
            raise TypeError(
                f"this graph takes {len(inputs_needed)} input(s) "
                f"({', '.join(n.name for n in inputs_needed)}), got {len(inputs)}"
            )
        last_use = self._last_use()
        env: dict[str, Any] = {}
        given = iter(inputs)
        keep = self.keeps_for_backward()
        states: dict[str, dict | None] = {}  # what each call node's layer kept, by node
        for i, node in enumerate(self.nodes):
            if node.op == "input":
                env[node.name] = next(given)
            elif node.op == "attr":
                env[node.name] = self._get_array(node.target)
            elif node.op == "output":
                self._save(states=states if keep else None, inputs=[(np.shape(x), _dtype(x)) for x in inputs])
                return _map(node.args[0], lambda r: env[r.name])
            else:
                args = _map(node.args, lambda r: env[r.name])
                kwargs = _map(node.kwargs, lambda r: env[r.name])
                env[node.name] = self._call(node, args, kwargs)
                if keep:
                    states[node.name] = self.layer_of(node).__dict__.get("_saved")
            for name in last_use.get(i, ()):
                env.pop(name, None)  # free activations no later node reads
        raise ValueError("graph has no output node")

    def backward(self, grad_output):
        """The gradient of the input(s) of the last training-mode forward; parameter gradients accumulate."""
        saved = self._saved_for_backward()
        states = saved["states"]
        if states is None:
            raise RuntimeError(
                "Graph.backward() needs a forward in training mode (or inside fastconv.nn.enable_grad())"
            )
        grads: dict[str, Any] = {}
        output = next(n for n in self.nodes if n.op == "output")
        _route(output.args[0], grad_output, grads)
        for node in reversed(self.nodes):
            if node.op != "call" or node.name not in grads:
                continue
            layer = self.layer_of(node)
            layer.__dict__["_saved"] = states[node.name]
            try:
                result = layer.backward(grads.pop(node.name))
            except (NotImplementedError, TypeError, ValueError) as exc:
                where = f" ({node.source})" if node.source else ""
                raise type(exc)(f"node {node.name!r}{where}: {exc}") from exc
            # one gradient per positional argument, then per keyword argument (a fused residual)
            slots = [*node.args, *node.kwargs.values()]
            for slot, g in zip(slots, result if isinstance(result, tuple) else (result,)):
                _route(slot, g, grads)
        for node in self.nodes:  # arrays read by F.conv2d / F.linear: their owners' parameters
            if node.op == "attr" and node.name in grads:
                *parents, leaf = node.target.split(".")
                owner = self.get_module(".".join(parents)) if parents else self
                if leaf in owner._parameters:
                    owner._add_grad(leaf, grads[node.name])
        inputs = [n for n in self.nodes if n.op == "input"]
        out = tuple(  # an input no gradient reached gets zeros (torch leaves its .grad None)
            grads[n.name] if n.name in grads else np.zeros(shape, dtype or np.float32)
            for n, (shape, dtype) in zip(inputs, saved["inputs"])
        )
        return out[0] if len(out) == 1 else out

    def _call(self, node, args, kwargs):
        layer = self.layer_of(node)
        try:
            if "residual" in kwargs and isinstance(layer, nn.Conv2d):
                return _conv_epilogue(layer, args[0], **kwargs)
            return layer(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            where = f" ({node.source})" if node.source else ""
            raise type(exc)(f"node {node.name!r}{where}: {exc}") from exc

    def _last_use(self) -> dict[int, list[str]]:
        last = {}
        for i, node in enumerate(self.nodes):
            for name in _refs((node.args, node.kwargs)):
                last[name] = i
        out: dict[int, list[str]] = {}
        for name, i in last.items():
            out.setdefault(i, []).append(name)
        return out

    # -- fusion -----------------------------------------------------------------------------------
    def _uses(self) -> dict[str, int]:
        uses: dict[str, int] = {}
        for node in self.nodes:
            for name in _refs((node.args, node.kwargs)):
                uses[name] = uses.get(name, 0) + 1
        return uses

    def _replace_uses(self, old: str, new: str) -> None:
        def sub(r):
            return Ref(new) if r.name == old else r

        for node in self.nodes:
            node.args, node.kwargs = _map(node.args, sub), _map(node.kwargs, sub)

    def _single_input(self, node) -> str | None:
        if node.op == "call" and not node.kwargs and len(node.args) == 1 and isinstance(node.args[0], Ref):
            return node.args[0].name
        return None

    def _conv_node(self, name: str, by_name, uses, targets) -> Node | None:
        """The node ``name`` if it is a plain Conv2d call whose output feeds one node only."""
        node = by_name.get(name)
        if node is None or node.target is None or uses.get(name) != 1 or targets[node.target] != 1:
            return None
        if type(self.layer_of(node)) is not nn.Conv2d or node.kwargs or len(node.args) != 1:
            return None
        return node

    def fuse(self):
        """Fold batch norms into convolutions, then add/ReLU into their epilogues (eval mode only)."""
        targets: dict[str, int] = {}
        for node in self.nodes:
            if node.target and node.op == "call":
                targets[node.target] = targets.get(node.target, 0) + 1
        self._fold_batch_norms(targets)
        self._fuse_epilogues(targets)
        return self

    def _fold_batch_norms(self, targets):
        uses, by_name = self._uses(), {n.name: n for n in self.nodes}
        for node in list(self.nodes):
            layer = self.layer_of(node) if node.op == "call" else None
            source = self._single_input(node)
            if type(layer) is not nn.BatchNorm2d or source is None or targets[node.target] != 1:
                continue
            conv = self._conv_node(source, by_name, uses, targets)
            if conv is None:
                continue
            fold_batch_norm(self.get_module(conv.target), layer, node.target)
            identity = nn.Identity()
            identity.__dict__.update(training=layer.training, _backend=layer._backend)
            self.add_module(node.target, identity)  # the folded statistics leave state_dict, as in models
            self.nodes.remove(node)
            self._replace_uses(node.name, conv.name)

    def _fuse_epilogues(self, targets):
        changed = True
        while changed:
            changed = False
            uses, by_name = self._uses(), {n.name: n for n in self.nodes}
            order = {n.name: i for i, n in enumerate(self.nodes)}
            for node in self.nodes:
                layer = self.layer_of(node) if node.op == "call" else None
                if (
                    not isinstance(layer, nn.Elementwise)
                    or layer.op != "add"
                    or layer.alpha not in (None, 1)
                    or node.kwargs
                    or len(node.args) != 2
                    or not all(isinstance(a, Ref) for a in node.args)
                ):
                    continue
                a, b = (r.name for r in node.args)
                conv = self._conv_node(a, by_name, uses, targets) or self._conv_node(b, by_name, uses, targets)
                if conv is None:
                    continue
                other = b if conv.name == a else a
                if other == conv.name or order[other] > order[node.name]:
                    continue
                removed, last, act = [node], node, None
                follower = [n for n in self.nodes if self._single_input(n) == node.name]
                if uses.get(node.name) == 1 and follower:
                    act = epilogue_activation(self.layer_of(follower[0]))
                    if act is not None:
                        removed.append(follower[0])
                        last = follower[0]
                conv.kwargs = {"residual": Ref(other), "activation": act}
                self._move_and_replace(conv, removed, last)
                changed = True
                break
        # a lone conv -> activation
        uses, by_name = self._uses(), {n.name: n for n in self.nodes}
        for node in list(self.nodes):
            source = self._single_input(node)
            act = None if source is None else epilogue_activation(self.layer_of(node))
            if act is None:
                continue
            conv = self._conv_node(source, by_name, uses, targets)
            if conv is not None:
                conv.kwargs = {"activation": act}
                self._move_and_replace(conv, [node], node)

    def _move_and_replace(self, conv, removed, last):
        """Put ``conv`` where ``last`` was, drop the ``removed`` nodes, and point their users at ``conv``."""
        self.nodes.remove(conv)
        self.nodes[self.nodes.index(last)] = conv
        for n in removed:
            if n in self.nodes:
                self.nodes.remove(n)
            self._replace_uses(n.name, conv.name)

    # -- printing ---------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line per node: name = op(inputs)."""
        lines = []
        for n in self.nodes:
            what = n.target or (type(n.layer).__name__ if n.layer is not None else n.op)
            args = ", ".join([repr(a) for a in n.args] + [f"{k}={v!r}" for k, v in n.kwargs.items()])
            lines.append(f"{n.name} = {n.op}[{what}]({args})")
        return "\n".join(lines)


def _conv_epilogue(conv, x, residual=None, activation=None):
    """The fused call; a skip connection of another shape (broadcast) runs unfused, as torch would."""
    res = np.asarray(residual)
    try:
        return conv(x, residual=res, activation=activation)
    except ValueError as exc:
        if "residual" not in str(exc):
            raise
    y = conv(x) + res
    if activation is None or not isinstance(y, np.ndarray):
        return y
    name, params = (activation, ()) if isinstance(activation, str) else (activation[0], tuple(activation[1:]))
    return arrays.activation_(y, name, params)
