"""DoRA (Liu et al. 2024): LoRA with the weight split into a trained magnitude and a LoRA-updated direction.

    W' = m * (W + s B A) / ||W + s B A||_row,        s = alpha / r,  m (out,) trained, A and B as in LoRA

m starts at the row norms of W, B at zero, so at step 0 the layer is its base exactly. As in the paper (§4.3)
and in `peft`, the norm is treated as a constant in backward (detached), which saves memory. Like
`lwkit.peft.LoRALinear` it wraps the frozen layer instead of subclassing it, and `merge()` gives a plain
nn.Linear. `hf_peft()` imports Hugging Face's `peft` (for cross-checks) without its import-time log noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import nn

from lwkit.peft import _check_rank_alpha, _linear_with, _wrap_linears

__all__ = ["DoRALinear", "add_dora", "hf_peft"]


class DoRALinear(nn.Module):
    """A frozen nn.Linear with a trained magnitude m (out,) and a low-rank direction update B A."""

    def __init__(self, base: nn.Linear, *, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        _check_rank_alpha(rank, alpha, base.in_features, base.out_features)
        rank, alpha = int(rank), float(alpha)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as LoRALinear (and nn.Linear)
        self.magnitude = nn.Parameter(torch.linalg.norm(w.detach(), dim=1))  # (out,): ||W|| per output row

    def _norm(self) -> torch.Tensor:
        """||W + s B A|| per output row, detached (a constant in backward, DoRA §4.3)."""
        return torch.linalg.norm(self.base.weight + self.scaling * (self.lora_B @ self.lora_A).detach(), dim=1).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        direction = x @ self.base.weight.T + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)  # (batch, out)
        out = (self.magnitude / self._norm()) * direction
        return out if self.base.bias is None else out + self.base.bias

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear with weight m * (W + s B A) / ||W + s B A||_row."""
        w = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        return _linear_with(self.base, (self.magnitude / torch.linalg.norm(w, dim=1))[:, None] * w)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def add_dora(model: nn.Module, targets: Sequence[str], *, rank: int = 4, alpha: float = 8.0,
             keep_trainable: Sequence[str] = ()) -> nn.Module:
    """Freeze `model` and wrap each nn.Linear named in `targets` in a DoRALinear (in place), as add_lora."""
    return _wrap_linears(model, targets, rank, alpha, keep_trainable,
                         lambda linear: DoRALinear(linear, rank=rank, alpha=alpha))


def hf_peft() -> ModuleType | None:
    """Hugging Face's `peft` module, or None if it is not installed.

    `import peft` imports torchao, whose import logs two `torch.utils._pytree` warnings ("<enum
    'KernelPreference'> / <enum 'ScaleCalculationMode'> is an Enum subclass ... register_constant() on Enum
    subclasses is deprecated"). They are log records, not `warnings`, so the pytree logger is raised to ERROR
    for the import only.
    """
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import peft as hf
    except ImportError:
        return None
    finally:
        logger.setLevel(level)
    return hf
