"""Making a network easy to quantize per tensor: BatchNorm folding, cross-layer equalization, bias correction.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" (DFQ). Per-tensor
int8 gives a whole layer one scale; a depthwise conv whose channels have ranges from 0.01 to 50 (after the
BatchNorm is folded in) then rounds its small channels to zero. Two fixes that need no training:

* **Cross-layer equalization (CLE).** ReLU is positively homogeneous, relu(x / s) = relu(x) / s for s > 0,
  so dividing output channel i of one layer by s_i and multiplying input channel i of the next layer by s_i
  leaves the network's function unchanged. Choosing s_i = sqrt(r1_i * r2_i) / r2_i (r = the channel's weight
  range) gives both layers the same range sqrt(r1_i * r2_i) per channel: no channel is tiny any more.
* **Bias correction.** Rounding the weights adds an error eps = W_q - W whose mean effect on the output,
  eps @ E[x], is a bias: subtract it from the layer's bias.

    folded = fold_batchnorm(replace_relu6(model))   # 1) plain conv + bias, ReLU (homogeneous)
    flat = equalize(folded)                          # 2) same function, balanced per-channel ranges
    q = bias_correction(quantized, flat, data)       # 3) after quantizing: remove the rounding's mean shift
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn

from lwkit.mobilenet import InvertedResidual

__all__ = [
    "fold_bn_weights", "fold_batchnorm", "replace_relu6",
    "channel_ranges", "equalization_scales", "equalize_pair", "equalization_pairs", "equalize",
    "relu_normal_mean", "input_channel_means", "bias_correction",
]


def _check_model(model, name: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


# ---------------------------------------------------------------------------------------------------------
# 1) BatchNorm folding: conv -> BN becomes one conv with a bias (what every int8 runtime does first)


def fold_bn_weights(weight: torch.Tensor, bias: torch.Tensor | None, running_mean: torch.Tensor,
                    running_var: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None,
                    eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv-then-BN (eval mode) as one layer.

    BN(Wx + b) = gamma * (Wx + b - mean) / sqrt(var + eps) + beta, so with k = gamma / sqrt(var + eps):
    W' = k * W (per output channel), b' = k * (b - mean) + beta.

    Args:
        weight: (out, ...) conv or linear weight; bias: (out,) or None.
        running_mean, running_var, gamma, beta: (out,) BatchNorm statistics and affine parameters
            (gamma/beta None for a BN without affine).
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise TypeError(f"weight must be a tensor of shape (out, ...), got {type(weight).__name__}")
    out = weight.shape[0]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("gamma", gamma),
                    ("beta", beta), ("bias", bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (out,)):
            raise ValueError(f"{name} must be a tensor of shape ({out},) to match weight, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not isinstance(eps, numbers.Real) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    gamma = torch.ones(out) if gamma is None else gamma
    beta = torch.zeros(out) if beta is None else beta
    bias = torch.zeros(out) if bias is None else bias
    k = gamma / torch.sqrt(running_var + eps)  # (out,)
    w = weight * k.reshape(-1, *([1] * (weight.dim() - 1)))  # (out, ...)
    return w, k * (bias - running_mean) + beta


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) in which every Conv2d directly followed by a BatchNorm2d inside an
    nn.Sequential absorbs it: the conv gets the folded weight and a bias, the BN becomes nn.Identity."""
    _check_model(model)
    model = copy.deepcopy(model).eval()
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None:
                raise ValueError(f"BatchNorm2d {bn_name} tracks no running statistics: nothing to fold")
            w, b = fold_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                   bn.eps)
            conv.weight = nn.Parameter(w)
            conv.bias = nn.Parameter(b)
            setattr(seq, bn_name, nn.Identity())
            folded += 1
    if folded == 0:
        raise ValueError(f"{type(model).__name__} has no Conv2d followed by BatchNorm2d in an nn.Sequential to fold")
    return model


def replace_relu6(model: nn.Module) -> nn.Module:
    """A copy with every nn.ReLU6 replaced by nn.ReLU: ReLU6 clips at 6, so it is not scale-invariant
    (relu6(x / s) != relu6(x) / s) and equalization would change the function. DFQ does the same swap;
    measure what it costs (usually nothing: few activations of a trained net exceed 6)."""
    _check_model(model)
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.ReLU6):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.ReLU(inplace=m.inplace))
    return model


