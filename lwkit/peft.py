"""Parameter-efficient fine-tuning (参数高效微调): adapt a pretrained model by training few parameters.

Every method here keeps the pretrained weights frozen and says which small set of tensors trains:
the top k layers (`finetune_top_k`, k = 1 is a linear probe), the biases (`bitfit`), small bottleneck
`Adapter`s after chosen layers (`add_adapters`), or a low-rank update of chosen weights (`LoRALinear`,
`add_lora`). `trainable_report` counts what trains and what must be stored per task.
The helpers change the model in place and also return it; `keep_trainable` names modules (usually the
task head) that train in full alongside the method. Each helper checks every argument (names, rank, alpha,
bottleneck, k) before it touches the model, and puts the model back as it was (modules and requires_grad
flags) if anything fails part-way, so a corrected re-run of the same cell works.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "Adapter", "LoRALinear", "TrainableReport", "WithAdapter", "add_adapters", "add_lora", "bitfit",
    "finetune_top_k", "freeze", "layers", "merge_lora", "trainable_report", "unfreeze",
]

# ---------------------------------------------------------------------------------------------------------
# Finding layers by name


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if name}


def _check_names(names, arg: str, *, allow_empty: bool) -> list[str]:
    """A list of distinct module names; a single str is refused (it would be read letter by letter)."""
    if isinstance(names, str):
        raise TypeError(f"{arg} must be a list or tuple of module names, got the str {names!r}; "
                        f"for one name write [{names!r}]")
    if not isinstance(names, Sequence):
        raise TypeError(f"{arg} must be a list or tuple of module names, got {type(names).__name__}")
    names = list(names)
    if any(not isinstance(n, str) for n in names):
        raise TypeError(f"{arg} must hold module names (str), got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{arg} names a module more than once: {names!r}")
    if not names and not allow_empty:
        raise ValueError(f"{arg} must name at least one module, got {names!r}")
    return names


def _lookup(model: nn.Module, names, *, arg: str = "names", kind: type | None = None, what: str = "layer",
            allow_empty: bool = True) -> list[tuple[str, nn.Module]]:
    """(name, module) for each name, or a ValueError listing the valid names (of `kind` if given)."""
    names = _check_names(names, arg, allow_empty=allow_empty)
    modules = _named_modules(model)
    wrapped = [n for n, m in modules.items() if isinstance(getattr(m, "base", None), nn.Module)]  # LoRA, DoRA, ...
    valid = [n for n, m in modules.items() if kind is None
             or (type(m) is kind and not any(n.startswith(w + ".") for w in wrapped))]  # not inside a wrapper
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"{arg}: no {what} named {bad} in {type(model).__name__}; valid names: {valid}")
    return [(n, modules[n]) for n in names]


def _check_disjoint(targets: list[str], keep: list[str]) -> None:
    """keep_trainable must not contain, be or sit inside a target (it would train the frozen base in full)."""
    clash = [k for k in keep for t in targets if k == t or t.startswith(k + ".") or k.startswith(t + ".")]
    if clash:
        raise ValueError(f"keep_trainable {clash} overlaps targets {targets}: it would train the wrapped layer's "
                         "frozen weights in full; keep_trainable is for other modules (usually the head)")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@contextlib.contextmanager
def _restore_on_error(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """Undo module replacements (logged in the yielded list) and requires_grad changes if the block raises."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    replaced: list[tuple[str, nn.Module]] = []  # (name, original module)
    try:
        yield replaced
    except BaseException:  # KeyboardInterrupt included
        for name, original in reversed(replaced):
            _replace(model, name, original)
        for p, flag in flags:
            p.requires_grad_(flag)
        raise


def _swap(model: nn.Module, name: str, new: nn.Module, log: list[tuple[str, nn.Module]]) -> None:
    log.append((name, model.get_submodule(name)))
    _replace(model, name, new)


def freeze(model: nn.Module) -> nn.Module:
    """Set requires_grad = False on every parameter."""
    _named_modules(model)
    return model.requires_grad_(False)


