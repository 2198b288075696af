"""lwkit.peft: LoRA against its base layer and against the peft library, freezing helpers, counts, errors."""

import copy

import pytest
import torch
from torch import nn

from lwkit import models, peft, train


def trained_lora(base, rank=4, alpha=8.0):
    lora = peft.LoRALinear(base, rank=rank, alpha=alpha)
    with torch.no_grad():
        lora.lora_B.normal_()  # as if trained: B no longer zero
    return lora


def test_lora_at_init_equals_base_exactly():
    torch.manual_seed(0)
    base = nn.Linear(20, 7)
    lora = peft.LoRALinear(copy.deepcopy(base), rank=3, alpha=6.0)
    x = torch.randn(5, 20)
    assert torch.equal(lora(x), base(x))
    assert lora.scaling == 2.0 and lora.lora_A.shape == (3, 20) and lora.lora_B.shape == (7, 3)
    assert torch.count_nonzero(lora.lora_B) == 0 and torch.count_nonzero(lora.lora_A) > 0


def test_lora_a_is_initialised_like_a_linear_weight():
    torch.manual_seed(0)
    lora = peft.LoRALinear(nn.Linear(400, 50), rank=8)
    bound = 1 / 400**0.5  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert lora.lora_A.abs().max() <= bound and lora.lora_A.abs().max() > 0.9 * bound


def test_lora_forward_is_its_formula():
    torch.manual_seed(0)
    lora = trained_lora(nn.Linear(6, 4), rank=2, alpha=3.0)
    x = torch.randn(3, 6)
    w = lora.base.weight + (3.0 / 2) * lora.lora_B @ lora.lora_A
    assert torch.allclose(lora(x), x @ w.T + lora.base.bias, atol=1e-6)


def test_merged_equals_unmerged():
    torch.manual_seed(0)
    lora = trained_lora(nn.Linear(30, 12), rank=4, alpha=16.0)
    merged = lora.merge()
    x = torch.randn(9, 30)
    assert type(merged) is nn.Linear
    assert torch.allclose(merged(x), lora(x), atol=1e-5)
    lora_nobias = trained_lora(nn.Linear(30, 12, bias=False), rank=2)
    assert lora_nobias.merge().bias is None
    assert torch.allclose(lora_nobias.merge()(x), lora_nobias(x), atol=1e-5)


def test_add_lora_trains_only_lora_params_and_merges_back():
    torch.manual_seed(0)
    model = models.LeNet300100()
    x = torch.randn(4, 1, 28, 28)
    reference = model(x)
    peft.add_lora(model, ["fc1", "fc2"], rank=4, alpha=8.0)
    assert isinstance(model.fc1, peft.LoRALinear) and isinstance(model.fc3, nn.Linear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B"}
    assert torch.equal(model(x), reference)
    with torch.no_grad():
        model.fc1.lora_B.normal_()
    adapted = model(x)
    peft.merge_lora(model)
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear
    assert torch.allclose(model(x), adapted, atol=1e-4)


def test_trainable_report_matches_hand_counts():
    model = models.LeNet300100()  # 784*300+300 + 300*100+100 + 100*10+10 = 266,610
    report = peft.trainable_report(model)
    assert (report.trainable, report.total) == (266_610, 266_610) and report.task_bytes == 4 * 266_610
    peft.add_lora(model, ["fc1", "fc2"], rank=4, alpha=8.0, keep_trainable=["fc3"])
    report = peft.trainable_report(model)
    lora = 4 * (784 + 300) + 4 * (300 + 100)  # A (r, in) + B (out, r) per layer
    assert report.trainable == lora + 1010
    assert report.total == 266_610 + lora
    assert report.fraction == pytest.approx((lora + 1010) / (266_610 + lora))
    assert report.task_bytes == 4 * (lora + 1010)
    assert "trainable params" in str(report)


def test_finetune_top_k_and_linear_probe():
    model = models.LeNet300100()
    assert peft.layers(model) == ["fc1", "fc2", "fc3"]
    peft.finetune_top_k(model, 1)
    assert peft.trainable_report(model).trainable == 1010
    peft.finetune_top_k(model, 2)
    assert peft.trainable_report(model).trainable == 30_100 + 1010
    cnn = models.SmallCNN()
    peft.finetune_top_k(cnn, 1)
    assert {n for n, p in cnn.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_bitfit_trains_biases_and_kept_modules():
    model = models.LeNet300100()
    peft.bitfit(model)
    assert peft.trainable_report(model).trainable == 300 + 100 + 10
    peft.bitfit(model, keep_trainable=["fc3"])
    assert peft.trainable_report(model).trainable == 300 + 100 + 1010
    cnn = models.SmallCNN()  # convs have no bias: BitFit trains the BatchNorm shifts and the head bias
    peft.bitfit(cnn)
    assert peft.trainable_report(cnn).trainable == 16 + 32 + 64 + 10


def test_adapters_start_as_identity_and_count():
    torch.manual_seed(0)
    model = models.LeNet300100()
    x = torch.randn(3, 1, 28, 28)
    reference = model(x)
    peft.add_adapters(model, ["fc1", "fc2"], bottleneck=8, keep_trainable=["fc3"])
    assert torch.equal(model(x), reference)
    expected = (300 * 8 + 8 + 8 * 300 + 300) + (100 * 8 + 8 + 8 * 100 + 100) + 1010
    assert peft.trainable_report(model).trainable == expected


def test_lora_trains_with_fit():
    train.seed_everything(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    model = peft.add_lora(models.LeNet300100(), ["fc1"], rank=2, keep_trainable=["fc3"])
    frozen = model.fc1.base.weight.detach().clone()
    train.fit(model, [(x, y)], epochs=3, lr=1e-2, progress=False, device="cpu")
    assert torch.equal(model.fc1.base.weight, frozen)
    assert torch.count_nonzero(model.fc1.lora_B) > 0


def test_matches_the_peft_library():
    hf_peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = models.LeNet300100()
    theirs = hf_peft.get_peft_model(copy.deepcopy(model), hf_peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["fc1"], lora_dropout=0.0))
    ours = peft.add_lora(model, ["fc1"], rank=4, alpha=8.0)
    layer = theirs.base_model.model.fc1
    with torch.no_grad():
        ours.fc1.lora_B.normal_()
        layer.lora_A["default"].weight.copy_(ours.fc1.lora_A)
        layer.lora_B["default"].weight.copy_(ours.fc1.lora_B)
    assert layer.scaling["default"] == ours.fc1.scaling
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(theirs(x), ours(x), atol=1e-5)
    assert peft.trainable_report(ours).trainable == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    merged = theirs.merge_and_unload()
    assert torch.allclose(merged.fc1.weight, ours.fc1.merge().weight, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "rank"), ({"rank": -2}, "rank"), ({"rank": 11}, r"rank must be an int in \[1, 10\]"),
    ({"rank": 2.5}, "rank"), ({"alpha": 0}, "alpha"), ({"alpha": -1.0}, "alpha"),
])
def test_lora_bad_rank_and_alpha(kwargs, match):
    with pytest.raises(ValueError, match=match):
        peft.LoRALinear(nn.Linear(20, 10), **kwargs)


