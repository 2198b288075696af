"""Training and evaluation: `fit`, `evaluate`, seeding.

The cached trained baselines (`baseline`, `train_baseline`, `BaselineConfig`, ...) and the checkpoint files
live in `lwkit.checkpoints`; they are also reachable here as `lwkit.train.baseline` etc.
"""

from __future__ import annotations

import math
import numbers
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lwkit.data import _check_positive_int, _check_seed  # one definition of each check

__all__ = ["History", "default_device", "evaluate", "fit", "progress_bar", "seed_everything"]

# Names that moved to lwkit.checkpoints, still importable from here (lwkit.train.baseline, ...).
_MOVED = ("BASELINE_DEFAULTS", "CACHE_VERSION", "BaselineConfig", "baseline", "baseline_config", "checkpoint_path",
          "train_baseline", "save_checkpoint", "load_checkpoint", "checkpoint_lock")


def __getattr__(name: str):
    if name in _MOVED:  # imported on first use: lwkit.checkpoints itself imports this module
        from lwkit import checkpoints
        return getattr(checkpoints, name)
    raise AttributeError(f"module 'lwkit.train' has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------
# Argument checks (each error names the argument, the value and what is allowed)


def _check_real(value, name: str, *, positive: bool) -> None:
    """A finite real number, > 0 if `positive`, else >= 0 (bools, strings, nan and inf rejected)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _as_device(device) -> torch.device | None:
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from exc


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar: widget bar in a live notebook, text bar in a terminal or a headless run."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be an int >= 0, got {total!r}")
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a str, got {type(desc).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if os.environ.get("LWKIT_HEADLESS") == "1":
        return _FinalLineBar(total, desc, enabled)
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled)


class _FinalLineBar:
    """Headless runs: nothing while it runs, one line when it closes (a saved notebook keeps no bar debris)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n, self.postfix, self.closed = 0, {}, False
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, postfix: dict, refresh: bool = False) -> None:
        self.postfix = dict(postfix)

    def close(self) -> None:
        if self.closed or not self.enabled:
            self.closed = True
            return
        self.closed = True
        seconds = time.perf_counter() - self.start
        post = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} steps in {seconds:.1f} s" + (f" ({post})" if post else ""),
              file=sys.stdout, flush=True)


def _check_loader(loader, name: str, *, reiterable: bool) -> None:
    """An iterable of batches; `reiterable` loaders are iterated once per epoch, so no one-shot iterators."""
    if isinstance(loader, (str, bytes, torch.Tensor)) or not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be an iterable of (inputs, labels) batches (a lwkit.data.BatchLoader, a "
                        f"torch DataLoader or a list of pairs), got {type(loader).__name__}")
    if reiterable and isinstance(loader, Iterator):
        raise TypeError(f"{name} is a one-shot iterator ({type(loader).__name__}): fit goes over it once per epoch, "
                        f"and a generator is empty after the first; pass a list of batches (list({name})), "
                        "a lwkit.data.BatchLoader or a torch DataLoader")
    try:
        empty = len(loader) == 0
    except TypeError:
        empty = False
    if empty:
        raise ValueError(f"{name} is empty: it yields no batches")


def _num_batches(loader, name: str) -> int:
    """len(loader), or the batches of one pass for a re-iterable loader without len()."""
    try:
        n = len(loader)
    except TypeError:
        n = sum(1 for _ in loader)
    if n == 0:
        raise ValueError(f"{name} is empty: it yields no batches")
    return n


def _unpack(batch, name: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise TypeError(f"each batch of {name} must be an (inputs, labels) pair, got {type(batch).__name__}{size} "
                        f"at {where}")
    x, y = batch
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"each batch of {name} must hold two tensors (inputs, labels), got "
                        f"({type(x).__name__}, {type(y).__name__}) at {where}")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{name} yielded an empty batch (inputs of shape {tuple(x.shape)}) at {where}: "
                         "every batch needs at least one example")
    return x, y


