"""Conventions every notebook keeps (nbval, run separately, executes them)."""

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_notebooks_exist_in_teaching_order():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_and_baselines.ipynb"
    # two digits, then '_' or one split letter and '_' (02b_... continues 02_...)
    assert all(re.fullmatch(r"\d\d[a-z]?_\w+\.ipynb", p.name) for p in NOTEBOOKS), [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    for cell in cells(path):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, source(cell)[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_exactly_one_parameters_cell_of_plain_assignments(path):
    tagged = [c for c in cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse(source(tagged[0]))
    assert tree.body and all(isinstance(node, ast.Assign) for node in tree.body)
    lines = [line for line in source(tagged[0]).splitlines() if line.strip()]
    assert all("#" in line for line in lines), "every parameter has a comment"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_structure(path):
    all_cells = cells(path)
    assert all_cells[0]["cell_type"] == "markdown" and source(all_cells[0]).startswith("# ")
    markdown = "\n".join(source(c) for c in all_cells if c["cell_type"] == "markdown")
    for heading in ("## Summary", "## Exercises"):
        assert heading in markdown
    first_code = next(c for c in all_cells if c["cell_type"] == "code")
    assert all(isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr))
               for n in ast.parse(source(first_code)).body), "first code cell holds the imports"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_downloads_installs_or_gpu_requirements(path):
    code = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "code")
    for banned in ("!pip", "%pip", "download=True", "rm -rf", "assert torch.cuda.is_available()"):
        assert banned not in code
