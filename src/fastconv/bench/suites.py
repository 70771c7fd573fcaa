"""The benchmark suites: named, versioned lists of problems, shared by the CLI, asv and pytest-benchmark.

A suite is a list of entries, each a human label and a function of (batch size, dtype) that
builds a problem descriptor from :mod:`fastconv.problem`.  ``suite.cases(batch_sizes, dtype)``
expands it into :class:`Case` objects; a case's ``id`` is the problem's compact id, which is the
benchmark parameter everywhere.  Bump a suite's ``version`` whenever its list changes, so saved
runs of different lists are never compared as equals.

The ResNet layers are not typed in by hand: :func:`resnet_convs` walks the torchvision ResNet
(v1.5: the stride sits on the 3x3 convolution) and the ``resnet50`` suite keeps each distinct
layer shape once, with the number of times it occurs in the network.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

from .. import ops
from ..problem import (
    AdaptivePool2dProblem,
    BatchNormProblem,
    Conv2dProblem,
    Pool2dProblem,
    ReluProblem,
    conv_out_size,
    pool_out_size,
)

DEFAULT_BATCH_SIZES = (1, 8)
GFLOPS, GBPS = "GFLOP/s", "GB/s"


@dataclass(frozen=True)
class ModelProblem:
    """A whole network's forward pass (eval mode) on an (n, 3, size, size) image batch."""

    name: str
    n: int
    size: int = 224
    dtype: str = "float32"
    num_classes: int = 1000
    op: str = field(default="model", init=False)
    metric = "flops"  # the op table's throughput unit, for a whole network

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, 3, self.size, self.size)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.n, self.num_classes)

    @property
    def flops(self) -> int:
        """Convolutions and the classifier, 2 FLOPs per multiply-add (BN, ReLU and pooling not counted)."""
        depth = int(self.name.removeprefix("resnet"))
        convs = sum(p.flops for _, p in resnet_convs(depth, self.n, self.size, self.dtype))
        return convs + 2 * self.n * _resnet_width(depth) * self.num_classes

    @property
    def id(self) -> str:
        return f"{self.name}_n{self.n}_h{self.size}w{self.size}_{'f32' if self.dtype == 'float32' else 'f64'}"

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Case:
    """One benchmark problem: a label for people, the problem descriptor, and how often it occurs."""

    label: str
    problem: object
    count: int = 1  # occurrences in the network the suite comes from (1 elsewhere)

    @property
    def id(self) -> str:
        return self.problem.id

    @property
    def op(self) -> str:
        return self.problem.op

    @property
    def name(self) -> str:
        """The label people read, unique within a suite: ``res2a 3x3 64 n8`` (plus a backward direction).

        ``fastconv bench`` shows it (label and n columns), its plots use it, and asv takes it as
        the problem parameter.
        """
        direction = getattr(self.problem, "direction", "fwd")
        return f"{self.label} n{self.n}" + ("" if direction == "fwd" else f" {direction}")

    @property
    def n(self) -> int:
        return self.problem.input_shape[0]

    @property
    def unit(self) -> str:
        """GFLOP/s for compute-bound work (convolutions, models), GB/s for memory-bound ops."""
        metric = self.problem.metric if self.op == "model" else ops.get(self.problem).metric
        return GFLOPS if metric == "flops" else GBPS

    @property
    def work(self) -> int:
        """FLOPs (2 per multiply-add) or bytes moved, whichever ``unit`` counts."""
        return self.problem.flops if self.unit == GFLOPS else self.problem.bytes_moved

    def throughput(self, seconds: float) -> float:
        """GFLOP/s or GB/s (10^9 per second) at ``seconds`` per call."""
        return self.work / seconds / 1e9


Builder = Callable[[int, str], object]


@dataclass(frozen=True)
class Entry:
    label: str
    build: Builder
    batch_sizes: tuple[int, ...] | None = None  # None: the suite's (or the caller's) batch sizes
    count: int = 1


DIRECTIONS = ("fwd", "bwd_data", "bwd_weight")


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    entries: tuple[Entry, ...]
    directions: tuple[str, ...] = ("fwd",)  # what the suite measures unless asked otherwise

    def cases(
        self,
        batch_sizes: tuple[int, ...] | None = None,
        dtype: str = "float32",
        directions: tuple[str, ...] | None = None,
    ) -> list[Case]:
        """The suite's cases; ``batch_sizes`` replaces every entry's own batch sizes when given.

        ``directions`` (default: the suite's) repeats each convolution per direction, the
        backward ones right after its forward; other ops have no backward cases here and keep
        their forward one (when "fwd" is asked for).
        """
        directions = directions or self.directions
        out = []
        for entry in self.entries:
            for n in batch_sizes or entry.batch_sizes or DEFAULT_BATCH_SIZES:
                problem = entry.build(n, dtype)
                for d in directions:
                    if d == "fwd":
                        out.append(Case(entry.label, problem, entry.count))
                    elif getattr(problem, "op", None) == "conv2d":
                        out.append(Case(entry.label, replace(problem, direction=d), entry.count))
        return out


