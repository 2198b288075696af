"""A few-label transfer task (迁移任务): keep `per_class` labelled training images per class, train a fixed budget.

Pretraining should matter most when labels are scarce, so the PEFT notebook sweeps the labels per class.
`few_labels` draws a balanced, seeded subset of a `Splits`' training images (validation and test untouched);
`fit_steps` trains for about the same number of optimiser steps whatever the subset size, so 5 and 500 labels
per class are compared at equal compute rather than equal epochs.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch
from torch import nn

from lwkit import data, train

__all__ = ["few_labels", "fit_steps"]


def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def few_labels(splits: data.Splits, per_class: int, *, seed: int = 0) -> data.Splits:
    """A copy of `splits` whose training split keeps `per_class` random images of each class it holds."""
    if not isinstance(splits, data.Splits):
        raise TypeError(f"splits must be a lwkit.data.Splits, got {type(splits).__name__}")
    per_class = _check_int(per_class, "per_class")
    seed = _check_int(seed, "seed", low=0)
    labels = splits.y_train
    classes = sorted(int(c) for c in labels.unique())
    counts = {c: int((labels == c).sum()) for c in classes}
    if per_class > min(counts.values()):
        raise ValueError(f"per_class must be at most {min(counts.values())} (the rarest class's training images; "
                         f"counts {counts}), got {per_class}")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()  # (count,)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    keep = torch.cat(keep).sort().values
    return dataclasses.replace(splits, x_train=splits.x_train[keep], y_train=labels[keep])


def fit_steps(model: nn.Module, splits: data.Splits, *, steps: int, lr: float, batch_size: int = 64,
              seed: int = 0, weight_decay: float = 0.0) -> nn.Module:
    """Train `model` (in place) on `splits`' training images for about `steps` AdamW steps; returns the model.

    The epoch count is ceil(steps / batches per epoch), so a tiny subset is revisited many times.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(splits, data.Splits):
        raise TypeError(f"splits must be a lwkit.data.Splits, got {type(splits).__name__}")
    steps = _check_int(steps, "steps")
    batch_size = _check_int(batch_size, "batch_size")
    seed = _check_int(seed, "seed", low=0)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or not lr > 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameter (every requires_grad is False): nothing to fit")
    loader = data.BatchLoader(splits.x_train, splits.y_train, batch_size=min(batch_size, len(splits.y_train)),
                              shuffle=True, seed=seed)
    epochs = math.ceil(steps / len(loader))
    train.fit(model, loader, epochs=epochs, lr=float(lr), weight_decay=weight_decay, progress=False)
    return model
