"""Exercises, solutions and student copies.

A solution sits between `### BEGIN SOLUTION` and `### END SOLUTION` (the nbgrader convention); the next
code cell checks it. An exercise cell may use only names from the notebook's first code cell (its
imports), so that tests can run each exercise and its check on their own.

    python -m lwkit.course student OUTDIR          # student copies of every notebook
    python -m lwkit.course student OUTDIR --force  # ... replacing copies that are already there

Markers. A marker is a line that is exactly `### BEGIN SOLUTION` or `### END SOLUTION`, optionally indented
with spaces or tabs (solutions sit inside functions), with nothing after it. One parser (`solution_blocks`)
finds the blocks for stripping, blanking and the balance check. A line that mentions a marker in any other
way (`#### BEGIN SOLUTION`, a trailing blank, lowercase, `END SOLUTIONS`, text before it on the line) is a
`MarkerError`, as are nested, unbalanced or END-before-BEGIN markers: a typo must never ship an answer.
Markdown and raw cells are parsed the same way: a block there becomes "_Write your answer here._".
As a last check, no line of a student copy may contain the text "SOLUTION".

Student copies never replace a file that exists (a learner may have edited it) unless `force=True`
(`--force`), and never go into the source folder, even with `force`. Every notebook is checked before
the first file is written, and each file is written atomically (a temporary file, then `os.replace`).
The command exits 0 when every copy was written, 1 when existing copies were kept (the missing ones are
written), 2 on an error (bad markers, an unreadable notebook, a bad folder: then nothing is written).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import os
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BEGIN", "END", "PLACEHOLDER", "MARKDOWN_PLACEHOLDER", "MarkerError", "ExistingCopiesError", "SolutionBlock",
    "solution_blocks", "strip_solutions", "blank_solutions", "source_of", "Exercise", "exercises", "imports_cell",
    "student_notebook", "write_student_copies", "main",
]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
PLACEHOLDER = 'raise NotImplementedError("Exercise: write your solution here")'
MARKDOWN_PLACEHOLDER = "_Write your answer here._"
_MARKER = re.compile(r"([ \t]*)(### BEGIN SOLUTION|### END SOLUTION)")  # used with fullmatch: nothing else
# Anything that reads like a marker: any case, any number of '#', '_' or '-' between the words, 'SOLUTIONS'.
_LOOKALIKE = re.compile(r"\b(begin|end)[ \t_-]*solution", re.IGNORECASE)


class MarkerError(ValueError):
    """A malformed or unbalanced solution marker; the message names the notebook, cell index and line."""

    def __init__(self, message: str, *, notebook: str = "", cell: int | None = None, line: int | None = None):
        self.notebook, self.cell, self.line = notebook, cell, line
        where = [f"notebook {notebook}" if notebook else "", f"cell index {cell}" if cell is not None else "",
                 f"line {line}" if line is not None else ""]
        where = ", ".join(w for w in where if w)
        super().__init__(f"{where}: {message}" if where else message)


class ExistingCopiesError(FileExistsError):
    """Student copies that already exist were left alone; `written` lists the missing ones that were written."""

    def __init__(self, existing: list[Path], written: list[Path]):
        self.existing, self.written = existing, written
        names = ", ".join(p.name for p in existing)
        folder = existing[0].parent
        super().__init__(
            f"refused to overwrite {len(existing)} existing student {'copy' if len(existing) == 1 else 'copies'} "
            f"in {folder}: {names} (a learner may have edited them). "
            + (f"Wrote the {len(written)} missing one{'' if len(written) == 1 else 's'}. " if written else "")
            + "To replace them and lose any edits, re-run with --force (force=True), or choose a new folder.")


@dataclass(frozen=True)
class SolutionBlock:
    begin: int  # 0-based line index of `### BEGIN SOLUTION`
    end: int  # 0-based line index of `### END SOLUTION`
    indent: str  # the BEGIN line's indentation


def solution_blocks(source: str, *, notebook: str = "", cell: int | None = None) -> list[SolutionBlock]:
    """The solution blocks of one cell's source; raises MarkerError for any malformed or unbalanced marker."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str (a cell's source), got {type(source).__name__}")
    blocks, opened = [], None
    for i, line in enumerate(source.split("\n")):
        where = {"notebook": notebook, "cell": cell, "line": i + 1}
        marker = _MARKER.fullmatch(line)
        if marker is None:
            if _LOOKALIKE.search(line):
                raise MarkerError(f"{line!r} looks like a solution marker but is not exactly {BEGIN!r} or {END!r} "
                                  "(only indentation may come before it, nothing after it)", **where)
            continue
        indent, kind = marker.groups()
        if kind == BEGIN:
            if opened is not None:
                raise MarkerError(f"{BEGIN!r} inside the block opened at line {opened.begin + 1}; blocks cannot nest "
                                  f"(close it with {END!r} first)", **where)
            opened = SolutionBlock(i, -1, indent)
        elif opened is None:
            raise MarkerError(f"{END!r} without a {BEGIN!r} before it", **where)
        else:
            blocks.append(SolutionBlock(opened.begin, i, opened.indent))
            opened = None
    if opened is not None:
        raise MarkerError(f"{BEGIN!r} has no {END!r} after it", notebook=notebook, cell=cell, line=opened.begin + 1)
    return blocks


