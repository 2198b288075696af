"""Pruning: masks as data, magnitude criteria, schedules, a sensitivity scan, and channel pruning that slices.

A criterion returns a boolean mask (True = keep); `apply_masks` applies it. Masks are keyed by module name
(`'fc1'`, `'features.0.0'`) and cover that module's `weight`. Sparse files live in `lwkit.sparse`.

    masks = layer_masks(model, 0.9, scope="global")   # 1) score  2) threshold
    apply_masks(model, masks)                         # 3) zero the pruned weights
    fine_tune(model, masks, train_loader, epochs=3)   # 4) retrain, keeping them at zero
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lwkit import train

PRUNABLE = (nn.Linear, nn.Conv2d)  # layers whose `weight` unstructured pruning may touch


def _check_sparsity(sparsity, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise ValueError(f"{name} must be a number in [0, 1) (the fraction of weights set to zero), got {sparsity!r}")
    return float(sparsity)


def _check_tensor(tensor, name: str = "tensor") -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def n_to_prune(numel: int, sparsity: float) -> int:
    """How many of `numel` weights a fraction `sparsity` removes (rounded, as torch.nn.utils.prune does)."""
    return round(sparsity * numel)


# ---------------------------------------------------------------------------------------------------------
# Criteria: a tensor in, a mask out


def magnitude_mask(tensor: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of the largest-|w| weights, zeroing the `round(sparsity * numel)` smallest.

    Args:
        tensor: weights of any shape.
        sparsity: fraction in [0, 1) to remove.
    Returns:
        bool tensor of the same shape, True where the weight is kept.
    """
    _check_tensor(tensor)
    sparsity = _check_sparsity(sparsity)
    k = n_to_prune(tensor.numel(), sparsity)
    mask = torch.ones(tensor.numel(), dtype=torch.bool, device=tensor.device)
    if k > 0:
        smallest = torch.topk(tensor.detach().abs().flatten(), k, largest=False).indices
        mask[smallest] = False
    return mask.view_as(tensor)


def random_mask(tensor: torch.Tensor, sparsity: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-mask that removes `round(sparsity * numel)` weights chosen at random (the no-information baseline)."""
    _check_tensor(tensor)
    sparsity = _check_sparsity(sparsity)
    k = n_to_prune(tensor.numel(), sparsity)
    mask = torch.ones(tensor.numel(), dtype=torch.bool)
    mask[torch.randperm(tensor.numel(), generator=generator)[:k]] = False
    return mask.view_as(tensor).to(tensor.device)


def global_threshold(tensors: dict[str, torch.Tensor], sparsity: float) -> float:
    """The |w| below which a global cut removes a fraction `sparsity` of all weights in `tensors` together."""
    scores = _concat_abs(tensors)
    k = n_to_prune(scores.numel(), _check_sparsity(sparsity))
    return 0.0 if k == 0 else float(torch.kthvalue(scores, k).values)


def global_magnitude_masks(tensors: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One magnitude cut over all `tensors` pooled: big layers with small weights lose the most."""
    flat_mask = magnitude_mask(_concat_abs(tensors), sparsity)
    masks, start = {}, 0
    for name, t in tensors.items():
        masks[name] = flat_mask[start:start + t.numel()].view_as(t)
        start += t.numel()
    return masks


def _concat_abs(tensors) -> torch.Tensor:
    if not isinstance(tensors, dict) or not tensors:
        raise ValueError("tensors must be a non-empty dict of name -> tensor")
    for name, t in tensors.items():
        _check_tensor(t, f"tensors[{name!r}]")
    return torch.cat([t.detach().abs().flatten() for t in tensors.values()])


# ---------------------------------------------------------------------------------------------------------
# Models: which layers, which masks, apply, measure


def prunable_layers(model: nn.Module, kinds: tuple = PRUNABLE) -> dict[str, nn.Module]:
    """name -> module for every Linear/Conv2d (the layers unstructured pruning acts on), in model order."""
    _check_model(model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, kinds)}
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no prunable layers ({', '.join(k.__name__ for k in kinds)})")
    return layers


