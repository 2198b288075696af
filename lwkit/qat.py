"""Observers, activation quantizers and fake-quant layers: post-training calibration (PTQ) and
quantization-aware training (QAT, 量化感知训练), built on the math in `lwkit.quant`.

Every function that builds a model returns a deep copy; `calibrate` changes its model in place and puts
it back as it was if anything goes wrong (including an interrupted kernel).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lwkit.mixed import quantizable_layers
from lwkit.quant import (
    _check_bits,
    _check_bool,
    _check_float_tensor,
    _check_int,
    _check_method,
    _check_real,
    _FakeQuantSTE,
    _qparams_from_range,
    choose_qparams,
    qrange,
)

__all__ = ["Observer", "ActQuantizer", "QuantWrapper", "prepare_qat", "prepare_ptq", "calibrate", "freeze_weights"]


# ---------------------------------------------------------------------------------------------------------
# Observers: collect activation statistics on calibration data, then choose qparams


class Observer(nn.Module):
    """Watches tensors (`update`), then gives per-tensor qparams with the chosen method.

    min/max are exact; for 'percentile' and 'mse' a random sample of the values seen is kept.
    """

    def __init__(self, *, bits: int = 8, symmetric: bool = False, method: str = "minmax",
                 percentile: float = 99.99, max_samples: int = 200_000):
        super().__init__()
        _check_bool("symmetric", symmetric)
        self.bits = _check_bits(bits, symmetric)
        self.method = _check_method(method)
        self.percentile = _check_real("percentile", percentile)
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.symmetric = symmetric
        self.max_samples = _check_int("max_samples", max_samples, low=2)
        self.reset()

    def reset(self) -> None:
        self.min_val, self.max_val, self.samples, self.count = None, None, [], 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of values; NaN or ±inf raise before anything is recorded. Empty batches are skipped."""
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() == 0:
            return
        x = _check_float_tensor("x", x).float().flatten()
        self.min_val = x.min() if self.min_val is None else torch.minimum(self.min_val, x.min())
        self.max_val = x.max() if self.max_val is None else torch.maximum(self.max_val, x.max())
        self.count += x.numel()
        if self.method != "minmax":
            take = min(x.numel(), 20_000)
            self.samples.append(x[torch.randint(x.numel(), (take,))].cpu())
            kept = torch.cat(self.samples)
            if kept.numel() > self.max_samples:
                kept = kept[torch.randperm(kept.numel())[: self.max_samples]]
            self.samples = [kept]

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None:
            raise ValueError("the observer has seen no data: calibrate with a non-empty loader first")
        if self.method == "minmax":
            data = torch.stack([self.min_val, self.max_val])
        else:
            # the sample misses the extremes; keep them so 'percentile' at 100 equals min-max
            data = torch.cat(self.samples + [torch.stack([self.min_val, self.max_val]).cpu()])
        return choose_qparams(data, bits=self.bits, symmetric=self.symmetric, method=self.method,
                              percentile=self.percentile)


