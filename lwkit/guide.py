"""The instructor guide, written from the notebooks and the teacher's own `make run` (build/results.json).

    python -m lwkit.course guide [--results build/results.json] [--out docs/instructor-guide.md]

Per notebook: title, objectives (from its opening cell), the measured run time from results.json, the
exercises (and a time estimate for each), pitfalls (markdown lines the notebook marks `**Pitfall:**`,
`**Note:**` or `**Warning:**`), and the recorded values with their ranges. Then a 3-hour workshop plan and a
6-8-week course plan built from the reading times the notebooks state and the measured run times.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NotebookInfo", "notebook_info", "workshop_plan", "course_plan", "build_guide", "write_guide"]

ROOT = Path(__file__).resolve().parent.parent
MINUTES_PER_EXERCISE = 10  # an estimate for a learner; the guide says so
WORKSHOP_MINUTES = 180
PITFALL = re.compile(r"^\s*(?:>\s*)?\*\*(Pitfall|Note|Warning|Careful)[^*]*\*\*:?\s*(.+)$", re.I)
EXERCISE = re.compile(r"^\s*\*\*Exercise\s+(\d+)[^*]*\*\*[ \t]*(.*?)(?=^\s*\*\*Exercise\s+\d|\Z)", re.M | re.S)
READ_TIME = re.compile(r"\*\*Time:\*\*\s*about\s+(\d+)\s*min", re.I)


def _first_sentence(text: str, limit: int = 160) -> str:
    """The exercise's first sentence on one line (up to `limit` characters, cut at a word with '…')."""
    flat = " ".join(text.split())
    m = re.search(r"[.?!](\s|$)", flat)
    sentence = flat[: m.end()].strip() if m else flat
    return sentence if len(sentence) <= limit else sentence[: limit].rsplit(" ", 1)[0] + " …"


