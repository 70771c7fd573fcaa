"""Sequential: children named "0", "1", ... (or by an OrderedDict), each fed the last one's output."""

from __future__ import annotations

from collections import OrderedDict

from .layers import BatchNorm2d, Conv2d
from .module import Module


class Sequential(Module):
    """A chain of modules, as torch.nn.Sequential.

    >>> import numpy as np
    >>> from fastconv import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    >>> net(np.ones((1, 3, 6, 6), np.float32)).shape
    (1, 4, 6, 6)
    >>> len(net), type(net[1]).__name__
    (3, 'BatchNorm2d')
    """

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            items = list(args[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(args)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: element {name!r} is a {type(m).__name__}, not a fastconv.nn Module")
            setattr(self, name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output):
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        try:
            return items[index][1]
        except (IndexError, TypeError):
            raise IndexError(f"Sequential index {index!r} out of range for {len(items)} modules") from None

    def append(self, module: Module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append expects a fastconv.nn Module, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def fusable_pairs(self):
        names = list(self._modules)
        return [
            (a, b)
            for a, b in zip(names, names[1:])
            if type(self._modules[a]) is Conv2d and type(self._modules[b]) is BatchNorm2d
        ]
