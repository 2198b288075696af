"""Adversarial robustness (鲁棒性): FGSM and PGD attacks in pixel units, and accuracy under attack.

The course's images are normalised, x = (p - mean) / std with pixels p in [0, 1]. An attack budget
`eps` is stated in pixel units: every pixel moves by at most `eps` and stays in [0, 1]. So the attacks
work on p = x * std + mean, let autograd carry the gradient through the normalisation, clamp to
[0, 1], and hand back a normalised batch (`mean=0, std=1` attacks raw inputs).

* FGSM (Goodfellow et al. 2015): p_adv = clip(p + eps * sign(grad_p loss)), one step.
* PGD (Madry et al. 2018): from a random start in the eps-ball, `steps` FGSM steps of size `alpha`, each
  projected back into the eps-ball and [0, 1]; the strongest first-order attack of the usual ones.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from lwkit import data

__all__ = ["fgsm", "pgd", "attack", "attack_accuracy", "ATTACKS"]

ATTACKS = ("fgsm", "pgd")


def _check(model, x, y, eps, mean, std) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"x must be a float tensor of shape (batch, ...), got {type(x).__name__}"
                        + (f" {x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else ""))
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != x.shape[:1]:
        raise TypeError(f"y must be an int64 tensor of shape ({x.shape[0]},) (one label per image), got "
                        + (f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__))
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be a number in [0, 1] (pixel units), got {eps!r}")
    if isinstance(std, bool) or not isinstance(std, numbers.Real) or not std > 0:
        raise ValueError(f"std must be a number > 0, got {std!r}")
    if isinstance(mean, bool) or not isinstance(mean, numbers.Real):
        raise ValueError(f"mean must be a number, got {mean!r}")


def _loss_grad(model, p: torch.Tensor, y: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """d cross_entropy(model((p - mean) / std), y) / d p, summed over the batch (each image its own)."""
    p = p.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model((p - mean) / std), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, p)
    return grad


def _frozen(model):
    """Eval mode and no parameter gradients for the duration of an attack (restored afterwards)."""
    class _Ctx:
        def __enter__(self):
            self.was_training = model.training if isinstance(model, nn.Module) else None
            self.flags = [(p, p.requires_grad) for p in model.parameters()] if isinstance(model, nn.Module) else []
            if isinstance(model, nn.Module):
                model.eval()
            for p, _ in self.flags:
                p.requires_grad_(False)

        def __exit__(self, *exc):
            for p, flag in self.flags:
                p.requires_grad_(flag)
            if self.was_training:
                model.train()

    return _Ctx()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, mean: float = data.MEAN,
         std: float = data.STD) -> torch.Tensor:
    """Fast gradient sign method: the normalised batch whose pixels moved by eps * sign(gradient).

    Args:
        x: normalised inputs (batch, ...); y: their labels.
        eps: the budget in pixel units ([0, 1] pixels), e.g. 0.1 = a tenth of the full brightness range.
        mean, std: the normalisation of `x` (lwkit.data's by default; 0 and 1 for raw pixels).
    """
    _check(model, x, y, eps, mean, std)
    p = (x * std + mean).clamp(0, 1)  # (batch, ...) pixels in [0, 1]
    with _frozen(model):
        grad = _loss_grad(model, p, y, mean, std)
    p_adv = (p + eps * grad.sign()).clamp(0, 1)
    return ((p_adv - mean) / std).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        alpha: float | None = None, random_start: bool = True, generator: torch.Generator | None = None,
        mean: float = data.MEAN, std: float = data.STD) -> torch.Tensor:
    """Projected gradient descent (on the loss, so ascent): `steps` signed steps of `alpha` inside the
    eps-ball around the clean pixels and inside [0, 1]. alpha defaults to 2.5 * eps / steps (Madry et al.)."""
    _check(model, x, y, eps, mean, std)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha >= 0:
        raise ValueError(f"alpha must be None or a number >= 0 (pixel units per step), got {alpha!r}")
    if not isinstance(random_start, bool):
        raise TypeError(f"random_start must be True or False, got {random_start!r}")
    p0 = (x * std + mean).clamp(0, 1)  # (batch, ...) the clean pixels
    p = p0.clone()
    if random_start and eps > 0:
        noise = torch.rand(p0.shape, generator=generator, dtype=p0.dtype).to(p0.device) * 2 - 1
        p = (p0 + eps * noise).clamp(0, 1)
    with _frozen(model):
        for _ in range(steps):
            p = p + alpha * _loss_grad(model, p, y, mean, std).sign()
            p = torch.min(torch.max(p, p0 - eps), p0 + eps).clamp(0, 1)  # 1) into the eps-ball 2) into [0, 1]
    return ((p - mean) / std).detach()


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, method: str = "fgsm",
           batch_size: int = 500, **kwargs) -> torch.Tensor:
    """`fgsm` or `pgd` over a large set in batches of `batch_size`; kwargs go to the attack."""
    if method not in ATTACKS:
        raise ValueError(f"method must be one of {ATTACKS}, got {method!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or len(x) == 0:
        raise ValueError("x and y must be non-empty tensors of the same length")
    fn = fgsm if method == "fgsm" else pgd
    return torch.cat([fn(model, xb, yb, eps, **kwargs) for xb, yb in zip(x.split(batch_size),
                                                                           y.split(batch_size), strict=True)])


@torch.no_grad()
def attack_accuracy(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, method: str = "fgsm",
                    source: nn.Module | None = None, batch_size: int = 500, **kwargs) -> float:
    """Top-1 accuracy of `model` on adversarial versions of (x, y) built on `source` (default: `model`).

    With `source` another model, the attack is a *transfer* attack: examples crafted with one model's
    gradients, evaluated on another (e.g. on a deployed int8 runtime, which has no gradients).
    `model` may be any callable returning logits (an nn.Module or an `lwkit.deploy.Runner`).
    """
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a Runner), got {type(model).__name__}")
    source = model if source is None else source
    if not isinstance(source, nn.Module):
        raise TypeError("attacks need gradients: pass an nn.Module as `source` when `model` is a runtime "
                        f"(got source of type {type(source).__name__})")
    x_adv = attack(source, x, y, eps, method=method, batch_size=batch_size, **kwargs)
    if isinstance(model, nn.Module):
        model.eval()
    correct = sum(int((model(xb).argmax(-1) == yb).sum()) for xb, yb in zip(x_adv.split(batch_size),
                                                                              y.split(batch_size), strict=True))
    return correct / len(y)
