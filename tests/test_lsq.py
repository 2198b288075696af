"""lwkit.lsq against torch's learnable fake-quantize (the LSQ reference op) and the paper's gradient."""

import math

import pytest
import torch
from torch import nn

from lwkit import lsq


def test_forward_and_gradients_match_torch_learnable_fake_quantize():
    torch.manual_seed(0)
    x = torch.randn(200) * 2
    for qmin, qmax, g in ((-2, 1, 1.0), (-8, 7, 0.1), (-128, 127, 0.01)):
        step = torch.tensor([0.3])
        xa, sa = x.clone().requires_grad_(), step.clone().requires_grad_()
        ya = lsq.lsq_fake_quantize(xa, sa, qmin, qmax, g)
        xb, sb = x.clone().requires_grad_(), step.clone().requires_grad_()
        yb = torch._fake_quantize_learnable_per_tensor_affine(xb, sb, torch.tensor([0.0]), qmin, qmax, g)
        # torch counts x as inside the grid when round(x / s) is; the paper (and lwkit) when x / s is:
        # they differ only in the half-step bands just outside [qmin, qmax], left out here
        v = x / step
        keep = ~(((v > qmax) & (v < qmax + 0.5)) | ((v < qmin) & (v > qmin - 0.5)))
        upstream = torch.randn(200) * keep
        (ya * upstream).sum().backward()
        (yb * upstream).sum().backward()
        assert torch.allclose(ya, yb, atol=1e-6)
        assert torch.allclose(xa.grad * keep, xb.grad * keep)
        assert torch.allclose(sa.grad, sb.grad, rtol=1e-4, atol=1e-5), (qmin, qmax, sa.grad, sb.grad)


def test_step_gradient_is_the_papers_formula():
    x = torch.tensor([-1.0, -0.35, -0.1, 0.0, 0.12, 0.4, 0.7])
    s = torch.tensor(0.25, requires_grad=True)
    lsq.lsq_fake_quantize(x, s, -2, 1).sum().backward()
    v = x / 0.25
    expected = torch.where(v <= -2, torch.tensor(-2.0), torch.where(v >= 1, torch.tensor(1.0), v.round() - v))
    assert torch.allclose(s.grad, expected.sum())


def test_clipped_values_match_finite_differences():
    """Where every value is clipped, v_hat = q * s exactly, so the STE gradient is the true derivative."""
    x = torch.tensor([-5.0, -3.0, 4.0])
    s = torch.tensor(0.5, requires_grad=True)
    lsq.lsq_fake_quantize(x, s, -2, 1).sum().backward()
    eps = 1e-3
    fd = (lsq.lsq_fake_quantize(x, torch.tensor(0.5 + eps), -2, 1).sum()
          - lsq.lsq_fake_quantize(x, torch.tensor(0.5 - eps), -2, 1).sum()) / (2 * eps)
    assert abs(s.grad.item() - fd.item()) < 1e-3


def test_init_step_and_grad_scale():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    s = lsq.init_step(w, 4)
    assert s.shape == (4, 1, 1, 1)
    assert torch.allclose(s.flatten(), 2 * w.abs().reshape(4, -1).mean(1) / math.sqrt(7))
    wrapped = lsq.LSQWrapper(nn.Conv2d(3, 4, 3), bits=2)
    assert wrapped.grad_scale == pytest.approx(1 / math.sqrt(27 * 1))
    assert (wrapped.levels_used() <= 4).all()


def test_prepare_lsq_trains_the_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    q = lsq.prepare_lsq(net, bits=2)
    assert isinstance(net[0], nn.Linear), "the original is untouched"
    before = q[0].step.detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    nn.functional.cross_entropy(q(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    assert q[0].step.grad is not None and q[0].step.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, q[0].step.detach())
