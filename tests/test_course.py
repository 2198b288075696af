"""Exercises: every check cell passes on the reference solution and fails on a blank or missing answer."""

import json
from pathlib import Path

import pytest

from lwkit import course

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


ALL = [(p, ex) for p in NOTEBOOKS for ex in course.exercises(load(p), p.stem)]


def run_cells(*sources):
    namespace = {"__name__": "__exercise__"}
    for src in sources:
        exec(compile(src, "<cell>", "exec"), namespace)


@pytest.mark.parametrize("path, exercise", ALL, ids=[f"{p.stem}-cell{ex.index}" for p, ex in ALL])
def test_check_passes_on_solution_and_fails_on_blank(path, exercise):
    imports = course.imports_cell(load(path))
    run_cells(imports, exercise.solution, exercise.check)
    for variant in (course.strip_solutions(exercise.solution), course.blank_solutions(exercise.solution)):
        with pytest.raises(Exception):  # noqa: B017 - any failure counts: AssertionError, NotImplementedError, ...
            run_cells(imports, variant, exercise.check)


def test_every_notebook_has_exercises():
    for path in NOTEBOOKS:
        found = course.exercises(load(path), path.stem)
        assert len(found) >= (2 if path.stem.startswith("00") else 3), f"{path.name} has {len(found)} exercises"


def test_student_copies_remove_every_solution(tmp_path):
    written = course.write_student_copies(NOTEBOOKS[0].parent, tmp_path)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for original, copy in zip(NOTEBOOKS, written):
        text = copy.read_text(encoding="utf-8")
        nb = json.loads(text)
        solutions = [ex.solution for ex in course.exercises(load(original))]
        for sol in solutions:
            body = sol.split(course.BEGIN)[1].split(course.END)[0].strip().splitlines()
            for line in body:
                if len(line.strip()) > 12:  # long enough to be the answer itself, not just `return`
                    assert line not in text, f"{copy.name} still contains solution line {line!r}"
        assert course.BEGIN not in text and course.END not in text
        assert text.count(course.PLACEHOLDER.replace('"', '\\"')) >= len(solutions)
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_strip_and_blank_keep_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    assert course.strip_solutions(src) == f"def f(x):\n    {course.PLACEHOLDER}\n"
    assert course.blank_solutions(src) == "def f(x):\n    return None\n"
    top = "### BEGIN SOLUTION\nscale = 0.5\nzero_point, q = 3, 4\n### END SOLUTION\n"
    assert course.blank_solutions(top) == "scale = None\nzero_point = None\nq = None\n"
    with pytest.raises(ValueError, match="unbalanced"):
        course.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_cli_writes_copies(tmp_path):
    assert course.main(["student", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.ipynb"))) == len(NOTEBOOKS)
