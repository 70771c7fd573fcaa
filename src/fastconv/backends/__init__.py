"""Kernel backends: one module each, all with the same functions.

The contract (the dispatcher relies on nothing else; ``fastconv.register_backend`` checks it):

``NAME``
    The backend's name, as users pass it to ``backend=``.
``DEVICES``
    The devices whose problems it runs, e.g. ``("cpu",)`` (default) or ``("cuda",)``.
``available() -> (bool, str)``
    Whether it can run on this machine, and why not.  Must be cheap and must not raise.
``supports(problem) -> None | str``
    None when it can run ``problem`` (a descriptor from :mod:`fastconv.problem`), else the reason
    (a dtype, an option, a direction or algorithm it lacks).  A missing op function or device
    is refused by the dispatcher before ``supports`` is asked.
``ALGORITHMS``
    Optional: per op, the algorithms it implements, e.g. ``{"conv2d": ("direct", "winograd")}``.
    A problem asking for another one (``problem.algorithm`` other than "auto") is refused by
    ``supports`` with a reason (``refuse_algorithm`` below).
``FUSED_EPILOGUE``
    Optional, default False.  True when ``conv2d`` applies ``residual`` and ``activation``
    itself; otherwise the dispatcher passes a problem without them and applies them after.
``ARRAYS``
    Optional, default :data:`fastconv.arrays.numpy`: the array hooks (``empty``, ``zeros``,
    ``add_``, ``relu_``, ``check_size``, ``synchronize``) the dispatcher uses on this backend's
    arrays, so a device backend's outputs never pass through NumPy.

The op functions are named by the op table (:mod:`fastconv.ops`, ``ops.get(problem).kernel``).
They take a validated problem and C-contiguous, native-order arrays of the problem's dtype, never
modify their inputs, and return new arrays of that dtype:

    conv2d(p, x, weight, bias, residual) -> y           x (N,C,H,W), bias/residual may be None
    max_pool2d(p, x) -> y                               x (N,C,H,W)
    avg_pool2d(p, x) -> y
    adaptive_avg_pool2d(p, x) -> y
    batch_norm(p, x, mean, var, weight, bias) -> (y, mean, var)
        x is (N, C, L).  In eval mode mean/var are the running statistics; in training mode they
        are None and the backend computes the batch mean and biased variance, returning them as
        float64 (C,) arrays.  Updating running statistics is the API's job.
    relu(p, x) -> y                                     x of any shape

Backward functions take the *forward*-shaped problem with ``p.direction`` set:

    conv2d_bwd_data(p, grad_output, weight) -> grad_input
    conv2d_bwd_weight(p, input, grad_output) -> (grad_weight, grad_bias or None if not p.bias)
    max_pool2d_bwd_data(p, input, grad_output) -> grad_input   (ties and NaN: the first max index)
    avg_pool2d_bwd_data(p, grad_output) -> grad_input
    adaptive_avg_pool2d_bwd_data(p, grad_output) -> grad_input
    batch_norm_bwd_data(p, input, grad_output, mean, var, weight) -> (grad_input, grad_weight, grad_bias)
        training: mean/var are the batch statistics of the forward pass (biased var); eval: running
    relu_bwd_data(p, output, grad_output) -> grad_input

Unlike the forward ops they also accept empty batches.  Padding modes other than zeros reach
them unchanged (``p.padding_mode``); ``_bwd_common`` pads and folds the gradient back.

Backends never re-validate user input, never see an empty output through the dispatcher (it
returns the op table's empty result), and touch no global state but the thread count
(``fastconv.threads.get_num_threads()``).
"""

#: A padded copy may be this many times the input before an explicitly padding backend refuses
#: (and "auto" moves on to one that reads padding implicitly): only absurd padding gets here.
MAX_PAD_GROWTH = 64


def refuse_padded_copy(p, name: str) -> str | None:
    """The reason a backend that zero-pads a copy of the input cannot run conv problem ``p``."""
    if getattr(p, "pad_growth", 0) > MAX_PAD_GROWTH and p.n * p.c * p.h * p.w * p.pad_growth > 2**24:
        return f"the zero-padded input copy would be {p.pad_growth:.0f}x the input; {name} pads explicitly"
    return None


def winograd_refusal(p) -> str | None:
    """Why Winograd F(m x m, 3 x 3) cannot compute conv problem ``p`` (None when it can)."""
    if (p.r, p.s) != (3, 3):
        return f"winograd needs a 3x3 kernel, got {p.r}x{p.s}"
    if p.stride != (1, 1) or p.dilation != (1, 1):
        return f"winograd needs stride 1 and dilation 1, got stride={p.stride} dilation={p.dilation}"
    return None


def refuse_algorithm(p, algorithms: dict, name: str) -> str | None:
    """The reason a backend implementing ``algorithms`` (its ALGORITHMS) cannot run ``p.algorithm``."""
    wanted = getattr(p, "algorithm", "auto")
    if wanted == "auto":
        return None
    have = algorithms.get(p.op, ())
    if wanted not in have:
        return f"{name} implements {p.op} algorithms {have}, not {wanted!r}"
    if wanted == "winograd":
        return winograd_refusal(p)
    return None
