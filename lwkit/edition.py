"""Language editions of the notebooks: the English notebook's code, another language's text.

    python -m lwkit.edition zh            # writes notebooks/zh/NN_name.ipynb from notebooks/NN_name.ipynb
    python -m lwkit.edition zh --check    # exit 1 if a translation is missing or stale, or a copy has drifted

A translation lives in ``notebooks/<lang>/NN_name.md``: one block per markdown cell of the English notebook,

    <!-- cell: <cell id> en-sha: <first 12 hex digits of sha256 of the English cell's source> -->
    translated markdown ...

The generated notebook copies every code cell from the English one unchanged (so running it computes exactly
what the English edition computes) and replaces each markdown cell by its translation. When an English cell
changes, its hash no longer matches and ``--check`` (run by the tests) names the cell to re-translate.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Translation", "cell_sha", "parse_translation", "translation_template", "build_edition",
           "edition_problems"]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LANGS = ("zh",)
BLOCK = re.compile(r"^<!-- cell: (?P<id>[\w-]+) en-sha: (?P<sha>[0-9a-f]{12}) -->[ \t]*$", re.M)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def cell_sha(source: str) -> str:
    """First 12 hex digits of the sha256 of a cell's source: what a translation was made from."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]


@dataclass
class Translation:
    cell_id: str
    en_sha: str
    text: str


def parse_translation(text: str, *, name: str = "translation") -> dict[str, Translation]:
    """The blocks of a translation file, by cell id."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    marks = list(BLOCK.finditer(text))
    if text.strip() and not marks:
        raise ValueError(f"{name}: no '<!-- cell: ID en-sha: SHA -->' block found")
    if marks and text[:marks[0].start()].strip():
        raise ValueError(f"{name}: text before the first cell block (line 1)")
    blocks: dict[str, Translation] = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end():end].strip("\n")
        if m["id"] in blocks:
            line = text[:m.start()].count("\n") + 1
            raise ValueError(f"{name}: cell {m['id']} translated twice (line {line})")
        blocks[m["id"]] = Translation(m["id"], m["sha"], body)
    return blocks


def translation_template(nb: dict, existing: dict[str, Translation] | None = None) -> str:
    """A translation file for `nb`: existing translations kept, new cells with their English text to replace."""
    existing = existing or {}
    parts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        src = _source(cell)
        old = existing.get(cell["id"])
        body = old.text if old is not None and old.en_sha == cell_sha(src) else src
        parts.append(f"<!-- cell: {cell['id']} en-sha: {cell_sha(src)} -->\n{body}\n")
    return "\n".join(parts)


def build_edition(nb: dict, translations: dict[str, Translation], *, name: str = "notebook") -> dict:
    """The translated notebook: code cells copied, markdown cells translated; errors name stale/missing cells."""
    if not isinstance(nb, dict) or "cells" not in nb:
        raise TypeError(f"nb must be a notebook dict, got {type(nb).__name__}")
    out = copy.deepcopy(nb)
    problems = []
    for i, cell in enumerate(out["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        t = translations.get(cell.get("id"))
        src = _source(cell)
        if t is None:
            problems.append(f"cell {i} ({cell.get('id')}): no translation")
        elif t.en_sha != cell_sha(src):
            problems.append(f"cell {i} ({cell.get('id')}): the English text changed since it was translated "
                            f"(en-sha {t.en_sha}, now {cell_sha(src)})")
        elif t.text.strip() == src.strip() and len(re.findall(r"[A-Za-z]", src)) >= 20:
            problems.append(f"cell {i} ({cell.get('id')}): still the English text (not translated yet)")
        else:
            cell["source"] = t.text
    unknown = sorted(set(translations) - {c.get("id") for c in nb["cells"]})
    if unknown:
        problems.append(f"translations for cells the notebook no longer has: {unknown}")
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems))
    for cell in out["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    out["metadata"]["language_edition"] = "zh"
    return out


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def edition_problems(lang: str = "zh", notebooks: Path = NOTEBOOKS) -> list[str]:
    """What is missing, stale or drifted in the `lang` edition (empty when it is complete and current)."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    problems = []
    folder = Path(notebooks) / lang
    for path in sorted(Path(notebooks).glob("[0-9][0-9]*_*.ipynb")):
        tr = folder / f"{path.stem}.md"
        if not tr.is_file():
            problems.append(f"{tr}: missing (python -m lwkit.edition {lang} --template writes one to translate)")
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        try:
            want = _dump(build_edition(nb, parse_translation(tr.read_text(encoding="utf-8"), name=str(tr)),
                                       name=path.name))
        except ValueError as exc:
            problems.append(str(exc))
            continue
        have = folder / path.name
        if not have.is_file() or have.read_text(encoding="utf-8") != want:
            problems.append(f"{have}: out of date with {path.name} and {tr.name} (python -m lwkit.edition {lang})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lwkit.edition", description=__doc__.splitlines()[0])
    parser.add_argument("lang", choices=LANGS)
    parser.add_argument("--check", action="store_true", help="report problems, write nothing")
    parser.add_argument("--template", action="store_true",
                        help="write/refresh NN_name.md translation files (untranslated cells in English)")
    args = parser.parse_args(argv)
    folder = NOTEBOOKS / args.lang
    if args.check:
        problems = edition_problems(args.lang)
        print("\n".join(problems) if problems else f"{args.lang} edition complete and current")
        return 1 if problems else 0
    folder.mkdir(exist_ok=True)
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        tr = folder / f"{path.stem}.md"
        existing = parse_translation(tr.read_text(encoding="utf-8"), name=str(tr)) if tr.is_file() else {}
        if args.template:
            tr.write_text(translation_template(nb, existing), encoding="utf-8")
            print(f"wrote {tr}")
            continue
        try:
            out = build_edition(nb, existing, name=path.name)
        except ValueError as exc:
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
            continue
        (folder / path.name).write_text(_dump(out), encoding="utf-8")
        print(f"wrote {folder / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
