"""The Pareto explorer: every variant the course produced, accuracy against size and against latency.

A variant is on the **Pareto front** when no other variant is at least as accurate *and* at least as cheap
(smaller, or faster), and strictly better in one of the two. The front is the menu of sensible choices:
anything off it is beaten by something on it.

    variants = course_variants()                          # recorded by notebooks 02-10 (lwkit.report)
    front = pareto_front([v.accuracy for v in variants], [v.size_bytes for v in variants])
    export_html(variants, "build/pareto.html")            # a static page: inline SVG, no network
    explorer(variants)                                    # ipywidgets: technique filters, pick a variant
"""

from __future__ import annotations

import io
import math
import os
from html import escape
from pathlib import Path

from lwkit import report

__all__ = ["AXES", "PALETTE", "MARKERS", "pareto_front", "course_variants", "plot", "export_html", "explorer"]

# x axes the explorer can draw: Variant field -> axis label
AXES = {"size_bytes": "size on disk (KB, log scale)", "latency_ms": "measured latency (ms, log scale)",
        "macs": "MACs per input (log scale)"}
# Okabe-Ito, one colour and one marker per technique (readable in grey and for colour-blind readers)
PALETTE = dict(zip(report.TECHNIQUES, ("#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2",
                                        "#D55E00", "#F0E442", "#999999")))
MARKERS = dict(zip(report.TECHNIQUES, ("o", "s", "^", "D", "v", "P", "X", "*", "h")))


def pareto_front(accuracy, cost) -> list[int]:
    """Indices of the points no other point dominates (accuracy higher is better, cost lower is better).

    Point j dominates i when accuracy[j] >= accuracy[i] and cost[j] <= cost[i], one of them strictly.
    Returned sorted by cost. Exact duplicates are all kept.
    """
    acc, cst = _numbers(accuracy, "accuracy"), _numbers(cost, "cost")
    if len(acc) != len(cst):
        raise ValueError(f"accuracy and cost must have the same length, got {len(acc)} and {len(cst)}")
    front = []
    for i in range(len(acc)):
        dominated = any(acc[j] >= acc[i] and cst[j] <= cst[i] and (acc[j] > acc[i] or cst[j] < cst[i])
                        for j in range(len(acc)))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (cst[i], -acc[i]))