class ActQuantizer(nn.Module):
    """Fake-quantizes activations per tensor: observes while calibrating, tracks a moving min/max while
    training (QAT), and uses frozen qparams in eval. NaN or ±inf inputs raise in every mode."""

    def __init__(self, *, bits: int = 8, method: str = "minmax", momentum: float = 0.1):
        super().__init__()
        momentum = _check_real("momentum", momentum)
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1] (the weight of the newest batch's range), got {momentum}")
        self.observer = Observer(bits=bits, symmetric=False, method=method)
        self.bits, self.momentum = self.observer.bits, momentum
        self.calibrating = False
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("ready", torch.tensor(False))

    def freeze(self) -> None:
        """Compute qparams from what the observer saw (all of them first, so a failure changes nothing)."""
        scale, zero_point = self.observer.qparams()
        lo, hi = self.observer.min_val.clamp(max=0), self.observer.max_val.clamp(min=0)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self.ready.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() == 0:
            return x  # an empty batch has nothing to observe or quantize
        _check_float_tensor("the activation quantizer's input", x)
        if self.calibrating:
            self.observer.update(x)
            return x
        qmin, qmax = qrange(self.bits, False)
        if self.training:  # QAT: exponential moving average of the batch range
            with torch.no_grad():
                lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
                if not bool(self.ready):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.ready.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
                scale, zero_point = _qparams_from_range(self.lo, self.hi, qmin, qmax, False)
                if not bool(torch.isfinite(scale)):
                    raise ValueError(f"the activation range [{self.lo.item():.3g}, {self.hi.item():.3g}] overflows "
                                     f"float32: no finite scale (did training diverge?)")
                self.scale.copy_(scale)
                self.zero_point.copy_(zero_point)
        elif not bool(self.ready):
            raise RuntimeError("activation quantizer has no qparams: run lwkit.quant.calibrate (PTQ) or train "
                               "the model (QAT) before evaluating it")
        return _FakeQuantSTE.apply(x, self.scale, self.zero_point, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.observer.method!r}, momentum={self.momentum}"


# ---------------------------------------------------------------------------------------------------------
# The fake-quant layer wrapper, and model-level PTQ / QAT


class QuantWrapper(nn.Module):
    """A Linear or Conv2d whose weight is fake-quantized on every forward (STE), and optionally its input.

    Wraps the float layer (kept inside as `.layer`, so its weight keeps training in float during QAT).
    """

    def __init__(self, layer: nn.Module, *, bits: int | None = 8, act_bits: int | None = None,
                 per_channel: bool = True, symmetric: bool = True, method: str = "minmax",
                 act_method: str = "minmax"):
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"layer: only nn.Linear and nn.Conv2d can be wrapped, got {type(layer).__name__}")
        _check_bool("per_channel", per_channel)
        _check_bool("symmetric", symmetric)
        bits = None if bits is None else _check_bits(bits, symmetric)
        _check_method(method)
        _check_method(act_method, "act_method")
        act_bits = None if act_bits is None else _check_bits(act_bits, name="act_bits")
        self.layer, self.bits, self.per_channel, self.symmetric, self.method = layer, bits, per_channel, symmetric, method
        self.act = ActQuantizer(bits=act_bits, method=act_method) if act_bits is not None else None

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        if self.bits is None:
            return w
        if not bool(torch.isfinite(w).all()):
            raise ValueError("the wrapped layer's weight contains NaN or inf (did training diverge? lower the lr)")
        scale, zero_point = choose_qparams(w, bits=self.bits, symmetric=self.symmetric,
                                           axis=0 if self.per_channel else None, method=self.method)
        qmin, qmax = qrange(self.bits, self.symmetric)
        return _FakeQuantSTE.apply(w, scale, zero_point, qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, symmetric={self.symmetric}, method={self.method!r}"


def _wrap(model: nn.Module, make) -> nn.Module:
    """A deep copy of `model` with every Linear/Conv2d replaced by make(layer); the original is untouched."""
    if not quantizable_layers(model):
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    model = copy.deepcopy(model)
    for name, layer in quantizable_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(layer))
    return model


def prepare_qat(model: nn.Module, *, bits: int = 8, act_bits: int | None = None, per_channel: bool = True,
                symmetric: bool = True) -> nn.Module:
    """A deep copy of `model` ready for quantization-aware training (QAT).

    Every nn.Linear and nn.Conv2d becomes a `QuantWrapper`: its float weight is fake-quantized to `bits`
    (per output channel if `per_channel`, symmetric if `symmetric`) on each forward, with the
    straight-through estimator in the backward pass, so `lwkit.train.fit` trains the float weights
    *through* the quantizer. If `act_bits` is given, each layer's input is fake-quantized too (unsigned
    grid, per tensor, range from a moving min/max while training, frozen in eval). The original model is
    untouched; evaluate the copy with `lwkit.train.evaluate`, and read the quantized weights back with
    `QuantWrapper.quantized_weight()` or `freeze_weights`.
    """
    quantizable_layers(model)  # raises TypeError for a non-model
    _check_bool("per_channel", per_channel)
    _check_bool("symmetric", symmetric)
    _check_bits(bits, symmetric)
    if act_bits is not None:
        _check_bits(act_bits, name="act_bits")
    return _wrap(model, lambda layer: QuantWrapper(layer, bits=bits, act_bits=act_bits, per_channel=per_channel,
                                                   symmetric=symmetric))


