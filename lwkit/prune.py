"""Pruning: masks as data, magnitude criteria, schedules and a sensitivity scan.

A criterion returns a boolean mask (True = keep); `apply_masks` applies it. Masks are keyed by module name
(`'fc1'`, `'features.0.0'`) and cover that module's `weight`. A sparsity that would empty a layer raises a
ValueError naming it; what changes a model in place puts it back if it fails or is interrupted. Channel
pruning is in `lwkit.channels`, sparsity reports and sparse files in `lwkit.sparse` (also reachable here).

    masks = layer_masks(model, 0.9, scope="global")   # 1) score  2) threshold
    apply_masks(model, masks)                         # 3) zero the pruned weights
    fine_tune(model, masks, train_loader, epochs=3)   # 4) retrain, keeping them at zero
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from lwkit import train
from lwkit.sparse import _check_int, _check_model, prunable_layers

__all__ = ["METHODS", "n_to_prune", "magnitude_mask", "random_mask", "global_threshold", "global_magnitude_masks",
           "layer_masks", "apply_masks", "cubic_sparsity", "iterative_levels", "fine_tune", "iterative_prune",
           "gradual_prune", "sensitivity_scan", "prune"]

METHODS = ("magnitude", "global", "random", "l1_channel", "l2_channel")
_MOVED = {**dict.fromkeys(("channel_scores", "keep_channels", "prune_channels"), "channels"), **dict.fromkeys(
    ("PRUNABLE", "sparsity", "SparsityReport", "sparsity_report", "SparseLinear", "to_sparse_csr"), "sparse")}


def __getattr__(name: str):
    # lwkit.prune.prune_channels etc. keep working; looked up lazily because lwkit.channels builds on this module
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module(f"lwkit.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _NotANumberError(TypeError, ValueError):
    """A sparsity that is not a real number: a TypeError, and a ValueError as lwkit has always raised."""


def _check_sparsity(sparsity, name: str = "sparsity") -> float:
    message = f"{name} must be a number in [0, 1) (the fraction of weights set to zero), got {sparsity!r}"
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise _NotANumberError(message)
    if not (math.isfinite(sparsity) and 0 <= sparsity < 1):
        raise ValueError(message)
    return float(sparsity)


def _check_tensor(tensor, name: str = "tensor", *, finite: bool = False) -> None:
    """A non-empty tensor; with `finite`, real numbers without NaN/inf (magnitudes that mean something)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}): there is nothing to prune")
    if finite and (tensor.dtype == torch.bool or tensor.is_complex()):
        raise TypeError(f"{name} must hold real numbers (weights), got dtype {tensor.dtype}")
    if finite and tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"{name} has {int((~torch.isfinite(tensor)).sum())} NaN/inf values: a magnitude ranking "
                         f"of them means nothing")


def _layer_names(value, available: dict, name: str = "layers") -> list[str]:
    """Checked layer names: one str counts as a one-element list (never its characters)."""
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise TypeError(f"{name} must be a layer name or a list of them, got {type(value).__name__}")
    names = list(dict.fromkeys(value))  # keeps order, drops repeats
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{name} must be a non-empty list of layer names (str), got {value!r:.80}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"{name} {unknown} are not prunable layers of the model; prunable: {list(available)}")
    return names


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _emptied(sparsity: float, n: int, layer: str) -> ValueError:
    return ValueError(f"sparsity {sparsity} would remove all {n} weights of {layer}; a layer needs at least one "
                      f"weight (for {n} weights use sparsity <= {(n - 1) / n:.6g})")


def n_to_prune(numel: int, sparsity: float) -> int:
    """How many of `numel` weights a fraction `sparsity` removes (rounded, as torch.nn.utils.prune does)."""
    return round(_check_sparsity(sparsity) * _check_int(numel, "numel", 0))


# ---------------------------------------------------------------------------------------------------------
# Criteria: a tensor in, a mask out


def magnitude_mask(tensor: torch.Tensor, sparsity: float, *, layer: str = "tensor") -> torch.Tensor:
    """Keep-mask of the largest-|w| weights, zeroing the `round(sparsity * numel)` smallest.

    Args:
        tensor: weights of any shape (finite, not empty).
        sparsity: fraction in [0, 1) to remove; one that would remove every weight raises ValueError.
        layer: the tensor's name in that error message.
    Returns:
        bool tensor of the same shape, True where the weight is kept.
    """
    _check_tensor(tensor, "tensor" if layer == "tensor" else f"tensor (weight of {layer})", finite=True)
    sparsity = _check_sparsity(sparsity)
    k = n_to_prune(tensor.numel(), sparsity)
    if k == tensor.numel():
        raise _emptied(sparsity, k, layer)
    mask = torch.ones(tensor.numel(), dtype=torch.bool, device=tensor.device)
    if k > 0:
        smallest = torch.topk(tensor.detach().abs().flatten(), k, largest=False).indices
        mask[smallest] = False
    return mask.view_as(tensor)


