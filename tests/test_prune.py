"""lwkit.prune against torch.nn.utils.prune, channel pruning keeps kept channels exactly, bad inputs."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from lwkit import models, prune


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
    ours = prune.magnitude_mask(layer.weight_orig, amount)
    assert torch.equal(ours, layer.weight_mask.bool())


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


def test_cubic_schedule_and_iterative_levels():
    assert prune.cubic_sparsity(0, 100, 0.9) == 0.0
    assert prune.cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert prune.cubic_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    levels = prune.iterative_levels(0.9, 3)
    assert levels[-1] == pytest.approx(0.9) and levels == sorted(levels)


def test_sensitivity_scan_restores_model():
    torch.manual_seed(0)
    net = models.LeNet300100(hidden=(20, 10))
    before = copy.deepcopy(net.state_dict())
    scan = prune.sensitivity_scan(net, lambda m: prune.sparsity(m), [0.0, 0.5])
    assert set(scan) == {"fc1", "fc2", "fc3"}
    assert scan["fc1"][0] == 0.0 and scan["fc1"][1] > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _trained_bn(net):
    # give BatchNorm non-trivial statistics so slicing them is really tested
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 28, 28))
    return net.eval()


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_channel_pruning_keeps_kept_channels_exactly(norm):
    torch.manual_seed(0)
    net = _trained_bn(models.SmallCNN())
    small = prune.prune_channels(net, {"features.0.0": 0.5}, norm=norm)  # only the first conv loses channels
    keep = prune.keep_channels(prune.channel_scores(net.features[0][0].weight, norm), 0.5)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        full_block = net.features[0](x)  # (4, 16, 28, 28)
        small_block = small[2](small[1](small[0](x)))  # (4, 8, 28, 28)
    assert small_block.shape[1] == 8
    assert torch.equal(small_block, full_block[:, keep])


def test_channel_pruning_whole_model_shapes_and_last_layer():
    torch.manual_seed(0)
    net = _trained_bn(models.SmallCNN())
    small = prune.prune(net, method="l1_channel", sparsity=0.5)
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16), (16, 32)]
    assert small[-1].in_features == 32 * 49
    x = torch.randn(2, 1, 28, 28)
    assert small(x).shape == (2, 10)
    # pruning only the last conv: features of the kept channels and the logits' inputs are unchanged
    last = prune.prune_channels(net, {"features.4.0": 0.25})
    keep = prune.keep_channels(prune.channel_scores(net.features[4][0].weight), 0.25)
    with torch.no_grad():
        full = net.pool(net.features(x))  # (2, 64, 7, 7)
        part = last[:-2](x)  # (2, 48, 7, 7)
    assert torch.equal(part, full[:, keep])
    # and the classifier sees the same numbers when the dropped channels were zero anyway
    with torch.no_grad():
        zeroed = torch.zeros_like(full)
        zeroed[:, keep] = full[:, keep]
        assert torch.allclose(last(x), net.classifier(zeroed.flatten(1)), atol=1e-5)


def test_channel_pruned_model_reloads_without_lwkit(tmp_path):
    torch.manual_seed(0)
    small = prune.prune(models.SmallCNN(), method="l2_channel", sparsity=0.5)
    path = tmp_path / "small.pt"
    torch.save(small, path)
    x = torch.randn(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    torch.save(small(x).detach(), tmp_path / "y.pt")
    code = ("import sys, torch; sys.modules['lwkit'] = None; d = sys.argv[1]; "
            "m = torch.load(d + '/small.pt', weights_only=False); "
            "assert torch.equal(m(torch.load(d + '/x.pt')), torch.load(d + '/y.pt')); print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


def test_sparse_linear_matches_dense():
    torch.manual_seed(0)
    net = prune.prune(models.LeNet300100(), method="magnitude", sparsity=0.9)
    fast = prune.to_sparse_csr(net)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5)
    assert fast.fc1.weight.layout == torch.sparse_csr


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True, float("nan")])
def test_bad_sparsity_raises(bad):
    with pytest.raises(ValueError, match="sparsity must be a number in"):
        prune.magnitude_mask(torch.randn(4, 4), bad)
    with pytest.raises(ValueError, match="sparsity"):
        prune.prune(models.LeNet300100(), sparsity=bad)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        prune.magnitude_mask([1.0, 2.0], 0.5)
    with pytest.raises(TypeError, match="nn.Module or a tensor"):
        prune.sparsity("model")
    with pytest.raises(ValueError, match="method must be one of"):
        prune.prune(models.LeNet300100(), method="fdr")
    with pytest.raises(ValueError, match="no prunable layers"):
        prune.layer_masks(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="not prunable layers"):
        prune.layer_masks(models.LeNet300100(), 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match="scope must be"):
        prune.layer_masks(models.LeNet300100(), 0.5, scope="local")
    with pytest.raises(TypeError, match="supports models with .features"):
        prune.prune(models.LeNet300100(), method="l1_channel", sparsity=0.5)
    with pytest.raises(ValueError, match="would remove all 16 channels"):
        prune.prune_channels(models.SmallCNN(), 0.99)
    with pytest.raises(TypeError, match="grouped/depthwise"):
        net = models.SmallCNN(channels=(16, 32))
        net.features[2] = models.ConvBNReLU(16, 32, groups=16)
        prune.prune_channels(net, 0.5)
    with pytest.raises(ValueError, match="shape"):
        prune.apply_masks(models.LeNet300100(), {"fc1": torch.ones(3, 3, dtype=torch.bool)})
