"""lwkit.channels: kept channels are kept exactly, scores and choices match torch's ln_structured, dtype and
device are preserved and the input model is never changed."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from lwkit import channels, models, prune


def _trained_bn(net):
    # give BatchNorm non-trivial statistics so slicing them is really tested
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 28, 28, dtype=next(net.parameters()).dtype))
    return net.eval()


def test_old_names_still_work():
    assert prune.prune_channels is channels.prune_channels
    assert prune.keep_channels is channels.keep_channels and prune.channel_scores is channels.channel_scores
    from lwkit.prune import prune_channels  # noqa: F401  (the import form works too)
    with pytest.raises(AttributeError, match="no attribute 'prune_chanels'"):
        prune.prune_chanels  # noqa: B018


def test_channel_scores_hand_example():
    w = torch.tensor([[[[1.0, -2.0]]], [[[3.0, 4.0]]], [[[0.0, -0.5]]]])  # (3, 1, 1, 2)
    assert torch.equal(channels.channel_scores(w, "l1"), torch.tensor([3.0, 7.0, 0.5]))
    assert torch.allclose(channels.channel_scores(w, "l2"), torch.tensor([5.0**0.5, 5.0, 0.5]))
    assert torch.equal(channels.keep_channels(channels.channel_scores(w), 1 / 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("norm, n", [("l1", 1), ("l2", 2)])
@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.75])
def test_keep_channels_matches_torch_ln_structured(norm, n, amount):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    w = conv.weight.detach().clone()
    tprune.ln_structured(conv, "weight", amount=amount, n=n, dim=0)
    kept_by_torch = conv.weight_mask.flatten(1).all(1).nonzero().flatten()
    assert torch.equal(channels.keep_channels(channels.channel_scores(w, norm), amount), kept_by_torch)


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_review_prune_channels_keeps_dtype_and_leaves_the_model_alone(dtype):
    torch.manual_seed(0)
    net = _trained_bn(models.SmallCNN().to(dtype))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    small = prune.prune_channels(net, 0.5)
    assert {p.dtype for p in small.parameters()} == {dtype}
    assert all(b.dtype == before[k].dtype for k, b in zip(before, net.state_dict().values()))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # input not mutated
    assert net.training is False and small.training is False
    x = torch.randn(2, 1, 28, 28, dtype=dtype)
    assert small(x).dtype == dtype
    if dtype == torch.float64:  # the kept channels carry exactly the original float64 numbers
        keep = prune.keep_channels(prune.channel_scores(net.features[0][0].weight), 0.5)
        assert torch.equal(small[0].weight, net.features[0][0].weight[keep])


def test_prune_channels_does_not_mutate_or_share_storage():
    torch.manual_seed(0)
    net = _trained_bn(models.SmallCNN())
    ref = copy.deepcopy(net)
    small = prune.prune_channels(net, 0.0)  # nothing removed: an equal, independent copy
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-6)
        small[0].weight.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="would remove all 16 channels"):
        prune.prune_channels(models.SmallCNN(), 0.99)
    with pytest.raises(TypeError, match="grouped/depthwise"):
        net = models.SmallCNN(channels=(16, 32))
        net.features[2] = models.ConvBNReLU(16, 32, groups=16)
        prune.prune_channels(net, 0.5)
    with pytest.raises(ValueError, match=r"sparsity names \['features.9'\] are not convs"):
        prune.prune_channels(models.SmallCNN(), {"features.9": 0.5})
    with pytest.raises((ValueError, TypeError), match=r"sparsity\['features.0.0'\]"):
        prune.prune_channels(models.SmallCNN(), {"features.0.0": 1.5})
    with pytest.raises(ValueError, match="norm must be"):
        prune.prune_channels(models.SmallCNN(), 0.5, norm="l3")
    with pytest.raises(ValueError, match="NaN/inf"):
        channels.channel_scores(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=">= 2 dims"):
        channels.channel_scores(torch.randn(5))
    with pytest.raises(ValueError, match="1-D"):
        channels.keep_channels(torch.randn(2, 2), 0.5)
    with pytest.raises(TypeError, match="model must be"):
        channels.prune_channels("cnn", 0.5)