# -- ResNet --------------------------------------------------------------------------------------

_RESNET = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _resnet_width(depth: int) -> int:
    return 2048 if _RESNET[depth][1] else 512


def _conv(n, c, h, k, r, stride, pad, dtype, groups=1, dilation=1, w=None):
    return Conv2dProblem(
        n, c, h, h if w is None else w, k, r, r, (stride, stride), (pad,) * 4, (dilation, dilation), groups, dtype
    )


def resnet_convs(depth: int, n: int = 1, size: int = 224, dtype: str = "float32") -> list[tuple[str, Conv2dProblem]]:
    """Every convolution of torchvision's ResNet-``depth`` in forward order, as (label, problem).

    Stage s (res2..res5) has blocks a, b, c, ...; the first block of stages 3-5 halves the image
    with stride 2 on its 3x3 convolution (v1.5) and on its 1x1 projection shortcut.
    """
    blocks, bottleneck = _RESNET[depth]
    convs = [("stem 7x7/2 3>64", _conv(n, 3, size, 64, 7, 2, 3, dtype))]
    h = conv_out_size(size, 7, 2, 3, 3)
    h = pool_out_size(h, 3, 2, 1, 1, False)  # the max pool after the stem
    c = 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=2):
        out = width * 4 if bottleneck else width
        for b in range(count):
            stride = 2 if b == 0 and stage > 2 else 1
            name = f"res{stage}{'abcdefghijklmnopqrstuvwxyz'[b] if b < 26 else b}"
            h2 = conv_out_size(h, 3, stride, 1, 1)
            suffix = "/2" if stride == 2 else ""
            if bottleneck:
                convs += [
                    (f"{name} 1x1 {c}>{width}", _conv(n, c, h, width, 1, 1, 0, dtype)),
                    (f"{name} 3x3{suffix} {width}", _conv(n, width, h, width, 3, stride, 1, dtype)),
                    (f"{name} 1x1 {width}>{out}", _conv(n, width, h2, out, 1, 1, 0, dtype)),
                ]
            else:
                convs += [
                    (f"{name} 3x3{suffix} {c}>{width}", _conv(n, c, h, width, 3, stride, 1, dtype)),
                    (f"{name} 3x3 {width}", _conv(n, width, h2, width, 3, 1, 1, dtype)),
                ]
            if b == 0 and (stride != 1 or c != out):
                convs.append((f"{name} proj 1x1{suffix} {c}>{out}", _conv(n, c, h, out, 1, stride, 0, dtype)))
            c, h = out, h2
    return convs


def _distinct_resnet_layers(depth: int) -> tuple[Entry, ...]:
    """One entry per distinct convolution shape, labelled by its first occurrence, with its count."""
    layers = resnet_convs(depth)
    counts = Counter(p.id for _, p in layers)
    entries, seen = [], set()
    for index, (label, p) in enumerate(layers):
        if p.id not in seen:
            seen.add(p.id)
            entries.append(Entry(label, _resnet_layer(depth, index), count=counts[p.id]))
    return tuple(entries)


def _resnet_layer(depth: int, index: int) -> Builder:
    return lambda n, dtype: resnet_convs(depth, n, dtype=dtype)[index][1]


# -- other layers ----------------------------------------------------------------------------------


def _layer(*args, **kwargs) -> Builder:
    """A convolution entry: (c, h, k, r, stride, pad, groups=, dilation=, w=) at any batch size."""
    return lambda n, dtype: _conv(n, *args, dtype=dtype, **kwargs)


def _speech(n: int, dtype: str) -> Conv2dProblem:
    # DeepBench speech layer: a 161-bin spectrogram of 700 frames, 1 channel, 5x20 filter, stride 2.
    return Conv2dProblem(n, 1, 161, 700, 32, 5, 20, (2, 2), (0, 0, 0, 0), (1, 1), 1, dtype)


def _maxpool(n, dtype):
    return Pool2dProblem("max", n, 64, 112, 112, (3, 3), (2, 2), (1, 1), dtype=dtype)


def _global_avgpool(n, dtype):
    return AdaptivePool2dProblem(n, 2048, 7, 7, 1, 1, dtype)


def _bn(c, h, training):
    return lambda n, dtype: BatchNormProblem(n, c, (h, h), training, 1e-5, dtype)


def _relu(n, dtype):
    return ReluProblem((n, 64, 112, 112), dtype)


def _model(name):
    return lambda n, dtype: ModelProblem(name, n, 224, dtype)


_R50 = {entry.label: entry for entry in _distinct_resnet_layers(50)}


def _pick(entry: Entry, batch: int) -> Entry:
    return Entry(entry.label, entry.build, (batch,), entry.count)


