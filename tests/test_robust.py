"""lwkit.robust: FGSM against its closed form on a linear model, PGD's constraints, bad arguments."""

import pytest
import torch
from torch import nn

from lwkit import data, robust


def _linear(d=6, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d, k).eval()


def _batch(n=8, d=6, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def test_fgsm_on_a_linear_model_equals_the_closed_form():
    model, (x, y) = _linear(), _batch()
    eps = 0.1
    # d CE(Wx + b, y) / dx = W^T (softmax(Wx + b) - onehot(y))
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
        grad = (p - nn.functional.one_hot(y, 3).float()) @ model.weight
    expected = (x + eps * grad.sign()).clamp(0, 1)
    got = robust.fgsm(model, x, y, eps, mean=0.0, std=1.0)
    torch.testing.assert_close(got, expected)


def test_fgsm_in_pixel_units_on_normalised_inputs():
    model, (p, y) = _linear(), _batch()
    x = (p - data.MEAN) / data.STD
    adv = robust.fgsm(model, x, y, 0.05)
    moved = (adv * data.STD + data.MEAN) - p  # in pixel units
    assert moved.abs().max() <= 0.05 + 1e-5
    pixels = adv * data.STD + data.MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_fgsm_raises_the_loss_and_eps_zero_changes_nothing():
    model, (x, y) = _linear(), _batch()
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(robust.fgsm(model, x, y, 0.1, mean=0.0, std=1.0)), y) > loss(model(x), y)
    torch.testing.assert_close(robust.fgsm(model, x, y, 0.0, mean=0.0, std=1.0), x)


def test_pgd_stays_in_the_ball_and_beats_fgsm():
    model, (x, y) = _linear(d=20, k=4), _batch(n=64, d=20, k=4)
    g = torch.Generator().manual_seed(0)
    adv = robust.pgd(model, x, y, 0.1, steps=20, generator=g, mean=0.0, std=1.0)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(adv), y) >= loss(model(robust.fgsm(model, x, y, 0.1, mean=0.0, std=1.0)), y) - 1e-4


def test_attacks_leave_the_model_as_they_found_it():
    model, (x, y) = _linear(), _batch()
    model.train()
    robust.pgd(model, x, y, 0.1, steps=2, mean=0.0, std=1.0)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_attack_accuracy_matches_a_manual_loop_and_transfer_needs_a_module():
    model, (x, y) = _linear(), _batch(n=30)
    adv = robust.fgsm(model, x, y, 0.2, mean=0.0, std=1.0)
    with torch.no_grad():
        expected = (model(adv).argmax(1) == y).float().mean().item()
    got = robust.attack_accuracy(model, x, y, 0.2, batch_size=7, mean=0.0, std=1.0)
    assert got == pytest.approx(expected)
    with pytest.raises(TypeError, match="source"):
        robust.attack_accuracy(lambda t: model(t), x, y, 0.1)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eps": -0.1}, ValueError, "eps"),
    ({"eps": 2.0}, ValueError, "eps"),
    ({"eps": True}, ValueError, "eps"),
    ({"std": 0.0}, ValueError, "std"),
])
def test_bad_arguments_name_themselves(kwargs, error, match):
    model, (x, y) = _linear(), _batch()
    args = {"eps": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        robust.fgsm(model, x, y, args.pop("eps"), **args)


def test_bad_tensors_and_options():
    model, (x, y) = _linear(), _batch()
    with pytest.raises(TypeError, match="y must"):
        robust.fgsm(model, x, y.float(), 0.1)
    with pytest.raises(TypeError, match="x must"):
        robust.fgsm(model, x.long(), y, 0.1)
    with pytest.raises(ValueError, match="steps"):
        robust.pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="alpha"):
        robust.pgd(model, x, y, 0.1, alpha=-1.0)
    with pytest.raises(ValueError, match="method"):
        robust.attack(model, x, y, 0.1, method="cw")
    with pytest.raises(ValueError, match="batch_size"):
        robust.attack(model, x, y, 0.1, batch_size=0)
