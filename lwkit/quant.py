"""Quantization (量化) as small pure functions, then the modules and model helpers built on them.

The affine map between a float tensor x and integers q in [qmin, qmax]:

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)      # quantize
    x_hat = (q - zero_point) * scale                               # dequantize

`symmetric=True` uses signed integers [-2^(b-1), 2^(b-1) - 1] and zero_point = 0 (as torch.ao's
symmetric observers); `symmetric=False` uses unsigned integers [0, 2^b - 1] and a zero_point chosen so
that 0.0 is exactly representable. Per-channel qparams (axis=int) come back shaped to broadcast against
x (e.g. (out, 1) for a (out, in) weight), so quantize/dequantize are plain broadcasting.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("minmax", "percentile", "mse")
EPS = torch.finfo(torch.float32).eps


# ---------------------------------------------------------------------------------------------------------
# The math


def _check_bits(bits) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")


def qrange(bits: int, symmetric: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid: signed if symmetric, else unsigned."""
    _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _clip_range(x: torch.Tensor, axis: int | None, method: str, percentile: float, bits: int,
                symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of the range to represent: min/max, a percentile, or the MSE-optimal shrink of min/max."""
    flat = x.movedim(axis, 0).flatten(1) if axis is not None else x.reshape(1, -1)  # (channels, values)
    if method == "percentile":
        q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=torch.float32, device=x.device)
        lo_hi = torch.quantile(flat.float(), q, dim=1)  # (2, channels)
        lo, hi = lo_hi[0], lo_hi[1]
    else:
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    if method == "mse":  # 1) try shrinking the range  2) keep the shrink with the least squared error per channel
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        qmin, qmax = qrange(bits, symmetric)
        for ratio in torch.linspace(0.3, 1.0, 36):
            c_lo, c_hi = lo * ratio, hi * ratio
            scale, zp = _qparams_from_range(c_lo, c_hi, qmin, qmax, symmetric)
            err = ((dequantize(quantize(flat, scale[:, None], zp[:, None], qmin, qmax), scale[:, None],
                               zp[:, None]) - flat) ** 2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, c_lo, best_lo), torch.where(better, c_hi, best_hi)
        lo, hi = best_lo, best_hi
    return lo, hi


def _qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool):
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # 0.0 must be representable
    if symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        scale = torch.clamp(scale, min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=EPS)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)
    return scale.float(), zero_point


def choose_qparams(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False, axis: int | None = None,
                   method: str = "minmax", percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero_point that map the range of `x` onto the `bits`-bit integer grid.

    Args:
        x: float tensor (non-empty).
        bits: 1..16.
        symmetric: signed grid with zero_point 0 (True) or unsigned grid with a zero_point (False).
        axis: None for one (scale, zero_point) for the whole tensor; an int for one per slice along that
            axis (per-channel); then both come back shaped to broadcast against x.
        method: 'minmax' (the full range), 'percentile' (clip to the `percentile`-th percentile, for
            activations with outliers) or 'mse' (the clipping that minimises the squared error).
    Returns:
        scale (float32, > 0) and zero_point (int64, in [qmin, qmax]).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("x is empty: there is no range to quantize")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got dtype {x.dtype}")
    _check_bits(bits)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if axis is not None and (not isinstance(axis, int) or not -x.dim() <= axis < x.dim()):
        raise ValueError(f"axis must be None or an int in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d tensor, "
                         f"got {axis!r}")
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    axis = axis % x.dim() if axis is not None else None
    x = x.detach().float()
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = _clip_range(x, axis, method, percentile, bits, symmetric)  # (channels,)
    scale, zero_point = _qparams_from_range(lo, hi, qmin, qmax, symmetric)
    if axis is None:
        return scale.reshape(()), zero_point.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return scale.reshape(shape), zero_point.reshape(shape)


def _check_scale(scale) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.numel() == 0 or not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"scale must be finite and > 0, got {scale if scale.numel() < 6 else 'a tensor with <= 0'}")
    return scale


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Round `x / scale`, shift by `zero_point`, clamp to [qmin, qmax]; returns an int32 tensor.

    Args:
        scale, zero_point: scalars or tensors that broadcast against x (as `choose_qparams` returns).
    """
    scale = _check_scale(scale)
    if not isinstance(qmin, int) or not isinstance(qmax, int) or qmin >= qmax:
        raise ValueError(f"qmin and qmax must be ints with qmin < qmax, got {qmin!r}, {qmax!r}")
    zero_point = torch.as_tensor(zero_point)
    q = torch.round(x.detach().float() * (1.0 / scale)) + zero_point  # torch multiplies by 1/scale too
    return torch.clamp(q, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """Back to floats: (q - zero_point) * scale."""
    scale = _check_scale(scale)
    return (q.to(torch.float32) - torch.as_tensor(zero_point).float()) * scale


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: dequantize(quantize(x)). Backward: the straight-through estimator (STE)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        inside = torch.round(x.detach() * (1.0 / scale)) + zero_point
        ctx.save_for_backward((inside >= qmin) & (inside <= qmax))
        return dequantize(quantize(x, scale, zero_point, qmin, qmax), scale, zero_point).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        # round() has zero gradient almost everywhere; pretend it is the identity inside the grid, and zero
        # where the value was clipped (as torch.fake_quantize_* does).
        return grad * inside, None, None, None, None


def fake_quantize_with(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """dequantize(quantize(x)) with given qparams, differentiable through the STE."""
    scale = _check_scale(scale)
    return _FakeQuantSTE.apply(x, scale.to(x.device), torch.as_tensor(zero_point, device=x.device), qmin, qmax)


def fake_quantize(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False, axis: int | None = None,
                  method: str = "minmax") -> torch.Tensor:
    """Quantize then dequantize `x` (floats on the integer grid), with STE gradients for training."""
    scale, zero_point = choose_qparams(x, bits=bits, symmetric=symmetric, axis=axis, method=method)
    qmin, qmax = qrange(bits, symmetric)
    return fake_quantize_with(x, scale, zero_point, qmin, qmax)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x_hat)^2)."""
    noise = float(((x.float() - x_hat.float()) ** 2).sum())
    signal = float((x.float() ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise)


# ---------------------------------------------------------------------------------------------------------
# Non-uniform: k-means weight sharing (Deep Compression, Han et al. 2016)


def kmeans_quantize(x: torch.Tensor, *, bits: int = 4, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means with 2^bits centroids, linear initialisation; returns (centroids, labels shaped like x)."""
    _check_bits(bits)
    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        raise ValueError("x must be a non-empty tensor")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    flat = x.detach().float().flatten()
    k = min(2**bits, flat.numel())
    centroids = torch.linspace(float(flat.min()), float(flat.max()), k, device=flat.device)  # (k,)
    for _ in range(iters):
        # 1) assign each value to the nearest centroid (centroids stay sorted, so bucketize on midpoints)
        labels = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
        # 2) move each centroid to the mean of its values (empty clusters stay put)
        sums = torch.zeros(k, device=flat.device).index_add_(0, labels, flat)
        counts = torch.bincount(labels, minlength=k).float()
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
    labels = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, labels.reshape(x.shape)


def kmeans_fake_quantize(x: torch.Tensor, *, bits: int = 4, iters: int = 25) -> torch.Tensor:
    """`x` with every value replaced by its k-means centroid."""
    centroids, labels = kmeans_quantize(x, bits=bits, iters=iters)
    return centroids[labels].to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Observers: collect activation statistics on calibration data, then choose qparams


class Observer(nn.Module):
    """Watches tensors (`update`), then gives per-tensor qparams with the chosen method.

    min/max are exact; for 'percentile' and 'mse' a random sample of the values seen is kept.
    """

    def __init__(self, *, bits: int = 8, symmetric: bool = False, method: str = "minmax",
                 percentile: float = 99.99, max_samples: int = 200_000):
        super().__init__()
        _check_bits(bits)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.bits, self.symmetric, self.method, self.percentile = bits, symmetric, method, percentile
        self.max_samples = max_samples
        self.reset()

    def reset(self) -> None:
        self.min_val, self.max_val, self.samples, self.count = None, None, [], 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
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
    training (QAT), and uses frozen qparams in eval."""

    def __init__(self, *, bits: int = 8, method: str = "minmax", momentum: float = 0.1):
        super().__init__()
        self.bits, self.momentum = bits, momentum
        self.observer = Observer(bits=bits, symmetric=False, method=method)
        self.calibrating = False
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("ready", torch.tensor(False))

    def freeze(self) -> None:
        """Compute qparams from what the observer saw."""
        scale, zero_point = self.observer.qparams()
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.lo.copy_(self.observer.min_val)
        self.hi.copy_(self.observer.max_val)
        self.ready.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
                self.scale.copy_(scale)
                self.zero_point.copy_(zero_point)
        elif not bool(self.ready):
            raise RuntimeError("activation quantizer has no qparams: run lwkit.quant.calibrate (PTQ) or train "
                               "the model (QAT) before evaluating it")
        return fake_quantize_with(x, self.scale, self.zero_point, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, method={self.observer.method!r}"


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
            raise TypeError(f"only nn.Linear and nn.Conv2d can be wrapped, got {type(layer).__name__}")
        if bits is not None:
            _check_bits(bits)
        self.layer, self.bits, self.per_channel, self.symmetric, self.method = layer, bits, per_channel, symmetric, method
        self.act = ActQuantizer(bits=act_bits, method=act_method) if act_bits is not None else None

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        if self.bits is None:
            return w
        scale, zero_point = choose_qparams(w, bits=self.bits, symmetric=self.symmetric,
                                           axis=0 if self.per_channel else None, method=self.method)
        qmin, qmax = qrange(self.bits, self.symmetric)
        return fake_quantize_with(w, scale, zero_point, qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, symmetric={self.symmetric}, method={self.method!r}"


QUANTIZABLE = (nn.Linear, nn.Conv2d)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> every nn.Linear / nn.Conv2d of the model (in order), the layers quantization wraps."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def _wrap(model: nn.Module, make) -> nn.Module:
    model = copy.deepcopy(model)
    layers = quantizable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, layer))
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
    _check_bits(bits)
    if act_bits is not None:
        _check_bits(act_bits)
    return _wrap(model, lambda name, layer: QuantWrapper(layer, bits=bits, act_bits=act_bits,
                                                         per_channel=per_channel, symmetric=symmetric))


def quantize_weights(model: nn.Module, *, bits: int | dict = 8, per_channel: bool = True, symmetric: bool = True,
                     method: str = "minmax") -> nn.Module:
    """Weight-only post-training quantization (PTQ): a copy whose Linear/Conv2d weights lie on the grid.

    `bits` is one int for every layer or a dict layer name -> bits (None keeps that layer in float);
    layers missing from the dict stay in float. Returns a plain float model (the weights are dequantized
    values), so it runs anywhere; the integer storage is what `quantized_size_bytes` counts.
    """
    model = copy.deepcopy(model)
    layers = quantizable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    if isinstance(bits, dict):
        unknown = set(bits) - set(layers)
        if unknown:
            raise ValueError(f"bits names unknown layers {sorted(unknown)}; quantizable layers: {list(layers)}")
    with torch.no_grad():
        for name, layer in layers.items():
            b = bits.get(name) if isinstance(bits, dict) else bits
            if b is None:
                continue
            w = layer.weight
            if method == "kmeans":
                layer.weight.copy_(kmeans_fake_quantize(w, bits=b))
            else:
                layer.weight.copy_(fake_quantize(w, bits=b, symmetric=symmetric,
                                                 axis=0 if per_channel else None, method=method))
    return model.eval()


def prepare_ptq(model: nn.Module, *, bits: int | None = 8, act_bits: int = 8, per_channel: bool = True,
                symmetric: bool = True, act_method: str = "minmax") -> nn.Module:
    """A copy with weight and activation fake-quantization, waiting for `calibrate`."""
    if act_method not in METHODS:
        raise ValueError(f"act_method must be one of {METHODS}, got {act_method!r}")
    _check_bits(act_bits)
    return _wrap(model, lambda name, layer: QuantWrapper(layer, bits=bits, act_bits=act_bits,
                                                         per_channel=per_channel, symmetric=symmetric,
                                                         act_method=act_method)).eval()


@torch.no_grad()
def calibrate(model: nn.Module, loader, *, num_batches: int | None = None) -> nn.Module:
    """Run calibration batches through a `prepare_ptq` model, then freeze every activation quantizer."""
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    if not quantizers:
        raise ValueError("model has no activation quantizers: build it with prepare_ptq(..., act_bits=8)")
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"num_batches must be None or a positive int, got {num_batches!r}")
    for q in quantizers:
        q.observer.reset()
        q.calibrating = True
    model.eval()
    seen = 0
    try:
        for i, batch in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += 1
    finally:
        for q in quantizers:
            q.calibrating = False
    if seen == 0:
        raise ValueError("calibration data is empty: the loader yielded no batches")
    for q in quantizers:
        q.freeze()
    return model


def freeze_weights(model: nn.Module) -> nn.Module:
    """A plain float copy of a `prepare_qat` model with the (dequantized) quantized weights written in."""
    model = copy.deepcopy(model)
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}
    if not wrappers:
        raise ValueError("model has no QuantWrapper layers: build it with prepare_qat or prepare_ptq")
    for name, w in wrappers.items():
        with torch.no_grad():
            w.layer.weight.copy_(w.quantized_weight())
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, w.layer if w.act is None else w)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Size and mixed precision


def quantized_size_bytes(model: nn.Module, bits: int | dict, *, per_channel: bool = True) -> float:
    """Bytes to store `model` with its Linear/Conv2d weights at `bits` (int or name -> bits, None = fp32):
    packed integers plus one fp32 scale and one zero_point byte per channel (or per tensor); everything
    else (biases, BatchNorm) at fp32."""
    layers = quantizable_layers(model)
    total = 0.0
    quantized_params = set()
    for name, layer in layers.items():
        b = bits.get(name) if isinstance(bits, dict) else bits
        if b is None:
            continue
        _check_bits(b)
        groups = layer.weight.shape[0] if per_channel else 1
        total += layer.weight.numel() * b / 8 + groups * 5
        quantized_params.add(id(layer.weight))
    for p in model.state_dict(keep_vars=True).values():
        if id(p) not in quantized_params and p.is_floating_point():
            total += p.numel() * 4
    return total


def layer_sensitivity(model: nn.Module, evaluate, *, bits_options=(8, 4, 3, 2), per_channel: bool = True,
                      symmetric: bool = True) -> dict[str, dict[int, float]]:
    """layer -> {bits: score} with only that layer quantized (others fp32); `evaluate(model) -> score`."""
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> score, got {type(evaluate).__name__}")
    out = {}
    for name in quantizable_layers(model):
        out[name] = {b: float(evaluate(quantize_weights(model, bits={name: b}, per_channel=per_channel,
                                                        symmetric=symmetric))) for b in bits_options}
    return out


def allocate_bits(sensitivity: dict[str, dict[int, float]], sizes: dict[str, int], budget_bits: float, *,
                  max_combinations: int = 200_000) -> dict[str, int]:
    """Per-layer bits that maximise the summed scores under a total weight budget (in bits).

    Args:
        sensitivity: layer -> {bits: score when only that layer is at those bits} (higher is better;
            e.g. accuracy). Summing per-layer scores assumes their effects add up — a first-order guess.
        sizes: layer -> number of weights.
        budget_bits: the most weight bits allowed, sum over layers of sizes[layer] * bits[layer].
    Tries every combination (few layers, few options) and raises if none fits.
    """
    names = list(sensitivity)
    if not names:
        raise ValueError("sensitivity is empty")
    missing = [n for n in names if n not in sizes]
    if missing:
        raise ValueError(f"sizes is missing layers {missing}")
    if not isinstance(budget_bits, (int, float)) or budget_bits <= 0:
        raise ValueError(f"budget_bits must be a positive number, got {budget_bits!r}")
    options = [sorted(sensitivity[n]) for n in names]
    if math.prod(len(o) for o in options) > max_combinations:
        raise ValueError(f"too many combinations to try (> {max_combinations}); use fewer bit options")
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
