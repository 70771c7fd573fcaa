"""Optimisers on NumPy parameters, with torch.optim's update rules to the letter.

``SGD(model, lr=...)`` updates a ``fastconv.nn`` model's parameters in place from
``model.named_grads()``; ``SGD(list_of_arrays, lr=...)`` updates plain arrays, with the
gradients passed to ``step(grads)``.  ``OneCycleLR`` is fastai's one-cycle schedule with
``torch.optim.lr_scheduler.OneCycleLR``'s arguments and values.

>>> import numpy as np
>>> from fastconv import optim
>>> w = np.array([1.0, -2.0])
>>> opt = optim.SGD([w], lr=0.1, momentum=0.9)
>>> opt.step([np.array([1.0, 1.0])]); opt.step([np.array([1.0, 1.0])]); w
array([ 0.71, -2.29])
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SGD", "OneCycleLR"]


class SGD:
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay.

    Per parameter, as torch.optim.SGD: ``d = grad + weight_decay * p``; with momentum the buffer
    starts as ``d`` and then becomes ``momentum * buf + (1 - dampening) * d``; the step is
    ``buf`` (or ``d + momentum * buf`` with Nesterov); ``p -= lr * step``.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"Invalid {name} value: {v!r} (a non-negative number expected)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self._module = params if hasattr(params, "named_grads") else None
        if self._module is None:
            params = list(params)
            for i, p in enumerate(params):
                if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                    raise TypeError(f"params[{i}] must be a floating-point NumPy array, got {type(p).__name__}")
            self._params = params
        self.lr, self.momentum, self.dampening = float(lr), float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.state: dict = {}  # momentum buffers, by parameter name or index

    def _pairs(self, grads):
        if self._module is not None:
            if grads is not None:
                raise TypeError("step(grads): this optimiser reads the model's named_grads(); pass no grads")
            params = dict(self._module.named_parameters())
            return [(name, params[name], g) for name, g in self._module.named_grads()]
        if grads is None or len(grads) != len(self._params):
            raise ValueError(
                f"step(grads) needs one gradient per parameter ({len(self._params)}), got "
                f"{None if grads is None else len(grads)}"
            )
        return list(zip(range(len(self._params)), self._params, grads))

    def step(self, grads=None) -> None:
        """One update of every parameter that has a gradient (None: left alone, as torch)."""
        for key, p, g in self._pairs(grads):
            if g is None:
                continue
            g = np.asarray(g, p.dtype)
            if g.shape != p.shape:
                raise ValueError(f"gradient of {key!r} has shape {g.shape}, the parameter {p.shape}")
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                buf = self.state.get(key)
                if buf is None:
                    buf = self.state[key] = np.array(d, copy=True)
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * d
                d = d + self.momentum * buf if self.nesterov else buf
            p -= (self.lr * d).astype(p.dtype, copy=False)

    def zero_grad(self) -> None:
        """The model's zero_grad() (a list of arrays has no stored gradients)."""
        if self._module is not None:
            self._module.zero_grad()


def _anneal_cos(start, end, pct):
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start, end, pct):
    return (end - start) * pct + start


class OneCycleLR:
    """The one-cycle learning-rate (and momentum) schedule, as torch.optim.lr_scheduler.OneCycleLR.

    The rate climbs from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of
    ``total_steps``, then anneals to ``initial_lr / final_div_factor``; momentum, when cycled,
    moves the opposite way between ``max_momentum`` and ``base_momentum``.  Call ``step()`` after
    each ``optimizer.step()``.

    >>> from fastconv import optim
    >>> import numpy as np
    >>> opt = optim.SGD([np.zeros(1)], lr=0.1, momentum=0.9)
    >>> sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    >>> rates = [opt.lr] + [sched.step() or opt.lr for _ in range(9)]
    >>> round(max(rates), 6), round(rates[0], 6), rates[-1] < 1e-4
    (1.0, 0.04, True)
    """

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps=None,
        epochs=None,
        steps_per_epoch=None,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
    ):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
            total_steps = epochs * steps_per_epoch
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"Expected positive integer total_steps, but got {total_steps!r}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy!r}")
        self.optimizer, self.total_steps = optimizer, total_steps
        self._anneal = _anneal_cos if anneal_strategy == "cos" else _anneal_linear
        self.cycle_momentum = bool(cycle_momentum)
        initial = max_lr / div_factor
        minimum = initial / final_div_factor
        if three_phase:
            ends = (float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, total_steps - 1)
            lrs = ((initial, max_lr), (max_lr, initial), (initial, minimum))
            moms = ((max_momentum, base_momentum), (base_momentum, max_momentum), (max_momentum, max_momentum))
        else:
            ends = (float(pct_start * total_steps) - 1, total_steps - 1)
            lrs = ((initial, max_lr), (max_lr, minimum))
            moms = ((max_momentum, base_momentum), (base_momentum, max_momentum))
        self._phases = list(zip(ends, lrs, moms))
        if self.cycle_momentum and not getattr(optimizer, "momentum", 0):
            raise ValueError("optimizer must support momentum with `cycle_momentum` option enabled")
        self.last_epoch = -1
        self.step()

    def _values(self, step: int) -> tuple[float, float]:
        start = 0.0
        for i, (end, lr, mom) in enumerate(self._phases):
            if step <= end or i == len(self._phases) - 1:
                pct = (step - start) / (end - start)
                return self._anneal(*lr, pct), self._anneal(*mom, pct)
            start = end
        raise AssertionError("unreachable")

    def step(self) -> None:
        self.last_epoch += 1
        if self.last_epoch > self.total_steps:
            raise ValueError(
                f"Tried to step {self.last_epoch} times. The specified number of total steps is {self.total_steps}"
            )
        lr, momentum = self._values(self.last_epoch)
        self.optimizer.lr = lr
        if self.cycle_momentum:
            self.optimizer.momentum = momentum

    def get_last_lr(self) -> list[float]:
        return [self.optimizer.lr]