def unfreeze(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Make every parameter of the named modules trainable (e.g. the task head)."""
    found = _lookup(model, names, what="module")
    with _restore_on_error(model):
        for _, module in found:
            module.requires_grad_(True)
    return model


# ---------------------------------------------------------------------------------------------------------
# Top-k layers and BitFit


def layers(model: nn.Module) -> list[str]:
    """Names of the leaf modules that own parameters, in definition order (input side first)."""
    return [n for n, m in _named_modules(model).items()
            if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def finetune_top_k(model: nn.Module, k: int) -> nn.Module:
    """Freeze everything but the last `k` parametrised layers (k = 1: a linear probe on the head)."""
    names = layers(model)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= len(names):
        raise ValueError(f"k must be an int in [1, {len(names)}] (the model's parametrised layers: {names}), got {k!r}")
    with _restore_on_error(model):
        freeze(model)
        return unfreeze(model, names[-int(k):])


def bitfit(model: nn.Module, *, keep_trainable: Sequence[str] = ()) -> nn.Module:
    """BitFit (Ben Zaken et al. 2022): train only the bias vectors (plus the modules in `keep_trainable`)."""
    found = _lookup(model, keep_trainable, arg="keep_trainable", what="module")
    biases = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if not biases and not found:
        raise ValueError(f"{type(model).__name__} has no bias parameters, so BitFit would train nothing; "
                         "name the modules to train in keep_trainable")
    with _restore_on_error(model):
        freeze(model)
        for p in biases:
            p.requires_grad_(True)
        for _, module in found:
            module.requires_grad_(True)
    return model


# ---------------------------------------------------------------------------------------------------------
# LoRA (Hu et al. 2021): W x + (alpha / r) * B A x, with W frozen, A (r, in) and B (out, r) trained


def _check_rank_alpha(rank, alpha, in_features: int, out_features: int, where: str = "") -> None:
    limit = min(in_features, out_features)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an int in [1, {limit}] for {where}a {in_features} -> {out_features} layer "
                         f"(a larger rank is no longer low-rank), got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or not alpha > 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")


def _linear_with(base: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """A plain nn.Linear shaped like `base`, holding `weight` and `base`'s bias (what merging gives back)."""
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                       device=base.weight.device, dtype=base.weight.dtype)
    merged.weight.copy_(weight)
    if base.bias is not None:
        merged.bias.copy_(base.bias)
    return merged


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: y = base(x) + scaling * x A^T B^T.

    A is initialised like an nn.Linear weight, B at zero, so at step 0 the layer equals its base exactly.
    `scaling = alpha / rank` keeps the update's size comparable when the rank changes.
    """

    def __init__(self, base: nn.Linear, *, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        from lwkit.qlora import Linear4bit  # QLoRA: a frozen 4-bit base (lwkit.qlora builds on this module)

        if not isinstance(base, (nn.Linear, Linear4bit)):
            raise TypeError(f"base must be a torch.nn.Linear (or a lwkit.qlora.Linear4bit), got {type(base).__name__}")
        _check_rank_alpha(rank, alpha, base.in_features, base.out_features)
        rank, alpha = int(rank), float(alpha)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight  # a Linear4bit dequantizes here
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does to its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling  # (batch, out_features)

    def delta_weight(self) -> torch.Tensor:
        """The update scaling * B A, shaped like the base weight (out_features, in_features)."""
        return self.scaling * self.lora_B @ self.lora_A

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear with weight W + scaling * B A: same outputs, no extra cost at inference."""
        return _linear_with(self.base, self.base.weight + self.delta_weight())

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def add_lora(model: nn.Module, targets: Sequence[str], *, rank: int = 4, alpha: float = 8.0,
             keep_trainable: Sequence[str] = ()) -> nn.Module:
    """Freeze `model` and wrap each nn.Linear named in `targets` in a LoRALinear (in place).

    Every target, the rank (an int in [1, min(in, out)] for each target), alpha (finite, > 0) and
    `keep_trainable` are checked first; if anything fails part-way the model is put back unchanged.
    """
    return _wrap_linears(model, targets, rank, alpha, keep_trainable,
                         lambda linear: LoRALinear(linear, rank=rank, alpha=alpha))


