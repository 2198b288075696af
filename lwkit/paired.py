"""Two classifiers on the same test images: each accuracy with its standard error, and the paired difference.

An accuracy p on n images carries a standard error sqrt(p(1-p)/n) (about 0.6 points at n = 3,000 and 88 %).
Two models scored on the SAME images disagree on only some of them, so the standard error of their difference
comes from the per-image differences d_i = correct_a(i) - correct_b(i): SE = std(d) / sqrt(n), usually much
smaller than the two separate errors combined. Read a difference smaller than about two SE as noise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["accuracy_se", "paired_accuracy"]


def accuracy_se(accuracy: float, n: int) -> float:
    """sqrt(p(1-p)/n): the standard error of an accuracy p measured on n independent examples."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of test examples), got {n!r}")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be a number in [0, 1], got {accuracy!r}")
    return math.sqrt(accuracy * (1 - accuracy) / n)


@torch.no_grad()
def _correct(model, loader) -> torch.Tensor:
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        hits = [(model(x).argmax(-1) == y).float() for x, y in loader]  # 1 = right, per image
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    if not hits:
        raise ValueError("loader yielded no (x, y) batch: there is nothing to score")
    return torch.cat(hits)  # (n,)


def paired_accuracy(model_a: nn.Module, model_b: nn.Module, loader) -> dict:
    """acc_a, acc_b, n, diff_pp = 100 (acc_a - acc_b) and se_pp, its paired standard error, on `loader`'s (x, y)."""
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not callable(m):
            raise TypeError(f"{name} must be a model (callable on a batch), got {type(m).__name__}")
    if isinstance(loader, (torch.Tensor, str, bytes)) or not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be a re-iterable of (x, y) batches, got {type(loader).__name__}")
    a, b = _correct(model_a, loader), _correct(model_b, loader)
    if a.shape != b.shape:
        raise ValueError(f"loader must yield the same non-empty test set twice, got {a.numel()} and {b.numel()}")
    d = a - b
    n = d.numel()
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"acc_a": float(a.mean()), "acc_b": float(b.mean()), "n": n, "diff_pp": 100 * float(d.mean()),
            "se_pp": 100 * se}
