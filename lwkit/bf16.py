"""bf16 inference on the CPU: a real bf16 model, next to `lwkit.int8.Autocast`.

`torch.autocast` keeps the fp32 weights and casts them (and the input) to bf16 inside every call, then the
result back: a mixed-precision *training* tool, whose file and memory traffic stay fp32. For inference,
convert once: `BF16Model` stores bf16 weights (the file halves) and casts only the input and the logits.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["BF16Model"]


class BF16Model(nn.Module):
    """A real bf16 model: a copy whose weights are stored in bfloat16 (the file halves); fp32 in, fp32 out.

    Unlike `lwkit.int8.Autocast`, which keeps fp32 weights and casts them to bf16 on every call (a
    mixed-precision *training* tool), the cast happens once, here; each call casts only input and logits.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = copy.deepcopy(getattr(model, "_orig_mod", model)).eval().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.bfloat16)).float()
