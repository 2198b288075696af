"""The 中文 edition: generated from the English notebooks plus translated markdown, so code cannot drift."""

import json
from pathlib import Path

import pytest

from lwkit import edition

ROOT = Path(__file__).resolve().parent.parent
NB = {"cells": [{"cell_type": "markdown", "id": "m1", "metadata": {}, "source": "# Title\n\nSome English prose here."},
                {"cell_type": "code", "id": "c1", "metadata": {}, "source": "x = 1\nprint(x)", "outputs": [],
                 "execution_count": None}],
      "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def block(cell_id, source, text):
    return f"<!-- cell: {cell_id} en-sha: {edition.cell_sha(source)} -->\n{text}\n"


def test_build_edition_translates_markdown_and_copies_code():
    tr = edition.parse_translation(block("m1", NB["cells"][0]["source"], "# 标题\n\n一些中文说明。"))
    out = edition.build_edition(NB, tr)
    assert out["cells"][0]["source"] == "# 标题\n\n一些中文说明。"
    assert out["cells"][1]["source"] == NB["cells"][1]["source"]
    assert NB["cells"][0]["source"].startswith("# Title")  # the English notebook is not modified


def test_stale_translation_names_the_cell():
    tr = edition.parse_translation(block("m1", "an older English text", "旧的翻译"))
    with pytest.raises(ValueError, match=r"cell 0 \(m1\): the English text changed"):
        edition.build_edition(NB, tr, name="demo.ipynb")


def test_missing_and_untranslated_cells_are_errors():
    with pytest.raises(ValueError, match="no translation"):
        edition.build_edition(NB, {})
    same = edition.parse_translation(block("m1", NB["cells"][0]["source"], NB["cells"][0]["source"]))
    with pytest.raises(ValueError, match="not translated yet"):
        edition.build_edition(NB, same)


def test_parse_translation_rejects_malformed_files():
    with pytest.raises(ValueError, match="no '<!-- cell"):
        edition.parse_translation("just text")
    with pytest.raises(ValueError, match="translated twice"):
        edition.parse_translation(block("m1", "a", "x") + block("m1", "a", "y"))
    with pytest.raises(TypeError, match="text must be a str"):
        edition.parse_translation(3)


def test_template_keeps_existing_translations():
    tr = edition.parse_translation(block("m1", NB["cells"][0]["source"], "# 标题"))
    text = edition.translation_template(NB, tr)
    assert "# 标题" in text and edition.cell_sha(NB["cells"][0]["source"]) in text


def test_zh_edition_is_complete_and_its_code_is_the_english_code():
    problems = edition.edition_problems("zh")
    assert not problems, "\n".join(problems)
    for en in sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb")):
        zh = ROOT / "notebooks" / "zh" / en.name
        a, b = json.loads(en.read_text()), json.loads(zh.read_text())
        code = [(c["source"], c.get("metadata", {}).get("tags")) for c in a["cells"] if c["cell_type"] == "code"]
        assert code == [(c["source"], c.get("metadata", {}).get("tags")) for c in b["cells"]
                        if c["cell_type"] == "code"], f"{zh.name}: code differs from the English edition"
        assert [c["cell_type"] for c in a["cells"]] == [c["cell_type"] for c in b["cells"]]


def test_zh_notebooks_keep_the_summary_and_exercises_headings():
    """Tools that find a notebook's Summary and Exercises (the guide, student copies) look for these headings."""
    for zh in sorted((ROOT / "notebooks" / "zh").glob("[0-9][0-9]*_*.ipynb")):
        heads = [line for c in json.loads(zh.read_text())["cells"] if c["cell_type"] == "markdown"
                 for line in "".join(c["source"]).splitlines() if line.startswith("## ")]
        assert any(h.startswith("## Summary") for h in heads), f"{zh.name}: no '## Summary' heading"
        assert any(h.startswith("## Exercises") for h in heads), f"{zh.name}: no '## Exercises' heading"
