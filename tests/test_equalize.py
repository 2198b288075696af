import pytest
import torch
from torch import nn

from lwkit import equalize as eq
from lwkit import models, quant


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BatchNorm statistics (the fresh ones are identities and hide folding bugs)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.05)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 3 + 0.05)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model.eval()


def test_fold_bn_weights_matches_conv_then_bn():
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), _random_bn(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(2, 3, 5, 5)
    w, b = eq.fold_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    with torch.no_grad():
        assert torch.allclose(nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-5)
    with pytest.raises(ValueError, match="running_var"):
        eq.fold_bn_weights(conv.weight, None, bn.running_mean, torch.ones(3), None, None)


def test_fold_batchnorm_preserves_the_model():
    net = _random_bn(models.MobileNet(0.5))
    folded = eq.fold_batchnorm(net)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "the original keeps its BatchNorms"
    with pytest.raises(ValueError, match="no Conv2d followed by BatchNorm2d"):
        eq.fold_batchnorm(nn.Sequential(nn.Linear(2, 2)))


def test_equalization_preserves_the_float_function_exactly():
    net = eq.fold_batchnorm(eq.replace_relu6(_random_bn(models.MobileNet(0.5), seed=1)))
    flat = eq.equalize(net)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(flat(x), net(x), rtol=1e-4, atol=1e-5)
    # and the ranges of each equalized pair now agree channel by channel
    for name1, name2 in eq.equalization_pairs(flat)[-2:]:
        r1 = eq.channel_ranges(flat.get_submodule(name1), "out")
        r2 = eq.channel_ranges(flat.get_submodule(name2), "in")
        assert torch.allclose(r1, r2, rtol=0.05), (name1, name2)


def test_equalization_scales_by_hand():
    s = eq.equalization_scales(torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0]))
    # sqrt(4 * 1) / 1 = 2 ; sqrt(1 * 4) / 4 = 0.5 ; dead channel keeps 1
    assert torch.allclose(s, torch.tensor([2.0, 0.5, 1.0]))


def test_equalize_pair_dense_and_depthwise():
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    with torch.no_grad():
        c1.weight.mul_(torch.logspace(-2, 1, 6).reshape(-1, 1, 1, 1))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        before = c2(torch.relu(c1(x)))
        eq.equalize_pair(c1, c2)
        assert torch.allclose(c2(torch.relu(c1(x))), before, atol=1e-5)
        assert torch.allclose(eq.channel_ranges(c1, "out"), eq.channel_ranges(c2, "in"), rtol=1e-5)


def test_equalize_refuses_relu6_and_unfolded_bn():
    net = _random_bn(models.MobileNet(0.5))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        eq.equalize(eq.replace_relu6(net))
    with pytest.raises(ValueError, match="replace_relu6"):
        eq.equalize(eq.fold_batchnorm(net))
    with pytest.raises(ValueError, match="iterations"):
        eq.equalize(eq.fold_batchnorm(eq.replace_relu6(net)), iterations=0)


def test_replace_relu6():
    net = eq.replace_relu6(models.MobileNet(0.5))
    assert not any(isinstance(m, nn.ReLU6) for m in net.modules())
    assert any(isinstance(m, nn.ReLU) for m in net.modules())


def test_relu_normal_mean_against_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([0.5, 1.0, 3.0])
    samples = torch.randn(400_000, 3, generator=gen) * std + mean
    assert torch.allclose(eq.relu_normal_mean(mean, std), samples.clamp(min=0).mean(0), atol=0.01)


def test_input_channel_means_by_hand():
    net = nn.Sequential(nn.Conv2d(2, 1, 1))
    x = torch.stack([torch.full((5, 5), 1.0), torch.full((5, 5), -3.0)])[None]  # (1, 2, 5, 5)
    means = eq.input_channel_means(net, [x, x])
    assert torch.allclose(means["0"], torch.tensor([1.0, -3.0]))
    with pytest.raises(ValueError, match="empty"):
        eq.input_channel_means(net, [])


def test_bias_correction_reduces_the_output_bias():
    torch.manual_seed(0)
    net = eq.fold_batchnorm(eq.replace_relu6(_random_bn(models.MobileNet(0.5), seed=2)))
    x = torch.randn(32, 1, 28, 28)
    # weight-only rounding: its mean shift is all bias correction sees, so most of it goes; with activation
    # quantization too, part of the error is the activations' own, which the correction does not model
    for factor, q in ((0.5, quant.quantize_weights(net, bits=4, per_channel=False)),
                      (0.9, quant.calibrate(quant.prepare_ptq(net, bits=4, per_channel=False), [x]))):
        corrected = eq.bias_correction(q, net, [x])
        with torch.no_grad():
            ref = net(x)
            before = (q(x) - ref).mean(0).abs().mean()  # mean error per logit over the data
            after = (corrected(x) - ref).mean(0).abs().mean()
        assert after < factor * before, (float(before), float(after))


def test_bias_correction_of_an_exact_model_changes_nothing():
    net = eq.fold_batchnorm(_random_bn(models.MobileNet(0.5)))
    x = torch.randn(4, 1, 28, 28)
    same = eq.bias_correction(net, net, [x])
    with torch.no_grad():
        assert torch.equal(same(x), net(x))
    with pytest.raises(TypeError, match="reference"):
        eq.bias_correction(net, "net", [x])
