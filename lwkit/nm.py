"""N:M semi-structured sparsity: in every group of M consecutive weights along the input dimension, keep N.

2:4 (keep 2 of every 4) is what NVIDIA's Ampere-and-later sparse tensor cores run at up to 2x the dense
rate; the pattern is regular enough for hardware yet chosen by magnitude inside each group. On a CPU, a 2:4
weight is just a dense tensor with 50 % zeros: PyTorch's semi-structured kernels
(`torch.sparse.to_sparse_semi_structured`) run on CUDA only, so dense CPU kernels do every MAC.

    masks = nm_masks(model, n=2, m=4)     # 1) score |w| within each group of 4  2) keep the 2 largest
    prune.apply_masks(model, masks)       # 3) zero the rest; fine-tune with prune.fine_tune
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from lwkit.prune import _check_tensor, _layer_names
from lwkit.sparse import prunable_layers

__all__ = ["nm_mask", "nm_masks", "is_nm_sparse"]


def _check_nm(n, m) -> tuple[int, int]:
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if not 1 <= n <= m:
        raise ValueError(f"n and m must satisfy 1 <= n <= m (keep n of every m weights), got n={n}, m={m}")
    return int(n), int(m)


def _groups(tensor: torch.Tensor, m: int, name: str) -> torch.Tensor:
    """(out, in_total / m, m) view: groups of m consecutive weights along the flattened input dimension."""
    if tensor.dim() < 2:
        raise ValueError(f"{name} must have >= 2 dims (out, in, ...), got shape {tuple(tensor.shape)}")
    flat = tensor.detach().reshape(tensor.shape[0], -1)  # (out, in * kh * kw)
    if flat.shape[1] % m:
        raise ValueError(f"{name} has {flat.shape[1]} inputs per output, not a multiple of m={m}: N:M groups "
                         f"would straddle rows")
    return flat.reshape(flat.shape[0], -1, m)


def nm_mask(tensor: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep-mask with the `n` largest |w| of every `m` consecutive inputs of each output (ties: lower index).

    Args:
        tensor: (out, in) Linear or (out, in, kh, kw) conv weight; inputs per output a multiple of m.
        n, m: keep n of every m (2:4 is sparsity 50 %).
    Returns:
        bool tensor shaped like `tensor`, True where kept.
    """
    _check_tensor(tensor, "tensor", finite=True)
    n, m = _check_nm(n, m)
    groups = _groups(tensor, m, "tensor").abs()  # (out, groups, m)
    keep = torch.topk(groups, n, dim=-1, sorted=False).indices  # (out, groups, n)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(tensor.shape)


def nm_masks(model: nn.Module, n: int = 2, m: int = 4, *,
             layers: str | list[str] | None = None) -> dict[str, torch.Tensor]:
    """N:M keep-masks for `layers` (default: every Linear/Conv2d whose inputs per output divide by m)."""
    n, m = _check_nm(n, m)
    available = prunable_layers(model)
    if layers is None:
        names = [k for k, v in available.items() if v.weight[0].numel() % m == 0]
        if not names:
            raise ValueError(f"no prunable layer of {type(model).__name__} has inputs per output divisible by m={m}")
    else:
        names = _layer_names(layers, available)
    return {k: nm_mask(available[k].weight, n, m) for k in names}


def is_nm_sparse(tensor: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True if every group of `m` consecutive inputs of each output holds at most `n` nonzeros."""
    _check_tensor(tensor, "tensor")
    n, m = _check_nm(n, m)
    return bool(((_groups(tensor, m, "tensor") != 0).sum(-1) <= n).all())