def _wrap_linears(model: nn.Module, targets, rank, alpha, keep_trainable, wrap) -> nn.Module:
    """Check every target, rank/alpha and keep_trainable, then freeze `model` and replace each target nn.Linear
    by `wrap(linear)` (LoRA, DoRA, QLoRA), restoring the model if anything fails part-way."""
    found = _lookup(model, targets, arg="targets", kind=nn.Linear, what="nn.Linear", allow_empty=False)
    keep = _lookup(model, keep_trainable, arg="keep_trainable", what="module")
    _check_disjoint([n for n, _ in found], [n for n, _ in keep])
    for name, linear in found:
        _check_rank_alpha(rank, alpha, linear.in_features, linear.out_features, where=f"{name!r}, ")
    with _restore_on_error(model) as log:
        freeze(model)
        for name, linear in found:
            _swap(model, name, wrap(linear), log)
        for _, module in keep:
            module.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear (and lwkit.dora.DoRALinear) in `model` by its merged nn.Linear (in place)."""
    from lwkit.dora import DoRALinear

    modules = _named_modules(model)
    with _restore_on_error(model) as log:
        for name, module in list(modules.items()):
            if isinstance(module, (LoRALinear, DoRALinear)):
                _swap(model, name, module.merge(), log)
    return model


# ---------------------------------------------------------------------------------------------------------
# Bottleneck adapters (Houlsby et al. 2019): h + up(relu(down(h))) after a frozen layer


def _check_bottleneck(bottleneck, features: int, where: str = "") -> None:
    if isinstance(bottleneck, bool) or not isinstance(bottleneck, numbers.Integral) or not 1 <= bottleneck <= features:
        raise ValueError(f"bottleneck must be an int in [1, {features}] for {where}{features} features, "
                         f"got {bottleneck!r}")


class Adapter(nn.Module):
    """A residual bottleneck: h + up(relu(down(h))), with `up` at zero so it starts as the identity."""

    def __init__(self, features: int, bottleneck: int = 16):
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, numbers.Integral) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        _check_bottleneck(bottleneck, features)
        self.down = nn.Linear(int(features), int(bottleneck))
        self.up = nn.Linear(int(bottleneck), int(features))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(torch.relu(self.down(h)))  # (batch, features)


class WithAdapter(nn.Module):
    """A frozen layer followed by a trainable Adapter on its output."""

    def __init__(self, base: nn.Linear, bottleneck: int = 16):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.adapter = Adapter(base.out_features, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def add_adapters(model: nn.Module, targets: Sequence[str], *, bottleneck: int = 16,
                 keep_trainable: Sequence[str] = ()) -> nn.Module:
    """Freeze `model` and put a bottleneck Adapter after each nn.Linear named in `targets` (in place).

    All arguments are checked first; if anything fails part-way the model is put back unchanged.
    """
    found = _lookup(model, targets, arg="targets", kind=nn.Linear, what="nn.Linear", allow_empty=False)
    keep = _lookup(model, keep_trainable, arg="keep_trainable", what="module")
    _check_disjoint([n for n, _ in found], [n for n, _ in keep])
    for name, linear in found:
        _check_bottleneck(bottleneck, linear.out_features, where=f"{name!r} with ")
    with _restore_on_error(model) as log:
        freeze(model)
        for name, linear in found:
            _swap(model, name, WithAdapter(linear, bottleneck), log)
        for _, module in keep:
            module.requires_grad_(True)
    return model


# ---------------------------------------------------------------------------------------------------------
# What trains, and what a task costs to store


@dataclass
class TrainableReport:
    """Trainable vs total parameters of a model, and the bytes one fine-tuned task adds."""

    trainable: int  # parameters with requires_grad
    total: int  # all parameters, adapters and LoRA factors included
    task_bytes: int  # bytes of the trainable tensors: what must be stored per task next to the shared model
    by_name: dict[str, tuple[int, bool]] = field(default_factory=dict)  # name -> (numel, requires_grad)

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"trainable params: {self.trainable:,} of {self.total:,} ({100 * self.fraction:.2f} %), "
                f"{self.task_bytes:,} bytes per task")


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable and total parameters (each shared tensor once) and the per-task bytes."""
    _named_modules(model)
    by_name, seen = {}, set()
    trainable = total = task_bytes = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        by_name[name] = (p.numel(), p.requires_grad)
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            task_bytes += p.numel() * p.element_size()
    return TrainableReport(trainable=trainable, total=total, task_bytes=task_bytes, by_name=by_name)