def prepare_ptq(model: nn.Module, *, bits: int | None = 8, act_bits: int = 8, per_channel: bool = True,
                symmetric: bool = True, act_method: str = "minmax") -> nn.Module:
    """A copy with weight (`bits`, None = float) and activation fake-quantization, waiting for `calibrate`."""
    quantizable_layers(model)
    _check_bool("per_channel", per_channel)
    _check_bool("symmetric", symmetric)
    if bits is not None:
        _check_bits(bits, symmetric)
    _check_bits(act_bits, name="act_bits")
    _check_method(act_method, "act_method")
    return _wrap(model, lambda layer: QuantWrapper(layer, bits=bits, act_bits=act_bits, per_channel=per_channel,
                                                   symmetric=symmetric, act_method=act_method)).eval()


def _snapshot(model: nn.Module, quantizers: list) -> list:
    """Everything `calibrate` changes: the modules' train/eval flags and each quantizer's state."""
    modes = [(m, m.training) for m in model.modules()]
    states = [(q, q.calibrating, q.observer.min_val, q.observer.max_val, list(q.observer.samples), q.observer.count,
               {k: b.clone() for k, b in q.named_buffers(recurse=False)}) for q in quantizers]
    return [modes, states]


def _restore(snapshot: list) -> None:
    modes, states = snapshot
    for m, training in modes:
        m.training = training
    for q, calibrating, lo, hi, samples, count, buffers in states:
        q.calibrating = calibrating
        q.observer.min_val, q.observer.max_val, q.observer.samples, q.observer.count = lo, hi, samples, count
        for k, b in buffers.items():
            getattr(q, k).copy_(b)


@torch.no_grad()
def calibrate(model: nn.Module, loader, *, num_batches: int | None = None) -> nn.Module:
    """Run calibration batches (a loader of x or (x, y), or one tensor of inputs) through a `prepare_ptq`
    model, then freeze every activation quantizer.

    Changes `model` in place (and returns it, in eval mode). If anything fails — a NaN activation, a bad
    batch, an empty loader, KeyboardInterrupt — the model is put back exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    if not quantizers:
        raise ValueError("model has no activation quantizers: build it with prepare_ptq(..., act_bits=8)")
    if num_batches is not None:
        num_batches = _check_int("num_batches", num_batches, low=1)
    if isinstance(loader, torch.Tensor):
        loader = [loader]  # one batch of inputs, as lwkit.int8 accepts
    if isinstance(loader, (str, bytes)) or not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (x or (x, y)) or a tensor of inputs, got "
                        f"{type(loader).__name__}")
    snapshot = _snapshot(model, quantizers)
    done = False
    try:
        for q in quantizers:
            q.observer.reset()
            q.calibrating = True
        model.eval()
        seen = 0
        for i, batch in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"loader must yield tensors or (x, y) pairs, batch {i} holds {type(x).__name__}")
            if x.numel() == 0:
                raise ValueError(f"loader batch {i} is empty (shape {tuple(x.shape)})")
            try:
                model(x)
            except ValueError as e:
                raise ValueError(f"loader batch {i}: {e}") from e
            seen += 1
        if seen == 0:
            raise ValueError("loader is empty: calibration data yielded no batches")
        for q in quantizers:
            q.calibrating = False
            q.freeze()
        done = True
    finally:
        if not done:
            _restore(snapshot)
    return model


def freeze_weights(model: nn.Module) -> nn.Module:
    """A plain float copy of a `prepare_qat` model with the (dequantized) quantized weights written in."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, QuantWrapper) for m in model.modules()):
        raise ValueError("model has no QuantWrapper layers: build it with prepare_qat or prepare_ptq")
    model = copy.deepcopy(model)
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}
    for name, w in wrappers.items():
        with torch.no_grad():
            w.layer.weight.copy_(w.quantized_weight())
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, w.layer if w.act is None else w)
    return model.eval()
