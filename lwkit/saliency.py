"""Data-aware pruning scores: Wanda (Sun et al. 2023) weighs |w_ij| by the norm of the input it multiplies.

Magnitude pruning asks "is this weight small?"; Wanda asks "is this weight times its typical input small?":
score_ij = |w_ij| * ||x_j||_2, with ||x_j|| measured on a few calibration batches, and each output row loses
the same fraction of its weights. No gradients, no retraining. With every ||x_j|| = 1 it is per-row magnitude.

    norms = input_norms(model, calib_loader, num_batches=4)   # 1) one forward pass over calibration data
    masks = wanda_masks(model, norms, 0.5)                    # 2) score  3) keep the best of each row
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from lwkit.prune import _check_sparsity, _check_tensor, _layer_names, n_to_prune
from lwkit.sparse import prunable_layers

__all__ = ["input_norms", "wanda_scores", "row_masks", "wanda_masks"]


@torch.no_grad()
def input_norms(model: nn.Module, data, *, num_batches: int | None = None,
                layers: str | list[str] | None = None) -> dict[str, torch.Tensor]:
    """name -> ||x_j||_2 over all calibration rows, for the input features of each nn.Linear in `layers`.

    `data` is a re-iterable of (x, y) batches or of input tensors; the model is run in eval mode.
    """
    available = prunable_layers(model, nn.Linear)
    names = list(available) if layers is None else _layer_names(layers, available)
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be None or an int >= 1, got {num_batches!r}")
    if isinstance(data, (torch.Tensor, str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a loader or list of (x, y) batches or input tensors, got {type(data).__name__}")
    sums = {k: torch.zeros(available[k].in_features, dtype=torch.float64) for k in names}

    def hook(name):
        def accumulate(module, args):  # returns None, so the input passes through unchanged
            sums[name].add_(args[0].detach().reshape(-1, args[0].shape[-1]).double().pow(2).sum(0).cpu())
        return accumulate

    hooks = [available[k].register_forward_pre_hook(hook(k)) for k in names]
    was_training, seen = model.training, 0
    model.eval()
    try:
        for i, batch in enumerate(data):
            if num_batches is not None and i >= num_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"data batch {i} holds {type(x).__name__}, not an input tensor")
            model(x)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("data yielded no batch: input norms need at least one calibration batch")
    return {k: s.sqrt().float() for k, s in sums.items()}  # (in_features,) each


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W| * ||x_j||: (out, in) scores for an (out, in) weight and the (in,) norms of its input features."""
    _check_tensor(weight, "weight", finite=True)
    _check_tensor(input_norm, "input_norm", finite=True)
    if weight.dim() != 2 or input_norm.shape != (weight.shape[1],):
        raise ValueError(f"weight must be (out, in) and input_norm (in,), got {tuple(weight.shape)} and "
                         f"{tuple(input_norm.shape)}")
    if (input_norm < 0).any():
        raise ValueError("input_norm must be >= 0 (it is a norm)")
    return weight.detach().abs() * input_norm.to(weight.device, weight.dtype)[None, :]  # (out, in)


def row_masks(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask that removes the `round(sparsity * in)` lowest scores of every row (each output alike)."""
    _check_tensor(scores, "scores", finite=True)
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (out, in), got shape {tuple(scores.shape)}")
    sparsity = _check_sparsity(sparsity)
    k = n_to_prune(scores.shape[1], sparsity)
    if k == scores.shape[1]:
        raise ValueError(f"sparsity {sparsity} would remove all {k} weights of every row")
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return mask


def wanda_masks(model: nn.Module, norms: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Wanda keep-masks for the Linear layers named in `norms` (from `input_norms`), each row at `sparsity`."""
    available = prunable_layers(model, nn.Linear)
    if not isinstance(norms, dict) or not norms:
        raise TypeError(f"norms must be a non-empty dict name -> (in,) tensor (input_norms), got {type(norms).__name__}")
    names = _layer_names(list(norms), available, "norms names")
    sparsity = _check_sparsity(sparsity)
    return {k: row_masks(wanda_scores(available[k].weight, norms[k]), sparsity) for k in names}
