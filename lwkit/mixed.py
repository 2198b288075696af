"""Weight-only quantization of a whole model, with one bit-width or one per layer (mixed precision, 混合精度):
`quantize_weights`, the model's size at those bits, and which layers can take fewer bits.

Every per-layer dict (bits, sensitivity, sizes) is checked against the layers it talks about: an unknown
or misspelt layer name raises, naming it and listing the valid ones, instead of being ignored.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers

import torch
from torch import nn

from lwkit.quant import (
    METHODS,
    _check_bits,
    _check_bool,
    _check_int,
    _check_method,
    fake_quantize,
    kmeans_fake_quantize,
)

__all__ = ["QUANTIZABLE", "quantizable_layers", "quantize_weights", "quantized_size_bytes", "layer_sensitivity",
           "allocate_bits"]

QUANTIZABLE = (nn.Linear, nn.Conv2d)  # the layers quantization wraps


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> every nn.Linear / nn.Conv2d of the model (in order), the layers quantization wraps."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def _check_layer_bits(bits, layers: dict, *, symmetric: bool = False, name: str = "bits") -> dict:
    """layer -> bits (or None) from one value or a dict of known layer names; raises naming unknown ones."""
    if isinstance(bits, dict):
        unknown = [k for k in bits if k not in layers]
        if unknown:
            raise ValueError(f"{name} names unknown layers {unknown}; quantizable layers: {list(layers)}")
        for layer, b in bits.items():
            if b is not None:
                _check_bits(b, symmetric, f"{name}[{layer!r}]")
        return {n: bits.get(n) for n in layers}  # layers missing from the dict stay in float
    if bits is not None:
        bits = _check_bits(bits, symmetric, name)
    return dict.fromkeys(layers, bits)


def quantize_weights(model: nn.Module, *, bits: int | dict = 8, per_channel: bool = True, symmetric: bool = True,
                     method: str = "minmax") -> nn.Module:
    """Weight-only post-training quantization (PTQ): a copy whose Linear/Conv2d weights lie on the grid.

    `bits` is one int for every layer or a dict layer name -> bits (None keeps that layer in float);
    layers missing from the dict stay in float. `method` is one of METHODS or 'kmeans' (k-means levels, no
    grid: `per_channel` and `symmetric` are then unused, and 1 bit means 2 centroids). Returns a plain
    float model (the weights are dequantized values), so it runs anywhere; the integer storage is what
    `lwkit.mixed.quantized_size_bytes` counts. The model passed in is never changed.
    """
    layers = quantizable_layers(model)
    _check_bool("per_channel", per_channel)
    _check_bool("symmetric", symmetric)
    _check_method(method, allowed=(*METHODS, "kmeans"))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    if bits is None:
        raise TypeError("bits must be an int or a dict layer name -> bits, got None (to keep a layer in float, "
                        "map it to None in a dict)")
    per_layer = _check_layer_bits(bits, layers, symmetric=symmetric and method != "kmeans")
    for name, b in per_layer.items():
        if b is not None and not bool(torch.isfinite(layers[name].weight).all()):
            raise ValueError(f"layer {name!r} has NaN or infinite weights: there is no range to quantize")
    model = copy.deepcopy(model)
    layers = quantizable_layers(model)
    with torch.no_grad():
        for name, b in per_layer.items():
            if b is None:
                continue
            w = layers[name].weight
            if method == "kmeans":
                w.copy_(kmeans_fake_quantize(w, bits=b))
            else:
                w.copy_(fake_quantize(w, bits=b, symmetric=symmetric, axis=0 if per_channel else None, method=method))
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Size and mixed precision


def quantized_size_bytes(model: nn.Module, bits: int | dict | None, *, per_channel: bool = True) -> float:
    """Bytes to store `model` with its Linear/Conv2d weights at `bits` (an int, None = fp32, or a dict
    layer name -> bits or None; layers missing from the dict stay fp32): packed integers plus one fp32
    scale and one zero_point byte per channel (or per tensor); everything else (biases, BatchNorm) at fp32."""
    layers = quantizable_layers(model)
    _check_bool("per_channel", per_channel)
    per_layer = _check_layer_bits(bits, layers)
    total = 0.0
    quantized_params = set()
    for name, layer in layers.items():
        b = per_layer[name]
        if b is None:
            continue
        groups = layer.weight.shape[0] if per_channel else 1
        total += layer.weight.numel() * b / 8 + groups * 5
        quantized_params.add(id(layer.weight))
    for p in model.state_dict(keep_vars=True).values():
        if id(p) not in quantized_params and p.is_floating_point():
            total += p.numel() * 4
    return total


def _check_layer_names(name: str, names, layers: dict) -> list[str]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"{name} must be a list of layer names (e.g. ['fc1']), got {names!r}")
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(f"{name} names unknown layers {unknown}; quantizable layers: {list(layers)}")
    if not names:
        raise ValueError(f"{name} is empty: name at least one of {list(layers)}")
    return list(names)


def layer_sensitivity(model: nn.Module, evaluate, *, bits_options=(8, 4, 3, 2), per_channel: bool = True,
                      symmetric: bool = True, layers: list[str] | None = None) -> dict[str, dict[int, float]]:
    """layer -> {bits: score} with only that layer quantized (others fp32); `evaluate(model) -> score`.

    `layers` picks which layers to scan (default: every Linear/Conv2d). Each score comes from a quantized
    deep copy, so `model` itself is never changed, even if `evaluate` raises or the scan is interrupted.
    """
    all_layers = quantizable_layers(model)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> score, got {type(evaluate).__name__}")
    _check_bool("per_channel", per_channel)
    _check_bool("symmetric", symmetric)
    if isinstance(bits_options, (str, bytes)) or not hasattr(bits_options, "__iter__"):
        raise TypeError(f"bits_options must be a list of bit-widths, got {bits_options!r}")
    options = [_check_bits(b, symmetric, "bits_options") for b in bits_options]
    if not options or len(set(options)) != len(options):
        raise ValueError(f"bits_options must be non-empty without repeats, got {list(bits_options)}")
    names = list(all_layers) if layers is None else _check_layer_names("layers", layers, all_layers)
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    out = {}
    for name in names:
        out[name] = {}
        for b in options:
            score = evaluate(quantize_weights(model, bits={name: b}, per_channel=per_channel, symmetric=symmetric))
            if isinstance(score, bool) or not isinstance(score, numbers.Real) or math.isnan(score):
                raise ValueError(f"evaluate must return a number, got {score!r} for layer {name!r} at {b} bits")
            out[name][b] = float(score)
    return out


def allocate_bits(sensitivity: dict[str, dict[int, float]], sizes: dict[str, int], budget_bits: float, *,
                  max_combinations: int = 200_000) -> dict[str, int]:
    """Per-layer bits that maximise the summed scores under a total weight budget (in bits).

    Args:
        sensitivity: layer -> {bits: score when only that layer is at those bits} (higher is better;
            e.g. accuracy). Summing per-layer scores assumes their effects add up — a first-order guess.
        sizes: layer -> number of weights; exactly the layers of `sensitivity`.
        budget_bits: the most weight bits allowed (finite, > 0), sum over layers of sizes[layer] * bits[layer].
    Tries every combination (few layers, few options) and raises if none fits.
    """
    if not isinstance(sensitivity, dict) or not sensitivity:
        raise ValueError(f"sensitivity must be a non-empty dict layer -> {{bits: score}}, got {sensitivity!r}")
    if not isinstance(sizes, dict):
        raise TypeError(f"sizes must be a dict layer -> number of weights, got {type(sizes).__name__}")
    names = list(sensitivity)
    missing = [n for n in names if n not in sizes]
    unknown = [n for n in sizes if n not in sensitivity]
    if missing or unknown:
        raise ValueError(f"sizes must name exactly the layers of sensitivity {names}: missing {missing}, "
                         f"unknown {unknown}")
    for n in names:
        _check_int(f"sizes[{n!r}]", sizes[n], low=1)
        scores = sensitivity[n]
        if not isinstance(scores, dict) or not scores:
            raise ValueError(f"sensitivity[{n!r}] must be a non-empty dict bits -> score, got {scores!r}")
        for b, s in scores.items():
            _check_bits(b, name=f"sensitivity[{n!r}] bits")
            if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
                raise ValueError(f"sensitivity[{n!r}][{b}] must be a finite number, got {s!r}")
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, numbers.Real):
        raise TypeError(f"budget_bits must be a number, got {budget_bits!r} ({type(budget_bits).__name__})")
    if not math.isfinite(budget_bits) or budget_bits <= 0:
        raise ValueError(f"budget_bits must be a finite number > 0, got {budget_bits!r}")
    max_combinations = _check_int("max_combinations", max_combinations, low=1)
    options = [sorted(sensitivity[n]) for n in names]
    if math.prod(len(o) for o in options) > max_combinations:
        raise ValueError(f"too many combinations to try (> max_combinations={max_combinations}); use fewer bit options")
    best, best_score = None, -math.inf
    for combo in itertools.product(*options):
        cost = sum(sizes[n] * b for n, b in zip(names, combo, strict=True))
        if cost > budget_bits:
            continue
        score = sum(sensitivity[n][b] for n, b in zip(names, combo, strict=True))
        if score > best_score:
            best, best_score = dict(zip(names, combo, strict=True)), score
    if best is None:
        smallest = sum(sizes[n] * min(o) for n, o in zip(names, options, strict=True))
        raise ValueError(f"no allocation fits budget_bits={budget_bits}: the smallest needs {smallest} bits")
    return best