def test_bad_inputs_name_the_valid_choices():
    with pytest.raises(TypeError, match="nn.Linear"):
        peft.LoRALinear(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"valid names: \['fc1', 'fc2', 'fc3'\]"):
        peft.add_lora(models.LeNet300100(), ["fc4"])
    with pytest.raises(ValueError, match="valid names"):
        peft.add_adapters(models.LeNet300100(), ["relu"])
    with pytest.raises(ValueError, match="valid names"):
        peft.unfreeze(models.LeNet300100(), ["head"])
    with pytest.raises(TypeError, match="list or tuple"):
        peft.add_lora(models.LeNet300100(), "fc1")
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
        peft.finetune_top_k(models.LeNet300100(), 4)
    with pytest.raises(ValueError, match="bottleneck"):
        peft.Adapter(16, bottleneck=0)
    with pytest.raises(TypeError, match="model"):
        peft.trainable_report("model")


# ---------------------------------------------------------------------------------------------------------
# Reliability review (issue #8): validate everything first, restore on any failure


def snapshot(model):
    """Module types, requires_grad flags and weights: what 'unchanged' means."""
    return ([(n, type(m)) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            {k: v.detach().clone() for k, v in model.state_dict().items()})


def assert_unchanged(model, before):
    types, flags, state = snapshot(model)
    assert types == before[0] and flags == before[1]
    assert state.keys() == before[2].keys() and all(torch.equal(state[k], before[2][k]) for k in state)


def partly_frozen():
    model = models.LeNet300100()
    model.fc2.requires_grad_(False)  # a non-trivial starting state, so "restored" is not just "all True"
    return model


@pytest.mark.parametrize("call, word", [
    (lambda m: peft.add_lora(m, ["fc1", "fc2"], rank=8, keep_trainable=["head"]), "keep_trainable"),  # the review
    (lambda m: peft.add_lora(m, ["fc1", "fc3"], rank=16), "'fc3'"),  # rank too big for the 2nd target only
    (lambda m: peft.add_lora(m, ["fc1", "fc9"]), "fc9"),
    (lambda m: peft.add_lora(m, ["fc1"], alpha=float("inf")), "alpha"),
    (lambda m: peft.add_lora(m, ["fc1"], alpha=float("nan")), "alpha"),
    (lambda m: peft.add_lora(m, ["fc1"], rank=2.0), "rank"),
    (lambda m: peft.add_lora(m, ["fc1", "fc1"]), "more than once"),
    (lambda m: peft.add_lora(m, []), "at least one"),
    (lambda m: peft.add_lora(m, "fc1"), "targets"),
    (lambda m: peft.add_lora(m, ["fc1"], keep_trainable="fc3"), "keep_trainable"),
    (lambda m: peft.add_lora(m, ["fc1"], keep_trainable=["fc1"]), "overlaps"),
    (lambda m: peft.add_adapters(m, ["fc1", "fc3"], bottleneck=16), "bottleneck"),  # fc3 has 10 outputs
    (lambda m: peft.add_adapters(m, ["fc1"], keep_trainable=["fc4"]), "keep_trainable"),
    (lambda m: peft.add_adapters(m, ["fc1"], bottleneck=True), "bottleneck"),
    (lambda m: peft.bitfit(m, keep_trainable=["head"]), "keep_trainable"),
    (lambda m: peft.bitfit(m, keep_trainable="fc3"), "keep_trainable"),
    (lambda m: peft.finetune_top_k(m, 0), "k must be"),
    (lambda m: peft.finetune_top_k(m, True), "k must be"),
    (lambda m: peft.unfreeze(m, ["fc1", "head"]), "head"),
    (lambda m: peft.unfreeze(m, "fc1"), "names"),
])
def test_review_peft_validates_before_touching_the_model(call, word):
    model = partly_frozen()
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=word):
        call(model)
    assert_unchanged(model, before)


