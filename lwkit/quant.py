"""Quantization (量化) as small pure functions on tensors: qparams, quantize, dequantize, fake-quantize, k-means.

The affine map between a float tensor x and integers q in [qmin, qmax]:

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)      # quantize
    x_hat = (q - zero_point) * scale                               # dequantize

`symmetric=True` uses signed integers [-2^(b-1), 2^(b-1) - 1] and zero_point = 0 (as torch.ao's
symmetric observers); `symmetric=False` uses unsigned integers [0, 2^b - 1] and a zero_point chosen so
that 0.0 is exactly representable. Per-channel qparams (axis=int) come back shaped to broadcast against
x (e.g. (out, 1) for a (out, in) weight), so quantize/dequantize are plain broadcasting.

Observers, activation quantizers and QAT/PTQ models live in `lwkit.qat`; weight-only quantization of a
model (one bit-width or one per layer), its size and mixed precision in `lwkit.mixed`. Both are
re-exported here, so `lwkit.quant.prepare_qat` etc. keep working.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["METHODS", "qrange", "choose_qparams", "quantize", "dequantize", "fake_quantize_with", "fake_quantize",
           "sqnr_db", "kmeans_quantize", "kmeans_fake_quantize"]

METHODS = ("minmax", "percentile", "mse")
EPS = torch.finfo(torch.float32).eps  # the smallest scale, as torch.ao's observers (an all-zero tensor gets it)
INT32 = (-(2**31), 2**31 - 1)  # quantize returns int32 codes


# ---------------------------------------------------------------------------------------------------------
# Argument checks (shared with lwkit.qat and lwkit.mixed)


def _check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool, not a float such as 4.0: a float bit-width is almost always a bug upstream)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {allowed}, got {value}")
    return value


def _check_real(name: str, value) -> float:
    """A finite real number (an int or a float; bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _check_bits(bits, symmetric: bool = False, name: str = "bits") -> int:
    """bits in [1, 16]; 1 bit only with symmetric=False (the symmetric 1-bit grid has one reachable level)."""
    bits = _check_int(name, bits, low=1, high=16)
    if symmetric and bits == 1:
        raise ValueError(f"{name}=1 with symmetric=True leaves a single reachable level: the signed 1-bit grid "
                         f"is [-1, 0] and the symmetric scale max|x| / 0.5 rounds every value to 0. "
                         f"Use symmetric=False (two levels: 0 and one step, the step set by the range) or {name} >= 2")
    return bits


def _check_method(method, name: str = "method", allowed: tuple = METHODS) -> str:
    if method not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {method!r}")
    return method


def _check_float_tensor(name: str, x, *, allow_inf: bool = False, allow_empty: bool = False) -> torch.Tensor:
    """A float tensor without NaN (and without ±inf unless allow_inf), non-empty unless allow_empty."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got dtype {x.dtype}")
    if x.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: there is no range to quantize")
    x = x.detach()
    if bool(torch.isfinite(x).all()) or (allow_inf and not bool(torch.isnan(x).any())):
        return x  # one pass in the common case; count only to explain a failure
    n_nan, n_inf = int(torch.isnan(x).sum()), 0 if allow_inf else int(torch.isinf(x).sum())
    if n_nan or n_inf:
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} infinite values: quantization needs finite "
                         f"values (check the data, or the layer/learning rate that produced them)")
    return x


def _check_qrange(qmin, qmax) -> tuple[int, int]:
    """Integer bounds with qmin < qmax inside int32, the dtype `quantize` returns."""
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        _check_int(name, v, low=INT32[0], high=INT32[1])
    if qmin >= qmax:
        raise ValueError(f"qmin must be < qmax (at least two levels), got qmin={qmin}, qmax={qmax}")
    return int(qmin), int(qmax)


def _check_shape(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A qparam must broadcast against x without changing its shape: one value, or per channel with x's
    number of dims, the channel axis's length and 1 elsewhere (as choose_qparams(..., axis=...) returns)."""
    if t.numel() == 1 and t.dim() <= x.dim():
        return
    if t.dim() != x.dim() or any(s not in (1, n) for s, n in zip(t.shape, x.shape, strict=True)):
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not fit x of shape {tuple(x.shape)}: give one value, "
                         f"or per channel a tensor with {x.dim()} dims, the channel axis's length and 1 elsewhere "
                         f"(e.g. (out, 1) for a (out, in) weight, as choose_qparams(..., axis=0) returns)")


def _check_scale(scale, x: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, torch.Tensor)):
        raise TypeError(f"scale must be a number or a float tensor, got {scale!r} ({type(scale).__name__})")
    if isinstance(scale, torch.Tensor) and (scale.dtype == torch.bool or scale.is_complex()):
        raise TypeError(f"scale must be a number or a float tensor, got dtype {scale.dtype}")
    scale = torch.as_tensor(scale).detach().to(torch.float32)
    if scale.numel() == 0 or not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        shown = scale.tolist() if scale.numel() < 6 else f"a tensor with min {scale.min().item() if scale.numel() else None}"
        raise ValueError(f"scale must be finite and > 0 (in float32), got {shown}")
    if x is not None:
        _check_shape("scale", scale, x)
    return scale


