"""Hypothesis properties for lwkit.deploy, lwkit.robust and lwkit.drift: bad arguments name themselves,
good arguments agree with a hand computation. No export runs here (errors come before any export)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lwkit import data, deploy, drift, robust

COVERED = {
    "lwkit.export.export_onnx", "lwkit.export.quantize_onnx_dynamic", "lwkit.export.quantize_onnx_static",
    "lwkit.export.export_pte", "lwkit.export.optimize_onnx_transformer", "lwkit.deploy.load", "lwkit.deploy.measure", "lwkit.deploy.file_size_bytes",
    "lwkit.robust.fgsm", "lwkit.robust.pgd", "lwkit.robust.attack", "lwkit.robust.attack_accuracy",
    "lwkit.drift.confidence", "lwkit.drift.prediction_histogram", "lwkit.drift.total_variation",
    "lwkit.drift.shift", "lwkit.drift.DriftMonitor",
}
EXEMPT = {
    "lwkit.deploy.RUNTIMES": "a constant tuple",
    "lwkit.export.EXPORTERS": "a constant tuple (export_onnx's exporter choices, checked in its property test)",
    "lwkit.deploy.DeployError": "an exception class",
    "lwkit.deploy.Runner": "built by deploy.load, which is covered; its call checks are in test_deploy.py",
    "lwkit.deploy.DeployTable": "built by deploy.measure, which is covered",
    "lwkit.deploy.versions": "takes no argument",
    "lwkit.deploy.executorch_threads": "takes no argument",
    "lwkit.robust.ATTACKS": "a constant tuple",
    "lwkit.drift.SHIFTS": "a constant tuple",
    "lwkit.drift.DriftReport": "a result dataclass built by DriftMonitor.check",
}

FAST = settings(max_examples=25, deadline=None)
BAD_NUMBERS = st.one_of(st.floats(max_value=-1e-3), st.floats(min_value=1.001, max_value=1e6), st.just(math.nan),
                        st.booleans(), st.text(max_size=3))
TINY = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
X = torch.rand(5, 1, 2, 2)


@FAST
@given(suffix=st.sampled_from([".pt", ".tflite", ".onnx.bak", ""]))
def test_export_paths_must_have_the_right_suffix(tmp_path_factory, suffix):
    folder = tmp_path_factory.mktemp("p")
    with pytest.raises(ValueError, match="path must end in"):
        deploy.export_onnx(TINY, X, folder / f"m{suffix}")
    with pytest.raises(ValueError, match="path must end in"):
        deploy.export_pte(TINY, X, folder / f"m{suffix}")


@FAST
@given(bad=st.one_of(st.integers(max_value=16), st.integers(min_value=24), st.booleans(), st.text(max_size=2)))
def test_opset_out_of_range(tmp_path_factory, bad):
    with pytest.raises((ValueError, TypeError), match="opset"):
        deploy.export_onnx(TINY, X, tmp_path_factory.mktemp("o") / "m.onnx", opset=bad)


@FAST
@given(bad=st.one_of(st.integers(max_value=1), st.booleans(), st.floats()))
def test_max_batch_and_num_batches(tmp_path_factory, bad):
    folder = tmp_path_factory.mktemp("b")
    with pytest.raises(ValueError, match="max_batch"):
        deploy.export_pte(TINY, X, folder / "m.pte", max_batch=bad)
    if not (isinstance(bad, int) and not isinstance(bad, bool) and bad >= 1):
        with pytest.raises(ValueError, match="num_batches"):
            deploy.export_pte(TINY, X, folder / "m.pte", int8=True, calibration_data=X, num_batches=bad)


@FAST
@given(bad=st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
def test_example_input_must_hold_tensors(tmp_path_factory, bad):
    with pytest.raises(TypeError, match="example_input"):
        deploy.export_onnx(TINY, bad, tmp_path_factory.mktemp("e") / "m.onnx")


@FAST
@given(name=st.text(alphabet="abcxyz", min_size=1, max_size=6), suffix=st.sampled_from([".onnx", ".pte"]))
def test_missing_files_are_named(tmp_path_factory, name, suffix):
    folder = tmp_path_factory.mktemp("m")
    for call in (lambda: deploy.load(folder / f"{name}{suffix}"),
                 lambda: deploy.file_size_bytes(folder / f"{name}{suffix}")):
        with pytest.raises(FileNotFoundError, match=name):
            call()
    with pytest.raises(FileNotFoundError, match="fp32_path"):
        deploy.quantize_onnx_dynamic(folder / f"{name}.onnx", folder / "out.onnx")
    with pytest.raises(FileNotFoundError, match="fp32_path"):
        deploy.quantize_onnx_static(folder / f"{name}.onnx", folder / "out.onnx", X)


@FAST
@given(threads=st.one_of(st.integers(max_value=0), st.booleans(), st.floats()),
       batch_sizes=st.one_of(st.just(()), st.lists(st.integers(max_value=0), min_size=1, max_size=2).map(tuple)),
       repeats=st.one_of(st.integers(max_value=0), st.booleans()))
def test_measure_checks_its_numbers(threads, batch_sizes, repeats):
    with pytest.raises(ValueError, match="threads"):
        deploy.measure({"m": TINY}, X, threads=threads)
    with pytest.raises(ValueError, match="batch_sizes"):
        deploy.measure({"m": TINY}, X, batch_sizes=batch_sizes)
    with pytest.raises(ValueError, match="repeats"):
        deploy.measure({"m": TINY}, X, repeats=repeats)


# ---------------------------------------------------------------------------------------------------------
# robust


@FAST
@given(eps=BAD_NUMBERS)
def test_attacks_reject_bad_eps(eps):
    y = torch.zeros(5, dtype=torch.long)
    for call in (lambda: robust.fgsm(TINY, X, y, eps), lambda: robust.pgd(TINY, X, y, eps),
                 lambda: robust.attack(TINY, X, y, eps), lambda: robust.attack_accuracy(TINY, X, y, eps)):
        with pytest.raises(ValueError, match="eps"):
            call()


@FAST
@given(eps=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_fgsm_matches_the_linear_closed_form(eps, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 6, generator=g))
    x, y = torch.rand(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
    with torch.no_grad():
        grad = (torch.softmax(lin(x), 1) - nn.functional.one_hot(y, 3).float()) @ lin.weight
    expected = (x + eps * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(robust.fgsm(lin, x, y, eps, mean=0.0, std=1.0), expected)


@FAST
@given(eps=st.floats(0, 0.3), steps=st.integers(1, 4), seed=st.integers(0, 1000))
def test_pgd_stays_in_the_pixel_ball(eps, steps, seed):
    y = torch.randint(0, 3, (5,), generator=torch.Generator().manual_seed(seed))
    x = (X - data.MEAN) / data.STD
    adv = robust.pgd(TINY, x, y, eps, steps=steps, generator=torch.Generator().manual_seed(seed))
    p, p_adv = x * data.STD + data.MEAN, adv * data.STD + data.MEAN
    assert (p_adv - p).abs().max() <= eps + 1e-5 and p_adv.min() >= -1e-5 and p_adv.max() <= 1 + 1e-5


@FAST
@given(steps=st.one_of(st.integers(max_value=0), st.booleans()), method=st.text(max_size=4))
def test_pgd_steps_and_attack_method(steps, method):
    y = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="steps"):
        robust.pgd(TINY, X, y, 0.1, steps=steps)
    if method not in robust.ATTACKS:
        with pytest.raises(ValueError, match="method"):
            robust.attack(TINY, X, y, 0.1, method=method)


# ---------------------------------------------------------------------------------------------------------
# drift

LOGITS = st.integers(1, 30).flatmap(lambda n: st.integers(2, 6).map(lambda k: (n, k)))


@FAST
@given(shape=LOGITS, seed=st.integers(0, 1000))
def test_confidence_and_histogram_match_torch(shape, seed):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(drift.confidence(logits), torch.softmax(logits, 1).max(1).values)
    hist = drift.prediction_histogram(logits)
    torch.testing.assert_close(hist, torch.bincount(logits.argmax(1), minlength=shape[1]).float() / shape[0])
    assert drift.total_variation(hist, hist) == 0.0


@FAST
@given(bad=st.one_of(st.integers(), st.just(torch.zeros(3)), st.just(torch.zeros(2, 3, dtype=torch.long))))
def test_logit_checks(bad):
    for fn in (drift.confidence, drift.prediction_histogram, drift.DriftMonitor.fit):
        with pytest.raises((TypeError, ValueError), match="logits"):
            fn(bad)


@FAST
@given(p=st.lists(st.floats(0, 1), min_size=2, max_size=5))
def test_total_variation_rejects_non_histograms(p):
    t = torch.tensor(p)
    if abs(float(t.sum()) - 1) > 1e-3:
        with pytest.raises(ValueError, match="p must"):
            drift.total_variation(t, torch.full_like(t, 1 / len(p)))


@FAST
@given(severity=st.floats(-0.5, 0.5), seed=st.integers(0, 1000))
def test_brightness_shift_is_clamped_addition(severity, seed):
    p = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    x = (p - data.MEAN) / data.STD
    got = drift.shift(x, "brightness", severity) * data.STD + data.MEAN
    torch.testing.assert_close(got, (p + severity).clamp(0, 1), atol=1e-5, rtol=0)


@FAST
@given(kind=st.text(max_size=6), severity=st.one_of(st.just(math.inf), st.just(math.nan), st.booleans()))
def test_shift_arguments(kind, severity):
    x = torch.zeros(1, 1, 4, 4)
    if kind not in drift.SHIFTS:
        with pytest.raises(ValueError, match="kind"):
            drift.shift(x, kind, 1.0)
    with pytest.raises(ValueError, match="severity"):
        drift.shift(x, "rotate", severity)


@FAST
@given(window=st.one_of(st.integers(max_value=9), st.integers(min_value=101)),
       false_alarm=st.one_of(st.floats(max_value=0), st.floats(min_value=0.5, max_value=10), st.booleans()))
def test_monitor_fit_arguments(window, false_alarm):
    logits = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="window"):
        drift.DriftMonitor.fit(logits, window=window)
    with pytest.raises(ValueError, match="false_alarm"):
        drift.DriftMonitor.fit(logits, window=50, false_alarm=false_alarm)


@FAST
@given(exporter=st.one_of(st.text(max_size=8).filter(lambda t: t not in ("dynamo", "torchscript")), st.none(),
                          st.integers()),
       flag=st.one_of(st.none(), st.integers(), st.text(max_size=2)))
def test_exporter_and_dynamic_flags_are_checked_before_any_export(tmp_path_factory, exporter, flag):
    folder = tmp_path_factory.mktemp("x")
    with pytest.raises(ValueError, match="exporter must be one of"):
        deploy.export_onnx(TINY, X, folder / "m.onnx", exporter=exporter)
    with pytest.raises(TypeError, match="dynamic_seq"):
        deploy.export_onnx(TINY, X, folder / "m.onnx", dynamic_seq=flag)
    assert not list(folder.iterdir())


@FAST
@given(heads=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=2)),
       hidden=st.integers(min_value=1, max_value=64))
def test_optimize_onnx_transformer_checks_heads_and_hidden(tmp_path_factory, heads, hidden):
    folder = tmp_path_factory.mktemp("t")
    src = folder / "in.onnx"
    src.write_bytes(b"not read: arguments are checked first")
    with pytest.raises(ValueError, match="num_heads"):
        deploy.optimize_onnx_transformer(src, folder / "out.onnx", num_heads=heads, hidden_size=hidden)
    with pytest.raises(ValueError, match="hidden_size"):
        deploy.optimize_onnx_transformer(src, folder / "out.onnx", num_heads=1, hidden_size=-hidden)
    if hidden > 1:
        with pytest.raises(ValueError, match="multiple of num_heads"):
            deploy.optimize_onnx_transformer(src, folder / "out.onnx", num_heads=hidden + 1, hidden_size=hidden)
    assert not (folder / "out.onnx").exists()