# ---------------------------------------------------------------------------------------------------------
# 2) Cross-layer equalization


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def channel_ranges(conv: nn.Conv2d, side: str) -> torch.Tensor:
    """max |w| per output channel (side='out') or per input channel (side='in'); a depthwise conv's
    channel i is both its input and its output channel i. Returns (channels,)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if side not in ("in", "out"):
        raise ValueError(f"side must be 'in' or 'out', got {side!r}")
    w = conv.weight.detach().abs()  # (out, in / groups, kh, kw)
    if side == "out" or _is_depthwise(conv):
        return w.flatten(1).amax(1)
    if conv.groups != 1:
        raise ValueError(f"grouped conv with groups={conv.groups} is not supported (only dense or depthwise)")
    return w.transpose(0, 1).flatten(1).amax(1)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """DFQ's s_i = sqrt(r1_i * r2_i) / r2_i: after W1[i] / s_i and W2[:, i] * s_i both ranges are sqrt(r1_i r2_i).

    Channels where either range is 0 (a dead channel) keep s_i = 1.
    """
    if not isinstance(r1, torch.Tensor) or not isinstance(r2, torch.Tensor):
        raise TypeError(f"r1 and r2 must be tensors, got {type(r1).__name__} and {type(r2).__name__}")
    if r1.shape != r2.shape or r1.dim() != 1:
        raise ValueError(f"r1 and r2 must be 1-D of the same length, got {tuple(r1.shape)} and {tuple(r2.shape)}")
    if bool((r1 < 0).any()) or bool((r2 < 0).any()):
        raise ValueError("r1 and r2 are ranges (max |w|) and must be >= 0")
    alive = (r1 > 0) & (r2 > 0)
    # sqrt(r1 r2) / r2 written as sqrt(r1) / sqrt(r2): the product underflows to 0 for tiny ranges (s = 0).
    s = torch.sqrt(r1) / torch.sqrt(torch.where(alive, r2, torch.ones_like(r2)))
    return torch.where(alive, s, torch.ones_like(s))


@torch.no_grad()
def equalize_pair(conv1: nn.Conv2d, conv2: nn.Conv2d) -> torch.Tensor:
    """Equalize conv1's output channels with conv2's input channels, in place; returns the scales s.

    Only valid when what lies between them is positively homogeneous (ReLU, identity; not ReLU6, not a
    BatchNorm: fold it first) and conv1's output feeds only conv2.
    """
    for name, conv in (("conv1", conv1), ("conv2", conv2)):
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
    if conv1.out_channels != conv2.in_channels:
        raise ValueError(f"conv1 has {conv1.out_channels} output channels but conv2 reads {conv2.in_channels}")
    s = equalization_scales(channel_ranges(conv1, "out"), channel_ranges(conv2, "in"))  # (channels,)
    conv1.weight.mul_(1 / s.reshape(-1, 1, 1, 1))
    if conv1.bias is not None:
        conv1.bias.mul_(1 / s)
    if _is_depthwise(conv2):
        conv2.weight.mul_(s.reshape(-1, 1, 1, 1))
    else:
        conv2.weight.mul_(s.reshape(1, -1, 1, 1))
    return s


def equalization_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv1, conv2) names that may be equalized: inside each InvertedResidual, expand -> depthwise and
    depthwise -> project. Pairs across blocks are left out: the residual connection reads conv1's output too."""
    _check_model(model)
    pairs = []
    for name, block in model.named_modules():
        if isinstance(block, InvertedResidual):
            prefix = f"{name}." if name else ""
            if block.expand is not None:
                pairs.append((f"{prefix}expand.0", f"{prefix}depthwise.0"))
            pairs.append((f"{prefix}depthwise.0", f"{prefix}project.0"))
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no InvertedResidual blocks; pass pairs=[(conv1, conv2), ...]")
    return pairs


def _between(model: nn.Module, conv1_name: str) -> list[nn.Module]:
    """The modules after conv1 in its nn.Sequential (what its output passes through on the way out)."""
    parent_name, _, child = conv1_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = [n for n, _ in parent.named_children()]
    return list(parent.children())[names.index(child) + 1:] if isinstance(parent, nn.Sequential) else []


