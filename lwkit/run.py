"""Execute the course notebooks headless and print the results table.

    python -m lwkit.run                          # every notebook, workshop defaults
    python -m lwkit.run 00 02 -p EPOCHS 10       # some notebooks, with a parameter changed
    python -m lwkit.run -p FULL True             # full mode where a notebook has FULL

Executed copies go to build/ (or --out); build/results.json holds each notebook's seconds and status and
every number the notebooks recorded with lwkit.report.record. Exit status 1 if a notebook failed or a
recorded value fell outside its expected range: a teacher's rehearsal before class.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lwkit import report

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def find_notebooks(names: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Notebooks by path, full name or prefix ('00'); all of `folder` in teaching order by default."""
    everything = sorted(p for p in folder.glob("*.ipynb"))
    if not names:
        return everything
    found = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.exists():
            found.append(path)
            continue
        matches = [p for p in everything if p.stem == name or p.stem.startswith(name)]
        if len(matches) != 1:
            choices = ", ".join(p.stem for p in everything)
            raise ValueError(f"notebook {name!r} matches {len(matches)} notebooks; choose one of: {choices}")
        found.append(matches[0])
    return found


def parse_value(text: str):
    """'10' -> 10, '0.5' -> 0.5, 'True' -> True, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_notebook(path: Path, out_dir: Path, parameters: dict, records_path: Path, timeout: int) -> dict:
    """Execute one notebook with papermill; returns {'seconds', 'status'[, 'error']}."""
    import papermill as pm

    known = pm.inspect_notebook(str(path))
    unknown = set(parameters) - set(known)
    # A -p that a notebook doesn't have is skipped for that notebook (it may belong to another one).
    params = {k: v for k, v in parameters.items() if k not in unknown}
    os.environ[report.RECORDS_ENV] = str(records_path)
    os.environ[report.NOTEBOOK_ENV] = path.stem
    os.environ["LWKIT_HEADLESS"] = "1"
    start = time.perf_counter()
    result = {"status": "ok"}
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    except Exception as exc:  # papermill's PapermillExecutionError carries the cell's traceback summary
        result = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def results_table(results: dict) -> str:
    """Plain-text table: notebook, key, value, expected range, ok, seconds."""
    rows = [("notebook", "key", "value", "expected", "ok", "seconds")]
    for name, nb in results["notebooks"].items():
        recs = [r for r in results["records"] if r["notebook"] == name]
        status = "ok" if nb["status"] == "ok" else "FAILED"
        rows.append((name, "(notebook run)", "", "", status, f"{nb['seconds']:.1f}"))
        for r in recs:
            rng = f"[{r['expected'][0]:.4g}, {r['expected'][1]:.4g}]" if r["expected"] else "-"
            rows.append(("", r["key"], f"{r['value']:.4g}", rng, "ok" if r["ok"] else "OUT OF RANGE", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lwkit.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook paths, names or prefixes (default: all)")
    parser.add_argument("--out", default=str(ROOT / "build"), help="folder for executed copies and results.json")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a value of the notebooks' parameters cell")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    try:
        paths = find_notebooks(args.notebooks)
    except ValueError as exc:
        parser.error(str(exc))
    if not paths:
        parser.error(f"no notebooks found in {NOTEBOOKS}")
    parameters = {name: parse_value(value) for name, value in args.parameter}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / f".records-{os.getpid()}.jsonl"  # one file per run: parallel runs don't mix
    records_path.unlink(missing_ok=True)

    results = {"notebooks": {}, "records": []}
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        nb = run_notebook(path, out_dir, parameters, records_path, args.timeout)
        results["notebooks"][path.stem] = nb
        print(f"  {nb['status']} in {nb['seconds']:.1f} s" + (f"\n  {nb['error']}" if "error" in nb else ""),
              flush=True)
    results["records"] = [asdict(r) for r in report.read_records(records_path)]
    records_path.unlink(missing_ok=True)
    results["parameters"] = parameters
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(results_table(results))
    failed = [n for n, nb in results["notebooks"].items() if nb["status"] != "ok"]
    outside = [r["key"] for r in results["records"] if not r["ok"]]
    print(f"\n{len(paths) - len(failed)}/{len(paths)} notebooks ok, {len(results['records']) - len(outside)}/"
          f"{len(results['records'])} recorded values in range; results in {out_dir / 'results.json'}")
    return 1 if failed or outside else 0


if __name__ == "__main__":
    sys.exit(main())