def _check_outputs(logits, y: torch.Tensor, name: str, where: str) -> None:
    """logits (batch, classes) and labels (batch,) of integer class indices in [0, classes)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return (batch, classes) logits, got {got} at {where}")
    n, classes = logits.shape
    if y.ndim != 1 or len(y) != n or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(
            f"labels from {name} must be a 1-D integer tensor of class indices, one per example (shape ({n},)), "
            f"got {y.dtype} labels of shape {tuple(y.shape)} at {where}; one-hot labels: pass y.argmax(1), "
            "labels shaped (n, 1): y.squeeze(1), float labels: y.long()")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels from {name} must be class indices in [0, {classes}) for {classes} logits, "
                         f"got values from {int(y.min())} to {int(y.max())} at {where}")


def _first_nonfinite(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            return name
    return None


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of `model` over every batch of `loader` (any iterable of (x, y) batches).

    Labels must be (batch,) integer class indices (not one-hot, not (n, 1)); a model whose logits are not
    finite raises instead of scoring a meaningless 10 %. The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loader(loader, "loader", reiterable=False)
    device = _as_device(device) or next(_devices(model), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(loader, 1):
            x, y = _unpack(batch, "loader", f"batch {i}")
            logits = model(x.to(device))
            _check_outputs(logits, y, "loader", f"batch {i}")
            if not bool(torch.isfinite(logits).all()):
                raise ValueError(f"model returned non-finite (nan/inf) logits at batch {i}: its weights have "
                                 "probably diverged, so its accuracy means nothing; retrain it with a lower lr")
            correct += (logits.argmax(1).cpu() == y.cpu()).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("loader is empty: it yields no examples")
    return correct / total


def _devices(model: nn.Module):
    return (p.device for p in model.parameters())


@dataclass
class History:
    """What `fit` did, one entry per epoch."""

    loss: list[float] = field(default_factory=list)  # mean training loss
    train_acc: list[float] = field(default_factory=list)  # accuracy on the training batches as seen
    val_acc: list[float] = field(default_factory=list)  # empty if no val_loader
    seconds: list[float] = field(default_factory=list)  # wall-clock per epoch


def fit(
    model: nn.Module,
    train_loader,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    schedule: str = "cosine",
    val_loader=None,
    loss_fn: Callable | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "train",
    after_step: Callable[[nn.Module], None] | None = None,
) -> History:
    """Train `model` in place and return its History; the model is left in eval mode (also on an error).

    Args:
        train_loader: a re-iterable of (inputs, labels) batches (BatchLoader, DataLoader, list); a generator
            is refused because it is empty after one epoch. Labels are (batch,) integer class indices.
        epochs: passes over `train_loader` (> 0).
        lr: peak learning rate, a finite number > 0.
        weight_decay: finite, >= 0.
        optimizer: 'adam' (AdamW) or 'sgd' (momentum 0.9, Nesterov).
        schedule: 'cosine' (decay to 0 over all steps) or 'constant'.
        loss_fn: `loss_fn(logits, labels, inputs) -> loss`; cross-entropy by default. Distillation passes its own.
        after_step: called with the model after each optimiser step (e.g. to re-apply a pruning mask).

    Raises FloatingPointError at the first non-finite loss (naming epoch, step and loss; the weights are
    those from before that step), or when an epoch ends with non-finite weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loader(train_loader, "train_loader", reiterable=True)
    _check_positive_int(epochs, "epochs")
    _check_real(lr, "lr", positive=True)
    _check_real(weight_decay, "weight_decay", positive=False)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if val_loader is not None:
        _check_loader(val_loader, "val_loader", reiterable=True)
    for fn_name, fn in (("loss_fn", loss_fn), ("after_step", after_step)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{fn_name} must be callable or None, got {type(fn).__name__}")
    _check_bool(progress, "progress")
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a str, got {type(desc).__name__}")
    device = _as_device(device) or default_device()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (every requires_grad is False)")
    steps = epochs * _num_batches(train_loader, "train_loader")
    model.to(device)
    if optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))) if schedule == "cosine" else (lambda s: 1.0)
    )
    if loss_fn is None:
        ce = nn.CrossEntropyLoss()
        loss_fn = lambda logits, y, x: ce(logits, y)  # noqa: E731

    history = History()
    bar = progress_bar(steps, desc, enabled=progress)
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            loss_sum = correct = seen = 0
            for step, batch in enumerate(train_loader, 1):
                where = f"epoch {epoch}, step {step}"
                x, y = _unpack(batch, "train_loader", where)
                x, y = x.to(device), y.to(device)
                logits = model(x)
                _check_outputs(logits, y, "train_loader", where)
                loss = loss_fn(logits, y, x)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"loss_fn must return a scalar tensor, got {loss!r:.60} at {where}")
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"training diverged: the loss is {value} at {where} (lr={lr:g}); stopped before this "
                        "step changed the weights. Lower lr, or check the inputs and labels for nan/inf")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step(model)
                loss_sum += value * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                bar.update(1)
            if seen == 0:
                raise ValueError(f"train_loader yielded no batches in epoch {epoch}: a loader must give the same "
                                 "batches every time it is iterated")
            bad = _first_nonfinite(model)
            if bad is not None:
                raise FloatingPointError(f"training diverged: parameter {bad!r} is not finite after epoch {epoch} "
                                         f"(lr={lr:g}); lower lr")
            history.loss.append(loss_sum / seen)
            history.train_acc.append(correct / seen)
            if val_loader is not None:
                history.val_acc.append(evaluate(model, val_loader, device=device))
            history.seconds.append(time.perf_counter() - start)
            post = {"loss": f"{history.loss[-1]:.3f}"}
            if history.val_acc:
                post["val_acc"] = f"{history.val_acc[-1]:.3f}"
            bar.set_postfix(post, refresh=False)
    finally:
        bar.close()
        model.eval()
    return history
