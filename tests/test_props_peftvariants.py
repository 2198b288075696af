"""Property tests for the PEFT variants: QLoRA (lwkit.qlora), DoRA (lwkit.dora), fine-tuning memory
(lwkit.trainmem) and the few-label task (lwkit.transfer).

Bad arguments: a generated bad value of one argument (all others good) raises ValueError/TypeError naming that
argument, and the model is left unchanged. Good arguments: QLoRA and DoRA start at their (quantized) base.
"""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import data, dora, models, qlora, trainmem, transfer

COVERED = {
    "lwkit.qlora.Linear4bit", "lwkit.qlora.quantize_base", "lwkit.qlora.add_qlora",
    "lwkit.dora.DoRALinear", "lwkit.dora.add_dora",
    "lwkit.trainmem.training_memory",
    "lwkit.transfer.few_labels", "lwkit.transfer.fit_steps",
}
EXEMPT = {
    "lwkit.qlora.NF4": "a constant tensor (the NF4 levels)",
    "lwkit.qlora.LEVELS": "a constant tuple of level names",
    "lwkit.dora.hf_peft": "takes no argument",
    "lwkit.trainmem.OPTIMIZER_STATES": "a constant dict",
    "lwkit.trainmem.TrainingMemory": "plain dataclass returned by training_memory",
}

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
bad_int = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3),
                    st.none())
bad_rank = st.one_of(st.integers(max_value=0), st.integers(min_value=101, max_value=10_000), st.just(2.0),
                     st.booleans(), st.none())
bad_group = st.one_of(st.integers(max_value=1), st.integers(min_value=4097), st.just(64.0), st.booleans(), st.none())
bad_levels = st.one_of(st.text(max_size=5).filter(lambda s: s not in qlora.LEVELS), st.none(), st.integers())


def raises_naming(arg, fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError), match=arg):
        fn(*args, **kwargs)


def unchanged(before, after):
    return (type(before.fc1) is type(after.fc1) and type(before.fc2) is type(after.fc2)
            and [p.requires_grad for p in before.parameters()] == [p.requires_grad for p in after.parameters()])


@SETTINGS
@given(group_size=bad_group, levels=bad_levels)
def test_qlora_bad_options(group_size, levels):
    lin = nn.Linear(8, 4)
    raises_naming("group_size", qlora.Linear4bit, lin, group_size=group_size)
    raises_naming("levels", qlora.Linear4bit, lin, levels=levels)
    raises_naming("linear", qlora.Linear4bit, "fc1")
    raises_naming("double_quant", qlora.Linear4bit, lin, double_quant=1)
    for fn in (qlora.quantize_base, qlora.add_qlora):
        model = models.LeNet300100()
        before = copy.deepcopy(model)
        raises_naming("group_size", fn, model, ["fc1"], group_size=group_size)
        raises_naming("levels", fn, model, ["fc1"], levels=levels)
        raises_naming("targets", fn, model, ["nope"])
        raises_naming("targets", fn, model, "fc1")
        assert unchanged(before, model)


@SETTINGS
@given(rank=bad_rank, alpha=st.one_of(st.floats(max_value=0), st.just(float("nan")), st.booleans(), st.none()))
def test_dora_and_qlora_bad_rank_alpha(rank, alpha):
    for fn in (dora.add_dora, qlora.add_qlora):
        model = models.LeNet300100()
        before = copy.deepcopy(model)
        raises_naming("rank", fn, model, ["fc2"], rank=rank)
        raises_naming("alpha", fn, model, ["fc2"], alpha=alpha)
        raises_naming("keep_trainable", fn, model, ["fc2"], keep_trainable=["fc2"])
        assert unchanged(before, model)
    raises_naming("rank", dora.DoRALinear, nn.Linear(100, 100), rank=rank)
    raises_naming("base", dora.DoRALinear, nn.Conv2d(1, 1, 1))


@SETTINGS
@given(optimizer=st.one_of(st.text(max_size=4), st.none(), st.integers()))
def test_training_memory_bad_arguments(optimizer):
    model, x = models.LeNet300100(), torch.randn(2, 1, 28, 28)
    raises_naming("optimizer", trainmem.training_memory, model, x, optimizer=optimizer)
    raises_naming("model", trainmem.training_memory, "model", x)
    raises_naming("example_input", trainmem.training_memory, model, [1, 2])


@pytest.fixture(scope="module")
def splits():
    return data.fashion_mnist(classes=(5, 6))


@SETTINGS
@given(value=bad_int, seed=st.one_of(st.integers(max_value=-1), st.text(max_size=2), st.none(), st.just(1.0)),
       lr=st.one_of(st.floats(max_value=0), st.just(float("inf")), st.booleans(), st.none(), st.text(max_size=2)))
def test_transfer_bad_arguments(splits, value, seed, lr):
    raises_naming("per_class", transfer.few_labels, splits, value)
    raises_naming("seed", transfer.few_labels, splits, 2, seed=seed)
    raises_naming("splits", transfer.few_labels, "splits", 2)
    raises_naming("per_class", transfer.few_labels, splits, 10**6)
    model = models.LeNet300100()
    before = copy.deepcopy(model.state_dict())
    raises_naming("steps", transfer.fit_steps, model, splits, steps=value, lr=1e-3)
    raises_naming("batch_size", transfer.fit_steps, model, splits, steps=1, lr=1e-3, batch_size=value)
    raises_naming("lr", transfer.fit_steps, model, splits, steps=1, lr=lr)
    raises_naming("model", transfer.fit_steps, model.fc1.weight, splits, steps=1, lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_qlora_and_dora_start_at_their_base(seed):
    torch.manual_seed(seed)
    base = models.LeNet300100()
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(dora.add_dora(copy.deepcopy(base), ["fc1", "fc2"])(x), base(x), atol=1e-5)
    assert torch.equal(qlora.add_qlora(copy.deepcopy(base), ["fc1"])(x),
                       qlora.quantize_base(copy.deepcopy(base), ["fc1"])(x))