def _numbers(values, name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise TypeError(f"{name} must hold numbers, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{name} must hold finite numbers, got {v}")
        out.append(v)
    return out


def course_variants(path: str | Path | None = None) -> list[report.Variant]:
    """The course's variants: `path` if given; else this run's (LWKIT_VARIANTS) plus, for notebooks this run
    has not reached, the last run's build/variants.json next to it (or the repository's build/)."""
    if path is not None:
        return report.read_variants(path)
    live_path = os.environ.get(report.VARIANTS_ENV)
    live = report.read_variants(live_path) if live_path else []
    if live_path:
        old_path = Path(live_path).parent / "variants.json"
    else:
        old_path = Path(__file__).resolve().parent.parent / "build" / "variants.json"
    here = {v.notebook for v in live} | {os.environ.get(report.NOTEBOOK_ENV, "")}
    return [v for v in report.read_variants(old_path) if v.notebook not in here] + live


def _check_variants(variants) -> list:
    if not isinstance(variants, (list, tuple)) or not all(isinstance(v, report.Variant) for v in variants):
        raise TypeError("variants must be a list of lwkit.report.Variant (from course_variants or read_variants)")
    return list(variants)


def _check_x(x: str) -> str:
    if x not in AXES:
        raise ValueError(f"x must be one of {list(AXES)}, got {x!r}")
    return x


def _xvalue(v, x: str) -> float:
    return v.size_bytes / 1024 if x == "size_bytes" else float(getattr(v, x))


def plot(variants, *, x: str = "size_bytes", ax=None, highlight: str | None = None):
    """Accuracy vs `x` for every variant, one colour and marker per technique, the Pareto front as a line."""
    import matplotlib.pyplot as plt

    variants, x = _check_variants(variants), _check_x(x)
    usable = [v for v in variants if getattr(v, x) > 0]  # a log axis can't show 0 (e.g. unmeasured MACs)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    for tech in report.TECHNIQUES:
        group = [v for v in usable if v.technique == tech]
        if group:
            ax.scatter([_xvalue(v, x) for v in group], [100 * v.accuracy for v in group], label=tech,
                       color=PALETTE[tech], marker=MARKERS[tech], s=40, edgecolor="black", linewidth=0.4, zorder=3)
    if usable:
        front = pareto_front([v.accuracy for v in usable], [getattr(v, x) for v in usable])
        ax.step([_xvalue(usable[i], x) for i in front], [100 * usable[i].accuracy for i in front], where="post",
                color="#555555", ls="--", lw=1, label="Pareto front", zorder=2)
    chosen = [v for v in usable if v.name == highlight]
    for v in chosen:
        ax.scatter([_xvalue(v, x)], [100 * v.accuracy], s=180, facecolor="none", edgecolor="black", lw=1.5,
                   zorder=4, label=f"selected: {v.name}")
    ax.set_xscale("log")
    ax.set(xlabel=AXES[x], ylabel="test accuracy (%)", title=f"Every course variant: accuracy vs {AXES[x].split(' (')[0]}")
    ax.grid(True, which="both", alpha=0.3)
    if usable:
        ax.legend(fontsize=7, loc="lower right")
    return ax


def _svg(variants, x: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        plot(variants, x=x, ax=ax)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    finally:
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prologue: the SVG sits inline in the page
    start, end = svg.find("<metadata>"), svg.find("</metadata>")
    if start >= 0 and end > start:  # matplotlib's RDF block (creator, date): not needed to draw
        svg = svg[:start] + svg[end + len("</metadata>"):]
    return svg


def export_html(variants, path: str | Path, *, overwrite: bool = False) -> Path:
    """A self-contained HTML page (inline SVG plots and a table; no scripts, no network) of `variants`.

    An existing file is replaced only with `overwrite=True`.
    """
    variants = _check_variants(variants)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {path} is a folder; give a file name such as {path / 'pareto.html'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    on_front = set()
    for x in ("size_bytes", "latency_ms"):
        idx = pareto_front([v.accuracy for v in variants], [getattr(v, x) for v in variants])
        on_front |= {(x, i) for i in idx}
    rows = []
    for i, v in sorted(enumerate(variants), key=lambda iv: -iv[1].accuracy):
        marks = " ".join(m for m, x in (("size", "size_bytes"), ("latency", "latency_ms")) if (x, i) in on_front)
        rows.append(f"<tr><td>{escape(v.name)}</td><td>{escape(v.technique)}</td><td>{escape(v.notebook)}</td>"
                    f"<td>{100 * v.accuracy:.2f}</td><td>{v.size_bytes / 1024:,.1f}</td><td>{v.macs:,}</td>"
                    f"<td>{v.latency_ms:.3g}</td><td>{v.batch}</td><td>{v.threads}</td><td>{marks}</td>"
                    f"<td><pre>{escape(v.recipe)}</pre></td></tr>")
    head = ("<tr><th>variant</th><th>technique</th><th>notebook</th><th>accuracy (%)</th><th>size (KB)</th>"
            "<th>MACs</th><th>latency (ms)</th><th>batch</th><th>threads</th><th>on front</th><th>recipe</th></tr>")
    plots = "\n".join(f"<figure>{_svg(variants, x)}</figure>" for x in ("size_bytes", "latency_ms")) if variants else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lwkit: the course's Pareto front</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 8px;text-align:left;
vertical-align:top}}tr:nth-child(even){{background:#f3f3f3}}pre{{margin:0;font-size:11px;white-space:pre-wrap}}
figure{{display:inline-block;margin:0}}</style></head><body>
<h1>Every variant of the course, and its Pareto front</h1>
<p>{len(variants)} variants from {len({v.notebook for v in variants})} notebooks. A variant is on the front
when no other is both at least as accurate and at least as small (or fast). Latencies were measured on the
machine that ran the notebooks, at the batch size and threads shown: compare them within one run.</p>
{plots}
<table>{head}{''.join(rows)}</table></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def explorer(variants) -> None:
    """ipywidgets view: filter by technique, choose the x axis, pick a variant to see its recipe.

    Without a front end (headless runs) it draws the two static plots instead. Returns None.
    """
    variants = _check_variants(variants)
    import matplotlib.pyplot as plt

    from lwkit import widgets

    techniques = [t for t in report.TECHNIQUES if any(v.technique == t for v in variants)]
    names = [v.name for v in variants]

    def draw(techniques=tuple(techniques), x="size_bytes", variant=names[0] if names else ""):
        shown = [v for v in variants if v.technique in techniques]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        plot(shown, x=x, ax=ax, highlight=variant)
        plt.show()
        for v in variants:
            if v.name == variant:
                print(f"{v.name} ({v.technique}, notebook {v.notebook or '-'}): accuracy {v.accuracy:.2%}, "
                      f"{v.size_bytes:,} bytes, {v.macs:,} MACs, {v.latency_ms:.3g} ms at batch {v.batch}, "
                      f"{v.threads} threads\nrecipe:\n{v.recipe or '(not recorded)'}")

    if not widgets.has_frontend():
        for x in ("size_bytes", "latency_ms"):
            draw(tuple(techniques), x, "")
        return None
    from ipywidgets import Dropdown, SelectMultiple

    controls = {"techniques": SelectMultiple(options=techniques, value=tuple(techniques), description="techniques"),
                "x": Dropdown(options=list(AXES), value="size_bytes", description="x axis"),
                "variant": Dropdown(options=names, value=names[0] if names else None, description="variant")}
    widgets.interactive_or_static(draw, controls, [{"x": "size_bytes"}])
    return None
