"""Coverage-guided fuzzing of the C kernels' boundary (atheris / libFuzzer).

Each input becomes one call of the public API on the c backend, and now and then the backward
call of the same problem (``fastconv.grad``, with a gradient of the output's shape): small arrays but any stride,
padding, dilation, kernel and output size up to the API's limits (2**31 - 1), in float32 or
float64.  Run against the extension built with AddressSanitizer + UndefinedBehaviorSanitizer
(`make fuzz-c`), any out-of-bounds access, overflow or misaligned load in C aborts the run with
a report; a clean ValueError / TypeError / MemoryError from the Python side is the expected
refusal.  The machine's memory is pretended to be 256 MiB, so problems whose output or scratch
would be large are refused quickly instead of computed.

    python fuzz/fuzz_c.py -max_total_time=60 [corpus_dir]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import fastconv
    from fastconv import _args, grad

_args._available_memory = lambda: 2**28
fastconv.set_num_threads(2)

BIG = [0, 1, 2, 3, 5, 64, 65, 2**15, 2**30 - 1, 2**30, 2**31 - 2, 2**31 - 1]
ACCEPTED = (ValueError, TypeError, MemoryError, fastconv.BackendError)


def _dim(fdp, lo=1, hi=3):
    """A small size, or now and then one from the list of extremes."""
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return fdp.PickValueInList(BIG)
    return fdp.ConsumeIntInRange(lo, hi)


def _pair(fdp, lo=1, hi=3):
    return (_dim(fdp, lo, hi), _dim(fdp, lo, hi))


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    dtype = np.float32 if fdp.ConsumeBool() else np.float64
    # 16 channels (whole vectors on every instruction set) reach the channel-blocked kernel.
    n, c = fdp.ConsumeIntInRange(0, 2), fdp.PickValueInList([1, 2, 3, 4, 16])
    h, w = fdp.ConsumeIntInRange(1, 8), fdp.ConsumeIntInRange(1, 8)
    x = np.linspace(-1, 1, n * c * h * w, dtype=dtype).reshape(n, c, h, w)
    op = fdp.ConsumeIntInRange(0, 4)
    try:
        if op == 0:
            groups = fdp.PickValueInList([1, c]) if c > 1 else 1
            k = groups * fdp.ConsumeIntInRange(1, 3) * (16 if c == 16 and groups == 1 and fdp.ConsumeBool() else 1)
            r, s = fdp.ConsumeIntInRange(1, 4), fdp.ConsumeIntInRange(1, 4)
            wt = np.ones((k, c // groups, r, s), dtype)
            if fdp.ConsumeBool():
                wt[0, 0, 0, 0] = np.nan
            bias = fdp.ConsumeBool()
            kw = dict(stride=_pair(fdp), padding=_pair(fdp, 0, 2), dilation=_pair(fdp), groups=groups)
            y = fastconv.conv2d(
                x,
                wt,
                np.zeros(k, dtype) if bias else None,
                **kw,
                activation="relu" if fdp.ConsumeBool() else None,
                algorithm=fdp.PickValueInList(["auto", "direct", "gemm", "winograd"]),
                backend="c",
            )
            if fdp.ConsumeBool():
                g = np.ones_like(y)
                grad.conv2d_input(x.shape, wt, g, **kw, backend="c")
                grad.conv2d_weight(x, wt.shape, g, **kw, backend="c")
        elif op == 1:
            kernel = _pair(fdp, 1, 4)
            kw = dict(
                stride=_pair(fdp),
                padding=(kernel[0] // 2, kernel[1] // 2),
                dilation=_pair(fdp),
                ceil_mode=fdp.ConsumeBool(),
            )
            y, _ = fastconv.max_pool2d(x, kernel, **kw, return_indices=True, backend="c")
            if fdp.ConsumeBool():
                grad.max_pool2d_input(x, np.ones_like(y), kernel, **kw, backend="c")
        elif op == 2:
            kernel = _pair(fdp, 1, 4)
            kw = dict(
                stride=_pair(fdp),
                padding=(kernel[0] // 2, kernel[1] // 2),
                ceil_mode=fdp.ConsumeBool(),
                count_include_pad=fdp.ConsumeBool(),
                divisor_override=fdp.PickValueInList([None, 1, 7, 2**31 - 1]),
            )
            y = fastconv.avg_pool2d(x, kernel, **kw, backend="c")
            if fdp.ConsumeBool():
                grad.avg_pool2d_input(x.shape, np.ones_like(y), kernel, **kw, backend="c")
        elif op == 3:
            size = _pair(fdp, 0, 9)
            if fdp.ConsumeBool():
                fastconv.adaptive_max_pool2d(x, size, return_indices=True, backend="c")
            else:
                y = fastconv.adaptive_avg_pool2d(x, size, backend="c")
                grad.adaptive_avg_pool2d_input(x.shape, np.ones_like(y), backend="c")
        else:
            training = fdp.ConsumeBool()
            fastconv.batch_norm(x, np.zeros(c, dtype), np.ones(c, dtype), training=training, backend="c")
            grad.batch_norm_input(x, np.ones_like(x), np.zeros(c), np.ones(c), np.ones(c), training, backend="c")
            y = fastconv.relu(x, backend="c")
            grad.relu_input(y, np.ones_like(y), backend="c")
    except ACCEPTED:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