def layer_masks(model: nn.Module, sparsity: float | dict[str, float], *, scope: str = "layer",
                criterion: str = "magnitude", layers: list[str] | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks for the weights of `model`'s prunable layers.

    Args:
        sparsity: one fraction for all layers, or (scope='layer' only) a dict layer name -> fraction.
        scope: 'layer' (each layer loses the same fraction) or 'global' (one threshold for all).
        criterion: 'magnitude' or 'random'.
        layers: names to prune (default: every Linear/Conv2d); others are left out of the result.
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if criterion not in ("magnitude", "random"):
        raise ValueError(f"criterion must be 'magnitude' or 'random', got {criterion!r}")
    available = prunable_layers(model)
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"layers {unknown} are not prunable layers of the model; prunable: {list(available)}")
    weights = {n: available[n].weight for n in names}
    if scope == "global":
        if isinstance(sparsity, dict):
            raise TypeError("scope='global' takes one sparsity for the whole model, not a dict per layer")
        if criterion == "random":
            return {n: random_mask(w, sparsity, generator=generator) for n, w in weights.items()}
        return global_magnitude_masks(weights, sparsity)
    per_layer = sparsity if isinstance(sparsity, dict) else {n: sparsity for n in names}
    missing = [n for n in names if n not in per_layer]
    if missing:
        raise ValueError(f"no sparsity given for layers {missing}")
    if criterion == "random":
        return {n: random_mask(w, per_layer[n], generator=generator) for n, w in weights.items()}
    return {n: magnitude_mask(w, per_layer[n]) for n, w in weights.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero, in place, every weight whose mask entry is False; returns the model."""
    layers = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in layers or not isinstance(getattr(layers[name], "weight", None), torch.Tensor):
            raise ValueError(f"mask for {name!r} has no matching layer with a weight in the model")
        weight = layers[name].weight
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        weight.mul_(mask.to(weight.device, weight.dtype))
    return model


def sparsity(model_or_tensor: nn.Module | torch.Tensor) -> float:
    """Fraction of zeros: of a tensor, or of all Linear/Conv2d weights of a model (biases and norms excluded)."""
    if isinstance(model_or_tensor, torch.Tensor):
        _check_tensor(model_or_tensor)
        return 1.0 - torch.count_nonzero(model_or_tensor).item() / model_or_tensor.numel()
    if isinstance(model_or_tensor, nn.Module):
        weights = [m.weight for m in prunable_layers(model_or_tensor).values()]
        total = sum(w.numel() for w in weights)
        return 1.0 - sum(torch.count_nonzero(w).item() for w in weights) / total
    raise TypeError(f"model_or_tensor must be an nn.Module or a tensor, got {type(model_or_tensor).__name__}")


@dataclass
class SparsityReport:
    """Per-layer weights and zeros; prints as a table."""

    rows: list[dict]  # name, kind, shape, params, zeros, sparsity

    @property
    def total(self) -> float:
        return sum(r["zeros"] for r in self.rows) / sum(r["params"] for r in self.rows)

    def __str__(self) -> str:
        lines = [f"{'layer':<16}{'kind':<8}{'shape':>18}{'weights':>10}{'zeros':>10}{'sparsity':>10}"]
        for r in self.rows:
            lines.append(f"{r['name']:<16}{r['kind']:<8}{str(r['shape']):>18}{r['params']:>10,}{r['zeros']:>10,}"
                         f"{r['sparsity']:>10.1%}")
        lines.append(f"{'all':<42}{sum(r['params'] for r in self.rows):>10,}"
                     f"{sum(r['zeros'] for r in self.rows):>10,}{self.total:>10.1%}")
        return "\n".join(lines)

    __repr__ = __str__


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Sparsity of every Linear/Conv2d weight of `model`, and of all of them together."""
    rows = []
    for name, m in prunable_layers(model).items():
        zeros = m.weight.numel() - int(torch.count_nonzero(m.weight))
        rows.append({"name": name, "kind": type(m).__name__, "shape": tuple(m.weight.shape),
                     "params": m.weight.numel(), "zeros": zeros, "sparsity": zeros / m.weight.numel()})
    return SparsityReport(rows)


# ---------------------------------------------------------------------------------------------------------
# Schedules and training with masks


def cubic_sparsity(step: int, total_steps: int, final_sparsity: float, initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - t / T)^3, fast pruning early, gentle late."""
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    if not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    t = min(max(step, 0), total_steps) / total_steps
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - t) ** 3


def iterative_levels(final_sparsity: float, rounds: int) -> list[float]:
    """Han et al. (2015)-style rounds: remove the same share of the remaining weights each round."""
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    if not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    keep_per_round = (1 - final_sparsity) ** (1 / rounds)
    return [1 - keep_per_round ** (r + 1) for r in range(rounds)]


def fine_tune(model: nn.Module, masks: dict[str, torch.Tensor], train_loader, *, epochs: int = 2,
              lr: float = 5e-4, **fit_kwargs) -> train.History:
    """`lwkit.train.fit` that re-applies `masks` after every step, so pruned weights stay zero."""
    apply_masks(model, masks)
    return train.fit(model, train_loader, epochs=epochs, lr=lr, after_step=lambda m: apply_masks(m, masks),
                     **fit_kwargs)


def iterative_prune(model: nn.Module, train_loader, *, final_sparsity: float, rounds: int = 3,
                    epochs_per_round: int = 1, scope: str = "layer", lr: float = 5e-4, **fit_kwargs):
    """Prune -> fine-tune, `rounds` times, up to `final_sparsity` (in place). Returns the final masks."""
    masks = {}
    for level in iterative_levels(final_sparsity, rounds):
        masks = layer_masks(model, level, scope=scope)
        fine_tune(model, masks, train_loader, epochs=epochs_per_round, lr=lr, **fit_kwargs)
    return masks


def gradual_prune(model: nn.Module, train_loader, *, final_sparsity: float, epochs: int = 3, prune_every: int = 10,
                  prune_fraction: float = 0.75, scope: str = "layer", lr: float = 5e-4, **fit_kwargs):
    """Train while the sparsity follows the cubic schedule over the first `prune_fraction` of the steps.

    Every `prune_every` steps the masks are recomputed at the scheduled sparsity (weights pruned earlier
    stay at zero, so they are pruned again). Returns the final masks; the model is changed in place.
    """
    if not 0 < prune_fraction <= 1:
        raise ValueError(f"prune_fraction must be in (0, 1], got {prune_fraction!r}")
    if not isinstance(prune_every, int) or prune_every <= 0:
        raise ValueError(f"prune_every must be a positive int, got {prune_every!r}")
    _check_sparsity(final_sparsity, "final_sparsity")
    prune_steps = max(1, int(prune_fraction * epochs * len(train_loader)))
    state = {"step": 0, "masks": layer_masks(model, 0.0, scope=scope)}

    def after_step(m):
        state["step"] += 1
        if state["step"] % prune_every == 0 or state["step"] == prune_steps:
            if state["step"] <= prune_steps:
                state["masks"] = layer_masks(m, cubic_sparsity(state["step"], prune_steps, final_sparsity),
                                             scope=scope)
        apply_masks(m, state["masks"])

    train.fit(model, train_loader, epochs=epochs, lr=lr, after_step=after_step, **fit_kwargs)
    return state["masks"]


@torch.no_grad()
def sensitivity_scan(model: nn.Module, evaluate: Callable[[nn.Module], float], sparsities,
                     layers: list[str] | None = None) -> dict[str, list[float]]:
    """Prune one layer at a time by magnitude to each sparsity; `evaluate(model)` after each. Model restored."""
    sparsities = [_check_sparsity(s) for s in sparsities]
    available = prunable_layers(model)
    results = {}
    for name in (list(available) if layers is None else layers):
        if name not in available:
            raise ValueError(f"layer {name!r} is not a prunable layer; prunable: {list(available)}")
        weight = available[name].weight
        original = weight.detach().clone()
        scores = []
        for s in sparsities:
            weight.copy_(original * magnitude_mask(original, s))
            scores.append(evaluate(model))
        weight.copy_(original)
        results[name] = scores
    return results


# ---------------------------------------------------------------------------------------------------------
# Structured: remove whole output channels of conv layers (Li et al. 2017)


def channel_scores(weight: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """One score per output channel: the L1 or L2 norm of its filter. weight: (out, in, kh, kw) -> (out,)."""
    _check_tensor(weight, "weight")
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return weight.detach().flatten(1).norm(p=1 if norm == "l1" else 2, dim=1)


def keep_channels(scores: torch.Tensor, sparsity: float, *, layer: str = "layer") -> torch.Tensor:
    """Sorted indices of the channels to keep: all but the `round(sparsity * n)` lowest-scoring."""
    sparsity = _check_sparsity(sparsity)
    n = scores.numel()
    n_keep = n - n_to_prune(n, sparsity)
    if n_keep <= 0:
        raise ValueError(f"sparsity {sparsity} would remove all {n} channels of {layer}; keep at least one")
    return torch.topk(scores, n_keep).indices.sort().values


def _slice_conv(conv: nn.Conv2d, keep_out: torch.Tensor | None, keep_in: torch.Tensor | None) -> nn.Conv2d:
    weight = conv.weight.detach()  # (out, in, kh, kw)
    if keep_out is not None:
        weight = weight[keep_out]
    if keep_in is not None:
        weight = weight[:, keep_in]
    new = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new.weight.data.copy_(weight)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach() if keep_out is None else conv.bias.detach()[keep_out])
    return new


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name) is not None:
            getattr(new, name).data.copy_(getattr(bn, name).detach()[keep])
    if bn.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _slice_linear_in(linear: nn.Linear, keep: torch.Tensor, per_channel: int) -> nn.Linear:
    # The flattened feature map lays out each channel's h*w values together: keep those column blocks.
    cols = (keep[:, None] * per_channel + torch.arange(per_channel)).flatten()
    new = nn.Linear(len(cols), linear.out_features, bias=linear.bias is not None)
    new.weight.data.copy_(linear.weight.detach()[:, cols])
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.detach())
    return new


_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout)


def prune_channels(model: nn.Module, sparsity: float | dict[str, float], *, norm: str = "l1") -> nn.Sequential:
    """A smaller copy of a SmallCNN-style model with the lowest-norm output channels of each conv removed.

    Supported: a model with `.features` (Conv2d [+ BatchNorm2d], ReLU, pooling, possibly in nested
    Sequentials), `.pool` (AdaptiveAvgPool2d) and `.classifier` (Linear). Each conv loses its filters, its
    BatchNorm the matching entries, and the next conv (or the classifier) the matching inputs. The result is
    a plain `nn.Sequential` of torch layers, so it saves and loads without lwkit.

    Args:
        sparsity: fraction of output channels to remove per conv, or a dict conv name -> fraction.
        norm: 'l1' or 'l2' filter norm as the score.
    """
    _check_model(model)
    if not all(isinstance(getattr(model, a, None), nn.Module) for a in ("features", "pool", "classifier")):
        raise TypeError(f"prune_channels supports models with .features, .pool and .classifier (like SmallCNN), "
                        f"got {type(model).__name__}")
    if not isinstance(model.pool, nn.AdaptiveAvgPool2d) or not isinstance(model.classifier, nn.Linear):
        raise TypeError("prune_channels needs model.pool to be AdaptiveAvgPool2d and model.classifier a Linear, got "
                        f"{type(model.pool).__name__} and {type(model.classifier).__name__}")
    leaves = [(n, m) for n, m in model.features.named_modules() if len(list(m.children())) == 0]
    for name, m in leaves:
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d) + _PASS_THROUGH):
            raise TypeError(f"prune_channels does not support layer features.{name} ({type(m).__name__})")
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise TypeError(f"prune_channels does not support grouped/depthwise conv features.{name} (groups={m.groups})")
    convs = [f"features.{n}" for n, m in leaves if isinstance(m, nn.Conv2d)]
    per_layer = sparsity if isinstance(sparsity, dict) else {n: sparsity for n in convs}
    unknown = set(per_layer) - set(convs)
    if unknown:
        raise ValueError(f"sparsity names {sorted(unknown)} are not convs of the model; convs: {convs}")
    out, keep_prev, last_bn_ok = [], None, True
    for name, m in leaves:
        full = f"features.{name}"
        if isinstance(m, nn.Conv2d):
            keep = keep_channels(channel_scores(m.weight, norm), per_layer.get(full, 0.0), layer=full)
            out.append(_slice_conv(m, keep, keep_prev))
            keep_prev, last_bn_ok = keep, False
        elif isinstance(m, nn.BatchNorm2d):
            if keep_prev is None or last_bn_ok:
                raise TypeError(f"BatchNorm2d features.{name} must directly follow a Conv2d")
            out.append(_slice_bn(m, keep_prev))
            last_bn_ok = True
        else:
            out.append(copy.deepcopy(m))
    out.append(copy.deepcopy(model.pool))
    out.append(nn.Flatten(1))
    size = model.pool.output_size
    per_channel = math.prod(size) if isinstance(size, tuple) else size * size
    out.append(_slice_linear_in(model.classifier, keep_prev, per_channel))
    return nn.Sequential(*out).eval()


# ---------------------------------------------------------------------------------------------------------
# Sparse kernels and the one-call API


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored as a torch sparse CSR matrix (same outputs, sparse kernel)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self.weight = nn.Parameter(linear.weight.detach().to_sparse_csr(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sparse.mm(self.weight, x.T).T  # (batch, out): sparse (out, in) @ dense (in, batch)
        return y if self.bias is None else y + self.bias


def to_sparse_csr(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Linear replaced by a SparseLinear (torch sparse CSR weights)."""
    _check_model(model)
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.Linear):
                setattr(m, child_name, SparseLinear(child))
    return model.eval()


METHODS = ("magnitude", "global", "random", "l1_channel", "l2_channel")


def prune(model: nn.Module, method: str = "magnitude", sparsity: float = 0.5, **kwargs) -> nn.Module:
    """Prune a copy of `model` in one call (the original is untouched).

    methods: 'magnitude' (each layer by |w|), 'global' (one |w| threshold), 'random' (baseline),
    'l1_channel' / 'l2_channel' (remove conv output channels, see `prune_channels`).
    """
    _check_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_sparsity(sparsity)
    if method.endswith("_channel"):
        if kwargs:
            raise TypeError(f"method {method!r} takes no extra options, got {sorted(kwargs)}")
        return prune_channels(model, sparsity, norm=method[:2])
    pruned = copy.deepcopy(model)
    scope = "global" if method == "global" else "layer"
    criterion = "random" if method == "random" else "magnitude"
    return apply_masks(pruned, layer_masks(pruned, sparsity, scope=scope, criterion=criterion, **kwargs))
