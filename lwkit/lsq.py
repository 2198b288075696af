"""Learned step size quantization (LSQ, Esser et al. 2020): QAT in which the scale is a trained parameter.

Min-max QAT (`lwkit.qat.prepare_qat`) recomputes each scale from the weights' range on every step; at 2 bits
that range is set by one extreme weight, and the signed grid [-2, 1] keeps only three usable levels
{-s, 0, +s}. LSQ instead learns the step `s` by gradient descent, with the gradient of
v_hat = round(clip(v / s, qmin, qmax)) * s taken through the straight-through estimator (STE):

    d v_hat / d s = round(v / s) - v / s    inside the grid,    qmin or qmax where v / s is clipped,

scaled by g = 1 / sqrt(numel * qmax) so that the step learns at the pace of the weights. The step starts at
2 * mean|v| / sqrt(qmax) (the paper's initialisation). Weight-only here: activations stay fp32, as in
notebook 04's min-max QAT, so the two are compared like for like.
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["lsq_fake_quantize", "init_step", "LSQWrapper", "prepare_lsq"]


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an int in [2, 8], got {bits!r} ({type(bits).__name__})")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8] (signed symmetric grid), got {bits}")
    return int(bits)


def _check_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by g in the backward pass."""
    return (x - x * g).detach() + x * g


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (the straight-through estimator)."""
    return (x.round() - x).detach() + x


def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                      grad_scale: float = 1.0) -> torch.Tensor:
    """round(clip(x / step, qmin, qmax)) * step, with LSQ's gradients for x (STE) and for step.

    Args:
        x: the tensor to quantize (weights).
        step: the positive step size: a scalar, or one per output channel shaped to broadcast against x.
        qmin, qmax: the integer grid, qmin < 0 < qmax (signed symmetric: -2^(b-1), 2^(b-1) - 1).
        grad_scale: g, multiplies step's gradient (LSQ uses 1 / sqrt(numel * qmax)).
    """
    _check_tensor("x", x)
    _check_tensor("step", step)
    if bool((step <= 0).any()):
        raise ValueError(f"step must be > 0 everywhere, got min {step.min().item():.3g}")
    for name, q in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(q, bool) or not isinstance(q, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {q!r}")
    if not qmin < 0 < qmax:
        raise ValueError(f"qmin < 0 < qmax is required (a signed grid), got qmin={qmin}, qmax={qmax}")
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, numbers.Real) or not 0 < grad_scale <= 1:
        raise ValueError(f"grad_scale must be a number in (0, 1], got {grad_scale!r}")
    s = _grad_scale(step, float(grad_scale))
    return _round_ste(torch.clamp(x / s, qmin, qmax)) * s


def init_step(w: torch.Tensor, bits: int, *, per_channel: bool = True) -> torch.Tensor:
    """LSQ's initial step 2 * mean|w| / sqrt(qmax), per output channel (shape (out, 1, ...)) or a scalar."""
    _check_tensor("w", w)
    bits = _check_bits(bits)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {per_channel!r}")
    qmax = 2 ** (bits - 1) - 1
    if per_channel:
        mean_abs = w.detach().abs().reshape(w.shape[0], -1).mean(1).reshape(-1, *([1] * (w.dim() - 1)))
    else:
        mean_abs = w.detach().abs().mean()
    return (2 * mean_abs / math.sqrt(qmax)).clamp(min=1e-8)


class LSQWrapper(nn.Module):
    """A Linear or Conv2d whose weight is fake-quantized with a learned step (per output channel)."""

    def __init__(self, layer: nn.Module, *, bits: int = 4, per_channel: bool = True):
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"layer: only nn.Linear and nn.Conv2d can be wrapped, got {type(layer).__name__}")
        self.bits = _check_bits(bits)
        self.qmin, self.qmax = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        self.layer, self.per_channel = layer, per_channel
        self.step = nn.Parameter(init_step(layer.weight, self.bits, per_channel=per_channel))
        per_step = layer.weight.numel() // self.step.numel()  # weights that share one step
        self.grad_scale = 1.0 / math.sqrt(per_step * self.qmax)

    def quantized_weight(self) -> torch.Tensor:
        return lsq_fake_quantize(self.layer.weight, self.step.abs().clamp(min=1e-8), self.qmin, self.qmax,
                                 self.grad_scale)

    def levels_used(self) -> torch.Tensor:
        """Per output channel: how many distinct grid levels the quantized weights occupy."""
        with torch.no_grad():
            q = torch.round(self.quantized_weight() / self.step.abs().clamp(min=1e-8))
            return torch.tensor([len(torch.unique(row)) for row in q.reshape(q.shape[0], -1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, grid=[{self.qmin}, {self.qmax}]"


def prepare_lsq(model: nn.Module, *, bits: int = 4, per_channel: bool = True) -> nn.Module:
    """A deep copy of `model` with every nn.Linear / nn.Conv2d wrapped in an `LSQWrapper` (train with fit)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    bits = _check_bits(bits)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be a bool, got {per_channel!r}")
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not names:
        raise ValueError(f"model ({type(model).__name__}) has no nn.Linear or nn.Conv2d layer to quantize")
    model = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LSQWrapper(getattr(parent, child), bits=bits, per_channel=per_channel))
    return model
