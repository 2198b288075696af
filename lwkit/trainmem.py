"""Fine-tuning memory, accounted: weights, gradients, optimiser states and the activations kept for backward.

Why PEFT exists at LLM scale is memory during training, not the deployed size. For one training step:

* weights: every parameter, frozen or not, and every buffer (bytes = numel * element size);
* gradients: one tensor per *trainable* parameter;
* optimiser states: AdamW keeps two (exp_avg, exp_avg_sq) per trainable parameter, SGD with momentum one;
* activations: the tensors autograd saves for backward, counted with `torch.autograd.graph.saved_tensors_hooks`
  on one real forward pass. Autograd records nothing below the lowest trainable tensor, so a linear probe saves
  almost nothing: its frozen layers run forward only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["OPTIMIZER_STATES", "TrainingMemory", "training_memory"]

OPTIMIZER_STATES = {"adam": 2, "sgd": 1, "sgd-no-momentum": 0}  # state tensors per trainable parameter


@dataclass
class TrainingMemory:
    """Bytes held during one training step, by kind."""

    weights: int  # all parameters and buffers (a frozen 4-bit base is stored in buffers)
    gradients: int  # one per trainable parameter
    optimizer_states: int  # OPTIMIZER_STATES[optimizer] per trainable parameter
    activations: int  # tensors saved for backward by one forward pass (parameters excluded)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations


def _saved_activation_bytes(model: nn.Module, example_input: torch.Tensor) -> int:
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        if t.data_ptr() not in params:  # a weight saved for backward is already counted as a weight
            key = (t.data_ptr(), tuple(t.shape), t.dtype)
            seen[key] = t.numel() * t.element_size()
        return t

    was_training = model.training
    try:
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(example_input)
        del out
    finally:
        model.train(was_training)
    return sum(seen.values())


def training_memory(model: nn.Module, example_input: torch.Tensor, *, optimizer: str = "adam") -> TrainingMemory:
    """Weights, gradients, optimiser states (computed) and saved activations (measured) for one step on a batch."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.ndim == 0:
        raise TypeError(f"example_input must be a batch tensor (batch first), got {example_input!r:.60}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
    unique = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in unique) + sum(b.numel() * b.element_size()
                                                                       for b in model.buffers())
    grads = sum(p.numel() * p.element_size() for p in unique if p.requires_grad)
    return TrainingMemory(weights=weights, gradients=grads, optimizer_states=OPTIMIZER_STATES[optimizer] * grads,
                          activations=_saved_activation_bytes(model, example_input))
