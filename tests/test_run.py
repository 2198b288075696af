import json

import nbformat
import pytest

from lwkit import run


def make_notebook(path, body, params="EPOCHS = 1  # epochs"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("from lwkit import report"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_runner_writes_results_and_checks_ranges(tmp_path, capsys):
    good = make_notebook(tmp_path / "01_good.ipynb",
                         "report.record('demo.value', EPOCHS * 0.5, expected=(0, 1))")
    out = tmp_path / "build"
    assert run.main([str(good), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["notebooks"]["01_good"]["status"] == "ok"
    assert results["notebooks"]["01_good"]["seconds"] > 0
    assert results["records"] == [{"notebook": "01_good", "key": "demo.value", "value": 0.5,
                                   "expected": [0.0, 1.0], "ok": True}]
    assert (out / "01_good.ipynb").exists()
    table = capsys.readouterr().out
    assert "demo.value" in table and "[0, 1]" in table

    # -p overrides the parameters cell; a value now outside its range makes the run fail
    assert run.main([str(good), "--out", str(out), "-p", "EPOCHS", "4"]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["records"][0]["value"] == 2.0 and results["records"][0]["ok"] is False


def test_runner_reports_a_failing_notebook(tmp_path):
    bad = make_notebook(tmp_path / "02_bad.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "build"
    assert run.main([str(bad), "--out", str(out)]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["notebooks"]["02_bad"]["status"] == "failed"
    assert "boom" in results["notebooks"]["02_bad"]["error"]


def test_find_notebooks_by_prefix_and_errors():
    assert run.find_notebooks(["00"])[0].name == "00_setup_and_baselines.ipynb"
    assert [p.name for p in run.find_notebooks()] == sorted(p.name for p in run.NOTEBOOKS.glob("*.ipynb"))
    with pytest.raises(ValueError, match="choose one of"):
        run.find_notebooks(["99"])


def test_parse_value():
    assert run.parse_value("10") == 10 and run.parse_value("True") is True
    assert run.parse_value("0.5") == 0.5 and run.parse_value("adam") == "adam"
