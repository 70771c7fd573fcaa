"""The bad-input catalogue: each case must raise ValueError/TypeError naming the argument, before any
kernel runs (checked with a backend that fails the test if it is ever called)."""

import re

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, ops

f32, f64 = np.float32, np.float64


def x4(*shape, dtype=f32):
    return np.ones(shape or (2, 3, 8, 8), dtype)


W = np.ones((4, 3, 3, 3), f32)
STATS = (np.zeros(3, f32), np.ones(3, f32))

# (name, call, expected exception, regex the message must match: it names the argument)
CATALOGUE = [
    # -- conv2d: shapes and channels
    ("conv_input_2d", lambda: fastconv.conv2d(np.ones((8, 8), f32), W), ValueError, r"input must be 3-D or 4-D"),
    ("conv_input_5d", lambda: fastconv.conv2d(np.ones((1, 2, 3, 8, 8), f32), W), ValueError, r"input must be"),
    ("conv_weight_3d", lambda: fastconv.conv2d(x4(), np.ones((4, 3, 3), f32)), ValueError, r"weight must be 4-D"),
    ("conv_channel_mismatch", lambda: fastconv.conv2d(x4(2, 5, 8, 8), W), ValueError, r"input has 5 channels.*weight"),
    ("conv_groups_in_mismatch", lambda: fastconv.conv2d(x4(), W, groups=3), ValueError, r"groups=3"),
    (
        "conv_groups_out_mismatch",
        lambda: fastconv.conv2d(x4(2, 4, 8, 8), np.ones((3, 2, 3, 3), f32), groups=2),
        ValueError,
        r"out_channels must be divisible by groups, got out_channels=3, groups=2",
    ),
    ("conv_groups_zero", lambda: fastconv.conv2d(x4(), W, groups=0), ValueError, r"groups must be positive"),
    ("conv_groups_float", lambda: fastconv.conv2d(x4(), W, groups=1.0), TypeError, r"groups must be an int"),
    (
        "conv_zero_channels",
        lambda: fastconv.conv2d(x4(2, 0, 8, 8), np.ones((4, 0, 3, 3), f32)),
        ValueError,
        r"at least one channel",
    ),
    (
        "conv_zero_out_channels",
        lambda: fastconv.conv2d(x4(), np.ones((0, 3, 3, 3), f32)),
        ValueError,
        r"weight must have at least one output channel",
    ),
    ("conv_zero_kernel", lambda: fastconv.conv2d(x4(), np.ones((4, 3, 0, 3), f32)), ValueError, r"weight kernel size"),
    ("conv_empty_image", lambda: fastconv.conv2d(x4(2, 3, 0, 8), W), ValueError, r"input spatial size"),
    # -- conv2d: stride, dilation, padding
    ("conv_stride_zero", lambda: fastconv.conv2d(x4(), W, stride=0), ValueError, r"stride must be positive"),
    ("conv_stride_negative", lambda: fastconv.conv2d(x4(), W, stride=(1, -2)), ValueError, r"stride must be positive"),
    (
        "conv_stride_triple",
        lambda: fastconv.conv2d(x4(), W, stride=(1, 1, 1)),
        ValueError,
        r"stride must be an int or a tuple of 2",
    ),
    ("conv_stride_float", lambda: fastconv.conv2d(x4(), W, stride=1.5), TypeError, r"stride must be an int"),
    ("conv_stride_bool", lambda: fastconv.conv2d(x4(), W, stride=True), TypeError, r"stride must be an int"),
    ("conv_dilation_zero", lambda: fastconv.conv2d(x4(), W, dilation=0), ValueError, r"dilation must be positive"),
    (
        "conv_padding_negative",
        lambda: fastconv.conv2d(x4(), W, padding=-1),
        ValueError,
        r"padding must be non-negative",
    ),
    (  # torch.nn.Conv2d would crop by it (F.pad); fastconv refuses it in every mode
        "conv_padding_negative_reflect",
        lambda: fastconv.conv2d(x4(), W, padding=(1, -1), padding_mode="reflect"),
        ValueError,
        r"padding must be non-negative",
    ),
    (
        "conv_padding_string",
        lambda: fastconv.conv2d(x4(), W, padding="full"),
        ValueError,
        r"padding must be .*'same' or 'valid'",
    ),
    (
        "conv_padding_triple",
        lambda: fastconv.conv2d(x4(), W, padding=(1, 1, 1)),
        ValueError,
        r"padding must be an int or a tuple of 2",
    ),
    (
        "conv_same_strided",
        lambda: fastconv.conv2d(x4(), W, stride=2, padding="same"),
        ValueError,
        r"padding='same' is not supported for strided",
    ),
    (
        "conv_padding_mode",
        lambda: fastconv.conv2d(x4(), W, padding_mode="mirror"),
        ValueError,
        r"padding_mode must be one of",
    ),
    (
        "conv_reflect_too_big",
        lambda: fastconv.conv2d(x4(1, 3, 3, 3), W, padding=3, padding_mode="reflect"),
        ValueError,
        r"padding_mode='reflect' needs padding smaller",
    ),
    (
        "conv_circular_too_big",
        lambda: fastconv.conv2d(x4(1, 3, 3, 3), W, padding=4, padding_mode="circular"),
        ValueError,
        r"padding_mode='circular' needs padding at most",
    ),
    ("conv_kernel_too_big", lambda: fastconv.conv2d(x4(1, 3, 2, 8), W), ValueError, r"kernel size can't be greater"),
    (
        "conv_dilated_kernel_too_big",
        lambda: fastconv.conv2d(x4(1, 3, 5, 5), W, dilation=3),
        ValueError,
        r"dilated kernel height is 7",
    ),
    ("conv_padding_huge", lambda: fastconv.conv2d(x4(), W, padding=2**40), ValueError, r"padding=\d+ is out of range"),
    # -- conv2d: bias, residual, activation
    ("conv_bias_length", lambda: fastconv.conv2d(x4(), W, np.ones(3, f32)), ValueError, r"bias must have shape \(4,\)"),
    ("conv_bias_2d", lambda: fastconv.conv2d(x4(), W, np.ones((4, 1), f32)), ValueError, r"bias must have shape"),
    (
        "conv_residual_shape",
        lambda: fastconv.conv2d(x4(), W, residual=np.ones((2, 4, 8, 8), f32)),
        ValueError,
        r"residual must have the output's shape \(2, 4, 6, 6\)",
    ),
    ("conv_activation", lambda: fastconv.conv2d(x4(), W, activation="gelu"), ValueError, r"activation must be one of"),
    # -- dtypes
    (
        "conv_int_input",
        lambda: fastconv.conv2d(np.ones((2, 3, 8, 8), np.int64), W),
        TypeError,
        r"input must be float32 or float64",
    ),
    (
        "conv_complex_weight",
        lambda: fastconv.conv2d(x4(), W.astype(np.complex64)),
        TypeError,
        r"weight must be float32 or float64",
    ),
    (
        "conv_float16",
        lambda: fastconv.conv2d(x4(dtype=np.float16), W),
        TypeError,
        r"input must be float32 or float64, got dtype float16",
    ),
    (
        "conv_mixed_dtypes",
        lambda: fastconv.conv2d(x4(), W.astype(f64)),
        TypeError,
        r"weight has dtype float64 but input has dtype float32",
    ),
    ("conv_mixed_bias", lambda: fastconv.conv2d(x4(), W, np.ones(4, f64)), TypeError, r"bias has dtype float64"),
    (
        "conv_object_input",
        lambda: fastconv.conv2d(np.array([[object()]]), W),
        TypeError,
        r"input must be float32 or float64",
    ),
    ("conv_bool_input", lambda: fastconv.conv2d(np.ones((2, 3, 8, 8), bool), W), TypeError, r"input must be float32"),
    ("conv_none_input", lambda: fastconv.conv2d(None, W), TypeError, r"input must be an array"),
    ("conv_string_input", lambda: fastconv.conv2d("abc", W), TypeError, r"input must be float32 or float64"),
    # -- pooling
    ("pool_kernel_zero", lambda: fastconv.max_pool2d(x4(), 0), ValueError, r"kernel_size must be positive"),
    ("pool_stride_zero", lambda: fastconv.max_pool2d(x4(), 2, stride=0), ValueError, r"stride must be positive"),
    (
        "pool_pad_gt_half",
        lambda: fastconv.max_pool2d(x4(), 3, padding=2),
        ValueError,
        r"padding should be at most half of kernel_size",
    ),
    (
        "avgpool_pad_gt_half",
        lambda: fastconv.avg_pool2d(x4(), (2, 4), padding=(1, 3)),
        ValueError,
        r"padding should be at most half",
    ),
    (
        "pool_pad_negative",
        lambda: fastconv.avg_pool2d(x4(), 3, padding=-1),
        ValueError,
        r"padding must be non-negative",
    ),
    ("pool_dilation_zero", lambda: fastconv.max_pool2d(x4(), 2, dilation=0), ValueError, r"dilation must be positive"),
    (
        "pool_output_too_small",
        lambda: fastconv.max_pool2d(x4(1, 1, 2, 2), 3),
        ValueError,
        r"output size .* is too small",
    ),
    ("pool_input_2d", lambda: fastconv.max_pool2d(np.ones((8, 8), f32), 2), ValueError, r"input must be 3-D or 4-D"),
    ("pool_zero_channels", lambda: fastconv.max_pool2d(x4(2, 0, 4, 4), 2), ValueError, r"non-zero channels"),
    (
        "pool_ceil_not_bool",
        lambda: fastconv.max_pool2d(x4(), 2, ceil_mode="yes"),
        TypeError,
        r"ceil_mode must be a bool",
    ),
    (
        "avgpool_divisor_zero",
        lambda: fastconv.avg_pool2d(x4(), 2, divisor_override=0),
        ValueError,
        r"divisor_override must be non-zero",
    ),
    (
        "avgpool_divisor_float",
        lambda: fastconv.avg_pool2d(x4(), 2, divisor_override=2.5),
        TypeError,
        r"divisor_override must be an int",
    ),
    (
        "avgpool_count_pad_type",
        lambda: fastconv.avg_pool2d(x4(), 2, count_include_pad=None),
        TypeError,
        r"count_include_pad must be a bool",
    ),
    (
        "adaptive_negative",
        lambda: fastconv.adaptive_avg_pool2d(x4(), -1),
        ValueError,
        r"output_size must be non-negative",
    ),
    (
        "adaptive_triple",
        lambda: fastconv.adaptive_avg_pool2d(x4(), (1, 2, 3)),
        ValueError,
        r"output_size must be an int or a pair",
    ),
    (
        "adaptive_empty_image",
        lambda: fastconv.adaptive_avg_pool2d(x4(1, 2, 0, 4), 2),
        ValueError,
        r"non-zero channels, height and width",
    ),
    ("adaptive_float", lambda: fastconv.adaptive_avg_pool2d(x4(), 2.0), TypeError, r"output_size must be an int"),
    # -- batch norm
    ("bn_input_1d", lambda: fastconv.batch_norm(np.ones(3, f32), *STATS), ValueError, r"input must be at least 2-D"),
    (
        "bn_mean_length",
        lambda: fastconv.batch_norm(x4(), np.zeros(4, f32), np.ones(3, f32)),
        ValueError,
        r"running_mean must have shape \(3,\)",
    ),
    (
        "bn_var_length",
        lambda: fastconv.batch_norm(x4(), np.zeros(3, f32), np.ones(2, f32)),
        ValueError,
        r"running_var must have shape",
    ),
    (
        "bn_weight_length",
        lambda: fastconv.batch_norm(x4(), *STATS, weight=np.ones(5, f32)),
        ValueError,
        r"weight must have shape \(3,\)",
    ),
    (
        "bn_bias_length",
        lambda: fastconv.batch_norm(x4(), *STATS, bias=np.ones(1, f32)),
        ValueError,
        r"bias must have shape \(3,\)",
    ),
    (
        "bn_eval_without_stats",
        lambda: fastconv.batch_norm(x4(), None, None),
        ValueError,
        r"running_mean and running_var must be given",
    ),
    (
        "bn_half_stats",
        lambda: fastconv.batch_norm(x4(), np.zeros(3, f32), None, training=True),
        ValueError,
        r"running_mean and running_var must both",
    ),
    ("bn_negative_eps", lambda: fastconv.batch_norm(x4(), *STATS, eps=-1e-5), ValueError, r"eps must be non-negative"),
    (
        "bn_zero_eps_training",
        lambda: fastconv.batch_norm(x4(), *STATS, training=True, eps=0.0),
        ValueError,
        r"eps must be positive when training",
    ),
    (
        "bn_nan_eps",
        lambda: fastconv.batch_norm(x4(), *STATS, eps=float("nan")),
        ValueError,
        r"eps must be non-negative",
    ),
    (
        "bn_one_value_training",
        lambda: fastconv.batch_norm(x4(1, 3, 1, 1), np.zeros(3, f32), np.ones(3, f32), training=True),
        ValueError,
        r"more than 1 value per channel when training",
    ),
    (
        "bn_mixed_stats",
        lambda: fastconv.batch_norm(x4(), np.zeros(3, f64), np.ones(3, f64)),
        TypeError,
        r"running_mean has dtype float64",
    ),
    (
        "bn_readonly_stats_training",
        lambda: fastconv.batch_norm(x4(), np.zeros(3, f32)[:], _readonly(np.ones(3, f32)), training=True),
        ValueError,
        r"running_var is read-only",
    ),
    (
        "bn_list_stats_training",
        lambda: fastconv.batch_norm(x4(), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], training=True),
        TypeError,
        r"running_mean has dtype float64|running_mean must be a NumPy array",
    ),
    (
        "bn_momentum_string",
        lambda: fastconv.batch_norm(x4(), *STATS, momentum="0.1"),
        TypeError,
        r"momentum must be a number",
    ),
    (
        "bn_training_not_bool",
        lambda: fastconv.batch_norm(x4(), *STATS, training=1),
        TypeError,
        r"training must be a bool",
    ),
    # -- relu
    ("relu_int", lambda: fastconv.relu(np.ones(3, np.int32)), TypeError, r"input must be float32 or float64"),
    # -- backend selection
    ("unknown_backend", lambda: fastconv.conv2d(x4(), W, backend="tpu"), ValueError, r"backend: unknown backend 'tpu'"),
    ("backend_not_string", lambda: fastconv.relu(x4(), backend=3), TypeError, r"backend must be a backend name"),
    ("set_unknown_backend", lambda: fastconv.set_backend("fast"), ValueError, r"unknown backend 'fast'"),
    ("threads_zero", lambda: fastconv.set_num_threads(0), ValueError, r"num_threads must be between 1 and"),
    ("threads_float", lambda: fastconv.set_num_threads(2.0), TypeError, r"num_threads must be an int"),
]


