"""lwkit.prune against torch.nn.utils.prune and hand computations; failures leave the model as it was."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from lwkit import models, prune


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_bits(before, model):
    after = model.state_dict()
    return before.keys() == after.keys() and all(
        before[k].dtype == after[k].dtype and torch.equal(before[k].view(torch.uint8) if before[k].dim() else before[k],
                                                          after[k].view(torch.uint8) if after[k].dim() else after[k])
        for k in before)


def _loader(n_batches=6, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_batches)]


def _interrupt_at(k, exc=KeyboardInterrupt):
    """A loss_fn for train.fit that raises `exc` at its k-th call (1-based)."""
    calls = []
    ce = nn.CrossEntropyLoss()

    def loss_fn(logits, y, x):
        calls.append(1)
        if len(calls) == k:
            raise exc()
        return ce(logits, y)
    return loss_fn


def test_magnitude_mask_hand_example():
    w = torch.tensor([[0.1, -2.0, 0.3, 4.0],
                      [-0.5, 0.05, 6.0, -0.2],
                      [1.0, -1.5, 0.0, 0.7],
                      [3.0, 0.4, -0.6, 0.8]])
    mask = prune.magnitude_mask(w, 0.5)  # the 8 smallest |w| go
    expected = torch.tensor([[0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 1], [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert prune.sparsity(w * mask) == 0.5 + 0.0  # the 0.0 already counted among the pruned


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(7,), (30, 20), (8, 4, 3, 3)])
def test_magnitude_mask_matches_torch_l1_unstructured(amount, shape):
    torch.manual_seed(0)
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(torch.randn(shape))
    tprune.l1_unstructured(layer, "weight", amount=amount)
    if not layer.weight_mask.any():  # torch empties the tensor; lwkit refuses, naming the sparsity
        with pytest.raises(ValueError, match=f"sparsity {amount} would remove all"):
            prune.magnitude_mask(layer.weight_orig, amount)
        return
    assert torch.equal(prune.magnitude_mask(layer.weight_orig, amount), layer.weight_mask.bool())


@pytest.mark.parametrize("amount", [0.2, 0.8, 0.95])
def test_global_masks_match_torch_global_unstructured(amount):
    torch.manual_seed(1)
    net = models.LeNet300100(hidden=(40, 20))
    ref = copy.deepcopy(net)
    tprune.global_unstructured([(ref.fc1, "weight"), (ref.fc2, "weight"), (ref.fc3, "weight")],
                               pruning_method=tprune.L1Unstructured, amount=amount)
    masks = prune.layer_masks(net, amount, scope="global")
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(masks[name], getattr(ref, name).weight_mask.bool()), name
    # the threshold is the largest pruned magnitude: everything pruned is <= it, everything kept >= it
    t = prune.global_threshold({n: getattr(net, n).weight for n in ("fc1", "fc2", "fc3")}, amount)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(net, name).weight.abs()
        assert (w[~masks[name]] <= t).all() and (w[masks[name]] >= t).all()


def test_layer_masks_and_sparsity_of_model():
    torch.manual_seed(0)
    net = models.LeNet300100()
    pruned = prune.prune(net, method="magnitude", sparsity=0.9)
    report = prune.sparsity_report(pruned)
    assert [r["name"] for r in report.rows] == ["fc1", "fc2", "fc3"]
    assert all(abs(r["sparsity"] - 0.9) < 1e-3 for r in report.rows)
    assert abs(prune.sparsity(pruned) - 0.9) < 1e-3
    assert prune.sparsity(net) == 0.0  # the original is untouched
    assert "fc1" in str(report)
    glob = prune.prune(net, method="global", sparsity=0.9)
    assert abs(prune.sparsity(glob) - 0.9) < 1e-5
    rnd = prune.prune(net, method="random", sparsity=0.5)
    assert abs(prune.sparsity(rnd) - 0.5) < 1e-3


def test_per_layer_dict_prunes_only_the_named_layers():
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    masks = prune.layer_masks(net, {"fc3": 0.5, "fc1": 0.25})
    assert list(masks) == ["fc1", "fc3"]  # model order
    assert torch.equal(masks["fc3"], prune.magnitude_mask(net.fc3.weight, 0.5))
    pruned = prune.prune(net, "magnitude", {"fc2": 0.5})
    assert prune.sparsity(pruned.fc2.weight) == 0.5 and prune.sparsity(pruned.fc1.weight) == 0.0
    with pytest.raises(ValueError, match="give one for each layer"):
        prune.layer_masks(net, {"fc1": 0.5}, layers=["fc1", "fc2"])


def test_cubic_schedule_and_iterative_levels():
    assert prune.cubic_sparsity(0, 100, 0.9) == 0.0
    assert prune.cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert prune.cubic_sparsity(150, 100, 0.9) == pytest.approx(0.9)  # holds s_f after T
    assert prune.cubic_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    levels = prune.iterative_levels(0.9, 3)
    assert levels[-1] == pytest.approx(0.9) and levels == sorted(levels)
    with pytest.raises(ValueError, match="step must be"):
        prune.cubic_sparsity(-1, 100, 0.9)


def test_sensitivity_scan_restores_model():
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    before = _state(net)
    scan = prune.sensitivity_scan(net, lambda m: prune.sparsity(m), [0.0, 0.5])
    assert set(scan) == {"fc1", "fc2", "fc3"}
    assert scan["fc1"][0] == 0.0 and scan["fc1"][1] > 0
    assert _same_bits(before, net)
    assert list(prune.sensitivity_scan(net, lambda m: 0.0, [0.5], layers="fc2")) == ["fc2"]


def test_fine_tune_keeps_pruned_weights_at_zero():
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    masks = prune.layer_masks(net, 0.7, scope="global")
    prune.fine_tune(net, masks, _loader(), epochs=1, lr=1e-2, progress=False)
    for name, mask in masks.items():
        assert (getattr(net, name).weight[~mask] == 0).all()
    assert abs(prune.sparsity(net) - 0.7) < 1e-3


def test_iterative_and_gradual_reach_the_final_sparsity():
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    masks = prune.iterative_prune(copy.deepcopy(net), _loader(), final_sparsity=0.8, rounds=2, progress=False)
    assert sum(int((~m).sum()) for m in masks.values()) == sum(round(0.8 * m.numel()) for m in masks.values())
    grad = copy.deepcopy(net)
    prune.gradual_prune(grad, _loader(), final_sparsity=0.8, epochs=2, prune_every=2, scope="global", progress=False)
    assert abs(prune.sparsity(grad) - 0.8) < 1e-3


# --- regression tests for the reliability review ------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_review_sensitivity_scan_restores_on_interrupt(k, exc):
    torch.manual_seed(0)
    mlp = models.LeNet300100()
    before = _state(mlp)
    calls = []

    def evaluate(m):
        calls.append(1)
        if len(calls) == k:
            raise exc()  # the learner interrupts the kernel during the scan
        return 0.0
    with pytest.raises(exc):
        prune.sensitivity_scan(mlp, evaluate, [0.5, 0.9, 0.99])
    assert _same_bits(before, mlp)
    assert prune.sparsity(mlp.fc1.weight) == 0.0


def test_review_sensitivity_scan_checks_before_evaluating():
    mlp = models.LeNet300100()
    calls = []
    with pytest.raises(ValueError, match="'fc3'"):  # 0.9995 empties the 1,000-weight fc3
        prune.sensitivity_scan(mlp, lambda m: calls.append(1) or 0.0, [0.5, 0.9995])
    with pytest.raises(ValueError, match="fc9"):
        prune.sensitivity_scan(mlp, lambda m: calls.append(1) or 0.0, [0.5], layers=["fc1", "fc9"])
    assert calls == []  # nothing was evaluated, nothing pruned


@pytest.mark.parametrize("k", [1, 3, 6])
def test_review_fine_tune_restores_on_interrupt(k):
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    masks = prune.layer_masks(net, 0.5)
    before = _state(net)
    with pytest.raises(KeyboardInterrupt):
        prune.fine_tune(net, masks, _loader(), epochs=1, lr=1e-2, loss_fn=_interrupt_at(k), progress=False)
    assert _same_bits(before, net)
    with pytest.raises(ValueError, match="lr"):  # a bad fit argument: the masks were applied, then undone
        prune.fine_tune(net, masks, _loader(), lr=-1.0, progress=False)
    assert _same_bits(before, net)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_review_iterative_and_gradual_restore_on_interrupt(k):
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    before = _state(net)
    with pytest.raises(KeyboardInterrupt):
        prune.iterative_prune(net, _loader(), final_sparsity=0.8, rounds=2, loss_fn=_interrupt_at(k), progress=False)
    assert _same_bits(before, net)
    with pytest.raises(KeyboardInterrupt):
        prune.gradual_prune(net, _loader(), final_sparsity=0.8, epochs=2, prune_every=2, loss_fn=_interrupt_at(k),
                            progress=False)
    assert _same_bits(before, net)


def test_review_apply_masks_validates_every_mask_first():
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    before = _state(net)
    good = torch.ones(20, 784, dtype=torch.bool)
    bad_cases = [
        ({"fc1": good, "fc2": torch.full((10, 20), 0.5)}, TypeError, "bool tensor"),  # 0.5 would halve weights
        ({"fc1": good, "fc2": torch.full((10, 20), 2)}, TypeError, "bool tensor"),  # 2 would double them
        ({"fc1": good, "fc2": [[True] * 20] * 10}, TypeError, "bool tensor"),
        ({"fc1": good, "fc2": torch.ones(3, 3, dtype=torch.bool)}, ValueError, "shape"),
        ({"fc1": good, "fc9": good}, ValueError, "fc9"),
        ({"fc1": good, "fc3": torch.zeros(10, 10, dtype=torch.bool)}, ValueError, "removes all 100 weights"),
        ({}, ValueError, "empty"),
        ([("fc1", good)], TypeError, "dict"),
    ]
    for masks, exc, pattern in bad_cases:
        with pytest.raises(exc, match=pattern):
            prune.apply_masks(net, masks)
        assert _same_bits(before, net), pattern  # fc1 is listed first, yet untouched


@pytest.mark.parametrize("call", [
    lambda net: prune.magnitude_mask(net.fc3.weight, 0.9995),
    lambda net: prune.random_mask(net.fc3.weight, 0.9995),
    lambda net: prune.layer_masks(net, 0.9995),
    lambda net: prune.layer_masks(net, {"fc1": 0.5, "fc3": 0.9995}),
    lambda net: prune.layer_masks(net, 0.9995, criterion="random"),
    lambda net: prune.prune(net, "magnitude", 0.9995),
    lambda net: prune.prune(net, "random", 0.9995),
])
def test_review_sparsity_below_one_never_empties_a_layer(call):
    net = models.LeNet300100()
    with pytest.raises(ValueError, match="would remove all 1000 weights of"):
        call(net)


def test_review_global_cut_never_empties_a_small_layer():
    torch.manual_seed(0)
    net = models.LeNet300100()
    with torch.no_grad():
        net.fc3.weight.mul_(1e-4)  # a small layer of small weights: a moderate global cut takes all of it
    with pytest.raises(ValueError, match="global sparsity 0.5 would remove all 1000 weights of 'fc3'"):
        prune.layer_masks(net, 0.5, scope="global")
    with pytest.raises(ValueError, match="'fc3'"):
        prune.prune(net, "global", 0.5)
    masks = prune.layer_masks(net, 0.5, scope="global", layers=["fc1", "fc2"])  # the way out the message names
    assert set(masks) == {"fc1", "fc2"}


def test_review_sparsity_report_shows_layers_that_are_not_empty():
    torch.manual_seed(0)
    net = models.LeNet300100()
    with torch.no_grad():
        net.fc2.weight.view(-1)[15:] = 0  # 15 of 30,000 left
        net.fc3.weight.zero_()
    text = str(prune.sparsity_report(net))
    fc2 = next(line for line in text.splitlines() if line.startswith("fc2"))
    fc3 = next(line for line in text.splitlines() if line.startswith("fc3"))
    assert fc2.endswith("99.95%") and "100.0" not in fc2
    assert fc3.endswith("100.0%")
    assert next(line for line in text.splitlines() if line.startswith("fc1")).endswith("0.0%")


@pytest.mark.parametrize("layers", ["fc1", ["fc1"], ("fc1",), ["fc1", "fc1"]])
def test_review_layer_masks_takes_one_name_as_a_list(layers):
    masks = prune.layer_masks(models.LeNet300100(), 0.5, layers=layers)
    assert list(masks) == ["fc1"]
    with pytest.raises(ValueError, match=r"\['fc9'\] are not prunable layers.*'fc1', 'fc2', 'fc3'"):
        prune.layer_masks(models.LeNet300100(), 0.5, layers="fc9")


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True, float("nan"), float("inf"), None])
def test_bad_sparsity_raises(bad):
    with pytest.raises((ValueError, TypeError), match="sparsity must be a number in"):
        prune.magnitude_mask(torch.randn(4, 4), bad)
    with pytest.raises((ValueError, TypeError), match="sparsity"):
        prune.prune(models.LeNet300100(), sparsity=bad)
    with pytest.raises((ValueError, TypeError), match=r"sparsity\['fc1'\]"):
        prune.layer_masks(models.LeNet300100(), {"fc1": bad})


def test_bad_inputs_raise_clear_errors():
    net = models.LeNet300100()
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        prune.magnitude_mask([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="NaN/inf"):
        prune.magnitude_mask(torch.tensor([1.0, float("nan"), 2.0]), 0.5)
    with pytest.raises(ValueError, match="empty"):
        prune.magnitude_mask(torch.empty(0, 3), 0.5)
    with pytest.raises(TypeError, match="nn.Module or a tensor"):
        prune.sparsity("model")
    with pytest.raises(ValueError, match="method must be one of"):
        prune.prune(net, method="fdr")
    with pytest.raises(ValueError, match="no prunable layers"):
        prune.layer_masks(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="not prunable layers"):
        prune.layer_masks(net, 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match="scope must be"):
        prune.layer_masks(net, 0.5, scope="local")
    with pytest.raises(TypeError, match="generator"):
        prune.random_mask(torch.randn(4), 0.5, generator=0)
    with pytest.raises(TypeError, match="supports models with .features"):
        prune.prune(net, method="l1_channel", sparsity=0.5)
    with pytest.raises(TypeError, match="global"):
        prune.prune(net, method="global", sparsity={"fc1": 0.5})
    with pytest.raises(TypeError, match="scope"):
        prune.prune(net, method="magnitude", sparsity=0.5, scope="global")


def test_restore_also_undoes_a_cast_or_move_made_by_training():
    # train.fit moves the model to the default device (a GPU where there is one); a failure must undo that too
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    masks = prune.layer_masks(net, 0.5)
    before = _state(net)

    def loss_fn(logits, y, x):
        net.double()  # stands in for model.to(another device): every tensor is replaced
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prune.fine_tune(net, masks, _loader(), epochs=1, loss_fn=loss_fn, progress=False)
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert _same_bits(before, net) and net.training is True and net.fc1.weight.grad is None
