"""A real int8 model after quantization-aware training, and a look inside any converted int8 model.

`lwkit.qat` trains through *simulated* quantization; this module closes the loop the PyTorch QAT tutorial
teaches: `prepare_eager_qat` fuses conv-bn-relu into torch.ao's QAT modules (which fold BatchNorm into the
conv weight on every training step, so the weights are quantized as they will be deployed) with the x86
QAT qconfig, `lwkit.train.fit` trains it, and `convert_eager_qat` turns it into the same int8 kernels
`lwkit.int8.eager_static_int8` gives. `inspect_int8` lists what a converted model stores: int8 weights
(`int_repr()`), their scales and zero-points, and each layer's output scale and zero-point (the
requantization target; notebook 03 does that arithmetic by hand).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lwkit.int8 import _check_model, _prepare_eager, _quiet_deprecation, supported_engines

__all__ = ["prepare_eager_qat", "convert_eager_qat", "inspect_int8"]


def prepare_eager_qat(model: nn.Module, *, backend: str = "x86") -> nn.Module:
    """A copy of `model` with conv-bn-relu fused into QAT modules and fake-quant observers (torch.ao, W8A8).

    The qconfig is torch's `get_default_qat_qconfig(backend)`: per-channel symmetric int8 weights and uint8
    activations from a moving-average min-max (with reduce_range on x86: 0..127). Train it with
    `lwkit.train.fit`, then call `convert_eager_qat`.
    """
    _check_model(model)
    if not isinstance(backend, str) or backend not in supported_engines():
        raise ValueError(f"backend must be one of this build's engines {supported_engines()}, got {backend!r}")
    with _quiet_deprecation():
        return _prepare_eager(model, backend, qat=True)


def convert_eager_qat(model: nn.Module) -> nn.Module:
    """The real int8 model (int8 weights and kernels) of a trained `prepare_eager_qat` model; a new model."""
    _check_model(model)
    if not any(hasattr(m, "weight_fake_quant") for m in model.modules()):
        raise ValueError("model has no fake-quantized layers: build it with prepare_eager_qat and train it first")
    with _quiet_deprecation():
        from torch.ao import quantization as tq

        converted = copy.deepcopy(model).cpu().eval()
        tq.convert(converted, inplace=True)
    return converted


def _qparams(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                       torch.per_channel_affine_float_qparams):
        return t.q_per_channel_scales(), t.q_per_channel_zero_points()
    return torch.tensor([t.q_scale()], dtype=torch.float64), torch.tensor([t.q_zero_point()])


def inspect_int8(model: nn.Module) -> list[dict]:
    """One row per quantized layer of a torch.ao-converted model: the stored int8 weight and its qparams.

    Each row: name, kind (module type), weight (the int8 values, `int_repr()`), scales and zero_points (one
    per output channel, or one), bias (float32, or None), out_scale / out_zero_point (static int8: the grid of
    the layer's uint8 output; None for dynamic int8, which quantizes activations per batch), and
    stored_bytes (int8 weights + float32 bias + scales and zero-points as torch stores them, 8 bytes each).
    The input's grid is the row named 'quant' (the QuantStub), with no weight.
    """
    _check_model(model)
    rows = []
    for name, m in model.named_modules():
        if type(m).__name__ == "Quantize":
            rows.append({"name": name, "kind": "Quantize (input)", "weight": None, "scales": m.scale.double(),
                         "zero_points": m.zero_point, "bias": None, "out_scale": float(m.scale),
                         "out_zero_point": int(m.zero_point), "stored_bytes": 16})
            continue
        weight_fn = getattr(m, "weight", None)
        if not callable(weight_fn) or isinstance(weight_fn, nn.Module):
            continue
        w = weight_fn()
        if not isinstance(w, torch.Tensor) or not w.is_quantized:
            continue
        scales, zero_points = _qparams(w)
        bias = m.bias() if callable(getattr(m, "bias", None)) else None
        static = isinstance(getattr(m, "scale", None), float) and ".dynamic" not in type(m).__module__
        rows.append({"name": name, "kind": type(m).__name__ + (" (dynamic)" if not static else ""), "weight": w.int_repr(), "scales": scales,
                     "zero_points": zero_points, "bias": bias,
                     "out_scale": float(m.scale) if static else None,
                     "out_zero_point": int(m.zero_point) if static else None,
                     "stored_bytes": w.numel() + 16 * scales.numel() + (4 * bias.numel() if bias is not None else 0)
                     + (16 if static else 0)})
    if not rows:
        raise ValueError(f"model ({type(model).__name__}) has no torch.ao quantized layer: convert it first "
                         f"(lwkit.int8.eager_static_int8, eager_dynamic_int8 or convert_eager_qat)")
    return rows
