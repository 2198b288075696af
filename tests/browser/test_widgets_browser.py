"""Every widget of every notebook, driven in a real JupyterLab in headless Chromium.

For each notebook that shows a widget: run all cells, then move each slider and toggle each control of each
widget; every update must re-render the output and leave exactly one figure, no traceback, no stray repr.
Screenshots go to build/browser/. `test_the_checker_catches_planted_defects` shows that the checker fails on
a double draw, a traceback and a `<function ...>` repr planted in a scratch notebook.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab import READ_CELL_OUTPUTS, READ_WIDGET_OUTPUT, OutputState, output_problems  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "browser"
WIDGET_CALLS = ("interactive_or_static(", "browse_predictions(", "bit_width_explorer(", "interact(", "explorer(")
# Notebooks whose widgets have not yet been driven in the browser by this suite (added in the session that
# wrote them, without time left to run them here): listed, with the reason, rather than silently skipped.
NOT_YET_DRIVEN: dict[str, str] = {}


def widget_notebooks() -> list[str]:
    names = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        if any(call in text for call in WIDGET_CALLS):
            names.append(nb.name)
    return names


def test_every_widget_notebook_is_driven_or_listed_with_a_reason():
    every = widget_notebooks()
    assert set(NOT_YET_DRIVEN) <= set(every), set(NOT_YET_DRIVEN) - set(every)
    assert all(reason.strip() for reason in NOT_YET_DRIVEN.values())


def wait_until(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def open_notebook(page, lab, name: str):
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")  # reset: only this notebook open
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_until(lambda: lab.notebook_idle(name), 90, f"the kernel of {name} to start")
    time.sleep(1)


def run_all(page, lab, name: str, timeout: float):
    def started():
        prompts = page.evaluate("() => [...document.querySelectorAll('.jp-InputPrompt')].map(e => e.innerText)")
        return any(any(ch.isdigit() or ch == "*" for ch in p) for p in prompts)

    for attempt in range(3):  # a click that lands while JupyterLab is still settling can be lost: retry it
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            wait_until(started, 15, f"{name} to start running (attempt {attempt + 1})")
            break
        except AssertionError:
            page.keyboard.press("Escape")
    else:
        raise AssertionError(f"Run All Cells did not start {name} after 3 attempts")
    time.sleep(2)

    def finished():
        prompts = page.evaluate("() => [...document.querySelectorAll('.jp-InputPrompt')].map(e => e.innerText)")
        return lab.notebook_idle(name) and not any("*" in p for p in prompts)

    wait_until(finished, timeout, "all cells to finish", every=1.0)
    time.sleep(1.5)  # let the last widget views render


def cell_problems(page, nb_path: Path) -> list[str]:
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    problems = []
    for out in page.evaluate(READ_CELL_OUTPUTS):
        i = out["index"]
        tags = code[i].metadata.get("tags", []) if i < len(code) else []
        if "raises-exception" in tags:
            continue
        for text in out["errors"]:
            problems.append(f"code cell {i}: stderr/traceback {text[:300]!r}")
        for text in out["texts"]:
            if any(s in text for s in ("<function ", "interactive(children=")):
                problems.append(f"code cell {i}: stray repr {text[:120]!r}")
    return problems


def controls(widget):
    """(kind, locator) for each control of one interact widget."""
    found = []
    for kind, selector in (("slider", ".noUi-handle"), ("checkbox", ".widget-checkbox input[type=checkbox]"),
                           ("dropdown", ".widget-dropdown select"), ("toggle", ".widget-toggle-button"),
                           ("multiselect", ".widget-select-multiple select")):
        loc = widget.locator(selector)
        for j in range(loc.count()):
            found.append((kind, loc.nth(j)))
    return found


def operate(page, kind: str, control) -> None:
    if kind == "slider":  # one step right, or left when the handle already sits at its maximum
        control.focus()
        at_max = control.get_attribute("aria-valuenow") == control.get_attribute("aria-valuemax")
        page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")
    elif kind == "checkbox":
        control.click()
    elif kind == "dropdown":
        options = control.locator("option")
        current = control.input_value()
        values = [options.nth(k).get_attribute("value") for k in range(options.count())]
        other = next((v for v in values if v != current), current)
        control.select_option(other)
    elif kind == "toggle":
        control.click()
    elif kind == "multiselect":  # keep only the first option selected
        control.select_option([control.locator("option").nth(0).get_attribute("value")])


def read_state(widget) -> OutputState:
    raw = widget.evaluate(READ_WIDGET_OUTPUT)
    return OutputState(raw["figures"], raw["errors"], raw["texts"])


def exercise_widgets(page, lab, name: str, expect_figures: int = 1) -> tuple[list[str], int]:
    """Operate every control of every interact widget; return (problems, updates made)."""
    problems, updates = [], 0
    stem = Path(name).stem
    widgets = page.locator(".widget-interact")
    for w in range(widgets.count()):
        widget = widgets.nth(w)
        widget.scroll_into_view_if_needed()
        for c, (kind, control) in enumerate(controls(widget)):
            widget.evaluate("(el) => el.querySelectorAll('.widget-output *').forEach(n => n.dataset.stale = '1')")
            operate(page, kind, control)
            try:
                wait_until(lambda wd=widget: wd.evaluate(
                    "(el) => [...el.querySelectorAll('.widget-output *')].some(n => !n.dataset.stale)"),
                    60, f"widget {w} to re-render after its {kind} {c} moved")
                wait_until(lambda: lab.notebook_idle(name), 120, "the kernel to finish the update")
                time.sleep(1.0)
            except AssertionError as e:
                problems.append(f"widget {w}, {kind} {c}: {e}")
                continue
            updates += 1
            state = read_state(widget)
            problems += [f"widget {w}, {kind} {c}: {p}" for p in output_problems(state, expect_figures)]
            widget.screenshot(path=str(SHOTS / f"{stem}-widget{w}-{kind}{c}.png"))
    return problems, updates


@pytest.mark.parametrize("name", [n for n in widget_notebooks() if n not in NOT_YET_DRIVEN])
def test_widgets_in_jupyterlab(name, lab, lab_root, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_notebook(page, lab, name)
        run_all(page, lab, name, timeout=600)
        page.screenshot(path=str(SHOTS / f"{Path(name).stem}.png"), full_page=True)
        problems = cell_problems(page, lab_root / name)
        # The course's settings override (jupyter/overrides.json, installed by `make setup`) turns the news off.
        assert page.get_by_text("official Jupyter news").count() == 0, "JupyterLab's news prompt is showing"
        assert page.locator(".widget-interact").count() > 0, f"{name}: no interactive widget rendered"
        widget_problems, updates = exercise_widgets(page, lab, name)
        problems += widget_problems
        assert updates > 0, f"{name}: no control could be operated"
        assert not problems, f"{name}:\n" + "\n".join(problems)
    finally:
        page.close()
        lab.shutdown(name)


PLANTED = {
    # A draw function that shows its figure and returns it: interact displays the return value again.
    "double_draw": ("from ipywidgets import interact, IntSlider\nimport matplotlib.pyplot as plt\n"
                    "def draw(x=1):\n    fig = plt.figure(figsize=(2, 2)); plt.plot([0, x]); plt.show()\n"
                    "    return fig\n"
                    "interact(draw, x=IntSlider(value=1, min=0, max=3));"),
    # A draw function that fails once the slider moves.
    "traceback": ("from ipywidgets import interact, IntSlider\nimport matplotlib.pyplot as plt\n"
                  "def draw(x=1):\n    plt.figure(figsize=(2, 2)); plt.plot([0, x]); plt.show()\n"
                  "    if x != 1:\n        raise ValueError('planted failure')\n"
                  "interact(draw, x=IntSlider(value=1, min=0, max=3))"),
}


def test_the_checker_catches_planted_defects(lab, lab_root, browser):
    found = {}
    for key, source in PLANTED.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, lab_root / f"planted_{key}.ipynb")
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        try:
            name = f"planted_{key}.ipynb"
            open_notebook(page, lab, name)
            run_all(page, lab, name, timeout=120)
            problems, _ = exercise_widgets(page, lab, name)
            if key == "traceback":
                problems += cell_problems(page, lab_root / f"planted_{key}.ipynb")
            found[key] = problems
        finally:
            page.close()
            lab.shutdown(name)
    assert any("2 figures" in p for p in found["double_draw"]), found["double_draw"]
    assert any("error" in p.lower() or "traceback" in p.lower() for p in found["traceback"]), found["traceback"]
    # A cell ending in interact(...) without ';' shows the function's repr under the widget.
    assert any("stray repr" in p for p in found["traceback"]), found["traceback"]


def test_output_checker_unit():
    assert output_problems(OutputState(1, [], [])) == []
    assert output_problems(OutputState(2, [], []))
    assert output_problems(OutputState(0, [], []))
    assert output_problems(OutputState(1, ["Traceback (most recent call last)"], []))
    assert output_problems(OutputState(1, [], ["<function draw at 0x7f>"]))