def _replace_blocks(source: str, make_body, notebook: str = "", cell: int | None = None) -> str:
    lines = source.split("\n") if isinstance(source, str) else None
    out, pos = [], 0
    for block in solution_blocks(source, notebook=notebook, cell=cell):
        out += lines[pos:block.begin]
        out.append(make_body(block.indent, "\n".join(lines[block.begin + 1:block.end])))
        pos = block.end + 1
    return "\n".join(out + lines[pos:])


def strip_solutions(source: str, *, notebook: str = "", cell: int | None = None,
                    placeholder: str = PLACEHOLDER) -> str:
    """Replace every solution block with a placeholder that raises NotImplementedError."""
    return _replace_blocks(source, lambda indent, body: indent + placeholder, notebook, cell)


def blank_solutions(source: str, *, notebook: str = "", cell: int | None = None) -> str:
    """Replace every solution block with a blank answer: `return None` in a function, `name = None` at top level.

    Used by tests to show that each check cell fails on a blank answer.
    """
    def blank(indent: str, body: str) -> str:
        if indent:
            return indent + "return None"
        names = []
        for node in ast.parse(textwrap.dedent(body)).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)] if target else []
        return "\n".join(f"{n} = None" for n in dict.fromkeys(names)) or "pass"
    return _replace_blocks(source, blank, notebook, cell)


def source_of(cell: dict) -> str:
    """A cell's source as one string (nbformat stores it as a string or a list of lines)."""
    if not isinstance(cell, dict):
        raise TypeError(f"cell must be a notebook cell (a dict), got {type(cell).__name__}")
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _check_notebook(nb, name: str) -> None:
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"notebook {name or '?'} is not a notebook: expected a JSON object with a 'cells' list")
    for i, cell in enumerate(nb["cells"]):
        src = cell.get("source", "") if isinstance(cell, dict) else None
        ok_source = isinstance(src, str) or (isinstance(src, list) and all(isinstance(s, str) for s in src))
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw") or not ok_source:
            raise ValueError(f"notebook {name or '?'}, cell index {i}: not a valid cell (needs cell_type code, "
                             "markdown or raw and a string or list-of-strings source)")


@dataclass
class Exercise:
    notebook: str
    index: int  # cell index of the solution cell
    solution: str  # the exercise cell's source, solution included
    check: str  # the next code cell's source


def exercises(nb: dict, name: str = "") -> list[Exercise]:
    """Every exercise of a notebook with the check cell that follows it."""
    _check_notebook(nb, name)
    cells = nb["cells"]
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or not solution_blocks(source_of(cell), notebook=name, cell=i):
            continue
        following = [c for c in cells[i + 1:] if c["cell_type"] == "code"]
        if not following:
            raise ValueError(f"{name}: exercise in cell {i} has no check cell after it")
        found.append(Exercise(name, i, source_of(cell), source_of(following[0])))
    return found


def imports_cell(nb: dict) -> str:
    """The first code cell (a notebook's imports)."""
    _check_notebook(nb, "")
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            return source_of(cell)
    raise ValueError("notebook has no code cell, so no imports cell")


def student_notebook(nb: dict, name: str = "") -> dict:
    """A copy with every solution replaced by a placeholder and all outputs cleared.

    Raises MarkerError (a ValueError) naming the cell and line of any bad marker, or of any "SOLUTION" text
    left in the copy.
    """
    _check_notebook(nb, name)
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb["cells"]):
        code = cell["cell_type"] == "code"
        cell["source"] = strip_solutions(source_of(cell), notebook=name, cell=i,
                                         placeholder=PLACEHOLDER if code else MARKDOWN_PLACEHOLDER)
        if code:
            cell["outputs"], cell["execution_count"] = [], None
    # Belt and braces: whatever the parser missed, no solution text leaves the building.
    for i, cell in enumerate(nb["cells"]):
        for n, line in enumerate(cell["source"].split("\n"), 1):
            if "SOLUTION" in line:
                raise MarkerError(f"the student copy would still contain {line.strip()!r}; remove the word "
                                  "'SOLUTION' outside solution markers", notebook=name, cell=i, line=n)
    return nb


