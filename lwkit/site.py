"""A static HTML site of the course, built offline from the executed notebooks in build/.

    python -m lwkit.site [--build build] [--out build/site]      (what `make site` runs after `make run`)

One page per executed notebook (nbconvert's HTML exporter, figures embedded), solutions folded behind a
"show solution" toggle (an HTML <details> element: no JavaScript needed), plus a contents page, the glossary
and the instructor guide. Nothing is downloaded to build it; a page that contains formulas loads MathJax
from its usual address when viewed online and shows the TeX source offline.
"""

from __future__ import annotations

import argparse
import copy
import html
import shutil
import sys
from pathlib import Path

__all__ = ["fold_solutions", "render_markdown", "build_site"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}
code,pre{background:#f6f6f6}pre{padding:.5rem;overflow-x:auto}
</style>"""


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def fold_solutions(nb: dict) -> dict:
    """A copy of `nb` where each code cell holding a solution becomes a folded <details> block."""
    if not isinstance(nb, dict) or "cells" not in nb:
        raise TypeError(f"nb must be a notebook dict with 'cells', got {type(nb).__name__}")
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb["cells"]):
        src = _source(cell)
        if cell.get("cell_type") == "code" and BEGIN in src:
            body = html.escape(src)
            nb["cells"][i] = {"cell_type": "markdown", "metadata": {}, "id": cell.get("id", f"solution-{i}"),
                              "source": f"<details><summary><b>Show solution</b></summary>\n\n<pre><code>{body}"
                                        "</code></pre>\n\n</details>\n"}
    return nb


def render_markdown(text: str, title: str) -> str:
    """A standalone HTML page from markdown text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    import mistune

    body = mistune.create_markdown(plugins=["table"])(text)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
            f"</head><body><p><a href='index.html'>← contents</a></p>{body}</body></html>\n")


def _title(nb: dict, default: str) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in _source(cell).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return default


def build_site(build: str | Path = ROOT / "build", out: str | Path | None = None) -> Path:
    """Write the site to `out` (default build/site) from the executed notebooks in `build`; returns index.html."""
    import nbformat
    from nbconvert import HTMLExporter

    build = Path(build)
    out = Path(out) if out is not None else build / "site"
    notebooks = sorted(build.glob("[0-9][0-9]*_*.ipynb"))
    if not notebooks:
        raise ValueError(f"build {build} holds no executed notebooks (NN_name.ipynb): run `make run` first")
    if out.resolve() == ROOT.resolve() or out.resolve() == (ROOT / "notebooks").resolve():
        raise ValueError(f"out {out} would write into the course's sources; choose a folder under build/")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    entries = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)  # sources as strings
        title = _title(nb, path.stem)
        folded = nbformat.from_dict(fold_solutions(nb))
        body, _ = exporter.from_notebook_node(folded, resources={"metadata": {"name": title}})
        (out / f"{path.stem}.html").write_text(body, encoding="utf-8")
        entries.append((path.stem, title))
    extras = []
    for name, md in (("glossary", ROOT / "docs" / "glossary.md"), ("instructor-guide", ROOT / "docs" /
                                                                    "instructor-guide.md")):
        if md.is_file():
            (out / f"{name}.html").write_text(render_markdown(md.read_text(encoding="utf-8"), name), encoding="utf-8")
            extras.append(name)
    pareto = Path(build) / "pareto.html"  # the static Pareto explorer `make run` draws from build/variants.json
    if pareto.is_file():
        shutil.copyfile(pareto, out / "pareto.html")
        extras.append("pareto")
    items = "\n".join(f"<li><a href='{stem}.html'>{html.escape(title)}</a></li>" for stem, title in entries)
    labels = {"pareto": "The course's variants: Pareto explorer"}
    more = "\n".join(f"<li><a href='{n}.html'>{labels.get(n, n.replace('-', ' ').capitalize())}</a></li>"
                     for n in extras)
    index = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lwkit course</title>{STYLE}</head><body>"
             "<h1>lwkit — a hands-on course in model compression (轻量化)</h1>"
             "<p>The executed notebooks of your last <code>make run</code>. Solutions are folded: click "
             "<b>Show solution</b> under an exercise.</p>"
             f"<h2>Notebooks</h2><ol>{items}</ol><h2>For learners and teachers</h2><ul>{more}</ul></body></html>\n")
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lwkit.site", description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=str(ROOT / "build"), help="folder with the executed notebooks")
    parser.add_argument("--out", default=None, help="output folder (default: BUILD/site)")
    args = parser.parse_args(argv)
    try:
        index = build_site(args.build, args.out)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"site written: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
