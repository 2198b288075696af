"""Automated compression (自动压缩): search a per-layer policy under a budget instead of one setting for all.

A **policy** gives each layer its own setting: sparsity and bits under a *size* budget (as HAQ, Wang et al.
2019, searches bits and AMC, He et al. 2018, searches sparsity), or the number of hidden units kept under a
*measured-latency* budget (as NetAdapt/AMC do with channels). The method is greedy and sensitivity-based:

    start from the least compressed setting of every knob (a knob: one layer's sparsity, bits or width)
    while cost(policy) > budget:
        for every knob, try moving it one notch towards more compression; evaluate on VALIDATION data
        keep the move that loses the least accuracy per byte (or millisecond) saved

Each round costs one evaluation per knob; a cache makes repeated settings free. Decisions use only the
validation split (`evaluate` is the caller's; pass validation data), so the test split stays an honest
final check. `uniform_policy` is the baseline: every layer the same, the most accurate that fits.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lwkit import measure, prune, quant, sparse

__all__ = ["SPARSITIES", "BITS", "WIDTHS", "SearchResult", "greedy_search", "uniform_policy", "policy_size_bytes",
           "apply_size_policy", "size_knobs", "slice_hidden", "width_knobs", "latency_cost"]

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)  # per-layer options, least compressed first
BITS = (8, 6, 5, 4, 3, 2)  # k-means bits per layer, least compressed first
WIDTHS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)  # fraction of hidden units kept, least compressed first


@dataclass
class SearchResult:
    """The chosen policy, its cost and validation score, and every accepted move (for plotting the path)."""

    policy: dict  # knob -> chosen option
    cost: float  # bytes or ms of the chosen policy
    score: float  # validation score of the chosen policy
    path: list = field(default_factory=list)  # (knob moved, cost, score) after each accepted move
    evaluations: int = 0  # distinct policies evaluated


def _check_knobs(knobs) -> dict:
    if not isinstance(knobs, dict) or not knobs:
        raise ValueError(f"knobs must be a non-empty dict knob name -> list of options, got {knobs!r:.100}")
    for k, opts in knobs.items():
        if not isinstance(k, str) or not isinstance(opts, (list, tuple)) or not opts:
            raise ValueError(f"knobs[{k!r}] must be a non-empty list of options (least compressed first), got {opts!r}")
    return knobs


def _check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number (bytes or ms), got {budget!r}")
    return float(budget)


def _check_callable(f, name: str):
    if not callable(f):
        raise TypeError(f"{name} must be a function, got {type(f).__name__}")


def greedy_search(knobs: dict[str, list], build: Callable[[dict], nn.Module], evaluate: Callable[[nn.Module], float],
                  cost: Callable[[dict, nn.Module], float], budget: float) -> SearchResult:
    """Greedy sensitivity-based search: move the knob that loses least score per unit of cost saved.

    Args:
        knobs: knob -> options, least compressed first (moves only go forward).
        build: policy (knob -> option) -> model. evaluate: model -> validation score (higher is better).
        cost: (policy, model) -> bytes or ms. budget: the largest cost accepted.
    """
    knobs = _check_knobs(knobs)
    for f, name in ((build, "build"), (evaluate, "evaluate"), (cost, "cost")):
        _check_callable(f, name)
    budget = _check_budget(budget)
    cache = {}

    def measure_policy(idx: dict) -> tuple[float, float]:
        key = tuple(idx[k] for k in knobs)
        if key not in cache:
            policy = {k: knobs[k][i] for k, i in idx.items()}
            model = build(policy)
            cache[key] = (float(cost(policy, model)), float(evaluate(model)))
        return cache[key]

    smallest = {k: len(v) - 1 for k, v in knobs.items()}
    if measure_policy(smallest)[0] > budget:
        raise ValueError(f"budget {budget:g} is below the cheapest policy's cost {measure_policy(smallest)[0]:g}: "
                         "no policy fits; raise the budget or add more compressed options")
    idx = dict.fromkeys(knobs, 0)
    c, s = measure_policy(idx)
    path = [(None, c, s)]
    while c > budget:
        best = None
        for k in knobs:
            if idx[k] + 1 >= len(knobs[k]):
                continue
            trial = {**idx, k: idx[k] + 1}
            c2, s2 = measure_policy(trial)
            if c2 >= c:
                continue  # saves nothing
            rate = (s - s2) / (c - c2)  # score lost per unit saved (negative: a move that helps)
            if best is None or rate < best[0]:
                best = (rate, k, trial, c2, s2)
        if best is None:
            break  # unreachable: the cheapest policy fits, so some move always saves
        _, k, idx, c, s = best
        path.append((k, c, s))
    return SearchResult(policy={k: knobs[k][i] for k, i in idx.items()}, cost=c, score=s, path=path,
                        evaluations=len(cache))


def uniform_policy(knobs: dict[str, list], build, evaluate, cost, budget: float, *, groups: dict[str, list] | None = None
                   ) -> SearchResult:
    """The baseline: knobs of one group (e.g. every layer's sparsity) share one option; the most accurate
    combination that fits the budget (validation score). `groups` maps a group name to its knobs; by default
    knobs are grouped by the part of their name after the last '.' ('fc1.bits' -> 'bits')."""
    knobs = _check_knobs(knobs)
    for f, name in ((build, "build"), (evaluate, "evaluate"), (cost, "cost")):
        _check_callable(f, name)
    budget = _check_budget(budget)
    if groups is None:
        groups = {}
        for k in knobs:
            groups.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    members = [m for g in groups.values() for m in g]
    if sorted(members) != sorted(knobs):
        raise ValueError(f"groups must cover every knob exactly once; knobs {sorted(knobs)}, grouped {sorted(members)}")
    options = [knobs[g[0]] for g in groups.values()]
    for g in groups.values():
        if any(list(knobs[k]) != list(knobs[g[0]]) for k in g):
            raise ValueError(f"knobs of one group must have the same options: {g}")
    best, n = None, 0
    for combo in itertools.product(*options):
        policy = {k: v for g, v in zip(groups.values(), combo) for k in g}
        model = build(policy)
        c = float(cost(policy, model))
        if c > budget:
            continue
        s, n = float(evaluate(model)), n + 1
        if best is None or s > best.score:
            best = SearchResult(policy=policy, cost=c, score=s)
    if best is None:
        raise ValueError(f"budget {budget:g}: no uniform policy fits; raise the budget or add more compressed options")
    best.evaluations = n
    return best


# --- Size: per-layer sparsity and k-means bits ------------------------------------------------------------


def size_knobs(model: nn.Module, *, sparsities=SPARSITIES, bits=BITS) -> dict[str, list]:
    """'layer.sparsity' and 'layer.bits' knobs for every Linear/Conv2d of `model`."""
    layers = sparse.prunable_layers(model)
    if not layers:
        raise ValueError("model has no Linear/Conv2d layer to compress")
    for name, opts, lo, hi in (("sparsities", sparsities, 0.0, 0.999), ("bits", bits, 1, 8)):
        if not isinstance(opts, (list, tuple)) or not opts or any(
                isinstance(o, bool) or not isinstance(o, numbers.Real) or not lo <= o <= hi for o in opts):
            raise ValueError(f"{name} must be a non-empty list of values in [{lo}, {hi}], got {opts!r}")
    if any(isinstance(b, float) for b in bits):
        raise ValueError(f"bits must be ints, got {bits!r}")
    return {**{f"{n}.sparsity": list(sparsities) for n in layers}, **{f"{n}.bits": list(bits) for n in layers}}


def _split(policy: dict) -> dict[str, dict]:
    layers = {}
    for knob, v in policy.items():
        layer, _, what = knob.rpartition(".")
        if what not in ("sparsity", "bits"):
            raise ValueError(f"policy knob {knob!r} must be '<layer>.sparsity' or '<layer>.bits'")
        layers.setdefault(layer, {})[what] = v
    return layers


def policy_size_bytes(model: nn.Module, policy: dict, *, index_bits: int = 5) -> float:
    """Size model of a policy, in bytes: per layer, kept weights x (bits + index_bits if sparse) + a codebook
    of 2**bits fp32 values; every other parameter (biases) in fp32. Huffman coding saves ~10-25 % on top."""
    layers = sparse.prunable_layers(model)
    per = _split(policy)
    unknown = sorted(set(per) - set(layers))
    if unknown:
        raise ValueError(f"policy names unknown layers {unknown}; layers are {list(layers)}")
    total_bits = 0.0
    for name, layer in layers.items():
        s, b = per.get(name, {}).get("sparsity", 0.0), per.get(name, {}).get("bits", 32)
        kept = layer.weight.numel() - prune.n_to_prune(layer.weight.numel(), s)
        total_bits += kept * (b + (index_bits if s > 0 else 0)) + (32 * 2**b if b < 32 else 0)
    weights = {id(layer.weight) for layer in layers.values()}
    total_bits += 32 * sum(p.numel() for p in model.parameters() if id(p) not in weights)
    return total_bits / 8


def apply_size_policy(model: nn.Module, policy: dict, *, cache: dict | None = None) -> nn.Module:
    """A copy of `model` with each layer magnitude-pruned to its sparsity, then k-means shared to its bits
    (no fine-tuning). `cache` (a dict you keep) reuses layers already compressed with the same setting."""
    layers = sparse.prunable_layers(model)
    per = _split(policy)
    unknown = sorted(set(per) - set(layers))
    if unknown:
        raise ValueError(f"policy names unknown layers {unknown}; layers are {list(layers)}")
    out = copy.deepcopy(model)
    new_layers = sparse.prunable_layers(out)
    with torch.no_grad():
        for name, layer in new_layers.items():
            s, b = per.get(name, {}).get("sparsity", 0.0), per.get(name, {}).get("bits")
            key = (name, s, b)
            if cache is not None and key in cache:
                layer.weight.copy_(cache[key])
                continue
            w = layer.weight
            if s > 0:
                w.mul_(prune.magnitude_mask(w, s, layer=name))
            nz = w != 0
            if b is not None and nz.any():  # k-means on the kept weights only, as huffman.share_weights
                centroids, idx = quant.kmeans_quantize(w[nz], bits=b)
                w[nz] = centroids[idx].to(w.dtype)
            if cache is not None:
                cache[key] = w.detach().clone()
    return out


# --- Latency: hidden units kept per layer (structured, really sliced) ------------------------------------


def _chain(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    layers = list(sparse.prunable_layers(model).items())
    if len(layers) < 2 or not all(isinstance(m, nn.Linear) for _, m in layers):
        raise ValueError("model must be a chain of >= 2 nn.Linear layers (like LeNet-300-100) to slice hidden units")
    for (n1, a), (n2, b) in zip(layers, layers[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"layers {n1} ({a.out_features} outputs) and {n2} ({b.in_features} inputs) don't chain")
    return layers


def width_knobs(model: nn.Module, *, widths=WIDTHS) -> dict[str, list]:
    """'layer.width' knobs (fraction of output units kept) for every hidden Linear of a chain (not the last)."""
    if not isinstance(widths, (list, tuple)) or not widths or any(
            isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 < w <= 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of fractions in (0, 1], got {widths!r}")
    return {f"{n}.width": list(widths) for n, _ in _chain(model)[:-1]}


def slice_hidden(model: nn.Module, policy: dict) -> nn.Module:
    """A copy with each hidden Linear keeping the `width` fraction of its output units with the largest L1
    norm of incoming weights; the next layer loses the matching inputs. A smaller dense model comes out."""
    layers = _chain(model)
    names = [n for n, _ in layers[:-1]]
    widths = {}
    for knob, v in policy.items():
        layer, _, what = knob.rpartition(".")
        if what != "width" or layer not in names:
            raise ValueError(f"policy knob {knob!r} must be '<hidden layer>.width' with a layer in {names}")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v <= 1:
            raise ValueError(f"policy[{knob!r}] must be a fraction in (0, 1], got {v!r}")
        widths[layer] = float(v)
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for (name, _), (nxt, _) in zip(layers, layers[1:]):
            a, b = mods[name], mods[nxt]
            k = max(1, round(widths.get(name, 1.0) * a.out_features))
            keep = a.weight.abs().sum(1).topk(k).indices.sort().values  # (k,)
            new_a = nn.Linear(a.in_features, k, bias=a.bias is not None)
            new_a.weight.copy_(a.weight[keep])
            if a.bias is not None:
                new_a.bias.copy_(a.bias[keep])
            new_b = nn.Linear(k, b.out_features, bias=b.bias is not None)
            new_b.weight.copy_(b.weight[:, keep])
            if b.bias is not None:
                new_b.bias.copy_(b.bias)
            _set(out, name, new_a)
            _set(out, nxt, new_b)
            mods = dict(out.named_modules())
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def latency_cost(example_input: torch.Tensor, *, threads: int | None = None, repeats: int = 30):
    """A `cost` for `greedy_search`: the measured median latency (ms) of the built model on `example_input`."""
    def cost(policy, model):
        return measure.measure_latency(model, example_input, threads=threads, warmup=3, repeats=repeats).median_ms
    return cost