@torch.no_grad()
def equalize(model: nn.Module, pairs: list[tuple[str, str]] | None = None, *, iterations: int = 10) -> nn.Module:
    """A copy of a BN-folded, ReLU model with every pair in `pairs` (default: `equalization_pairs`)
    equalized, sweeping the pairs `iterations` times (each sweep changes the shared layer's ranges)."""
    _check_model(model)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    pairs = equalization_pairs(model) if pairs is None else pairs
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"pairs must be a non-empty list of (conv1, conv2) names, got {pairs!r}")
    convs = dict(model.named_modules())
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(p not in convs for p in pair):
            raise ValueError(f"pairs has {pair!r}: each must be two module names of the model")
        for m in _between(model, pair[0]):
            if isinstance(m, (nn.BatchNorm2d, nn.ReLU6)):
                fix = "fold it first: fold_batchnorm" if isinstance(m, nn.BatchNorm2d) else "use replace_relu6 first"
                raise ValueError(f"{pair[0]} is followed by {type(m).__name__}, which equalization does not commute "
                                 f"with; {fix}")
    model = copy.deepcopy(model).eval()
    for _ in range(iterations):
        for name1, name2 in pairs:
            equalize_pair(model.get_submodule(name1), model.get_submodule(name2))
    return model


# ---------------------------------------------------------------------------------------------------------
# 3) Bias correction


def relu_normal_mean(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[relu(x)] for x ~ N(mean, std^2): mean * Phi(mean / std) + std * phi(mean / std).

    DFQ's data-free route to E[x]: a BN before the ReLU says each channel is about N(beta, gamma^2).
    """
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        raise TypeError(f"mean and std must be tensors, got {type(mean).__name__} and {type(std).__name__}")
    if bool((std <= 0).any()):
        raise ValueError("std must be > 0")
    z = mean / std
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return mean * cdf + std * pdf


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def input_channel_means(model: nn.Module, data, *, num_batches: int | None = None) -> dict[str, torch.Tensor]:
    """layer name -> mean of its input per channel (over batch and positions), for every Conv2d/Linear,
    measured on `data` (a loader of (x, y) batches or a list of input tensors)."""
    _check_model(model)
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be None or a positive int, got {num_batches!r}")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def pre(module, args):
            x = args[0].detach()
            dims = [0, 2, 3] if x.dim() == 4 else list(range(x.dim() - 1))
            sums[name] = sums.get(name, 0) + x.sum(dims)  # (channels,)
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1 if x.dim() == 4 else -1]
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in _layers(model).items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for i, batch in enumerate(data):
            if num_batches is not None and i >= num_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("data is empty: it yielded no batches")
    return {n: sums[n] / counts[n] for n in sums}


@torch.no_grad()
def bias_correction(quantized: nn.Module, reference: nn.Module, data, *, num_batches: int | None = None) -> nn.Module:
    """A copy of `quantized` whose Conv2d/Linear biases absorb the mean output shift of weight rounding.

    For each layer: eps = W_q - W (W from `reference`, the float model with the same layer names; a
    `lwkit.quant.QuantWrapper` is read through its `.layer`), shift = eps summed over the kernel, times
    E[x] per input channel (measured on the float model with `data`), bias -= shift. Zero padding makes the
    shift slightly smaller at the borders; the correction uses the interior value.
    """
    from lwkit.quant import QuantWrapper

    _check_model(quantized, "quantized")
    _check_model(reference, "reference")
    ref_layers = _layers(reference)
    means = input_channel_means(reference, data, num_batches=num_batches)
    model = copy.deepcopy(quantized).eval()
    corrected = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantWrapper):
            layer, key, w_q = m.layer, name, m.quantized_weight().detach()
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and not name.endswith(".layer"):
            layer, key, w_q = m, name, m.weight.detach()
        else:
            continue
        if key not in ref_layers or key not in means:
            raise ValueError(f"layer {key} of quantized has no counterpart in reference (or never ran on data)")
        w = ref_layers[key].weight.detach()
        if w.shape != w_q.shape:
            raise ValueError(f"layer {key}: quantized weight {tuple(w_q.shape)} != reference {tuple(w.shape)}")
        eps = w_q - w  # (out, in / groups, ...)
        mean_x = means[key]  # (in,)
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:
            if not _is_depthwise(layer):
                raise ValueError(f"layer {key}: grouped conv with groups={layer.groups} is not supported")
            shift = eps.flatten(1).sum(1) * mean_x  # (out,)
        else:
            shift = eps.flatten(2).sum(2) @ mean_x if eps.dim() > 2 else eps @ mean_x  # (out,)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
        layer.bias.sub_(shift)
        corrected += 1
    if corrected == 0:
        raise ValueError("quantized has no Conv2d, Linear or QuantWrapper layer to correct")
    return model
