import json

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
    records = report.read_records(path)
    assert [(r.key, r.ok) for r in records] == [("a.b", True), ("a.c", False), ("a.d", True)]
    assert records[0].notebook == "00_demo" and records[0].expected == [0.8, 1.0]
    assert json.loads(path.read_text().splitlines()[0])["value"] == pytest.approx(0.9)


def test_record_without_runner_only_prints(monkeypatch, capsys):
    monkeypatch.delenv(report.RECORDS_ENV, raising=False)
    rec = report.record("x", 3.0, expected=(0, 1))
    assert not rec.ok and "OUTSIDE" in capsys.readouterr().out


@pytest.mark.parametrize("key, value, expected, exc", [
    ("", 1.0, None, ValueError),
    ("k", "high", None, TypeError),
    ("k", float("nan"), None, TypeError),
    ("k", True, None, TypeError),
    ("k", 1.0, (2, 1), ValueError),
    ("k", 1.0, (1,), ValueError),
])
def test_record_bad_inputs(key, value, expected, exc):
    with pytest.raises(exc):
        report.record(key, value, expected=expected)
