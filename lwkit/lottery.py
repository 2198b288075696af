"""The lottery ticket experiment (Frankle & Carbin 2019): train, prune by magnitude, rewind, retrain.

A "winning ticket" is the sparse subnetwork (the mask) together with its ORIGINAL initial values: retrained
alone it matches the dense network, while the same mask with fresh random values does worse. `rewind` puts
the kept weights back to a saved state (the initialisation, or an early iteration: "late rewinding",
Frankle et al. 2020) and zeroes the pruned ones; training then uses `lwkit.prune.fine_tune` with the masks.

    init = copy.deepcopy(model.state_dict())           # 0) remember the initialisation
    train.fit(model, ...)                              # 1) train dense
    masks = prune.layer_masks(model, 0.8)              # 2) prune by magnitude
    rewind(model, init, masks)                         # 3) survivors back to their initial values
    prune.fine_tune(model, masks, ...)                 # 4) retrain the ticket
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lwkit.prune import _check_masks

__all__ = ["rewind", "ticket_sparsities"]


def rewind(model: nn.Module, state: Mapping[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> nn.Module:
    """Load `state` (e.g. the initial weights) into `model` in place, then zero the weights `masks` removes.

    Every key of the model's state_dict must be in `state` with the same shape; nothing changes on an error.
    """
    pairs = _check_masks(model, masks)
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a state_dict (name -> tensor), got {type(state).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"state lacks {missing[:5]}: it must come from the same architecture")
    for k, v in own.items():
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape:
            got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
            raise ValueError(f"state[{k!r}] is {got}, the model's is {tuple(v.shape)}")
    model.load_state_dict({k: state[k] for k in own})
    with torch.no_grad():
        for weight, removed in pairs:
            weight.masked_fill_(removed.to(weight.device), 0)
    return model


def ticket_sparsities(prune_per_round: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round prunes `prune_per_round` of the surviving weights."""
    if isinstance(prune_per_round, bool) or not isinstance(prune_per_round, (int, float)) \
            or not 0 < prune_per_round < 1:
        raise ValueError(f"prune_per_round must be a number in (0, 1), got {prune_per_round!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    return [1 - (1 - prune_per_round) ** (r + 1) for r in range(rounds)]
