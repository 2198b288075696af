import json
import math

import numpy as np
import pytest
import torch

from lwkit import report


def test_record_appends_for_the_runner(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    monkeypatch.setenv(report.RECORDS_ENV, str(path))
    monkeypatch.setenv(report.NOTEBOOK_ENV, "00_demo")
    report.record("a.b", torch.tensor(0.9), expected=(0.8, 1.0), quiet=True)
    report.record("a.c", 5, expected=(0, 1), quiet=True)
    report.record("a.d", 2.5, quiet=True)
    report.record("a.e", np.float32(0.5), expected=(np.float64(0.0), torch.tensor(1)), quiet=True)
    records = report.read_records(path)
    assert [(r.key, r.ok) for r in records] == [("a.b", True), ("a.c", False), ("a.d", True), ("a.e", True)]
    assert records[0].notebook == "00_demo" and records[0].expected == [0.8, 1.0]
    assert json.loads(path.read_text().splitlines()[0])["value"] == pytest.approx(0.9)


def test_record_without_runner_only_prints(monkeypatch, capsys):
    monkeypatch.delenv(report.RECORDS_ENV, raising=False)
    rec = report.record("x", 3.0, expected=(0, 1))
    assert not rec.ok and "OUTSIDE" in capsys.readouterr().out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, torch.tensor(float("nan"))])
@pytest.mark.parametrize("expected", [None, (-1e308, 1e308), (0, 1)])
def test_non_finite_value_is_recorded_but_never_ok(tmp_path, monkeypatch, capsys, value, expected):
    """A diverged run's nan is written down and fails the run's check; it is never 'ok', range or not."""
    path = tmp_path / "records.jsonl"
    monkeypatch.setenv(report.RECORDS_ENV, str(path))
    rec = report.record("loss", value, expected=expected)
    assert rec.ok is False and not math.isfinite(rec.value)
    assert "NOT A FINITE NUMBER" in capsys.readouterr().out
    [back] = report.read_records(path)
    assert back.ok is False and not math.isfinite(back.value)


@pytest.mark.parametrize("key, value, expected, exc, says", [
    ("", 1.0, None, ValueError, "key"),
    ("   ", 1.0, None, ValueError, "key"),
    (None, 1.0, None, TypeError, "key"),
    (3, 1.0, None, TypeError, "key"),
    ("k", "high", None, TypeError, "value"),
    ("k", True, None, TypeError, "value"),
    ("k", 1 + 2j, None, TypeError, "value"),
    ("k", torch.tensor([0.5, 0.6]), None, TypeError, r"value .* shape \(2,\)"),
    ("k", 1.0, (2, 1), ValueError, "lo <= hi"),
    ("k", 1.0, (1,), ValueError, "pair"),
    ("k", 1.0, (0, 1, 2), ValueError, "pair"),
    ("k", 1.0, 0.5, TypeError, "expected"),
    ("k", 1.0, "0-1", TypeError, "expected"),
    ("k", 1.0, (0, "1"), TypeError, "expected"),
    ("k", 1.0, (False, True), TypeError, "expected"),
    ("k", 1.0, (0, float("nan")), ValueError, "finite"),
    ("k", 1.0, (float("-inf"), float("inf")), ValueError, "finite"),
])
def test_record_bad_inputs(key, value, expected, exc, says):
    with pytest.raises(exc, match=says):
        report.record(key, value, expected=expected)


def test_review_corrupted_records_file_names_the_file(tmp_path, monkeypatch):
    """A truncated or corrupted records file is a clear error naming the file and line, not a bare JSON error."""
    path = tmp_path / "records.jsonl"
    monkeypatch.setenv(report.RECORDS_ENV, str(path))
    for i in range(3):
        report.record(f"k{i}", i, expected=(0, 5), quiet=True)
    whole = path.read_bytes()
    assert [r.key for r in report.read_records(path)] == ["k0", "k1", "k2"]
    path.write_bytes(whole[:-20])  # a kernel killed mid-write
    with pytest.raises(ValueError, match=r"records file .*records.jsonl, line 3 is corrupted or truncated"):
        report.read_records(path)
    lines = whole.decode().splitlines()
    for bad, says in [('{"notebook": "", "key": "k"}', "expected an object with keys"),
                      ('[1, 2]', "expected an object with keys"),
                      (lines[0].replace('"ok": true', '"ok": "yes"'), "field 'ok' has the wrong type")]:
        path.write_text("\n".join([lines[0], bad]) + "\n")
        with pytest.raises(ValueError, match=f"records.jsonl, line 2: {says}"):
            report.read_records(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ValueError, match="records.jsonl is unreadable"):
        report.read_records(path)
    assert report.read_records(tmp_path / "missing.jsonl") == []
