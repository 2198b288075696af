"""Properties for lwkit.int8qat and lwkit.bf16: bad arguments raise ValueError/TypeError
naming the argument."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import bf16, int8, int8qat

COVERED = {"lwkit.int8qat.prepare_eager_qat", "lwkit.int8qat.convert_eager_qat", "lwkit.int8qat.inspect_int8",
           "lwkit.bf16.BF16Model"}
EXEMPT: dict = {}

not_models = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just(torch.zeros(2)))


def raises_naming(name, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"{name!r} not in {str(info.value)!r}"


@settings(max_examples=15, deadline=None)
@given(not_models)
def test_not_a_model(obj):
    for fn in (int8qat.prepare_eager_qat, int8qat.convert_eager_qat, int8qat.inspect_int8, bf16.BF16Model):
        raises_naming("model", fn, obj)


@settings(max_examples=15, deadline=None)
@given(st.one_of(st.text(max_size=6).filter(lambda s: s not in int8.supported_engines()), st.integers(), st.none()))
def test_bad_backend(backend):
    raises_naming("backend", int8qat.prepare_eager_qat, nn.Linear(2, 2), backend=backend)


def test_float_models_are_refused_with_what_to_do():
    raises_naming("model", int8qat.convert_eager_qat, nn.Linear(2, 2))
    raises_naming("model", int8qat.inspect_int8, nn.Linear(2, 2))
