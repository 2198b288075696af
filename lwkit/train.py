"""Training and evaluation: `fit`, `evaluate`, seeding, and cached trained baselines."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lwkit import data, models

CACHE_VERSION = 1  # bump when training code changes in a way that changes the weights


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
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
    if os.environ.get("LWKIT_HEADLESS") == "1":
        from tqdm.std import tqdm
        return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stdout, mininterval=10, ncols=100)
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled)


def _check_loader(loader, name: str) -> None:
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be an iterable of (inputs, labels) batches, got {type(loader).__name__}")
    try:
        empty = len(loader) == 0
    except TypeError:
        empty = False
    if empty:
        raise ValueError(f"{name} is empty: it yields no batches")


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of `model` over every batch of `loader`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loader(loader, "loader")
    device = torch.device(device) if device is not None else next(_devices(model), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(x.to(device))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
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
    """Train `model` in place and return its History.

    Args:
        epochs: passes over `train_loader` (> 0).
        lr: peak learning rate (> 0).
        optimizer: 'adam' (AdamW) or 'sgd' (momentum 0.9, Nesterov).
        schedule: 'cosine' (decay to 0 over all steps) or 'constant'.
        loss_fn: `loss_fn(logits, labels, inputs) -> loss`; cross-entropy by default. Distillation passes its own.
        after_step: called with the model after each optimiser step (e.g. to re-apply a pruning mask).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loader(train_loader, "train_loader")
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (every requires_grad is False)")
    if optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + np.cos(np.pi * s / steps))) if schedule == "cosine" else (lambda s: 1.0)
    )
    if loss_fn is None:
        ce = nn.CrossEntropyLoss()
        loss_fn = lambda logits, y, x: ce(logits, y)  # noqa: E731

    history = History()
    bar = progress_bar(steps, desc, enabled=progress)
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        loss_sum = correct = seen = 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(1)
        history.loss.append(loss_sum / seen)
        history.train_acc.append(correct / seen)
        if val_loader is not None:
            history.val_acc.append(evaluate(model, val_loader, device=device))
        history.seconds.append(time.perf_counter() - start)
        post = {"loss": f"{history.loss[-1]:.3f}"}
        if history.val_acc:
            post["val_acc"] = f"{history.val_acc[-1]:.3f}"
        bar.set_postfix(post, refresh=False)
    bar.close()
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------------------
# Trained baselines, cached by configuration


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that determines a trained baseline's weights (and so its cache key)."""

    model: str = "mlp"  # 'mlp' or 'cnn'
    epochs: int = 10  # passes over the training split (the CNN's default is 6, see BASELINE_DEFAULTS)
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed (the CNN's default is 3e-3)
    batch_size: int = 128
    weight_decay: float = 1e-4
    augment: bool = False  # random flips and shifts
    full: bool = False  # embedded subset (False) or the full 60k/10k set (True)
    seed: int = 0  # seeds initialisation, shuffling and the validation split

    def key(self) -> str:
        payload = dict(asdict(self), cache_version=CACHE_VERSION, data=data.SUBSET_SHA256 if not self.full else "full",
                       torch=torch.__version__.split("+")[0])
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Per-model defaults, chosen so both baselines train in about 20 s on 2 cores on the embedded subset.
BASELINE_DEFAULTS = {"mlp": {"epochs": 10, "lr": 2e-3}, "cnn": {"epochs": 6, "lr": 3e-3}}


def baseline_config(model: str = "mlp", **overrides) -> BaselineConfig:
    """The BaselineConfig for `model` with its defaults, then `overrides` (BaselineConfig fields)."""
    if model not in models.MODELS:
        raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {model!r}")
    allowed = set(BaselineConfig.__dataclass_fields__) - {"model"}
    unknown = set(overrides) - allowed
    if unknown:
        raise TypeError(f"unknown baseline option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return BaselineConfig(model=model, **{**BASELINE_DEFAULTS[model], **overrides})


def checkpoint_path(config: BaselineConfig) -> Path:
    """Where the cache keeps the baseline trained with `config`."""
    return data.cache_dir() / "checkpoints" / f"{config.model}-{config.key()}.pt"


def train_baseline(model: str = "mlp", *, progress: bool = True, **overrides) -> tuple[nn.Module, History]:
    """Train a baseline from scratch (deterministic for a given config and thread count) and cache it."""
    config = baseline_config(model, **overrides)
    seed_everything(config.seed)
    splits = data.fashion_mnist(full=config.full, seed=config.seed)
    train, val, _ = splits.loaders(config.batch_size, augment=config.augment, seed=config.seed)
    net = models.build(config.model)
    history = fit(net, train, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                  val_loader=val, progress=progress, desc=f"{config.model} ({config.epochs} epochs)")
    net = net.cpu().eval()
    save_checkpoint(net, checkpoint_path(config), meta={"config": asdict(config), "history": asdict(history)})
    return net, history


def baseline(model: str = "mlp", *, progress: bool = True, **overrides) -> nn.Module:
    """A trained course baseline, loaded from the cache if this exact configuration was trained before.

    `overrides` are BaselineConfig fields (epochs, lr, full, seed, ...). The cache lives in
    `lwkit.data.cache_dir() / 'checkpoints'`, keyed by the whole configuration, the data checksum and
    the torch version; checkpoints are checksum-verified and load with `weights_only=True`.
    """
    config = baseline_config(model, **overrides)
    path = checkpoint_path(config)
    if path.exists():
        net = models.build(model)
        net.load_state_dict(load_checkpoint(path))
        return net.eval()
    net, _ = train_baseline(model, progress=progress, **overrides)
    return net


def save_checkpoint(model: nn.Module, path: str | Path, *, meta: dict | None = None) -> Path:
    """Save a state_dict plus a JSON sidecar with its SHA-256 (checked by `load_checkpoint`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    sidecar = {"sha256": data.sha256(path), "meta": meta or {}}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A state_dict saved by `save_checkpoint`, verified and loaded with `weights_only=True`."""
    path = Path(path)
    hint = f"delete {path} and {path.with_suffix('.json').name}; the next run retrains it"
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        raise data.DataFileError(f"checkpoint {path} has no checksum file {sidecar.name}: {hint}")
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (ValueError, KeyError) as exc:
        raise data.DataFileError(f"checksum file {sidecar} is unreadable ({exc}): {hint}") from exc
    data.verify_file(path, expected, hint=hint)
    return torch.load(path, map_location="cpu", weights_only=True)