def _load(path: Path) -> dict:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable notebook ({type(exc).__name__}: {exc}); nothing was written") \
            from exc
    _check_notebook(nb, path.name)
    return nb


def _atomic_write(target: Path, text: str) -> None:
    mode = target.stat().st_mode & 0o777 if target.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:  # KeyboardInterrupt too: never leave a half-written temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _same_folder(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # also catches case-insensitive file systems and bind mounts
    except OSError:
        return False


def write_student_copies(src: Path, out_dir: Path, *, force: bool = False) -> list[Path]:
    """Student copies of every notebook in `src` (a folder) or of one notebook, written into `out_dir`.

    Copies that exist are left alone and reported by ExistingCopiesError (after the missing ones are written)
    unless `force`. Returns the paths written.
    """
    if not isinstance(force, bool):
        raise TypeError(f"force must be True or False, got {force!r}")
    src, out_dir = Path(src), Path(out_dir)
    if src.is_dir():
        paths, src_dir = sorted(src.glob("*.ipynb")), src
    elif src.is_file() and src.suffix == ".ipynb":
        paths, src_dir = [src], src.parent
    else:
        raise ValueError(f"src must be a folder of notebooks or one .ipynb file, got {str(src)!r} "
                         f"({'not a notebook' if src.exists() else 'it does not exist'})")
    if not paths:
        raise ValueError(f"no notebooks (*.ipynb) found in {src}")
    # 1) where the copies go: a folder, and never the teacher's own
    for folder in (out_dir, *out_dir.parents):
        if os.path.lexists(folder):
            if not folder.is_dir():
                raise ValueError(f"out_dir {str(out_dir)!r}: {str(folder)!r} exists and is not a folder; "
                                 "choose a folder for the student copies")
            break
    if _same_folder(out_dir, src_dir):
        raise ValueError(f"out_dir {str(out_dir)!r} is the source folder {str(src_dir)!r}: the student copies "
                         "would replace the teacher's notebooks and their solutions (refused even with --force). "
                         "Choose another folder, e.g. student/")
    # 2) every notebook parses and strips cleanly before the first file is written
    copies = {out_dir / p.name: json.dumps(student_notebook(_load(p), p.name), indent=1, ensure_ascii=False) + "\n"
              for p in paths}
    # 3) never replace a copy a learner may have edited (unless forced), never write through a folder
    existing = [t for t in copies if os.path.lexists(t)]
    folders = [t for t in existing if t.is_dir() and not t.is_symlink()]
    if folders:
        raise ValueError(f"{', '.join(map(str, folders))} exist(s) as folders where student copies should go")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for target, text in copies.items():
        if force or target not in existing:
            _atomic_write(target, text)
            written.append(target)
    if existing and not force:
        raise ExistingCopiesError(existing, written)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lwkit.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student copies (solutions removed, outputs cleared)")
    student.add_argument("outdir")
    student.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "notebooks"),
                         help="notebooks folder or one notebook (default: the course's notebooks/)")
    student.add_argument("--force", action="store_true",
                         help="overwrite student copies that already exist (a learner's edits in them are lost)")
    root = Path(__file__).resolve().parent.parent
    guide_cmd = sub.add_parser("guide", help="write the instructor guide from the notebooks and build/results.json")
    guide_cmd.add_argument("--results", default=str(root / "build" / "results.json"))
    guide_cmd.add_argument("--out", default=str(root / "docs" / "instructor-guide.md"))
    guide_cmd.add_argument("--force", action="store_true", help="replace an --out file this command did not write")
    args = parser.parse_args(argv)
    if args.command == "guide":
        from lwkit import guide

        try:
            path = guide.write_guide(args.out, results_path=args.results, force=args.force)
        except (ValueError, OSError) as exc:
            print(f"python -m lwkit.course: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
        return 0
    try:
        written = write_student_copies(Path(args.src), Path(args.outdir), force=args.force)
    except ExistingCopiesError as exc:
        for path in exc.written:
            print(f"wrote {path}")
        print(f"python -m lwkit.course: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"python -m lwkit.course: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
