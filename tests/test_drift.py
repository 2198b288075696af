"""lwkit.drift: output statistics against hand computations, thresholds from clean data, shifts."""

import math

import pytest
import torch

from lwkit import data, drift


def test_confidence_and_histogram_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    expected = torch.tensor([1 / (1 + math.exp(-2)), 0.5, 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))])
    torch.testing.assert_close(drift.confidence(logits), expected)
    torch.testing.assert_close(drift.prediction_histogram(logits), torch.tensor([0.75, 0.25]))
    assert drift.total_variation(torch.tensor([0.75, 0.25]), torch.tensor([0.25, 0.75])) == pytest.approx(0.5)


def _clean_logits(n=2000, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return torch.randn(n, k, generator=g) + 4 * torch.nn.functional.one_hot(y, k)


def test_monitor_rarely_alarms_on_clean_data_and_catches_a_shift():
    clean, fresh = _clean_logits(seed=0), _clean_logits(seed=1)
    monitor = drift.DriftMonitor.fit(clean, window=200, false_alarm=0.01, trials=200)
    alarms = sum(monitor.check(fresh[i:i + 200]).drift for i in range(0, 2000, 200))
    assert alarms <= 2, "10 clean windows, about 2 % false alarms expected (two signals)"
    shifted = fresh[:200] / 4  # less confident outputs
    report = monitor.check(shifted)
    assert report.confidence_alarm and report.drift and "DRIFT" in str(report)
    skewed = fresh[:200].clone()
    skewed[:, 0] += 10  # everything predicted as class 0
    assert monitor.check(skewed).histogram_alarm


def test_shifts_in_pixel_space():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 1, 28, 28, generator=g)
    x = (p - data.MEAN) / data.STD
    bright = drift.shift(x, "brightness", 0.2) * data.STD + data.MEAN
    torch.testing.assert_close(bright, (p + 0.2).clamp(0, 1))
    torch.testing.assert_close(drift.shift(x, "rotate", 0.0), x, atol=1e-5, rtol=0)
    rot = drift.shift(x, "rotate", 90.0) * data.STD + data.MEAN
    assert torch.allclose(rot.sum(dim=(1, 2, 3)), p.sum(dim=(1, 2, 3)), rtol=1e-3), "a 90° turn keeps every pixel"
    noisy = drift.shift(x, "noise", 0.0)
    torch.testing.assert_close(noisy, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("call, error, match", [
    (lambda: drift.shift(torch.zeros(1, 1, 4, 4), "blur", 1.0), ValueError, "kind"),
    (lambda: drift.shift(torch.zeros(1, 1, 4, 4), "noise", -1.0), ValueError, "severity"),
    (lambda: drift.shift(torch.zeros(4, 4), "noise", 0.1), TypeError, "x must"),
    (lambda: drift.confidence(torch.zeros(3)), TypeError, "logits"),
    (lambda: drift.confidence(torch.tensor([[float("nan"), 0.0]])), ValueError, "NaN"),
    (lambda: drift.total_variation(torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5])), ValueError, "p must"),
    (lambda: drift.DriftMonitor.fit(_clean_logits(n=50), window=100), ValueError, "window"),
    (lambda: drift.DriftMonitor.fit(_clean_logits(), false_alarm=0.7), ValueError, "false_alarm"),
])
def test_bad_arguments_name_themselves(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_check_needs_a_full_window_of_the_right_classes():
    monitor = drift.DriftMonitor.fit(_clean_logits(), window=100, trials=50)
    with pytest.raises(ValueError, match="window"):
        monitor.check(_clean_logits(n=50))
    with pytest.raises(ValueError, match="classes"):
        monitor.check(_clean_logits(n=200, k=4))
