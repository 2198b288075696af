"""QLoRA (Dettmers et al. 2023): LoRA on a frozen base whose weights are stored in 4 bits.

The survey's pipeline (§3.2) compresses first and fine-tunes after; QLoRA is that idea made concrete. The base
weight is cut into groups of `group_size` consecutive values (the flattened weight, as bitsandbytes does); each
group keeps one fp32 scale and 4-bit codes:

* `levels="int4"`: a uniform symmetric grid from `lwkit.quant` (choose_qparams per group, 16 levels -8..7);
* `levels="nf4"`: NormalFloat4, 16 non-uniform levels at quantiles of a normal distribution scaled to [-1, 1]
  (the QLoRA paper's table), times the group's absmax: denser near 0 where most weights are, like notebook
  03's k-means levels but fixed in advance, so no codebook is stored.

`double_quant=True` quantizes the per-group scales themselves to 8 bits (per block of 256 scales, with
`lwkit.quant`'s asymmetric grid; QLoRA uses an 8-bit float there), cutting the scale overhead from 32 /
group_size to about 8 / group_size bits per weight. The codes are packed two per byte. `Linear4bit.weight`
dequantizes on the fly; LoRA (`lwkit.peft.LoRALinear`) wraps a Linear4bit like any Linear.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lwkit import peft, quant
from lwkit.peft import _lookup, _restore_on_error, _swap, _wrap_linears

__all__ = ["NF4", "LEVELS", "Linear4bit", "quantize_base", "add_qlora"]

# NormalFloat4 (QLoRA, Appendix E; bitsandbytes' table): 7 negative, zero, 8 positive levels in [-1, 1]
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])
LEVELS = ("nf4", "int4")
SCALE_BLOCK = 256  # scales per second-level block in double quantization


def _check_options(group_size, levels, double_quant) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or not 2 <= group_size <= 4096:
        raise ValueError(f"group_size must be an int in [2, 4096], got {group_size!r}")
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {LEVELS}, got {levels!r}")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be True or False, got {double_quant!r}")


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in 0..15, two per byte (low nibble first)."""
    codes = F.pad(codes, (0, codes.numel() % 2))
    return codes[0::2] | (codes[1::2] << 4)


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([packed & 15, packed >> 4], dim=1).flatten()[:n]


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is stored as packed 4-bit codes with one scale per group."""

    def __init__(self, linear: nn.Linear, *, group_size: int = 64, levels: str = "nf4", double_quant: bool = False):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        _check_options(group_size, levels, double_quant)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size, self.levels, self.double_quant = int(group_size), levels, double_quant
        w = linear.weight.detach().float().flatten()
        self.numel = w.numel()
        groups = F.pad(w, (0, (-self.numel) % self.group_size)).reshape(-1, self.group_size)  # (n_groups, g)
        if levels == "int4":  # 1) per-group symmetric scale from lwkit.quant  2) round onto -8..7
            scale, zp = quant.choose_qparams(groups, bits=4, symmetric=True, axis=0)  # (n_groups, 1)
            codes = quant.quantize(groups, scale, zp, -8, 7) + 8
        else:  # 1) per-group absmax  2) nearest NF4 level of w / absmax
            scale = groups.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
            codes = torch.bucketize(groups / scale, (NF4[1:] + NF4[:-1]) / 2)
        self.register_buffer("packed", _pack(codes.flatten().to(torch.uint8)))
        self._store_scales(scale.flatten())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def _store_scales(self, scales: torch.Tensor) -> None:
        if not self.double_quant:
            self.register_buffer("scales", scales)
            return
        n = scales.numel()
        blocks = F.pad(scales, (0, (-n) % SCALE_BLOCK), value=float(scales[-1])).reshape(-1, SCALE_BLOCK)
        s, zp = quant.choose_qparams(blocks, bits=8, axis=0)  # (n_blocks, 1): a second-level scale per block
        self.register_buffer("scale_codes", quant.quantize(blocks, s, zp, 0, 255).to(torch.uint8).flatten()[:n])
        self.register_buffer("scale_scale", s.flatten())
        self.register_buffer("scale_zero", zp.flatten().to(torch.int32))

    def group_scales(self) -> torch.Tensor:
        """One scale per group (dequantized from 8 bits when double_quant)."""
        if not self.double_quant:
            return self.scales
        block = torch.arange(self.scale_codes.numel(), device=self.scale_codes.device) // SCALE_BLOCK
        return (self.scale_codes.float() - self.scale_zero[block]) * self.scale_scale[block]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out_features, in_features), float32."""
        n_groups = self.group_scales().numel()
        codes = _unpack(self.packed, n_groups * self.group_size).long().reshape(n_groups, self.group_size)
        table = NF4.to(self.packed.device) if self.levels == "nf4" else torch.arange(-8.0, 8.0, device=codes.device)
        w = table[codes] * self.group_scales()[:, None]  # (n_groups, g)
        return w.flatten()[: self.numel].reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # (batch, out_features)

    def storage_bytes(self, *, include_bias: bool = True) -> int:
        """Bytes of the stored tensors: packed codes, scales (and bias)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers()
                   if include_bias or name != "bias")

    def bits_per_weight(self) -> float:
        """Stored bits per weight, scales included, bias excluded."""
        return 8 * self.storage_bytes(include_bias=False) / self.numel

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, levels={self.levels}, "
                f"group_size={self.group_size}, double_quant={self.double_quant}")


def quantize_base(model: nn.Module, targets: Sequence[str], *, group_size: int = 64, levels: str = "nf4",
                  double_quant: bool = False) -> nn.Module:
    """Replace each nn.Linear named in `targets` by a frozen Linear4bit (in place)."""
    found = _lookup(model, targets, arg="targets", kind=nn.Linear, what="nn.Linear", allow_empty=False)
    _check_options(group_size, levels, double_quant)
    with _restore_on_error(model) as log:
        for name, linear in found:
            _swap(model, name, Linear4bit(linear, group_size=group_size, levels=levels, double_quant=double_quant),
                  log)
    return model


def add_qlora(model: nn.Module, targets: Sequence[str], *, rank: int = 4, alpha: float = 8.0,
              keep_trainable: Sequence[str] = (), group_size: int = 64, levels: str = "nf4",
              double_quant: bool = False) -> nn.Module:
    """Freeze `model`, store each target nn.Linear in 4 bits and wrap it in a LoRALinear (in place)."""
    _check_options(group_size, levels, double_quant)

    def wrap(linear: nn.Linear) -> nn.Module:
        q = Linear4bit(linear, group_size=group_size, levels=levels, double_quant=double_quant)
        return peft.LoRALinear(q, rank=rank, alpha=alpha)

    return _wrap_linears(model, targets, rank, alpha, keep_trainable, wrap)
