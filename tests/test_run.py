import json
import os

import nbformat
import pytest

from lwkit import report, run


def make_notebook(path, body, params="EPOCHS = 1  # epochs"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("from lwkit import report"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def usage_error(argv, capsys) -> str:
    """Run the CLI expecting a usage error (exit 2, nothing run); returns what it printed."""
    with pytest.raises(SystemExit) as info:
        run.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_runner_writes_results_and_checks_ranges(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(report.RECORDS_ENV, raising=False)
    good = make_notebook(tmp_path / "01_good.ipynb",
                         "report.record('demo.value', EPOCHS * 0.5, expected=(0, 1))")
    out = tmp_path / "build"
    assert run.main([str(good), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["notebooks"]["01_good"]["status"] == "ok"
    assert results["notebooks"]["01_good"]["seconds"] > 0
    assert results["records"] == [{"notebook": "01_good", "key": "demo.value", "value": 0.5,
                                   "expected": [0.0, 1.0], "ok": True}]
    assert results["parameters"] == {} and results["notebooks"]["01_good"]["parameters"] == {}
    assert (out / "01_good.ipynb").exists()
    table = capsys.readouterr().out
    assert "demo.value" in table and "[0, 1]" in table
    assert report.RECORDS_ENV not in os.environ  # the run's variables don't leak into the caller

    # -p overrides the parameters cell; a value now outside its range makes the run fail
    assert run.main([str(good), "--out", str(out), "-p", "EPOCHS", "4"]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["records"][0]["value"] == 2.0 and results["records"][0]["ok"] is False
    assert results["parameters"] == {"EPOCHS": 4}


def test_runner_reports_a_failing_notebook(tmp_path):
    bad = make_notebook(tmp_path / "02_bad.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "build"
    assert run.main([str(bad), "--out", str(out)]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["notebooks"]["02_bad"]["status"] == "failed"
    assert "boom" in results["notebooks"]["02_bad"]["error"]


def test_review_misspelt_parameter_is_an_error(tmp_path, capsys):
    """Review section 5: `-p EPOCH 5` (typo for EPOCHS) was dropped silently and recorded as applied."""
    nb = make_notebook(tmp_path / "r5.ipynb", "print('EPOCHS =', EPOCHS)")
    out = tmp_path / "r5-out"
    err = usage_error([str(nb), "-p", "EPOCH", "5", "--out", str(out)], capsys)
    assert "EPOCH" in err and "did you mean EPOCHS" in err
    assert not out.exists()  # nothing ran, nothing recorded


def test_review_parameters_recorded_only_where_applied(tmp_path):
    """A -p that one of two notebooks has is applied (and recorded) for that notebook only."""
    a = make_notebook(tmp_path / "01_a.ipynb", "report.record('a', EPOCHS, quiet=True)")
    b = make_notebook(tmp_path / "02_b.ipynb", "report.record('b', LR, quiet=True)", params="LR = 0.1  # rate")
    out = tmp_path / "build"
    assert run.main([str(a), str(b), "--out", str(out), "-p", "EPOCHS", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["parameters"] == {"EPOCHS": 3}
    assert results["notebooks"]["01_a"]["parameters"] == {"EPOCHS": 3}
    assert results["notebooks"]["02_b"]["parameters"] == {}
    assert [(r["key"], r["value"]) for r in results["records"]] == [("a", 3.0), ("b", 0.1)]


def test_check_parameters():
    known = {"00_x": {"EPOCHS": "2", "FULL": "False", "OPT": "'adam'"}, "01_y": {"LR": "1e-3"}}
    assert run.check_parameters({"EPOCHS": 5, "LR": 0.1}, known) == {"00_x": {"EPOCHS": 5}, "01_y": {"LR": 0.1}}
    assert run.check_parameters({"OPT": "sgd"}, known) == {"00_x": {"OPT": "sgd"}, "01_y": {}}
    with pytest.raises(ValueError, match="did you mean EPOCHS"):
        run.check_parameters({"EPOHCS": 5}, known)
    with pytest.raises(ValueError, match="no selected notebook"):
        run.check_parameters({"BATCH": 5}, known)
    with pytest.raises(ValueError, match="EPOCHS 'ten': not a Python value"):  # parse_value fell back to a string
        run.check_parameters({"EPOCHS": "ten"}, known)
    with pytest.raises(ValueError, match="capitalised"):
        run.check_parameters({"FULL": "true"}, known)


@pytest.mark.parametrize("value", ["(64, 32)", "{1, 2}", "1j", "b'x'", "[1, (2, 3)]", "{'a': (1, 2)}", "{1: 2}"])
def test_parameter_that_papermill_would_turn_into_a_string(value):
    """papermill writes a tuple (nb05's STUDENT_HIDDEN, nb06's SOURCE_CLASSES) into the notebook as a string."""
    known = {"05_x": {"HIDDEN": "(32, 16)"}}
    with pytest.raises(ValueError, match="would reach the notebook as the string"):
        run.check_parameters({"HIDDEN": run.parse_value(value)}, known)
    assert run.check_parameters({"HIDDEN": [64, 32]}, known) == {"05_x": {"HIDDEN": [64, 32]}}


def test_missing_notebook_names_the_path_and_lists_notebooks(tmp_path, capsys):
    err = usage_error([str(tmp_path / "07_missing.ipynb")], capsys)
    assert "07_missing.ipynb" in err and "does not exist" in err and "00_setup_and_baselines" in err
    err = usage_error(["99"], capsys)
    assert "'99' matches no notebook" in err and "00_setup_and_baselines" in err


@pytest.mark.parametrize("timeout, says", [("0", "positive"), ("-5", "positive"), ("1.5", "whole number"),
                                           ("soon", "whole number")])
def test_bad_timeout(tmp_path, capsys, timeout, says):
    nb = make_notebook(tmp_path / "t.ipynb", "pass")
    err = usage_error([str(nb), "--timeout", timeout, "--out", str(tmp_path / "o")], capsys)
    assert "--timeout" in err and says in err and not (tmp_path / "o").exists()


def test_bad_out_folder(tmp_path, capsys):
    nb = make_notebook(tmp_path / "03_t.ipynb", "pass")
    before = nb.read_bytes()
    (tmp_path / "file").write_text("x")
    assert "is a file" in usage_error([str(nb), "--out", str(tmp_path / "file")], capsys)
    # --out the notebook's own folder: papermill would overwrite the notebook with its executed copy
    assert "replace the notebook itself" in usage_error([str(nb), "--out", str(tmp_path / ".")], capsys)
    assert nb.read_bytes() == before
    err = usage_error([str(nb), "-p", "EPOCHS", "many", "--out", str(tmp_path / "o")], capsys)
    assert "not a Python value" in err


def test_find_notebooks_by_prefix_and_errors(tmp_path):
    assert run.find_notebooks(["00"])[0].name == "00_setup_and_baselines.ipynb"
    assert [p.name for p in run.find_notebooks()] == sorted(p.name for p in run.NOTEBOOKS.glob("*.ipynb"))
    with pytest.raises(ValueError, match="choose one of"):
        run.find_notebooks(["99"])
    # notebooks added later (07..10) are found; a translation sub-folder is not, unless named
    names = ["00_a", "06_b", "07_c", "08_d", "09_e", "10_f"]
    for n in names:
        (tmp_path / f"{n}.ipynb").write_text("{}")
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "00_a.ipynb").write_text("{}")
    assert [p.stem for p in run.find_notebooks(folder=tmp_path)] == names
    assert run.find_notebooks(["1"], folder=tmp_path)[0].stem == "10_f"
    assert [p.stem for p in run.find_notebooks(["07", "10_f"], folder=tmp_path)] == ["07_c", "10_f"]
    with pytest.raises(ValueError, match=r"matches 5 notebooks \(00_a, 06_b, 07_c, 08_d, 09_e\)"):
        run.find_notebooks(["0"], folder=tmp_path)
    assert [p.parent.name for p in run.find_notebooks([str(tmp_path / "zh")], folder=tmp_path)] == ["zh"]
    # a split notebook (02b_...) does not make '02' ambiguous; '02b' names the split
    (tmp_path / "02_g.ipynb").write_text("{}")
    (tmp_path / "02b_h.ipynb").write_text("{}")
    assert run.find_notebooks(["02"], folder=tmp_path)[0].stem == "02_g"
    assert run.find_notebooks(["02b"], folder=tmp_path)[0].stem == "02b_h"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no notebooks"):
        run.find_notebooks([str(tmp_path / "empty")], folder=tmp_path)


def test_parse_value():
    assert run.parse_value("10") == 10 and run.parse_value("True") is True
    assert run.parse_value("0.5") == 0.5 and run.parse_value("adam") == "adam"
    assert run.parse_value("[0.5, 0.9]") == [0.5, 0.9] and run.parse_value(" 3") == 3
    assert run.parse_value("{[]: 1}") == "{[]: 1}"  # unhashable key: a string, not a TypeError
    with pytest.raises(TypeError, match="text"):
        run.parse_value(10)


def test_run_notebook_checks_its_arguments(tmp_path):
    nb = make_notebook(tmp_path / "t.ipynb", "pass")
    with pytest.raises(ValueError, match="timeout"):
        run.run_notebook(nb, tmp_path, {}, tmp_path / "r.jsonl", 0)
    with pytest.raises(ValueError, match="no such notebook"):
        run.run_notebook(tmp_path / "nope.ipynb", tmp_path, {}, tmp_path / "r.jsonl", 10)
    with pytest.raises(ValueError, match="parameters cell"):
        run.notebook_parameters(tmp_path / "nope.ipynb")
