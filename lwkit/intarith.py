"""Integer-only inference (整数推理) by hand: what an int8 Linear/Conv2d kernel computes (Jacob et al. 2018).

With x = s_x (q_x - z_x), w = s_w (q_w - z_w) and y = s_y (q_y - z_y), one output of a dot product is

    q_y = z_y + M * (sum_i (q_w,i - z_w)(q_x,i - z_x) + q_b),   M = s_x s_w / s_y,   q_b = round(b / (s_x s_w))

* the products are int8 x int8 (or uint8 x int8) and add up in an int32 accumulator;
* the bias is an int32 at scale s_x s_w, so it adds straight into the accumulator;
* M is a real number, but the kernel multiplies by the int32 M0 and shifts right: M ~= M0 / 2^shift
  (M0 in [2^30, 2^31), so M0 keeps 31 bits of M), with rounding, then adds z_y and clamps.

Expanding the sum gives four terms (`zero_point_terms`): sum q_w q_x (the integer matmul), -z_x sum q_w (per
output channel: folds into the bias offline), -z_w sum q_x (per input: costs work at run time) and
N z_x z_w (a constant). That is why weights are symmetric (z_w = 0) and activations may be asymmetric.
A per-channel s_w is one M per output channel (it factors out of the sum); a per-group s_w changes inside
the sum, so the accumulator would have to be rescaled group by group.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = ["quantize_multiplier", "requantize", "quantize_bias", "zero_point_terms", "int_linear", "int_conv2d"]

INT32 = (-(2**31), 2**31 - 1)


def _check_int_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be an integer tensor (the quantized codes), got {got}")
    return t.to(torch.int64)


def _check_zp(name: str, z, channels: int | None = None) -> torch.Tensor:
    """A zero point: an int, or an integer tensor of shape () or (channels,)."""
    if isinstance(z, bool) or not isinstance(z, numbers.Integral | torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(z).__name__}")
    z = _check_int_tensor(name, z) if isinstance(z, torch.Tensor) else torch.tensor(int(z))
    if z.dim() > 1 or (z.dim() == 1 and z.shape[0] not in (1, channels)):
        raise ValueError(f"{name} must be a scalar or have shape ({channels},), got {tuple(z.shape)}")
    return z


def _check_scale(name: str, s) -> torch.Tensor:
    if isinstance(s, bool) or not isinstance(s, numbers.Real | torch.Tensor):
        raise TypeError(f"{name} must be a positive number or tensor of them, got {type(s).__name__}")
    s = torch.as_tensor(s, dtype=torch.float64)
    if s.numel() == 0 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"{name} must be finite and > 0, got {s.flatten()[:5].tolist()}")
    return s


def _check_qrange(qmin, qmax) -> tuple[int, int]:
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not INT32[0] <= qmin < qmax <= INT32[1]:
        raise ValueError(f"need {INT32[0]} <= qmin < qmax <= {INT32[1]}, got qmin={qmin}, qmax={qmax}")
    return int(qmin), int(qmax)


def quantize_multiplier(m) -> tuple[torch.Tensor, torch.Tensor]:
    """(M0, shift) with M ~= M0 / 2^shift, M0 an int32 in [2^30, 2^31): M in (0, 2^31), scalar or per channel."""
    m = _check_scale("m", m)
    if bool((m >= 2.0**31).any()):
        raise ValueError(f"m must be < 2^31, got {float(m.max())}")
    m0, shift = [], []
    for v in m.flatten().tolist():
        frac, exp = math.frexp(v)  # v = frac * 2^exp, frac in [0.5, 1)
        q = round(frac * 2**31)
        if q == 2**31:  # frac rounded up to 1.0
            q, exp = q // 2, exp + 1
        m0.append(q)
        shift.append(31 - exp)
    return torch.tensor(m0, dtype=torch.int64).reshape(m.shape), torch.tensor(shift, dtype=torch.int64).reshape(m.shape)


def requantize(acc: torch.Tensor, m0, shift, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """clamp(round(acc * M0 / 2^shift) + zero_point, qmin, qmax) in integers (round half away from zero).

    acc: int32 accumulators (..., out); m0, shift: scalars or (out,) per output channel."""
    acc = _check_int_tensor("acc", acc)
    m0 = _check_int_tensor("m0", torch.as_tensor(m0))
    shift = _check_int_tensor("shift", torch.as_tensor(shift))
    qmin, qmax = _check_qrange(qmin, qmax)
    if bool((m0 < 0).any()) or bool((m0 >= 2**31).any()) or bool((shift < 1).any()) or bool((shift > 62).any()):
        raise ValueError("m0 must be in [0, 2^31) and shift in [1, 62] (as quantize_multiplier returns), got "
                         f"m0={m0.flatten()[:3].tolist()}, shift={shift.flatten()[:3].tolist()}")
    if bool((acc < INT32[0]).any()) or bool((acc > INT32[1]).any()):
        raise ValueError("acc must fit in int32: the accumulator overflowed")
    z = _check_zp("zero_point", zero_point, acc.shape[-1] if acc.dim() else None)
    prod = acc * m0  # |acc| < 2^31, m0 < 2^31: fits in int64
    half = torch.ones_like(shift) << (shift - 1)
    rounded = torch.sign(prod) * ((prod.abs() + half) >> shift)
    return torch.clamp(rounded + z, qmin, qmax)


def quantize_bias(bias: torch.Tensor, s_x, s_w) -> torch.Tensor:
    """The int32 bias round(b / (s_x s_w)) (s_w a scalar or one per output channel), added to the accumulator."""
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or bias.dim() != 1:
        raise TypeError(f"bias must be a 1-D float tensor (out,), got "
                        f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    scale = _check_scale("s_x", s_x) * _check_scale("s_w", s_w)
    if scale.numel() not in (1, bias.numel()):
        raise ValueError(f"s_w must be a scalar or have one value per output ({bias.numel()}), got {scale.numel()}")
    q = torch.round(bias.double() / scale.flatten())
    if bool((q.abs() > INT32[1]).any()):
        raise ValueError("bias / (s_x s_w) does not fit in int32")
    return q.to(torch.int64)


def _check_linear_codes(q_x, z_x, q_w, z_w):
    """q_x (n, k) and q_w (out, k) integer codes, one z_x, and one z_w or one per output row."""
    q_x, q_w = _check_int_tensor("q_x", q_x), _check_int_tensor("q_w", q_w)
    if q_x.dim() != 2 or q_w.dim() != 2 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x must be (n, k) and q_w (out, k) with the same k, got {tuple(q_x.shape)} and "
                         f"{tuple(q_w.shape)}")
    z_x = _check_zp("z_x", z_x)
    if z_x.dim():
        raise ValueError(f"z_x must be one zero point (per tensor), got shape {tuple(z_x.shape)}")
    z_w = _check_zp("z_w", z_w, q_w.shape[0])
    return q_x, z_x, q_w, z_w


def zero_point_terms(q_x: torch.Tensor, z_x, q_w: torch.Tensor, z_w) -> dict[str, torch.Tensor]:
    """The four terms of sum_i (q_w,i - z_w)(q_x,i - z_x) for q_x (n, k) and q_w (out, k), each (n, out).

    'qw_qx' is the integer matmul; 'zx_sum_w' (-z_x sum_i q_w,i) depends only on the weights: offline, into
    the bias; 'zw_sum_x' (-z_w sum_i q_x,i) depends on the input: computed for every input at run time;
    'constant' is k z_x z_w. They add up to the accumulator without zero points."""
    q_x, z_x, q_w, z_w = _check_linear_codes(q_x, z_x, q_w, z_w)
    (n, k), out = q_x.shape, q_w.shape[0]
    return {"qw_qx": q_x @ q_w.T,
            "zx_sum_w": (-z_x * q_w.sum(1)).expand(n, out),
            "zw_sum_x": (-q_x.sum(1, keepdim=True) * z_w).expand(n, out),
            "constant": (k * z_x * z_w).expand(n, out)}


def _accumulate(q_x, z_x, q_w, z_w, bias_q) -> torch.Tensor:
    acc = (q_x - z_x) @ (q_w - z_w.reshape(-1, 1)).T  # (n, out)
    if bias_q is not None:
        bias_q = _check_int_tensor("bias_q", bias_q)
        if bias_q.shape != (q_w.shape[0],):
            raise ValueError(f"bias_q must have shape ({q_w.shape[0]},), got {tuple(bias_q.shape)}")
        acc = acc + bias_q
    if bool((acc < INT32[0]).any()) or bool((acc > INT32[1]).any()):
        raise ValueError("the int32 accumulator overflowed")
    return acc


def int_linear(q_x: torch.Tensor, z_x, q_w: torch.Tensor, z_w, bias_q: torch.Tensor | None, m0, shift, z_y,
               qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    """Integer-only Linear: q_x (n, k) uint8 codes, q_w (out, k) int8 codes -> q_y (n, out) codes in [qmin, qmax]."""
    q_x, z_x, q_w, z_w = _check_linear_codes(q_x, z_x, q_w, z_w)
    acc = _accumulate(q_x, z_x, q_w, z_w, bias_q)
    return requantize(acc, m0, shift, z_y, qmin, qmax)


def int_conv2d(q_x: torch.Tensor, z_x, q_w: torch.Tensor, z_w, bias_q: torch.Tensor | None, m0, shift, z_y,
               qmin: int = 0, qmax: int = 255, *, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Integer-only Conv2d (groups=1): q_x (n, c, h, w), q_w (out, c, kh, kw) -> q_y (n, out, h', w').

    im2col turns it into int_linear; padding pads with z_x, the code of 0.0."""
    q_x, q_w = _check_int_tensor("q_x", q_x), _check_int_tensor("q_w", q_w)
    if q_x.dim() != 4 or q_w.dim() != 4 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x must be (n, c, h, w) and q_w (out, c, kh, kw) with the same c, got "
                         f"{tuple(q_x.shape)} and {tuple(q_w.shape)}")
    for name, v, low in (("stride", stride, 1), ("padding", padding, 0)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    z_x = _check_zp("z_x", z_x)
    if z_x.dim():
        raise ValueError(f"z_x must be one zero point (per tensor), got shape {tuple(z_x.shape)}")
    n, _, h, w = q_x.shape
    out, _, kh, kw = q_w.shape
    padded = F.pad(q_x, (padding,) * 4, value=int(z_x))  # padding stands for 0.0, whose code is z_x
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"the kernel {kh}x{kw} does not fit the padded input {h}x{w} (padding {padding})")
    cols = F.unfold(padded.double(), (kh, kw), stride=stride).round().to(torch.int64)  # exact: codes < 2^53
    cols = cols.transpose(1, 2).reshape(n * ho * wo, -1)  # (n * positions, c * kh * kw)
    q_y = int_linear(cols, z_x, q_w.reshape(out, -1), z_w, bias_q, m0, shift, z_y, qmin, qmax)
    return q_y.reshape(n, ho * wo, out).transpose(1, 2).reshape(n, out, ho, wo)