def random_mask(tensor: torch.Tensor, sparsity: float, *, generator: torch.Generator | None = None,
                layer: str = "tensor") -> torch.Tensor:
    """Keep-mask that removes `round(sparsity * numel)` weights at random (the baseline; values are not read)."""
    _check_tensor(tensor, "tensor")
    sparsity = _check_sparsity(sparsity)
    _check_generator(generator)
    k = n_to_prune(tensor.numel(), sparsity)
    if k == tensor.numel():
        raise _emptied(sparsity, k, layer)
    mask = torch.ones(tensor.numel(), dtype=torch.bool)
    mask[torch.randperm(tensor.numel(), generator=generator)[:k]] = False
    return mask.view_as(tensor).to(tensor.device)


def global_threshold(tensors: dict[str, torch.Tensor], sparsity: float) -> float:
    """The |w| below which a global cut removes a fraction `sparsity` of all weights in `tensors` together."""
    scores = _concat_abs(tensors)
    k = n_to_prune(scores.numel(), _check_sparsity(sparsity))
    return 0.0 if k == 0 else float(torch.kthvalue(scores.cpu(), k).values)


def global_magnitude_masks(tensors: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One magnitude cut over all `tensors` pooled: big layers with small weights lose the most (never all)."""
    sparsity = _check_sparsity(sparsity)
    flat_mask = magnitude_mask(_concat_abs(tensors), sparsity, layer="all tensors pooled")
    masks, start = {}, 0
    for name, t in tensors.items():
        masks[name] = flat_mask[start:start + t.numel()].view(t.shape).to(t.device).clone()
        start += t.numel()
        if not masks[name].any():
            raise ValueError(f"global sparsity {sparsity} would remove all {t.numel()} weights of {name!r} (its "
                             f"largest |w| is {float(t.detach().abs().max()):.3g}); lower the sparsity, prune per "
                             f"layer, or leave {name!r} out")
    return masks


def _concat_abs(tensors) -> torch.Tensor:
    if not isinstance(tensors, Mapping) or not tensors:
        raise TypeError(f"tensors must be a non-empty dict of name -> tensor, got {tensors!r:.80}")
    for name, t in tensors.items():
        _check_tensor(t, f"tensors[{name!r}]", finite=True)
    return torch.cat([t.detach().abs().flatten().cpu() for t in tensors.values()])  # (all weights,)


# ---------------------------------------------------------------------------------------------------------
# Models: which masks, apply them


def layer_masks(model: nn.Module, sparsity: float | dict[str, float], *, scope: str = "layer",
                criterion: str = "magnitude", layers: str | list[str] | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks for the weights of `model`'s prunable layers.

    Args:
        sparsity: one fraction for all layers, or (scope='layer') a dict layer name -> fraction.
        scope: 'layer' (each layer loses the same fraction) or 'global' (one threshold for all).
        criterion: 'magnitude' or 'random'.
        layers: a name or names to prune (default: every Linear/Conv2d, or the dict's names).
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if criterion not in ("magnitude", "random"):
        raise ValueError(f"criterion must be 'magnitude' or 'random', got {criterion!r}")
    _check_generator(generator)
    available = prunable_layers(model)
    names = list(available) if layers is None else _layer_names(layers, available)
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise TypeError("scope='global' takes one sparsity for the whole model, not a dict per layer")
        in_dict = _layer_names(list(sparsity), available, "sparsity names")
        names = [n for n in available if n in sparsity] if layers is None else names
        if set(names) != set(in_dict):
            raise ValueError(f"sparsity names {in_dict} but layers are {names}: give one for each layer to prune")
        per_layer = {n: _check_sparsity(sparsity[n], f"sparsity[{n!r}]") for n in names}
    else:
        per_layer = dict.fromkeys(names, _check_sparsity(sparsity))
    weights = {n: available[n].weight for n in names}
    if scope == "global" and criterion == "magnitude":
        return global_magnitude_masks(weights, per_layer[names[0]])
    if criterion == "random":
        return {n: random_mask(w, per_layer[n], generator=generator, layer=repr(n)) for n, w in weights.items()}
    return {n: magnitude_mask(w, per_layer[n], layer=repr(n)) for n, w in weights.items()}


def _check_masks(model: nn.Module, masks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, ~mask) pairs after checking every mask: a dict of bool tensors shaped like existing weights."""
    _check_model(model)
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of layer name -> bool tensor, got {type(masks).__name__}")
    if not masks:
        raise ValueError("masks is empty: there is no layer to prune")
    layers = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    pairs = []
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"masks[{name!r}] names no layer with a weight; layers: {list(layers)}")
        weight = layers[name].weight
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"masks[{name!r}] must be a bool tensor (True = keep), got {got}: a float or int "
                            f"mask would scale the weights instead of keeping or removing them")
        if mask.shape != weight.shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        if weight.layout != torch.strided:
            raise TypeError(f"layer {name!r} has a {weight.layout} weight; apply masks before converting it")
        if weight.numel() and not mask.any():
            raise ValueError(f"masks[{name!r}] removes all {weight.numel()} weights of {name!r}; keep at least one")
        pairs.append((weight, ~mask))  # (weight, where to zero)
    return pairs


