"""Kernel backends: one module each, all with the same functions.

The contract (the dispatcher relies on nothing else):

``NAME``
    The backend's name, as users pass it to ``backend=``.
``available() -> (bool, str)``
    Whether it can run on this machine, and why not.  Must be cheap and must not raise.
``supports(problem) -> None | str``
    None when it can run ``problem`` (a descriptor from :mod:`fastconv.problem`), else the reason.
``FUSED_EPILOGUE``
    Optional, default False.  True when ``conv2d`` applies ``residual`` and ``activation``
    itself; otherwise the dispatcher passes a problem without them and applies them after.

The op functions take a validated problem and C-contiguous, native-order arrays of the problem's
dtype, never modify their inputs, and return a new output array of that dtype:

    conv2d(p, x, weight, bias, residual) -> y           x (N,C,H,W), bias/residual may be None
    max_pool2d(p, x) -> y                               x (N,C,H,W)
    avg_pool2d(p, x) -> y
    adaptive_avg_pool2d(p, x) -> y
    batch_norm(p, x, mean, var, weight, bias) -> (y, mean, var)
        x is (N, C, L).  In eval mode mean/var are the running statistics; in training mode they
        are None and the backend computes the batch mean and biased variance, returning them as
        float64 (C,) arrays.  Updating running statistics is the API's job.
    relu(p, x) -> y                                     x of any shape

Backward functions take the *forward* problem ``p`` and return new arrays of its dtype:

    conv2d_bwd_data(p, grad_output, weight) -> grad_input
    conv2d_bwd_weight(p, x, grad_output) -> (grad_weight, grad_bias or None)
    max_pool2d_bwd_data(p, x, grad_output) -> grad_input
    avg_pool2d_bwd_data(p, grad_output) -> grad_input
    adaptive_avg_pool2d_bwd_data(p, grad_output) -> grad_input
    batch_norm_bwd_data(p, x, grad_output, mean, var, weight) -> (grad_input, grad_weight, grad_bias)
        mean/var: the statistics the forward normalised with (training: the batch's, biased)
    relu_bwd_data(p, output, grad_output) -> grad_input

Unlike the forward ops they also accept empty batches.  Padding modes other than zeros reach
them unchanged (``p.padding_mode``); ``_bwd_common`` pads and folds the gradient back.

Backends never re-validate user input, never see an empty output (the dispatcher returns it),
and touch no global state but the thread count (``fastconv.threads.get_num_threads()``).
"""

#: A padded copy may be this many times the input before an explicitly padding backend refuses
#: (and "auto" moves on to one that reads padding implicitly): only absurd padding gets here.
MAX_PAD_GROWTH = 64


def refuse_padded_copy(p, name: str) -> str | None:
    """The reason a backend that zero-pads a copy of the input cannot run conv problem ``p``."""
    if p.op == "conv2d" and p.pad_growth > MAX_PAD_GROWTH and p.n * p.c * p.h * p.w * p.pad_growth > 2**24:
        return f"the zero-padded input copy would be {p.pad_growth:.0f}x the input; {name} pads explicitly"
    return None
