"""Hypothesis properties for lwkit.intarith: bad arguments raise ValueError/TypeError naming the argument
(before any work); good arguments agree with an exact integer computation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lwkit import intarith

COVERED = {
    "lwkit.intarith.quantize_multiplier", "lwkit.intarith.requantize", "lwkit.intarith.quantize_bias",
    "lwkit.intarith.zero_point_terms", "lwkit.intarith.int_linear", "lwkit.intarith.int_conv2d",
}
EXEMPT: dict[str, str] = {}

FAST = settings(max_examples=25, deadline=None)
bad_scales = st.one_of(st.floats(max_value=0.0), st.sampled_from([float("nan"), float("inf")]), st.booleans(),
                       st.text(max_size=2), st.none())
float_codes = st.sampled_from([torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), [[1, 2, 3]], None])


def raises_naming(name, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"{name!r} not in {str(info.value)!r}"


@FAST
@given(bad_scales)
def test_quantize_multiplier_rejects_bad_m(m):
    raises_naming("m", intarith.quantize_multiplier, m)


@FAST
@given(st.floats(min_value=1e-9, max_value=1e6))
def test_quantize_multiplier_is_within_2_pow_minus_30(m):
    m0, shift = intarith.quantize_multiplier(m)
    assert 2**30 <= int(m0) < 2**31 and abs(int(m0) / 2 ** int(shift) - m) <= m * 2.0**-30


@FAST
@given(float_codes)
def test_requantize_rejects_non_integer_acc(acc):
    raises_naming("acc", intarith.requantize, acc, 2**30, 31, 0, 0, 255)


@FAST
@given(st.integers(-5, 5), st.integers(-5, 300))
def test_requantize_rejects_bad_ranges(qmin, qmax):
    if qmin < qmax:
        qmin, qmax = qmax, qmin
    raises_naming("qmin", intarith.requantize, torch.tensor([1]), 2**30, 31, 0, qmin, qmax)


@FAST
@given(st.integers(-(2**40), -1) | st.integers(2**31, 2**40), st.integers(-3, 0) | st.integers(63, 80))
def test_requantize_rejects_bad_multiplier(m0, shift):
    raises_naming("m0", intarith.requantize, torch.tensor([1]), m0, 31, 0, 0, 255)
    raises_naming("shift", intarith.requantize, torch.tensor([1]), 2**30, shift, 0, 0, 255)


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(1, 2**20), st.integers(0, 30))
def test_requantize_is_exact_rounding(acc, m0, extra):
    acc = max(min(acc, 2**31 - 1), -(2**31))
    shift = 31 + extra
    got = int(intarith.requantize(torch.tensor([acc]), m0, shift, 0, -(2**31), 2**31 - 1))
    num, den = abs(acc) * m0, 2**shift
    expect = (num + den // 2) // den * (1 if acc >= 0 else -1)
    assert got == max(min(expect, 2**31 - 1), -(2**31))


@FAST
@given(bad_scales)
def test_quantize_bias_rejects_bad_scales(s):
    raises_naming("s_x", intarith.quantize_bias, torch.zeros(3), s, 0.1)
    raises_naming("s_w", intarith.quantize_bias, torch.zeros(3), 0.1, s)


def test_quantize_bias_rejects_bad_bias_and_shapes():
    raises_naming("bias", intarith.quantize_bias, torch.zeros(3, dtype=torch.long), 0.1, 0.1)
    raises_naming("bias", intarith.quantize_bias, torch.zeros(3, 2), 0.1, 0.1)
    raises_naming("s_w", intarith.quantize_bias, torch.zeros(3), 0.1, torch.ones(2))


@FAST
@given(float_codes)
def test_linear_and_terms_reject_float_codes(codes):
    q = torch.zeros(2, 3, dtype=torch.long)
    raises_naming("q_x", intarith.int_linear, codes, 0, q, 0, None, 2**30, 31, 0)
    raises_naming("q_w", intarith.int_linear, q, 0, codes, 0, None, 2**30, 31, 0)
    raises_naming("q_x", intarith.zero_point_terms, codes, 0, q, 0)


@FAST
@given(st.integers(1, 5), st.integers(1, 5))
def test_linear_rejects_mismatched_shapes(k1, k2):
    if k1 == k2:
        k2 += 1
    raises_naming("q_x", intarith.int_linear, torch.zeros(2, k1, dtype=torch.long), 0,
                  torch.zeros(3, k2, dtype=torch.long), 0, None, 2**30, 31, 0)


def test_zero_points_and_bias_are_checked():
    q_x, q_w = torch.zeros(2, 3, dtype=torch.long), torch.zeros(4, 3, dtype=torch.long)
    raises_naming("z_x", intarith.int_linear, q_x, 1.5, q_w, 0, None, 2**30, 31, 0)
    raises_naming("z_x", intarith.int_linear, q_x, torch.tensor([1, 2]), q_w, 0, None, 2**30, 31, 0)
    raises_naming("z_w", intarith.int_linear, q_x, 0, q_w, torch.zeros(3, dtype=torch.long), None, 2**30, 31, 0)
    raises_naming("z_w", intarith.zero_point_terms, q_x, 0, q_w, True)
    raises_naming("bias_q", intarith.int_linear, q_x, 0, q_w, 0, torch.zeros(5, dtype=torch.long), 2**30, 31, 0)
    raises_naming("bias_q", intarith.int_linear, q_x, 0, q_w, 0, torch.zeros(4), 2**30, 31, 0)


def test_conv_checks():
    q_x, q_w = torch.zeros(1, 2, 4, 4, dtype=torch.long), torch.zeros(3, 2, 3, 3, dtype=torch.long)
    raises_naming("q_x", intarith.int_conv2d, q_x[0], 0, q_w, 0, None, 2**30, 31, 0)
    raises_naming("stride", intarith.int_conv2d, q_x, 0, q_w, 0, None, 2**30, 31, 0, stride=0)
    raises_naming("padding", intarith.int_conv2d, q_x, 0, q_w, 0, None, 2**30, 31, 0, padding=-1)
    raises_naming("kernel", intarith.int_conv2d, q_x[..., :2, :2], 0, q_w, 0, None, 2**30, 31, 0)


@FAST
@given(st.integers(0, 255), st.integers(-3, 3))
def test_conv_padding_is_the_zero_point(z_x, z_w):
    # an all-zero-point input is 0.0 everywhere, padding included: the accumulator is the bias alone
    q_x = torch.full((1, 2, 3, 3), z_x, dtype=torch.long)
    q_w = torch.randint(-5, 5, (3, 2, 3, 3), generator=torch.Generator().manual_seed(z_x))
    bias = torch.tensor([7, -4, 0])
    out = intarith.int_conv2d(q_x, z_x, q_w, z_w, bias, 2**30, 31, 10, -(2**31), 2**31 - 1, padding=1)
    assert torch.equal(out, (10 + torch.round(bias / 2).long())[None, :, None, None].expand(1, 3, 3, 3)) or \
        torch.equal(out, (10 + torch.sign(bias) * ((bias.abs() + 1) // 2))[None, :, None, None].expand(1, 3, 3, 3))
