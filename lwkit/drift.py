"""Maintenance (维护): notice that the data a deployed model sees has drifted, from the model's own outputs.

A deployed model rarely gets labels back. What it does have is its outputs: how confident it is
(the largest softmax probability) and which classes it predicts. On the clean data it was validated on
both have a known distribution; a shift in the inputs (rotated, brighter, noisier images) moves them.

`DriftMonitor.fit` measures the reference on clean logits and picks each alarm threshold from clean
data too: it draws many random windows of `window` clean examples and takes the (1 - false_alarm)
quantile of each statistic, so a clean window raises a false alarm with probability about
`false_alarm`. `check` computes the same statistics on a window of new logits.
`shift` makes the shifted test images (in pixel units, like the attacks in `lwkit.robust`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lwkit import data

__all__ = ["SHIFTS", "confidence", "prediction_histogram", "total_variation", "shift", "DriftMonitor",
           "DriftReport"]

SHIFTS = ("rotate", "brightness", "noise")


def _check_logits(logits, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        raise TypeError(f"{name} must be a float tensor of shape (n, classes), got "
                        + (f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
                           else type(logits).__name__))
    if logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least one row and two classes, got shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The largest softmax probability of each row: (n, classes) -> (n,)."""
    _check_logits(logits)
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


def prediction_histogram(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of rows predicted as each class: (n, classes) -> (classes,), sums to 1."""
    _check_logits(logits)
    counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).float()
    return counts / counts.sum()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation distance 0.5 * sum |p - q| between two histograms (0: same, 1: disjoint)."""
    for name, h in (("p", p), ("q", q)):
        if not isinstance(h, torch.Tensor) or h.dim() != 1 or (h < 0).any() or abs(float(h.sum()) - 1) > 1e-4:
            raise ValueError(f"{name} must be a 1-d tensor of non-negative fractions summing to 1, got {h!r}")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same number of classes, got {p.numel()} and {q.numel()}")
    return 0.5 * float((p - q).abs().sum())


def shift(x: torch.Tensor, kind: str, severity: float, *, generator: torch.Generator | None = None,
          mean: float = data.MEAN, std: float = data.STD) -> torch.Tensor:
    """A distribution shift of a normalised image batch (n, c, h, w), done in [0, 1] pixel space.

    kind: 'rotate' (severity in degrees, background stays 0), 'brightness' (severity added to every
    pixel), 'noise' (Gaussian noise with standard deviation `severity` in pixel units). Pixels are
    clamped to [0, 1] and the batch is normalised again.
    """
    if kind not in SHIFTS:
        raise ValueError(f"kind must be one of {SHIFTS}, got {kind!r}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Real) or not math.isfinite(severity):
        raise ValueError(f"severity must be a finite number, got {severity!r}")
    if kind == "noise" and severity < 0:
        raise ValueError(f"severity for 'noise' is a standard deviation and must be >= 0, got {severity!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise TypeError("x must be a float tensor of shape (n, channels, height, width), got "
                        + (f"{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__))
    p = (x * std + mean).clamp(0, 1)  # (n, c, h, w) pixels
    if kind == "rotate":
        a = math.radians(severity)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=p.dtype)
        grid = F.affine_grid(theta.expand(len(p), 2, 3).to(p.device), list(p.shape), align_corners=False)
        p = F.grid_sample(p, grid, align_corners=False, padding_mode="zeros")
    elif kind == "brightness":
        p = p + severity
    else:
        p = p + severity * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
    return (p.clamp(0, 1) - mean) / std


@dataclass
class DriftReport:
    """The statistics of one window of new outputs and whether each crossed its threshold."""

    n: int  # examples in the window
    mean_confidence: float  # mean largest softmax probability
    confidence_drop: float  # reference mean confidence - this window's (positive: less sure than usual)
    histogram_tv: float  # total variation between this window's prediction histogram and the reference
    confidence_alarm: bool
    histogram_alarm: bool

    @property
    def drift(self) -> bool:
        """True if either signal crossed its threshold."""
        return self.confidence_alarm or self.histogram_alarm

    def __str__(self) -> str:
        flag = "DRIFT" if self.drift else "no drift"
        return (f"{flag}: mean confidence {self.mean_confidence:.3f} (drop {self.confidence_drop:+.3f}"
                f"{', alarm' if self.confidence_alarm else ''}), prediction histogram TV "
                f"{self.histogram_tv:.3f}{' (alarm)' if self.histogram_alarm else ''}, n = {self.n}")


@dataclass
class DriftMonitor:
    """Reference output statistics and alarm thresholds, all taken from clean data."""

    reference_confidence: float  # mean largest softmax probability on the clean reference set
    reference_histogram: torch.Tensor  # (classes,) fraction of clean predictions per class
    window: int  # examples per checked window; thresholds hold for this size
    confidence_threshold: float  # alarm when the confidence drop exceeds this
    histogram_threshold: float  # alarm when the histogram TV exceeds this
    false_alarm: float  # the target false-alarm rate per window on clean data, per signal

    @classmethod
    def fit(cls, clean_logits: torch.Tensor, *, window: int = 200, false_alarm: float = 0.01,
            trials: int = 500, seed: int = 0) -> DriftMonitor:
        """Reference statistics from `clean_logits` and thresholds from `trials` random clean windows."""
        _check_logits(clean_logits, "clean_logits")
        n = clean_logits.shape[0]
        if isinstance(window, bool) or not isinstance(window, int) or not 10 <= window <= n:
            raise ValueError(f"window must be an int in [10, {n}] (the clean examples available), got {window!r}")
        if isinstance(false_alarm, bool) or not isinstance(false_alarm, numbers.Real) or not 0 < false_alarm < 0.5:
            raise ValueError(f"false_alarm must be a number in (0, 0.5), got {false_alarm!r}")
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 20:
            raise ValueError(f"trials must be an int >= 20, got {trials!r}")
        conf, hist = confidence(clean_logits), prediction_histogram(clean_logits)
        generator = torch.Generator().manual_seed(seed)
        drops, tvs = [], []
        for _ in range(trials):  # 1) a random clean window  2) its statistics
            idx = torch.randperm(n, generator=generator)[:window]
            drops.append(float(conf.mean() - conf[idx].mean()))
            tvs.append(total_variation(prediction_histogram(clean_logits[idx]), hist))
        q = 1 - false_alarm  # 3) thresholds: the clean statistics' (1 - false_alarm) quantile
        return cls(reference_confidence=float(conf.mean()), reference_histogram=hist, window=window,
                   confidence_threshold=float(torch.tensor(drops).quantile(q)),
                   histogram_threshold=float(torch.tensor(tvs).quantile(q)), false_alarm=float(false_alarm))

    def check(self, logits: torch.Tensor) -> DriftReport:
        """Statistics of `logits` (at least `window` rows) against the reference, with alarms."""
        _check_logits(logits)
        if logits.shape[1] != self.reference_histogram.numel():
            raise ValueError(f"logits must have {self.reference_histogram.numel()} classes like the reference, "
                             f"got {logits.shape[1]}")
        if logits.shape[0] < self.window:
            raise ValueError(f"logits must have at least window={self.window} rows (the thresholds were set for "
                             f"that many), got {logits.shape[0]}")
        mean_conf = float(confidence(logits).mean())
        drop = self.reference_confidence - mean_conf
        tv = total_variation(prediction_histogram(logits), self.reference_histogram)
        return DriftReport(n=int(logits.shape[0]), mean_confidence=mean_conf, confidence_drop=drop,
                           histogram_tv=tv, confidence_alarm=drop > self.confidence_threshold,
                           histogram_alarm=tv > self.histogram_threshold)
