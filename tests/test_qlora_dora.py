"""QLoRA's 4-bit base, DoRA, fine-tuning memory and the few-label task, each against a reference."""

import copy

import pytest
import torch
from torch import nn

from lwkit import data, dora, models, peft, qlora, quant, trainmem, transfer


def test_int4_groups_equal_lwkit_quant_per_group():
    torch.manual_seed(0)
    lin = nn.Linear(300, 100)
    q = qlora.Linear4bit(lin, group_size=100, levels="int4")
    ref = quant.fake_quantize(lin.weight.detach().reshape(-1, 100), bits=4, symmetric=True, axis=0)
    assert torch.equal(q.weight.reshape(-1, 100), ref)


def test_nf4_codes_are_the_nearest_level_and_bytes_are_4_bits_plus_scales():
    torch.manual_seed(0)
    lin = nn.Linear(64, 4, bias=False)
    q = qlora.Linear4bit(lin, group_size=64, levels="nf4")
    w = lin.weight.detach()  # each row is one group of 64
    absmax = w.abs().amax(dim=1, keepdim=True)
    nearest = qlora.NF4[(w[..., None] / absmax[..., None] - qlora.NF4).abs().argmin(-1)] * absmax
    assert torch.allclose(q.weight, nearest, atol=1e-6)
    assert q.storage_bytes() == 256 // 2 + 4 * 4  # 4 bits per weight + one fp32 scale per group
    assert q.bits_per_weight() == pytest.approx(4 + 32 / 64)


def test_double_quant_shrinks_scales_and_stays_close():
    torch.manual_seed(0)
    lin = nn.Linear(784, 300)
    single = qlora.Linear4bit(lin, group_size=64)
    double = qlora.Linear4bit(lin, group_size=64, double_quant=True)
    assert double.bits_per_weight() < 4.2 < single.bits_per_weight()
    assert torch.allclose(double.group_scales(), single.group_scales(), rtol=0.02, atol=1e-4)


def test_qlora_starts_at_the_quantized_base_and_merges():
    torch.manual_seed(0)
    base = models.LeNet300100()
    m = qlora.add_qlora(copy.deepcopy(base), ["fc1", "fc2"], rank=4, alpha=8, keep_trainable=["fc3"])
    ref = qlora.quantize_base(copy.deepcopy(base), ["fc1", "fc2"])
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(m(x), ref(x))
    with torch.no_grad():
        m.fc1.lora_B.normal_(std=0.01)
    merged = peft.merge_lora(copy.deepcopy(m))
    assert type(merged.fc1) is nn.Linear and torch.allclose(merged(x), m(x), atol=1e-5)
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained == {"fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B", "fc3.weight", "fc3.bias"}


def test_dora_equals_peft_dora():
    hf = dora.hf_peft()
    if hf is None:
        pytest.skip("peft is not installed")
    torch.manual_seed(0)
    base = models.LeNet300100()
    theirs = hf.get_peft_model(copy.deepcopy(base), hf.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1"],
                                                                   use_dora=True, lora_dropout=0.0))
    ours = dora.add_dora(copy.deepcopy(base), ["fc1"], rank=4, alpha=8)
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(theirs(x), ours(x), atol=1e-6)  # B = 0: both equal the base
    tf = theirs.base_model.model.fc1
    assert torch.allclose(tf.lora_magnitude_vector["default"].weight, ours.fc1.magnitude)
    with torch.no_grad():
        ours.fc1.lora_B.normal_(std=0.1)
        ours.fc1.magnitude.mul_(1.1)
        tf.lora_A["default"].weight.copy_(ours.fc1.lora_A)
        tf.lora_B["default"].weight.copy_(ours.fc1.lora_B)
        tf.lora_magnitude_vector["default"].weight.copy_(ours.fc1.magnitude)
        assert torch.allclose(theirs(x), ours(x), atol=1e-5)
        assert torch.allclose(theirs.merge_and_unload().fc1.weight, ours.fc1.merge().weight, atol=1e-6)
    ours(x).sum().backward()
    assert ours.fc1.magnitude.grad is not None and ours.fc1.lora_A.grad is not None


def test_dora_starts_at_its_base_and_merges():
    torch.manual_seed(0)
    base = nn.Linear(20, 7)
    d = dora.DoRALinear(copy.deepcopy(base), rank=2, alpha=4)
    x = torch.randn(5, 20)
    assert torch.allclose(d(x), base(x), atol=1e-6)
    with torch.no_grad():
        d.lora_B.normal_()
    assert torch.allclose(d.merge()(x), d(x), atol=1e-5)


def test_training_memory_matches_adamw_state_and_a_frozen_probe_saves_little():
    torch.manual_seed(0)
    model = models.LeNet300100()
    x = torch.randn(16, 1, 28, 28)
    opt = torch.optim.AdamW(model.parameters())
    model(x).sum().backward()
    opt.step()
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
    full = trainmem.training_memory(model, x)
    assert full.optimizer_states == state and full.gradients == full.weights
    probe = trainmem.training_memory(peft.finetune_top_k(models.LeNet300100(), 1), x)
    assert probe.activations == 16 * 100 * 4  # only fc3's input is saved
    assert probe.activations < full.activations and probe.total < full.total


def test_few_labels_is_balanced_and_seeded():
    splits = data.fashion_mnist(classes=(5, 6))
    few = transfer.few_labels(splits, 3, seed=1)
    assert sorted(few.y_train.tolist()) == [5, 5, 5, 6, 6, 6]
    assert torch.equal(few.x_train, transfer.few_labels(splits, 3, seed=1).x_train)
    assert torch.equal(few.x_test, splits.x_test)
    model = peft.finetune_top_k(models.LeNet300100(), 1)
    before = model.fc1.weight.clone()
    transfer.fit_steps(model, few, steps=3, lr=1e-2)
    assert torch.equal(model.fc1.weight, before)
