"""Hypothesis properties for lwkit.lsq: bad arguments raise ValueError/TypeError naming the argument;
good ones land on the grid."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import lsq

COVERED = {"lwkit.lsq.lsq_fake_quantize", "lwkit.lsq.init_step", "lwkit.lsq.LSQWrapper", "lwkit.lsq.prepare_lsq"}
EXEMPT: dict = {}

FAST = settings(max_examples=25, deadline=None)
bad_bits = st.one_of(st.integers(max_value=1), st.integers(min_value=9), st.floats(allow_nan=True), st.booleans(),
                     st.text(max_size=2))


def raises_naming(name, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"{name!r} not in {str(info.value)!r}"


@FAST
@given(bad_bits)
def test_bad_bits(bits):
    raises_naming("bits", lsq.init_step, torch.randn(3, 2), bits)
    raises_naming("bits", lsq.LSQWrapper, nn.Linear(2, 3), bits=bits)
    raises_naming("bits", lsq.prepare_lsq, nn.Linear(2, 3), bits=bits)


@FAST
@given(st.floats(max_value=0.0, allow_nan=False), st.sampled_from([float("nan"), float("inf")]))
def test_bad_step_and_x(step, bad):
    x = torch.randn(5)
    raises_naming("step", lsq.lsq_fake_quantize, x, torch.tensor(step), -2, 1)
    raises_naming("x", lsq.lsq_fake_quantize, torch.tensor([1.0, bad]), torch.tensor(0.1), -2, 1)
    raises_naming("x", lsq.lsq_fake_quantize, torch.tensor([1, 2]), torch.tensor(0.1), -2, 1)


@FAST
@given(st.integers(-5, 5), st.integers(-5, 5), st.one_of(st.floats(allow_nan=True), st.booleans()))
def test_bad_grid_and_grad_scale(qmin, qmax, g):
    x, s = torch.randn(4), torch.tensor(0.1)
    if not qmin < 0 < qmax:
        raises_naming("qmin", lsq.lsq_fake_quantize, x, s, qmin, qmax)
    if isinstance(g, bool) or not 0 < g <= 1:
        raises_naming("grad_scale", lsq.lsq_fake_quantize, x, s, -2, 1, g)


def test_bad_models_and_flags():
    raises_naming("model", lsq.prepare_lsq, "net")
    raises_naming("model", lsq.prepare_lsq, nn.ReLU())
    raises_naming("layer", lsq.LSQWrapper, nn.ReLU())
    raises_naming("per_channel", lsq.prepare_lsq, nn.Linear(2, 2), per_channel=1)
    raises_naming("per_channel", lsq.init_step, torch.randn(2, 2), 2, per_channel="yes")
    raises_naming("w", lsq.init_step, torch.empty(0), 2)


@FAST
@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=20),
       st.floats(0.01, 5.0), st.integers(2, 8))
def test_output_lies_on_the_grid(values, step, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    y = lsq.lsq_fake_quantize(torch.tensor(values), torch.tensor(step), qmin, qmax)
    q = y / step
    assert torch.allclose(q, q.round(), atol=1e-3) and q.min() >= qmin - 1e-3 and q.max() <= qmax + 1e-3
