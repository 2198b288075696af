import pytest
import torch

from lwkit import data, measure, models


def test_lenet_300_100_shape_and_params():
    model = models.build("mlp")
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    # 784*300+300 + 300*100+100 + 100*10+10, by hand
    assert measure.count_params(model) == 266_610


def test_small_cnn_shape_and_blocks():
    model = models.build("cnn")
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.bias is None for c in convs), "conv-bn blocks carry their bias in BatchNorm"
    narrow = models.SmallCNN(channels=(8, 8))
    assert narrow(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="'resnet'"):
        models.build("resnet")
    with pytest.raises(ValueError, match="channels"):
        models.SmallCNN(channels=(16, 0))


# ---------------------------------------------------------------------------------------------------------
# MobileNet (notebook 07)


def test_conv_cost_formulas_by_hand():
    assert models.conv_params(3, 8, 3) == 8 * 3 * 9
    assert models.conv_params(8, 8, 3, groups=8) == 8 * 9  # depthwise: one 3x3 filter per channel
    assert models.conv_macs(8, 16, 1, (5, 5)) == 8 * 16 * 25
    assert models.separable_mac_ratio(32, 3) == 1 / 32 + 1 / 9


@pytest.mark.parametrize("c_in, c_out, stride, hw", [(8, 16, 1, 10), (16, 32, 2, 14), (3, 5, 1, 7)])
def test_depthwise_separable_counted_equals_analytic(c_in, c_out, stride, hw):
    x = torch.zeros(1, c_in, hw, hw)
    out_hw = ((hw + 2 - 3) // stride + 1,) * 2
    separable = models.DepthwiseSeparable(c_in, c_out, stride)
    standard = models.DepthwiseSeparable(c_in, c_out, stride, depthwise=False)
    dw = models.conv_macs(c_in, c_in, 3, out_hw, groups=c_in) + models.conv_macs(c_in, c_out, 1, out_hw)
    full = models.conv_macs(c_in, c_out, 3, out_hw)
    assert measure.count_macs(separable, x) == dw
    assert measure.count_macs(standard, x) == full
    assert dw / full == pytest.approx(models.separable_mac_ratio(c_out, 3))  # exact: 1/N + 1/k^2
    assert sum(p.numel() for m in separable.modules() if isinstance(m, torch.nn.Conv2d) for p in [m.weight]) == \
        models.conv_params(c_in, c_in, 3, groups=c_in) + models.conv_params(c_in, c_out, 1)


def test_inverted_residual_shapes_residual_and_linear_bottleneck():
    block = models.InvertedResidual(16, 16, 1, 4).eval()
    assert block.use_residual and block.hidden_channels == 64
    assert isinstance(block.project[-1], torch.nn.BatchNorm2d), "no activation after the projection"
    assert block(torch.randn(2, 16, 7, 7)).shape == (2, 16, 7, 7)
    down = models.InvertedResidual(16, 24, 2, 6)
    assert not down.use_residual and down(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)
    assert models.InvertedResidual(8, 8, 1, 1).expand is None


def test_inverted_residual_counted_equals_analytic():
    block = models.InvertedResidual(16, 24, 2, 4)
    x = torch.zeros(1, 16, 14, 14)
    expected = (models.conv_macs(16, 64, 1, (14, 14)) + models.conv_macs(64, 64, 3, (7, 7), groups=64)
                + models.conv_macs(64, 24, 1, (7, 7)))
    assert measure.count_macs(block, x) == expected


def test_mobilenet_shapes_and_twin_mac_ratio():
    net, twin = models.MobileNet(), models.MobileNet(depthwise=False)
    x = torch.zeros(2, 1, 28, 28)
    assert net(x).shape == twin(x).shape == (2, 10)
    ratio = measure.count_macs(twin, x[:1]) / measure.count_macs(net, x[:1])
    assert ratio >= 7, ratio
    assert all(b.depthwise[0].groups == 1 for b in twin.blocks())


def test_mobilenet_alpha_and_resolution_scaling():
    x = torch.zeros(1, 1, 28, 28)
    base, half = models.MobileNet(), models.MobileNet(0.5)
    ratio = measure.count_params(base) / measure.count_params(half)
    assert 3.0 <= ratio <= 4.2, "params fall about as alpha^2 (the classifier's bias and rounding don't)"
    low = models.MobileNet(resolution=14)
    assert measure.count_params(low) == measure.count_params(base)
    macs_ratio = measure.count_macs(base, x) / measure.count_macs(low, x)
    assert 3.0 <= macs_ratio <= 4.5, "MACs fall about as resolution^2 (4x fewer pixels)"
    assert low(x).shape == (1, 10)


def test_hidden_channel_pruning_keeps_kept_channels_outputs():
    torch.manual_seed(0)
    block = models.InvertedResidual(8, 8, 1, 4).eval()
    for bn in (block.expand[1], block.depthwise[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 8, 6, 6)
    keep = torch.tensor([0, 3, 5, 10, 31])
    with torch.no_grad():
        hidden = block.depthwise(block.expand(x))[:, keep]  # (3, 5, 6, 6): the kept channels, before slicing
        # The projection of the kept channels alone, from the unsliced weights:
        expected = torch.nn.functional.conv2d(hidden, block.project[0].weight[:, keep])
        expected = block.project[1](expected) + x
        block.prune_hidden(keep)
        assert block.hidden_channels == 5 and block.depthwise[0].groups == 5
        assert torch.allclose(block.depthwise(block.expand(x)), hidden, atol=1e-6)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_prune_hidden_model_macs_and_validation():
    net = models.MobileNet().eval()
    x = torch.randn(2, 1, 28, 28)
    pruned = models.prune_hidden(net, 0.5)
    assert pruned(x).shape == (2, 10)
    assert measure.count_macs(pruned, x[:1]) < 0.7 * measure.count_macs(net, x[:1])
    assert [b.hidden_channels for b in net.blocks()][1] == 64, "the original is untouched"
    assert [b.hidden_channels for b in pruned.blocks()][1] == 32
    assert models.prune_hidden(net, 0.0)(x).allclose(net(x)), "sparsity 0 keeps the function"
    with pytest.raises(ValueError, match="sparsity"):
        models.prune_hidden(net, 1.0)
    with pytest.raises(ValueError, match="score"):
        models.prune_hidden(net, 0.5, score="l7")
    with pytest.raises(TypeError, match="model"):
        models.prune_hidden("net", 0.5)
    with pytest.raises(ValueError, match="no inverted residual"):
        models.prune_hidden(models.SmallCNN(), 0.5)
    block = net.blocks()[1]
    with pytest.raises(ValueError, match="keep"):
        block.prune_hidden(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="keep"):
        block.prune_hidden(torch.tensor([64]))
    with pytest.raises(TypeError, match="keep"):
        block.prune_hidden(torch.ones(64, dtype=torch.bool))
    assert block.hidden_channels == 64, "a rejected keep leaves the block as it was"
    with pytest.raises(ValueError, match="expand_ratio=1"):
        net.blocks()[0].prune_hidden(torch.tensor([0]))


def test_bad_mobilenet_arguments_name_the_argument():
    for kwargs, word in [({"alpha": 0}, "alpha"), ({"alpha": "1"}, "alpha"), ({"resolution": 4}, "resolution"),
                         ({"activation": "gelu"}, "activation"), ({"depthwise": 1}, "depthwise"),
                         ({"dropout": 1.0}, "dropout"), ({"settings": ()}, "settings")]:
        with pytest.raises((ValueError, TypeError), match=word):
            models.MobileNet(**kwargs)
    with pytest.raises(ValueError, match="stride"):
        models.InvertedResidual(8, 8, 3)
    with pytest.raises(ValueError, match="expand_ratio"):
        models.InvertedResidual(8, 8, 1, 0.5)
    with pytest.raises(ValueError, match="groups"):
        models.conv_params(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="out_hw"):
        models.conv_macs(6, 8, 3, (4,))
    with pytest.raises(ValueError, match="variant"):
        models.pretrained("resnet")


def test_pretrained_checkpoints_verify_and_load():
    for variant in models.PRETRAINED:
        net = models.pretrained(variant)
        assert net(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("variant", sorted(models.PRUNED_VARIANTS))
def test_shipped_pruned_mobilenets_are_the_base_with_their_hidden_channels_cut(variant):
    import json

    base, pruned = models.pretrained("mobilenet"), models.pretrained(variant)
    sparsity = models.PRUNED_VARIANTS[variant][1]
    hidden = [b.hidden_channels for b in base.blocks()]
    kept = [b.hidden_channels for b in pruned.blocks()]
    assert all(k < h for k, h in zip(kept[1:], hidden[1:])), (hidden, kept)
    assert sum(kept[1:]) <= (1 - sparsity + 0.01) * sum(hidden[1:]), (hidden, kept)
    assert measure.count_params(pruned) < (1 - sparsity / 2) * measure.count_params(base)
    meta = json.loads((data.data_dir() / f"mobilenet_{variant}.json").read_text())
    assert meta["sha256"] == models.PRETRAINED[variant]
    assert meta["meta"]["kwargs"]["hidden_sparsity"] == sparsity