_ZOO = (
    Entry("depthwise 3x3 128 (MobileNet)", _layer(128, 56, 128, 3, 1, 1, groups=128)),
    Entry("dilated 3x3 d3 512 (R-FCN)", _layer(512, 38, 512, 3, 1, 3, dilation=3, w=57)),
    Entry("5x5 192>32 (GoogLeNet)", _layer(192, 28, 32, 5, 1, 2)),
    Entry("speech 5x20/2 1>32 (DeepBench)", _speech),
    Entry("small 3x3 16 (overhead)", _layer(16, 16, 16, 3, 1, 1)),
)

_POOL_BN = (
    Entry("max pool 3x3/2 64x112", _maxpool),
    Entry("global avg pool 2048x7", _global_avgpool),
    Entry("batch norm eval 64x112", _bn(64, 112, False)),
    Entry("batch norm train 64x112", _bn(64, 112, True)),
    Entry("batch norm eval 256x56", _bn(256, 56, False)),
    Entry("batch norm train 256x56", _bn(256, 56, True)),
    Entry("relu 64x112", _relu),
)


def _deepbench(c, h, w, k, r, s, stride, pad):
    """A DeepBench training convolution: input c x h x w, k filters of r x s (DeepBench lists w x h)."""
    return lambda n, dtype: Conv2dProblem(n, c, h, w, k, r, s, (stride, stride), (pad,) * 4, (1, 1), 1, dtype)


#: Shapes from DeepBench's training convolutions (speech, OCR, face recognition, vision), at
#: batch 4 instead of DeepBench's 4-64 (and the 700-frame speech input cut to 350), so every
#: problem in all three directions fits a few seconds on 2 cores.
_TRAINING = (
    Entry("speech 20x5/2 1>32 (DeepSpeech)", _deepbench(1, 161, 350, 32, 5, 20, 2, 0)),
    Entry("speech 10x5/2 32>32 (DeepSpeech)", _deepbench(32, 79, 170, 32, 5, 10, 2, 0)),
    Entry("OCR 3x3 16>32", _deepbench(16, 24, 240, 32, 3, 3, 1, 1)),
    Entry("OCR 3x3 64>128", _deepbench(64, 6, 60, 128, 3, 3, 1, 1)),
    Entry("face 3x3/2 3>64", _deepbench(3, 108, 108, 64, 3, 3, 2, 1)),
    Entry("face 3x3 128>128", _deepbench(128, 27, 27, 128, 3, 3, 1, 1)),
    Entry("vision 3x3 64>64 @56", _deepbench(64, 56, 56, 64, 3, 3, 1, 1)),
    Entry("vision 3x3 256>256 @14", _deepbench(256, 14, 14, 256, 3, 3, 1, 1)),
    Entry("vision 1x1 256>64 @56", _deepbench(256, 56, 56, 64, 1, 1, 1, 0)),
    Entry("vision 3x3 512>512 @7", _deepbench(512, 7, 7, 512, 3, 3, 1, 1)),
)

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "resnet50",
            1,
            "every distinct convolution of ResNet-50 v1.5 at 224x224 (count = occurrences)",
            tuple(_R50.values()),
        ),
        Suite("conv-zoo", 1, "depthwise, dilated, 5x5, DeepBench speech and a tiny per-call-overhead layer", _ZOO),
        Suite("pool-bn", 1, "max/global-average pooling, batch norm (eval and training) and relu, in GB/s", _POOL_BN),
        Suite(
            "models",
            1,
            "ResNet-18 and ResNet-50 forward passes (fastconv.models), eval mode",
            (Entry("resnet18", _model("resnet18")), Entry("resnet50", _model("resnet50"))),
        ),
        Suite(
            "training",
            1,
            "DeepBench's training convolutions (batch 4) forward, backward-data and backward-weight",
            tuple(Entry(e.label, e.build, (4,)) for e in _TRAINING),
            DIRECTIONS,
        ),
        # Batch 8 where the naive backend would otherwise spend seconds per call (it refuses
        # problems above its step limit, and a refusal costs nothing); batch 1 where per-call
        # overhead is the point.
        Suite(
            "quick",
            1,
            "a cross-section of the other suites that runs in about two minutes on 2 cores",
            (
                _pick(_R50["stem 7x7/2 3>64"], 1),
                _pick(_R50["res2a 3x3 64"], 8),
                _pick(_R50["res2a 1x1 64>256"], 8),
                _pick(_R50["res3a 3x3/2 128"], 8),
                _pick(_R50["res3b 3x3 128"], 8),
                _pick(_ZOO[0], 8),
                _pick(_ZOO[4], 1),
                _pick(_POOL_BN[0], 8),
                _pick(_POOL_BN[2], 1),
                _pick(_POOL_BN[6], 8),
            ),
        ),
    )
}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"suite: unknown suite {name!r}; choose from {sorted(SUITES)}") from None