def _check_zero_point(zero_point, x: torch.Tensor | None = None, qmin: int | None = None,
                      qmax: int | None = None) -> torch.Tensor:
    """Whole numbers (an int, an integer tensor, or floats such as torch.round returns), inside [qmin, qmax]."""
    if isinstance(zero_point, bool) or not isinstance(zero_point, (numbers.Real, torch.Tensor)):
        raise TypeError(f"zero_point must be an int or an integer tensor, got {zero_point!r} "
                        f"({type(zero_point).__name__})")
    if isinstance(zero_point, numbers.Integral) and not -2**63 <= int(zero_point) < 2**63:
        raise ValueError(f"zero_point must be a whole number inside int64 (and inside [qmin, qmax]), got {zero_point}")
    zp = torch.as_tensor(zero_point).detach()
    if zp.dtype == torch.bool or zp.is_complex():
        raise TypeError(f"zero_point must be an int or an integer tensor, got dtype {zp.dtype}")
    if zp.numel() == 0:
        raise ValueError("zero_point is empty")
    if zp.is_floating_point():
        if not bool(torch.isfinite(zp).all()) or not bool((zp == zp.round()).all()):
            raise ValueError(f"zero_point must hold whole numbers, got {zp.tolist() if zp.numel() < 6 else zp.dtype}")
        if float(zp.abs().max()) >= 2**63:
            raise ValueError(f"zero_point must be inside int64 (and inside [qmin, qmax]), got {float(zp.abs().max()):g}")
        zp = zp.to(torch.int64)
    if qmin is not None and (int(zp.min()) < qmin or int(zp.max()) > qmax):
        raise ValueError(f"zero_point must be in [qmin, qmax] = [{qmin}, {qmax}], got values in "
                         f"[{int(zp.min())}, {int(zp.max())}]")
    if x is not None:
        _check_shape("zero_point", zp, x)
    return zp


# ---------------------------------------------------------------------------------------------------------
# The math


def qrange(bits: int, symmetric: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid: signed if symmetric, else unsigned."""
    _check_bool("symmetric", symmetric)
    bits = _check_bits(bits, symmetric)
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
            err = ((_dequantize(_quantize(flat, scale[:, None], zp[:, None], qmin, qmax), scale[:, None],
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
        x: float tensor (non-empty, finite).
        bits: 1..16 (2..16 when symmetric: the symmetric 1-bit grid has one reachable level).
        symmetric: signed grid with zero_point 0 (True) or unsigned grid with a zero_point (False).
        axis: None for one (scale, zero_point) for the whole tensor; an int for one per slice along that
            axis (per-channel); then both come back shaped to broadcast against x.
        method: 'minmax' (the full range), 'percentile' (clip to the `percentile`-th percentile, for
            activations with outliers) or 'mse' (the clipping that minimises the squared error).
    Returns:
        scale (float32, > 0; an all-zero x gets the smallest scale, float32 eps) and zero_point (int64,
        in [qmin, qmax]).
    """
    x = _check_float_tensor("x", x)
    _check_bool("symmetric", symmetric)
    bits = _check_bits(bits, symmetric)
    _check_method(method)
    if axis is not None:
        axis = _check_int("axis", axis)
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"axis must be None or an int in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d tensor, "
                             f"got {axis}")
        axis %= x.dim()
    percentile = _check_real("percentile", percentile)
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has values beyond float32's range (about ±3.4e38): they cannot be quantized")
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = _clip_range(x, axis, method, percentile, bits, symmetric)  # (channels,)
    scale, zero_point = _qparams_from_range(lo, hi, qmin, qmax, symmetric)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError("x's range (max - min) overflows float32, so no finite scale exists: rescale x first")
    if axis is None:
        return scale.reshape(()), zero_point.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return scale.reshape(shape), zero_point.reshape(shape)


def _quantize(x, scale, zero_point, qmin, qmax):
    q = torch.round(x.detach().float() * (1.0 / scale)) + zero_point  # torch multiplies by 1/scale too
    if max(-qmin, qmax) > 2**24:  # beyond 2^24 float32 skips integers: clamp where int32's ends are exact
        q = q.double()
    return torch.clamp(q, qmin, qmax).to(torch.int32)