def test_review_peft_fixed_rerun_works():
    model = models.LeNet300100()
    with pytest.raises(ValueError, match="keep_trainable"):
        peft.add_lora(model, ["fc1", "fc2"], rank=8, keep_trainable=["head"])  # typo: the head is 'fc3'
    peft.add_lora(model, ["fc1", "fc2"], rank=8, keep_trainable=["fc3"])  # the corrected cell, re-run
    assert isinstance(model.fc1, peft.LoRALinear) and isinstance(model.fc2, peft.LoRALinear)
    assert peft.trainable_report(model).trainable == 8 * (784 + 300) + 8 * (300 + 100) + 1010


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("method", ["lora", "adapters"])
def test_review_peft_restores_on_injected_failure(monkeypatch, exc, method):
    cls = peft.LoRALinear if method == "lora" else peft.WithAdapter
    real_init, calls = cls.__init__, []

    def failing_init(self, *args, **kwargs):
        calls.append(1)
        real_init(self, *args, **kwargs)  # the base is frozen by now: the restore must undo that too
        if len(calls) == 2:
            raise exc("injected")

    monkeypatch.setattr(cls, "__init__", failing_init)
    model = partly_frozen()
    before = snapshot(model)
    with pytest.raises(exc, match="injected"):
        if method == "lora":
            peft.add_lora(model, ["fc1", "fc2", "fc3"], rank=4, keep_trainable=[])
        else:
            peft.add_adapters(model, ["fc1", "fc2", "fc3"], bottleneck=4)
    assert len(calls) == 2
    assert_unchanged(model, before)
    assert type(model.fc1) is nn.Linear


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("call", [lambda m: peft.finetune_top_k(m, 2), lambda m: peft.bitfit(m, keep_trainable=["fc3"])])
def test_finetune_top_k_and_bitfit_restore_on_failure(monkeypatch, exc, call):
    def freeze_then_fail(model):
        model.requires_grad_(False)  # the model is half-changed when the failure comes
        raise exc("injected")

    model = partly_frozen()
    before = snapshot(model)
    monkeypatch.setattr(peft, "freeze", freeze_then_fail)
    with pytest.raises(exc, match="injected"):
        call(model)
    assert_unchanged(model, before)


def test_merge_lora_restores_on_failure(monkeypatch):
    model = peft.add_lora(models.LeNet300100(), ["fc1", "fc2"], rank=2)
    before = snapshot(model)
    real_merge, calls = peft.LoRALinear.merge, []

    def failing_merge(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return real_merge(self)

    monkeypatch.setattr(peft.LoRALinear, "merge", failing_merge)
    with pytest.raises(RuntimeError):
        peft.merge_lora(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": float("inf")}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"alpha": True}, "alpha"),
    ({"alpha": "8"}, "alpha"), ({"rank": True}, "rank"), ({"rank": "4"}, "rank"), ({"rank": None}, "rank"),
])
def test_review_lora_alpha_inf(kwargs, match):
    with pytest.raises(ValueError, match=match):
        peft.LoRALinear(nn.Linear(20, 10), **kwargs)


def test_bitfit_without_biases_is_refused():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False))
    before = snapshot(model)
    with pytest.raises(ValueError, match="no bias"):
        peft.bitfit(model)
    assert_unchanged(model, before)
    peft.bitfit(model, keep_trainable=["1"])
    assert peft.trainable_report(model).trainable == 8


def test_targets_inside_a_wrapper_are_not_offered():
    model = peft.add_lora(models.LeNet300100(), ["fc1"], rank=2)
    with pytest.raises(ValueError, match=r"valid names: \['fc2', 'fc3'\]"):
        peft.add_lora(model, ["fc1.base"])


def test_adapter_features_checked():
    for features in (0, 2.5, True):
        with pytest.raises(ValueError, match="features"):
            peft.Adapter(features)