@dataclass
class NotebookInfo:
    name: str  # file stem, e.g. '00_setup_and_baselines'
    title: str
    objectives: list[str] = field(default_factory=list)
    read_minutes: int | None = None  # what the notebook's opening cell states
    run_seconds: float | None = None  # measured by the teacher's `make run`
    status: str | None = None
    exercises: list[str] = field(default_factory=list)  # first line of each exercise's markdown
    pitfalls: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    @property
    def minutes(self) -> int:
        """Class time: reading time (or 30 min) + run time + exercises."""
        read = self.read_minutes if self.read_minutes is not None else 30
        run = round((self.run_seconds or 0) / 60)
        return read + run + MINUTES_PER_EXERCISE * len(self.exercises)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_info(path: str | Path, results: dict | None = None) -> NotebookInfo:
    """What the guide says about one notebook, read from its cells and (if given) results.json."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"notebook {path} does not exist")
    if results is not None and not isinstance(results, dict):
        raise TypeError(f"results must be the dict read from results.json, got {type(results).__name__}")
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    first = _source(cells[0]) if cells else ""
    title = next((line.lstrip("# ").strip() for line in first.splitlines() if line.startswith("#")), path.stem)
    info = NotebookInfo(path.stem, title)
    in_objectives = False
    for line in first.splitlines():
        if "learning objectives" in line.lower():
            in_objectives = True
            continue
        if in_objectives:
            m = re.match(r"^\s*\d+\.\s+(.*)", line)
            if m:
                info.objectives.append(m.group(1).strip())
            elif line.strip().startswith("**"):
                in_objectives = False
            elif info.objectives and line.startswith("   "):
                info.objectives[-1] += " " + line.strip()
    m = READ_TIME.search(first)
    info.read_minutes = int(m.group(1)) if m else None
    for cell in cells:
        text = _source(cell)
        if cell.get("cell_type") != "markdown":
            continue
        for line in text.splitlines():
            p = PITFALL.match(line)
            if p:
                info.pitfalls.append(p.group(2).strip())
        for ex in EXERCISE.finditer(text):  # also where a cell opens with "## Exercises" first
            info.exercises.append(f"Exercise {ex.group(1)}: {_first_sentence(ex.group(2))}")
    if results:
        run = results.get("notebooks", {}).get(path.stem)
        if run:
            info.run_seconds, info.status = run.get("seconds"), run.get("status")
        info.records = [r for r in results.get("records", []) if r.get("notebook") == path.stem]
    return info


def workshop_plan(infos: list[NotebookInfo], minutes: int = WORKSHOP_MINUTES) -> tuple[list, list]:
    """Notebooks in teaching order that fit `minutes` with a 10-minute break each hour; the rest go home."""
    if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 30:
        raise ValueError(f"minutes must be an int >= 30, got {minutes!r}")
    plan, rest, clock = [], [], 0
    for info in infos:
        # Workshop pace: read at half the stated time (the leader presents), one exercise per notebook.
        read = (info.read_minutes or 30) // 2
        need = read + round((info.run_seconds or 60) / 60) + MINUTES_PER_EXERCISE
        breaks = (clock + need) // 60 - clock // 60
        if clock + need + 10 * breaks <= minutes:
            plan.append((clock, need, info))
            clock += need + 10 * breaks
        else:
            rest.append(info)
    return plan, rest


def course_plan(infos: list[NotebookInfo], weeks: int = 8) -> list[list[NotebookInfo]]:
    """Notebooks in teaching order spread over `weeks` weeks, about equal class time each week."""
    if not isinstance(weeks, int) or isinstance(weeks, bool) or not 1 <= weeks <= 52:
        raise ValueError(f"weeks must be an int in [1, 52], got {weeks!r}")
    total = sum(i.minutes for i in infos)
    per_week = total / weeks if weeks else total
    plan, week, acc = [[] for _ in range(weeks)], 0, 0.0
    for info in infos:
        if acc >= per_week * (week + 1) and week < weeks - 1:
            week += 1
        plan[week].append(info)
        acc += info.minutes
    return [w for w in plan if w]


def _fmt_seconds(s: float | None) -> str:
    return "not run yet" if s is None else f"{s:.0f} s"


def build_guide(results_path: str | Path = ROOT / "build" / "results.json",
                notebooks_dir: str | Path = ROOT / "notebooks") -> str:
    """The guide as markdown."""
    results_path, notebooks_dir = Path(results_path), Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise ValueError(f"notebooks_dir {notebooks_dir} is not a folder")
    results = None
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"results_path {results_path} is not valid JSON ({exc}); re-run `make run`") from exc
    infos = [notebook_info(p, results) for p in sorted(notebooks_dir.glob("[0-9][0-9]*_*.ipynb"))]
    if not infos:
        raise ValueError(f"no notebooks (NN_name.ipynb) in {notebooks_dir}")
    env = (results or {}).get("environment", {})
    out = ["# Instructor guide", "",
           f"{GENERATED} from the notebooks and "
           f"`{results_path.name}`{' of your own `make run`' if results else ' (not found: run `make run` first)'}; "
           "re-run it after `make run` on the machine you will teach on, so the times below are yours._", ""]
    if env:
        out += [f"Measured on: {env}", ""]
    total_run = sum(i.run_seconds or 0 for i in infos)
    out += ["## Before class: the dress rehearsal", "",
            "1. `make run` on the teaching machine (or one like the learners'): it installs everything, executes "
            "every notebook and checks every recorded value against its range. A non-zero exit names the notebook "
            "or value that failed.",
            f"2. `python -m lwkit.course guide` regenerates this guide with your timings (all notebooks together: "
            f"{total_run / 60:.1f} min measured).",
            "3. `make student` writes learner copies to `student/` (solutions replaced by `raise "
            "NotImplementedError`, outputs cleared). It never overwrites a file that exists: a learner's work is "
            "safe; `python -m lwkit.course student student --force` overwrites on purpose.",
            "4. Workshop room without network: build the offline kit in advance (see the README).", "",
            "## GPU or cloud", "",
            "Every notebook runs on the CPU by default, so a room gets the same numbers. On a machine with CUDA "
            "(or Colab), `lwkit.train.fit` trains on the GPU automatically; latency tables measure the device of "
            "the example input. Keep the CPU tables for the lesson on speed: the kernels and crossovers they show "
            "are the CPU's.", ""]
    plan, rest = workshop_plan(infos)
    out += [f"## A 3-hour workshop ({WORKSHOP_MINUTES} min)", "",
            "Pace: the leader presents each notebook at about half its stated reading time, the room runs it "
            f"(measured run time) and does one exercise (~{MINUTES_PER_EXERCISE} min); a 10-minute break each hour.",
            "", "| start | minutes | notebook |", "|---|---|---|"]
    for start, need, info in plan:
        out.append(f"| {start // 60}:{start % 60:02d} | {need} | {info.title} |")
    if rest:
        out += ["", "Take-home (does not fit): " + ", ".join(i.title for i in rest)]
    weeks = course_plan(infos, 8)
    article = "An" if len(weeks) in (8, 11, 18) else "A"
    out += ["", f"## {article} {len(weeks)}-week course", "",
            "About equal class time per week, from the notebooks' stated reading times, measured run times and "
            f"{MINUTES_PER_EXERCISE} minutes per exercise.", "",
            "| week | notebooks | class time (min) |", "|---|---|---|"]
    for k, week in enumerate(weeks, 1):
        out.append(f"| {k} | {'; '.join(i.title for i in week)} | {sum(i.minutes for i in week)} |")
    out += ["", "## Notebook by notebook", ""]
    for info in infos:
        out += [f"### {info.title}", "",
                f"- **Measured run time:** {_fmt_seconds(info.run_seconds)}"
                + (f" ({info.status})" if info.status else ""),
                f"- **Reading time stated in the notebook:** "
                f"{info.read_minutes if info.read_minutes is not None else 'not stated'} min"]
        if info.objectives:
            out += ["- **Objectives:**"] + [f"  {k}. {o}" for k, o in enumerate(info.objectives, 1)]
        if info.exercises:
            out += [f"- **Exercises** (~{MINUTES_PER_EXERCISE} min each, an estimate):"]
            out += [f"  - {e}" for e in info.exercises]
        if info.pitfalls:
            out += ["- **Pitfalls the notebook warns about:**"] + [f"  - {p}" for p in info.pitfalls]
        if info.records:
            out += ["- **Recorded values (your run):**"]
            for r in info.records:
                rng = f" expected [{r['expected'][0]:.4g}, {r['expected'][1]:.4g}]" if r.get("expected") else ""
                ok = "" if r.get("ok", True) else " — OUT OF RANGE"
                out.append(f"  - `{r['key']}` = {r['value']:.4g}{rng}{ok}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


GENERATED = "_Generated by `python -m lwkit.course guide`"


def write_guide(out: str | Path = ROOT / "docs" / "instructor-guide.md", *,
                results_path: str | Path = ROOT / "build" / "results.json",
                notebooks_dir: str | Path = ROOT / "notebooks", force: bool = False) -> Path:
    """Write the guide to `out`, replacing an earlier generated guide but never a file someone wrote."""
    out = Path(out)
    if out.exists() and not out.is_file():
        raise ValueError(f"out {out} exists and is not a file")
    if out.is_file() and GENERATED not in out.read_text(encoding="utf-8", errors="replace") and not force:
        raise ValueError(f"out {out} exists and was not generated by this command; choose another path or "
                         "pass --force to replace it")
    text = build_guide(results_path, notebooks_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