def _dequantize(q, scale, zero_point):
    return (q.to(torch.float32) - zero_point.float()) * scale


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Round `x / scale`, shift by `zero_point`, clamp to [qmin, qmax]; returns an int32 tensor.

    Args:
        x: float tensor without NaN (±inf saturate to qmin/qmax, as in torch).
        scale, zero_point: one value, or per channel a tensor that broadcasts against x (as
            `choose_qparams` returns); scale finite and > 0, zero_point whole numbers in [qmin, qmax].
        qmin, qmax: ints with qmin < qmax inside int32.
    """
    x = _check_float_tensor("x", x, allow_inf=True, allow_empty=True)
    qmin, qmax = _check_qrange(qmin, qmax)
    scale = _check_scale(scale, x)
    zero_point = _check_zero_point(zero_point, x, qmin, qmax)
    return _quantize(x, scale.to(x.device), zero_point.to(x.device), qmin, qmax)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """Back to floats: (q - zero_point) * scale."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor of integer codes, got {type(q).__name__}")
    if q.dtype == torch.bool or q.is_complex():
        raise TypeError(f"q must hold integer codes, got dtype {q.dtype}")
    if q.is_floating_point() and not bool((q == q.round()).all()):
        raise ValueError("q must hold whole numbers (integer codes from quantize), got fractional or NaN values")
    scale = _check_scale(scale, q if q.numel() else None)
    zero_point = _check_zero_point(zero_point, q if q.numel() else None)
    return _dequantize(q, scale.to(q.device), zero_point.to(q.device))


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: dequantize(quantize(x)). Backward: the straight-through estimator (STE)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        if max(-qmin, qmax) > 2**24:  # wide integer ranges: the exact int32 path of quantize / dequantize
            q = torch.round(x.detach().float() * (1.0 / scale)) + zero_point
            ctx.save_for_backward((q >= qmin) & (q <= qmax))
            return _dequantize(_quantize(x, scale, zero_point, qmin, qmax), scale, zero_point).to(x.dtype)
        # The same arithmetic as dequantize(quantize(x)) in one float buffer, in place: the integer codes are
        # whole floats below 2**24, so skipping the int32 round trip changes no bit (tested), only the time.
        q = x.detach().float() * (1.0 / scale)
        q.round_().add_(zero_point)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((q >= qmin) & (q <= qmax))
        else:
            ctx.save_for_backward(None)
        q.clamp_(qmin, qmax).sub_(zero_point.float()).mul_(scale)
        return q.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        # round() has zero gradient almost everywhere; pretend it is the identity inside the grid, and zero
        # where the value was clipped (as torch.fake_quantize_* does).
        return grad * inside, None, None, None, None


def fake_quantize_with(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """dequantize(quantize(x)) with given qparams, differentiable through the STE (same checks as `quantize`)."""
    _check_float_tensor("x", x, allow_inf=True, allow_empty=True)
    qmin, qmax = _check_qrange(qmin, qmax)
    scale = _check_scale(scale, x)
    zero_point = _check_zero_point(zero_point, x, qmin, qmax)
    return _FakeQuantSTE.apply(x, scale.to(x.device), zero_point.to(x.device), qmin, qmax)


def fake_quantize(x: torch.Tensor, *, bits: int = 8, symmetric: bool = False, axis: int | None = None,
                  method: str = "minmax") -> torch.Tensor:
    """Quantize then dequantize `x` (floats on the integer grid), with STE gradients for training."""
    scale, zero_point = choose_qparams(x, bits=bits, symmetric=symmetric, axis=axis, method=method)
    qmin, qmax = qrange(bits, symmetric)
    return _FakeQuantSTE.apply(x, scale.to(x.device), zero_point.to(x.device), qmin, qmax)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x_hat)^2)."""
    x = _check_float_tensor("x", x).detach()  # a Parameter is fine: no autograd warning from float(...)
    x_hat = _check_float_tensor("x_hat", x_hat).detach()
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    noise = float(((x.double() - x_hat.double()) ** 2).sum())
    signal = float((x.double() ** 2).sum())
    if noise == 0:
        return float("inf")
    return float("-inf") if signal == 0 else 10 * math.log10(signal / noise)


# ---------------------------------------------------------------------------------------------------------
# Non-uniform: k-means weight sharing (Deep Compression, Han et al. 2016)


def kmeans_quantize(x: torch.Tensor, *, bits: int = 4, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means with 2^bits centroids (1 bit = 2 centroids), linear initialisation; returns (centroids,
    labels shaped like x)."""
    x = _check_float_tensor("x", x)
    bits = _check_bits(bits)
    iters = _check_int("iters", iters, low=1)
    flat = x.float().flatten()
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
# Re-exports: observers/QAT (lwkit.qat) and whole-model weight quantization (lwkit.mixed) import the math above,
# so they are loaded lazily here (PEP 562) to keep `lwkit.quant.prepare_qat` etc. without an import cycle.

_MOVED = {"Observer": "qat", "ActQuantizer": "qat", "QuantWrapper": "qat", "prepare_qat": "qat",
          "prepare_ptq": "qat", "calibrate": "qat", "freeze_weights": "qat",
          "QUANTIZABLE": "mixed", "quantizable_layers": "mixed", "quantize_weights": "mixed",
          "quantized_size_bytes": "mixed", "layer_sensitivity": "mixed", "allocate_bits": "mixed"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"lwkit.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'lwkit.quant' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MOVED))
