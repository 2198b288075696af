"""Structured pruning: remove whole output channels of conv layers (Li et al. 2017), and really slice them.

    keep = keep_channels(channel_scores(conv.weight, "l1"), 0.5)   # 1) score each filter  2) keep the best
    small = prune_channels(cnn, 0.5)                                # 3) a smaller copy: convs, BN, head sliced

`lwkit.prune.prune_channels` (and `prune(model, "l1_channel", ...)`) reach the same functions.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from lwkit.prune import _check_model, _check_sparsity, _check_tensor, n_to_prune

__all__ = ["channel_scores", "keep_channels", "prune_channels", "recalibrate_bn"]

_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout)  # layers with no channel weights


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} has {bad} NaN/inf values; a norm or ranking of them means nothing")


def channel_scores(weight: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """One score per output channel: the L1 or L2 norm of its filter.

    Args:
        weight: (out, in, kh, kw) conv weight, or any tensor with the output channel first.
        norm: 'l1' or 'l2'.
    Returns:
        (out,) scores, same dtype and device as `weight`.
    """
    _check_tensor(weight, "weight")
    if weight.dim() < 2:
        raise ValueError(f"weight must have >= 2 dims (out_channels, ...), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    _check_finite(weight, "weight")
    if not isinstance(norm, str) or norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return weight.detach().flatten(1).norm(p=1 if norm == "l1" else 2, dim=1)  # (out,)


def keep_channels(scores: torch.Tensor, sparsity: float, *, layer: str = "layer") -> torch.Tensor:
    """Sorted indices of the channels to keep: all but the `round(sparsity * n)` lowest-scoring.

    Raises ValueError if that would remove every channel (a layer with no output breaks the network).
    """
    _check_tensor(scores, "scores")
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (one score per channel), got shape {tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}")
    _check_finite(scores, "scores")
    sparsity = _check_sparsity(sparsity)
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a str (used in messages), got {type(layer).__name__}")
    n = scores.numel()
    n_keep = n - n_to_prune(n, sparsity)
    if n_keep <= 0:
        raise ValueError(f"sparsity {sparsity} would remove all {n} channels of {layer}; keep at least one "
                         f"(sparsity <= {(n - 1) / n:.4g})")
    return torch.topk(scores, n_keep).indices.sort().values  # (n_keep,)


# ---------------------------------------------------------------------------------------------------------
# Slicing: new, smaller torch layers with the kept rows/columns (same dtype and device as the original)


def _slice_conv(conv: nn.Conv2d, keep_out: torch.Tensor | None, keep_in: torch.Tensor | None) -> nn.Conv2d:
    weight = conv.weight.detach()  # (out, in, kh, kw)
    if keep_out is not None:
        weight = weight[keep_out.to(weight.device)]
    if keep_in is not None:
        weight = weight[:, keep_in.to(weight.device)]
    new = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            bias = conv.bias.detach()
            new.bias.copy_(bias if keep_out is None else bias[keep_out.to(bias.device)])
    return new


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    ref = next((t for t in (bn.weight, bn.running_mean) if t is not None), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, **factory)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(bn, name) is not None:
                old = getattr(bn, name).detach()
                getattr(new, name).copy_(old[keep.to(old.device)])
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _slice_linear_in(linear: nn.Linear, keep: torch.Tensor, per_channel: int) -> nn.Linear:
    # The flattened feature map lays out each channel's h*w values together: keep those column blocks.
    weight = linear.weight.detach()  # (out, channels * per_channel)
    keep = keep.to(weight.device)
    cols = (keep[:, None] * per_channel + torch.arange(per_channel, device=weight.device)).flatten()
    new = nn.Linear(len(cols), linear.out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight[:, cols])
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
    return new


def _check_channel_model(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaves of `model.features`, after checking the model has the supported shape."""
    _check_model(model)
    if not all(isinstance(getattr(model, a, None), nn.Module) for a in ("features", "pool", "classifier")):
        raise TypeError(f"prune_channels supports models with .features, .pool and .classifier (like SmallCNN), "
                        f"got {type(model).__name__}")
    if not isinstance(model.pool, nn.AdaptiveAvgPool2d) or not isinstance(model.classifier, nn.Linear):
        raise TypeError("prune_channels needs model.pool to be AdaptiveAvgPool2d and model.classifier a Linear, got "
                        f"{type(model.pool).__name__} and {type(model.classifier).__name__}")
    leaves = [(n, m) for n, m in model.features.named_modules() if len(list(m.children())) == 0]
    last_out, bn_allowed = None, False
    for name, m in leaves:
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d) + _PASS_THROUGH):
            raise TypeError(f"prune_channels does not support layer features.{name} ({type(m).__name__})")
        if isinstance(m, nn.BatchNorm2d) and not bn_allowed:
            raise TypeError(f"BatchNorm2d features.{name} must follow a Conv2d (one BatchNorm per conv)")
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            bn_allowed = isinstance(m, nn.Conv2d)
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise TypeError(f"prune_channels does not support grouped/depthwise conv features.{name} "
                                f"(groups={m.groups})")
            last_out = m.out_channels
    if last_out is None:
        raise ValueError(f"model.features of {type(model).__name__} has no Conv2d whose channels could be pruned")
    size = model.pool.output_size
    size = size if isinstance(size, tuple) else (size, size)
    if any(s is None for s in size):
        raise TypeError(f"prune_channels needs a fixed model.pool output size, got {model.pool.output_size}")
    if model.classifier.in_features != last_out * math.prod(size):
        raise TypeError(f"model.classifier takes {model.classifier.in_features} inputs, but the last conv gives "
                        f"{last_out} channels x {math.prod(size)} pooled positions")
    return leaves