def _readonly(a):
    a.flags.writeable = False
    return a


class _Tripwire:
    """A backend that fails the test if a kernel is ever reached."""

    NAME = "tripwire"

    @staticmethod
    def available():
        return True, ""

    @staticmethod
    def supports(p):
        return None

    def __getattr__(self, op):
        if op not in {e.kernel for e in ops.entries()}:
            raise AttributeError(op)

        def kernel(*args):
            raise AssertionError(f"kernel {op} ran on bad input")

        return kernel


@pytest.fixture
def tripwire():
    dispatch.register_backend(_Tripwire(), first=True)
    yield
    dispatch.unregister_backend("tripwire")


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 30


@pytest.mark.parametrize("name,call,exc,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_raises_before_any_kernel(tripwire, name, call, exc, message):
    with fastconv.use_backend("tripwire"):
        with pytest.raises(exc, match=message):
            call()


def test_output_too_large_is_a_memory_error(tripwire):
    x = np.ones((1, 1, 1, 1), f32)
    w = np.ones((1, 1, 1, 1), f32)
    with fastconv.use_backend("tripwire"), pytest.raises(MemoryError, match=r"conv2d: the output of shape"):
        fastconv.conv2d(x, w, padding=2**30)
    with fastconv.use_backend("tripwire"), pytest.raises(MemoryError, match=r"adaptive_avg_pool2d"):
        fastconv.adaptive_avg_pool2d(x, 2**30)


def test_absurd_padding_with_small_output_runs_without_a_huge_copy():
    # A stride far larger than the padded input: 3 outputs per side, but a naive padded copy would
    # need terabytes.  Backends must answer from the few cells they read, or refuse with a reason.
    x = np.arange(1, 5, dtype=f64).reshape(1, 1, 2, 2)
    w = np.ones((1, 1, 1, 1), f64)
    y = fastconv.conv2d(x, w, stride=10**6, padding=10**6)
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 1.0  # output 1 reads padded cell 10**6, which is x[0, 0]; the rest is padding
    np.testing.assert_array_equal(y, expected)


def test_messages_name_the_offending_values():
    with pytest.raises(ValueError) as info:
        fastconv.conv2d(x4(2, 5, 8, 8), W)
    assert re.search(r"\(4, 3, 3, 3\)", str(info.value))