@torch.no_grad()
def _zero_pruned(pairs) -> None:
    for weight, removed in pairs:
        weight.masked_fill_(removed.to(weight.device), 0)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero, in place, every weight whose mask entry is False; returns the model.

    Every mask is checked (bool, shape, layer name, not emptying a layer) before any weight changes.
    """
    _zero_pruned(_check_masks(model, masks))
    return model


@contextlib.contextmanager
def _restored_on_error(model: nn.Module):
    """Put back every parameter, buffer, grad and train/eval flag of `model` if the block raises (Ctrl-C too)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    except BaseException:
        for k, v in model.state_dict(keep_vars=True).items():
            v.data = saved[k]  # `.data =` also undoes a move to another device (train.fit calls model.to)
        for k, p in model.named_parameters():
            p.grad = grads.get(k)
        for m, flag in flags:
            m.training = flag
        raise


# ---------------------------------------------------------------------------------------------------------
# Schedules and training with masks


def cubic_sparsity(step: int, total_steps: int, final_sparsity: float, initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - t / T)^3; fast pruning early, gentle late, s_f after T."""
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    total_steps = _check_int(total_steps, "total_steps", 1)
    t = min(_check_int(step, "step", 0), total_steps) / total_steps
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - t) ** 3


def iterative_levels(final_sparsity: float, rounds: int) -> list[float]:
    """Han et al. (2015)-style rounds: remove the same share of the remaining weights each round."""
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    rounds = _check_int(rounds, "rounds", 1)
    keep_per_round = (1 - final_sparsity) ** (1 / rounds)
    return [1 - keep_per_round ** (r + 1) for r in range(rounds)]


def fine_tune(model: nn.Module, masks: dict[str, torch.Tensor], train_loader, *, epochs: int = 2,
              lr: float = 5e-4, **fit_kwargs) -> train.History:
    """`lwkit.train.fit` that re-applies `masks` after every step; the model is put back if training fails."""
    pairs = _check_masks(model, masks)
    with _restored_on_error(model):
        _zero_pruned(pairs)
        return train.fit(model, train_loader, epochs=epochs, lr=lr, after_step=lambda m: _zero_pruned(pairs),
                         **fit_kwargs)


def iterative_prune(model: nn.Module, train_loader, *, final_sparsity: float, rounds: int = 3,
                    epochs_per_round: int = 1, scope: str = "layer", lr: float = 5e-4, **fit_kwargs):
    """Prune -> fine-tune, `rounds` times, up to `final_sparsity` (in place, put back if it fails). -> masks."""
    levels = iterative_levels(final_sparsity, rounds)
    epochs_per_round = _check_int(epochs_per_round, "epochs_per_round", 1)
    layer_masks(model, levels[-1], scope=scope)  # raises now, not after hours, if the final level empties a layer
    with _restored_on_error(model):
        for level in levels:
            masks = layer_masks(model, level, scope=scope)
            fine_tune(model, masks, train_loader, epochs=epochs_per_round, lr=lr, **fit_kwargs)
    return masks


def gradual_prune(model: nn.Module, train_loader, *, final_sparsity: float, epochs: int = 3, prune_every: int = 10,
                  prune_fraction: float = 0.75, scope: str = "layer", lr: float = 5e-4, **fit_kwargs):
    """Train while the sparsity follows the cubic schedule over the first `prune_fraction` of the steps.

    Every `prune_every` steps the masks are recomputed at the scheduled sparsity (weights pruned earlier stay
    at zero). Returns the final masks; the model changes in place, or is put back if training fails.
    """
    if (isinstance(prune_fraction, bool) or not isinstance(prune_fraction, numbers.Real)
            or not (math.isfinite(prune_fraction) and 0 < prune_fraction <= 1)):
        raise ValueError(f"prune_fraction must be a number in (0, 1], got {prune_fraction!r}")
    prune_every = _check_int(prune_every, "prune_every", 1)
    epochs = _check_int(epochs, "epochs", 1)
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    if not hasattr(train_loader, "__len__"):
        raise TypeError(f"train_loader must have a len() (the schedule counts steps), got {train_loader!r:.60}")
    prune_steps = max(1, int(prune_fraction * epochs * len(train_loader)))
    masks = layer_masks(model, 0.0, scope=scope)
    state = {"step": 0, "masks": masks, "pairs": _check_masks(model, masks)}
    layer_masks(model, final_sparsity, scope=scope)  # raises now if the final sparsity empties a layer

    def after_step(m):
        state["step"] += 1
        if state["step"] <= prune_steps and (state["step"] % prune_every == 0 or state["step"] == prune_steps):
            state["masks"] = layer_masks(m, cubic_sparsity(state["step"], prune_steps, final_sparsity), scope=scope)
            state["pairs"] = _check_masks(m, state["masks"])
        _zero_pruned(state["pairs"])

    with _restored_on_error(model):
        train.fit(model, train_loader, epochs=epochs, lr=lr, after_step=after_step, **fit_kwargs)
    return state["masks"]


@torch.no_grad()
def sensitivity_scan(model: nn.Module, evaluate: Callable[[nn.Module], float], sparsities,
                     layers: str | list[str] | None = None) -> dict[str, list[float]]:
    """Prune one layer at a time by magnitude to each sparsity; `evaluate(model)` after each. -> name: scores.

    The model is restored after each layer, and also when `evaluate` raises or the scan is interrupted.
    """
    available = prunable_layers(model)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a function model -> score, got {type(evaluate).__name__}")
    if isinstance(sparsities, (str, bytes, Mapping)) or not isinstance(sparsities, Iterable):
        raise TypeError(f"sparsities must be a list of numbers in [0, 1), got {sparsities!r:.80}")
    sparsities = [_check_sparsity(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]
    if not sparsities:
        raise ValueError("sparsities is empty: give at least one sparsity to scan")
    names = list(available) if layers is None else _layer_names(layers, available)
    for name in names:  # every check (NaN weights, an emptied layer) before the first evaluation
        for s in sparsities:
            magnitude_mask(available[name].weight, s, layer=repr(name))
    results = {name: [] for name in names}
    for name in names:
        weight = available[name].weight
        original = weight.detach().clone()
        try:
            for s in sparsities:
                weight.copy_(original * magnitude_mask(original, s, layer=repr(name)))
                results[name].append(evaluate(model))
        finally:
            weight.copy_(original)
    return results


def prune(model: nn.Module, method: str = "magnitude", sparsity: float | dict[str, float] = 0.5,
          **kwargs) -> nn.Module:
    """Prune a copy of `model` in one call (the original is untouched).

    methods: 'magnitude' (each layer by |w|), 'global' (one |w| threshold), 'random' (baseline),
    'l1_channel' / 'l2_channel' (remove conv output channels, see `lwkit.channels.prune_channels`).
    `sparsity` may be a dict layer name -> fraction for every method but 'global'. Extra options:
    `layers` and `generator` (unstructured methods only).
    """
    _check_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(sparsity, Mapping):
        _check_sparsity(sparsity)
    if method.endswith("_channel"):
        if kwargs:
            raise TypeError(f"method {method!r} takes no extra options, got {sorted(kwargs)}")
        from lwkit.channels import prune_channels
        return prune_channels(model, sparsity, norm=method[:2])
    scope = "global" if method == "global" else "layer"
    criterion = "random" if method == "random" else "magnitude"
    masks = layer_masks(model, sparsity, scope=scope, criterion=criterion, **kwargs)  # checks before copying
    return apply_masks(copy.deepcopy(model), masks)
