"""Exercises, solutions and student copies.

A solution sits between `### BEGIN SOLUTION` and `### END SOLUTION` (the nbgrader convention); the next
code cell checks it. An exercise cell may use only names from the notebook's first code cell (its
imports), so that tests can run each exercise and its check on their own.

    python -m lwkit.course student OUTDIR        # student copies of every notebook
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
PLACEHOLDER = 'raise NotImplementedError("Exercise: write your solution here")'
_BLOCK = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION[^\n]*(\n|$)", re.M | re.S)


def _replace_blocks(source: str, make_body) -> str:
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced solution markers ({source.count(BEGIN)} BEGIN, {source.count(END)} END) in:\n"
                         + source[:300])
    return _BLOCK.sub(lambda m: make_body(m.group(1), m.group(2)) + m.group(3), source)


def strip_solutions(source: str) -> str:
    """Replace every solution block with a placeholder that raises NotImplementedError."""
    return _replace_blocks(source, lambda indent, body: indent + PLACEHOLDER)


def blank_solutions(source: str) -> str:
    """Replace every solution block with a blank answer: `return None` in a function, `name = None` at top level.

    Used by tests to show that each check cell fails on a blank answer.
    """
    def blank(indent: str, body: str) -> str:
        if indent:
            return indent + "return None"
        names = []
        for node in ast.parse(body).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)] if target else []
        return "\n".join(f"{n} = None" for n in dict.fromkeys(names)) or "pass"
    return _replace_blocks(source, blank)


def source_of(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


@dataclass
class Exercise:
    notebook: str
    index: int  # cell index of the solution cell
    solution: str  # the exercise cell's source, solution included
    check: str  # the next code cell's source


def exercises(nb: dict, name: str = "") -> list[Exercise]:
    """Every exercise of a notebook with the check cell that follows it."""
    cells = nb["cells"]
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or BEGIN not in source_of(cell):
            continue
        following = [c for c in cells[i + 1:] if c["cell_type"] == "code"]
        if not following:
            raise ValueError(f"{name}: exercise in cell {i} has no check cell after it")
        found.append(Exercise(name, i, source_of(cell), source_of(following[0])))
    return found


def imports_cell(nb: dict) -> str:
    """The first code cell (a notebook's imports)."""
    return next(source_of(c) for c in nb["cells"] if c["cell_type"] == "code")


def student_notebook(nb: dict) -> dict:
    """A copy with every solution replaced by the placeholder and all outputs cleared."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["source"] = strip_solutions(source_of(cell))
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def write_student_copies(src: Path, out_dir: Path) -> list[Path]:
    """Student copies of every notebook in `src` (a folder) or of one notebook, written into `out_dir`."""
    src, out_dir = Path(src), Path(out_dir)
    paths = sorted(src.glob("*.ipynb")) if src.is_dir() else [src]
    if not paths:
        raise ValueError(f"no notebooks found at {src}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        target = out_dir / path.name
        target.write_text(json.dumps(student_notebook(nb), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lwkit.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student copies (solutions removed, outputs cleared)")
    student.add_argument("outdir")
    student.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "notebooks"))
    args = parser.parse_args(argv)
    for path in write_student_copies(Path(args.src), Path(args.outdir)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