def prune_channels(model: nn.Module, sparsity: float | dict[str, float], *, norm: str = "l1") -> nn.Sequential:
    """A smaller copy of a SmallCNN-style model with the lowest-norm output channels of each conv removed.

    Supported: a model with `.features` (Conv2d [+ BatchNorm2d], ReLU, pooling, possibly in nested
    Sequentials), `.pool` (AdaptiveAvgPool2d) and `.classifier` (Linear). Each conv loses its filters, its
    BatchNorm the matching entries, and the next conv (or the classifier) the matching inputs. The result is
    a plain `nn.Sequential` of torch layers (same dtype and device as `model`, which is left untouched), so it
    saves and loads without lwkit.

    Args:
        sparsity: fraction of output channels to remove per conv, or a dict conv name -> fraction
            (convs not in the dict keep all their channels).
        norm: 'l1' or 'l2' filter norm as the score.
    """
    leaves = _check_channel_model(model)
    if not isinstance(norm, str) or norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    convs = [f"features.{n}" for n, m in leaves if isinstance(m, nn.Conv2d)]
    if isinstance(sparsity, Mapping):
        unknown = [k for k in sparsity if k not in convs]
        if unknown:
            raise ValueError(f"sparsity names {unknown} are not convs of the model; convs: {convs}")
        per_layer = {k: _check_sparsity(v, f"sparsity[{k!r}]") for k, v in sparsity.items()}
    else:
        per_layer = dict.fromkeys(convs, _check_sparsity(sparsity))
    # 1) score and choose every conv's channels before building anything, so a bad sparsity fails early
    keeps = {}
    for name, m in leaves:
        full = f"features.{name}"
        if isinstance(m, nn.Conv2d):
            keeps[full] = keep_channels(channel_scores(m.weight, norm), per_layer.get(full, 0.0), layer=full)
    # 2) slice: each conv loses output channels, its BatchNorm the same entries, the next layer the inputs
    out, keep_prev = [], None
    for name, m in leaves:
        full = f"features.{name}"
        if isinstance(m, nn.Conv2d):
            out.append(_slice_conv(m, keeps[full], keep_prev))
            keep_prev = keeps[full]
        elif isinstance(m, nn.BatchNorm2d):
            out.append(_slice_bn(m, keep_prev))  # checked above: it follows a conv
        else:
            out.append(copy.deepcopy(m))
    out.append(copy.deepcopy(model.pool))
    out.append(nn.Flatten(1))
    size = model.pool.output_size
    per_channel = math.prod(size) if isinstance(size, tuple) else size * size
    out.append(_slice_linear_in(model.classifier, keep_prev, per_channel))
    return nn.Sequential(*out).eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, *, num_batches: int = 10) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var from `num_batches` forward passes (no gradients), in place.

    After pruning, the statistics stored during training describe activations that no longer exist. The
    running statistics are reset and averaged over the batches (momentum None = cumulative mean); only the
    BatchNorm layers run in train mode, and the model is left in eval mode. `data` yields (x, y) or x.
    """
    _check_model(model)
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an int >= 1, got {num_batches!r}")
    if isinstance(data, (torch.Tensor, str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a loader or list of (x, y) batches or input tensors, got {type(data).__name__}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        raise ValueError(f"model {type(model).__name__} has no BatchNorm with running statistics to recalibrate")
    batches = []
    for i, batch in enumerate(data):
        if i >= num_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data batch {i} holds {type(x).__name__}, not an input tensor")
        batches.append(x)
    if not batches:
        raise ValueError("data yielded no batch: recalibration needs at least one")
    saved = [(m, m.momentum) for m in bns]
    buffers = [(m, {k: b.clone() for k, b in m.named_buffers()}) for m in bns]
    model.eval()
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        for x in batches:
            model(x)
    except BaseException:
        for m, old in buffers:  # a failed pass leaves the old statistics, not half-new ones
            for k, b in m.named_buffers():
                b.copy_(old[k])
        raise
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return model

