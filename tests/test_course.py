"""Exercises: every check cell passes on the reference solution and fails on a blank or missing answer.

Student copies: solutions never leak, and a learner's edited copy is never overwritten.
"""

import ast
import hashlib
import json
import os
import shutil
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


def notebook(*cells):
    """A minimal notebook: each cell is ('code' | 'markdown', source)."""
    return {"cells": [{"cell_type": kind, "metadata": {}, "source": src,
                       **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                      for kind, src in cells],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


GOOD = "def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION\n"


def write_nb(path, nb):
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.fixture
def src(tmp_path):
    """A private copy of the course notebooks: refusal tests never risk the real ones."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for p in NOTEBOOKS:
        shutil.copy(p, folder / p.name)
    return folder


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
    written = course.write_student_copies(NOTEBOOKS[0].parent, tmp_path / "out")
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
        assert "SOLUTION" not in text
        assert text.count(course.PLACEHOLDER.replace('"', '\\"')) >= len(solutions)
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
        # Everything but the solution blocks is kept: same cells, same types, same non-exercise sources.
        assert [c["cell_type"] for c in nb["cells"]] == [c["cell_type"] for c in load(original)["cells"]]


def test_shipped_notebooks_use_only_valid_markers():
    """Every marker-like line of the shipped notebooks is a real marker, in a code cell, inside a function or
    around top-level assignments (a prediction such as `PREDICTION = "per-channel"`, blanked to `= None`)."""
    for path in NOTEBOOKS:
        for i, cell in enumerate(load(path)["cells"]):
            src = course.source_of(cell)
            blocks = course.solution_blocks(src, notebook=path.name, cell=i)
            assert not blocks or cell["cell_type"] == "code"
            lines = src.split("\n")
            for b in blocks:
                assert lines[b.begin] == b.indent + course.BEGIN and lines[b.end] == b.indent + course.END
                if not b.indent:
                    body = ast.parse("\n".join(lines[b.begin + 1:b.end])).body
                    assert body and all(isinstance(n, (ast.Assign, ast.AnnAssign)) for n in body), (
                        f"{path.name} cell {i}: a top-level solution holds only assignments (else put it in a function)")


def test_strip_and_blank_keep_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    assert course.strip_solutions(src) == f"def f(x):\n    {course.PLACEHOLDER}\n"
    assert course.blank_solutions(src) == "def f(x):\n    return None\n"
    top = "### BEGIN SOLUTION\nscale = 0.5\nzero_point, q = 3, 4\n### END SOLUTION\n"
    assert course.blank_solutions(top) == "scale = None\nzero_point = None\nq = None\n"
    tabs = "def f():\n\t### BEGIN SOLUTION\n\treturn 1\n\t### END SOLUTION"
    assert course.strip_solutions(tabs) == f"def f():\n\t{course.PLACEHOLDER}"
    two = "a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3\n### BEGIN SOLUTION\nd = 4\n### END SOLUTION\n"
    assert course.strip_solutions(two) == f"a = 1\n{course.PLACEHOLDER}\nc = 3\n{course.PLACEHOLDER}\n"
    with pytest.raises(course.MarkerError, match="has no"):
        course.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


MALFORMED = [
    "#### BEGIN SOLUTION", "## END SOLUTION", "# BEGIN SOLUTION", "###BEGIN SOLUTION", "### BEGIN  SOLUTION",
    "### BEGIN SOLUTION ", "### END SOLUTION\t", "    ### END SOLUTION  ", "### begin solution", "### Begin Solution",
    "### BEGIN SOLUTIONS", "### END SOLUTIONS", "### BEGIN_SOLUTION", "x = 1  ### END SOLUTION",
    "answer = 42  ### BEGIN SOLUTION", "# ### BEGIN SOLUTION", "### BEGIN SOLUTION here", "### END SOLUTION # done",
    "### BEGIN SOLUTION\r",
]


@pytest.mark.parametrize("bad", MALFORMED)
@pytest.mark.parametrize("where", ["inside", "outside"])
def test_malformed_marker_is_an_error_naming_cell_and_line(bad, where):
    if where == "inside":  # a bad line inside an otherwise valid block
        src = f"def f():\n    ### BEGIN SOLUTION\n{bad}\n    return 1\n    ### END SOLUTION\n"
    else:
        src = f"def f():\n    return 1\n{bad}\n"
    nb = notebook(("code", "import math"), ("code", src), ("code", "assert f() == 1"))
    with pytest.raises(course.MarkerError) as info:
        course.student_notebook(nb, "07_demo.ipynb")
    assert (info.value.notebook, info.value.cell, info.value.line) == ("07_demo.ipynb", 1, 3)
    assert "07_demo.ipynb" in str(info.value) and "cell index 1" in str(info.value) and "line 3" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("src, problem", [
    ("### END SOLUTION\nx = 1\n", "without"),
    ("x = 1\n### END SOLUTION\n### BEGIN SOLUTION\nanswer = 42\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n### END SOLUTION\n", "nest"),
    ("### BEGIN SOLUTION\nx = 1\n", "has no"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n### END SOLUTION\n", "without"),
])
def test_unbalanced_markers(src, problem):
    with pytest.raises(course.MarkerError, match=problem):
        course.strip_solutions(src)
    with pytest.raises(course.MarkerError, match=problem):
        course.blank_solutions(src)


def test_review_solution_leak_on_slightly_off_markers():
    """Review section 2: these three cells were copied verbatim, answer included, with exit 0."""
    for src in ["def f():\n    #### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION\n",
                "x = 1\n### END SOLUTION\n### BEGIN SOLUTION\nanswer = 42\n",
                "### BEGIN SOLUTION\nanswer = 42  ### END SOLUTION\n"]:
        with pytest.raises(course.MarkerError):
            course.strip_solutions(src)


def test_review_solution_leak_writes_nothing(src, tmp_path):
    """One bad marker in one notebook: no copy of any notebook is written."""
    bad = load(src / NOTEBOOKS[-1].name)
    ex = course.exercises(bad)[0]
    bad["cells"][ex.index]["source"] = ex.solution.replace("    ### END SOLUTION", "    #### END SOLUTION")
    write_nb(src / NOTEBOOKS[-1].name, bad)
    out = tmp_path / "student"
    with pytest.raises(course.MarkerError, match=f"{NOTEBOOKS[-1].name}, cell index {ex.index}, line"):
        course.write_student_copies(src, out)
    assert not out.exists()


def test_solution_text_outside_markers_never_ships():
    """Belt and braces: 'SOLUTION' left anywhere in the copy (code or markdown) is an error, not a leak."""
    for kind, text in [("code", 'print("SOLUTION: 42")'), ("markdown", "### SOLUTION\nThe answer is 42.")]:
        with pytest.raises(course.MarkerError, match="SOLUTION"):
            course.student_notebook(notebook(("code", "import math"), (kind, text)), "x.ipynb")


def test_markdown_solution_blocks_are_replaced():
    md = "Why does it work?\n\n### BEGIN SOLUTION\nBecause 42.\n### END SOLUTION\n"
    nb = course.student_notebook(notebook(("code", GOOD), ("markdown", md)), "m.ipynb")
    assert nb["cells"][1]["source"] == f"Why does it work?\n\n{course.MARKDOWN_PLACEHOLDER}\n"
    assert nb["cells"][0]["source"] == f"def f():\n    {course.PLACEHOLDER}\n"
    with pytest.raises(course.MarkerError, match="cell index 1, line 1"):
        course.student_notebook(notebook(("code", GOOD), ("markdown", "#### BEGIN SOLUTION\n42")), "m.ipynb")


def test_review_student_copy_overwrites_learner_work(src, tmp_path, capsys):
    """Review section 1: `make student` twice used to wipe every answer a learner typed."""
    out = tmp_path / "student-copy"
    course.write_student_copies(src, out)
    p = out / "01_pruning_math.ipynb"
    p.write_text(p.read_text().replace("NotImplementedError", "MY_ANSWER", 1))  # the learner's work
    with pytest.raises(course.ExistingCopiesError) as info:
        course.write_student_copies(src, out)
    assert "MY_ANSWER" in p.read_text()
    assert "01_pruning_math.ipynb" in str(info.value) and "--force" in str(info.value)
    assert info.value.written == [] and len(info.value.existing) == len(NOTEBOOKS)
    # the CLI (= make student) refuses with exit 1 and says how to overwrite
    assert course.main(["student", str(out), "--src", str(src)]) == 1
    err = capsys.readouterr().err
    assert "01_pruning_math.ipynb" in err and "--force" in err and "MY_ANSWER" in p.read_text()
    # a missing copy (a notebook added since) is written; the edited one is kept
    (out / "03_quantization_math.ipynb").unlink()
    with pytest.raises(course.ExistingCopiesError) as info:
        course.write_student_copies(src, out)
    assert [w.name for w in info.value.written] == ["03_quantization_math.ipynb"] and "MY_ANSWER" in p.read_text()
    # --force overwrites
    assert course.main(["student", str(out), "--src", str(src), "--force"]) == 0
    assert "MY_ANSWER" not in p.read_text()


@pytest.mark.parametrize("how", ["same", "dot", "symlink", "relative"])
def test_review_student_copy_into_source_folder(src, tmp_path, monkeypatch, how):
    """Review section 1: `student notebooks` stripped the teacher's own solutions. Refused, even with force."""
    before = digest(src)
    target = {"same": src, "dot": src / ".", "symlink": tmp_path / "link", "relative": Path("notebooks/../notebooks")}
    if how == "symlink":
        os.symlink(src, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    for force in (False, True):
        with pytest.raises(ValueError, match="source folder"):
            course.write_student_copies(src, target[how], force=force)
        assert course.main(["student", str(target[how]), "--src", str(src)] + (["--force"] if force else [])) == 2
    assert digest(src) == before
    one = src / NOTEBOOKS[1].name  # one notebook into its own folder
    with pytest.raises(ValueError, match="source folder"):
        course.write_student_copies(one, target[how], force=True)
    assert digest(src) == before


def test_out_dir_that_is_a_file(src, tmp_path):
    f = tmp_path / "student"
    f.write_text("not a folder")
    for out in (f, f / "sub"):
        with pytest.raises(ValueError, match="not a folder"):
            course.write_student_copies(src, out, force=True)
    assert f.read_text() == "not a folder"


def test_unreadable_notebook_writes_nothing(src, tmp_path):
    (src / "07_broken.ipynb").write_text('{"cells": [', encoding="utf-8")  # truncated JSON
    out = tmp_path / "student"
    with pytest.raises(ValueError, match="07_broken.ipynb"):
        course.write_student_copies(src, out)
    assert not out.exists()
    with pytest.raises(ValueError, match="does not exist"):
        course.write_student_copies(tmp_path / "missing", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no notebooks"):
        course.write_student_copies(empty, out)


def test_write_is_atomic(src, tmp_path, monkeypatch):
    """Interrupted while replacing a copy: the old copy stays whole and no temporary file is left."""
    out = tmp_path / "student"
    course.write_student_copies(src, out)
    before = digest(out)

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(course.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        course.write_student_copies(src, out, force=True)
    assert digest(out) == before  # same files, same bytes: no .tmp debris


def test_cli_writes_copies(tmp_path):
    assert course.main(["student", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.ipynb"))) == len(NOTEBOOKS)


def test_guide_finds_every_exercise_and_its_first_sentence(tmp_path):
    import nbformat

    from lwkit import guide

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Title\n\n**Time:** about 20 min"),
                nbformat.v4.new_markdown_cell("## Exercises\n\n**Exercise 1.** Count the\nweights. Then more."),
                nbformat.v4.new_markdown_cell("**Exercise 2 (predict).** Why? Say it.\n\n**Exercise 3.** Last one")]
    path = tmp_path / "99_demo.ipynb"
    nbformat.write(nb, path)
    info = guide.notebook_info(path)
    assert info.exercises == ["Exercise 1: Count the weights.", "Exercise 2: Why?", "Exercise 3: Last one"]
