"""Execute the course notebooks headless and print the results table.

    python -m lwkit.run                          # every notebook, workshop defaults
    python -m lwkit.run 00 02 -p EPOCHS 10       # some notebooks, with a parameter changed
    python -m lwkit.run -p FULL True             # full mode where a notebook has FULL

Executed copies go to build/ (or --out); build/variants.json holds every variant the notebooks recorded with
lwkit.report.record_variant (a partial run replaces only the variants of the notebooks it ran) and
build/pareto.html the static Pareto explorer drawn from them; build/results.json holds each notebook's seconds, status and the
parameters applied to it, and every number the notebooks recorded with lwkit.report.record. Exit status 1
if a notebook failed or a recorded value fell outside its expected range: a teacher's rehearsal before
class; 2 for a usage error (nothing is run). A `-p NAME` must be in the `parameters` cell of at least one
selected notebook; it is applied to those that have it.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lwkit import report

__all__ = ["ROOT", "NOTEBOOKS", "find_notebooks", "parse_value", "notebook_parameters", "check_parameters",
           "run_notebook", "results_table", "write_variants", "main"]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def _available(folder: Path) -> str:
    names = [p.stem for p in sorted(Path(folder).glob("*.ipynb"))]
    return ", ".join(names) if names else f"none (no *.ipynb in {folder})"


def find_notebooks(names: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Notebooks by path, full name or prefix ('00'); all of `folder` in teaching order by default.

    Only `folder` itself is listed (not sub-folders such as notebooks/zh/); pass a sub-folder (with a '/')
    or a path to run those.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a folder of notebooks")
    if isinstance(names, str):
        raise TypeError(f"names must be a list of notebook names, got the string {names!r}")
    everything = sorted(folder.glob("*.ipynb"))
    if not names:
        return everything
    found = []
    for name in names:
        if not isinstance(name, (str, os.PathLike)):
            raise TypeError(f"each notebook name must be a str or path, got {name!r}")
        name = os.fspath(name)
        path = Path(name)
        if path.suffix == ".ipynb" or os.sep in name or "/" in name:  # a path, not a name
            if path.is_dir():  # e.g. notebooks/zh/
                if not list(path.glob("*.ipynb")):
                    raise ValueError(f"folder {name!r} holds no notebooks (*.ipynb)")
                found += sorted(path.glob("*.ipynb"))
                continue
            if not path.is_file():
                raise ValueError(f"notebook file {name!r} does not exist; available notebooks in {folder}: "
                                 f"{_available(folder)}")
            found.append(path)
            continue
        exact = [p for p in everything if p.stem == name]
        # '02' names 02_pruning_in_practice even when 02b_... exists: a number followed by '_' wins.
        matches = (exact or [p for p in everything if p.stem.startswith(name + "_")]
                   or [p for p in everything if p.stem.startswith(name)])
        if len(matches) != 1:
            what = "no notebook" if not matches else f"{len(matches)} notebooks ({', '.join(p.stem for p in matches)})"
            raise ValueError(f"notebook {name!r} matches {what} in {folder}; choose one of: {_available(folder)}")
        found.append(matches[0])
    return found


def parse_value(text: str):
    """'10' -> 10, '0.5' -> 0.5, 'True' -> True, '[1, 2]' -> [1, 2]; anything else stays a string."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (a -p VALUE), got {type(text).__name__}")
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def notebook_parameters(path: Path) -> dict:
    """{name: default source text} of a notebook's `parameters` cell (as papermill reads it)."""
    import papermill as pm

    try:
        return {name: info["default"] for name, info in pm.inspect_notebook(str(path)).items()}
    except Exception as exc:  # papermill/nbformat raise many kinds: no kernelspec, bad JSON, ...
        raise ValueError(f"cannot read the parameters cell of {path}: {type(exc).__name__}: {exc}") from exc


def _passes_through_papermill(value) -> bool:
    """papermill writes None, bool, int, float, str, list and dict (str keys) as code; anything else as a string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_passes_through_papermill(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _passes_through_papermill(v) for k, v in value.items())
    return False


def check_parameters(parameters: dict, known: dict[str, dict]) -> dict[str, dict]:
    """The parameters to apply to each notebook; ValueError for a name no notebook has or a value of the wrong kind.

    `known` maps a notebook name to its `notebook_parameters`.
    """
    everywhere = sorted({name for params in known.values() for name in params})
    for name in parameters:
        if not any(name in params for params in known.values()):
            close = difflib.get_close_matches(name, everywhere, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(f"-p {name}: no selected notebook ({', '.join(known)}) has {name!r} in its parameters "
                             f"cell; {hint}parameters there: {', '.join(everywhere) or 'none'}")
    for name, value in parameters.items():
        if not _passes_through_papermill(value):
            raise ValueError(f"-p {name} {value!r}: a {type(value).__name__} would reach the notebook as the string "
                             f"{str(value)!r} (papermill passes None, bool, int, float, str, list and dict); "
                             + (f"write it as a list: -p {name} '{list(value)!r}'" if isinstance(value, (tuple, set))
                                else "use one of those types"))
    for nb_name, params in known.items():
        for name, value in parameters.items():
            if name not in params or not isinstance(value, str):
                continue
            try:
                default = ast.literal_eval(params[name])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue  # an expression default: nothing to compare with
            if default is not None and not isinstance(default, str):
                raise ValueError(f"-p {name} {value!r}: not a Python value, but {nb_name} sets {name} = "
                                 f"{params[name]} ({type(default).__name__}); write e.g. -p {name} {params[name]}"
                                 + (" (True/False are capitalised)" if isinstance(default, bool) else ""))
    return {nb_name: {k: v for k, v in parameters.items() if k in params} for nb_name, params in known.items()}


def run_notebook(path: Path, out_dir: Path, parameters: dict, records_path: Path, timeout: int,
                 variants_path: Path | None = None) -> dict:
    """Execute one notebook with papermill; returns {'seconds', 'status'[, 'error']}.

    `parameters` are passed as they are: choose them with `check_parameters`. With `variants_path`, the
    notebook's `record_variant` calls append there.
    """
    import papermill as pm

    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"timeout must be a positive whole number of seconds per cell, got {timeout!r}")
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise TypeError(f"parameters must be a dict of name -> value, got {parameters!r}")
    if not Path(path).is_file():
        raise ValueError(f"path {str(path)!r}: no such notebook file")
    env = {report.RECORDS_ENV: str(records_path), report.NOTEBOOK_ENV: Path(path).stem, "LWKIT_HEADLESS": "1"}
    if variants_path is not None:
        if not isinstance(variants_path, (str, os.PathLike)):
            raise TypeError(f"variants_path must be a path or None, got {type(variants_path).__name__}")
        env[report.VARIANTS_ENV] = str(variants_path)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    result = {"status": "ok"}
    try:
        pm.execute_notebook(str(path), str(Path(out_dir) / Path(path).name), parameters=parameters,
                            cwd=str(Path(path).parent), kernel_name="python3", progress_bar=False,
                            execution_timeout=timeout, kernel_manager_class=_local_kernel_manager())
    except Exception as exc:  # papermill's PapermillExecutionError carries the cell's traceback summary
        result = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"}
    finally:  # the variables only describe this run: don't leave them set in the caller's process
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _local_kernel_manager():
    """The kernel talks to the runner over local sockets (IPC files in Jupyter's runtime folder), not TCP:
    nothing listens on the network, and ipykernel has no reason to warn about unencrypted TCP on every run."""
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

    return LocalKernelManager


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


def write_variants(out_dir: Path, variants_path: Path, ran: list[str]) -> Path | None:
    """Merge this run's variants into `out_dir`/variants.json (replacing those of the notebooks in `ran`) and
    draw the static Pareto explorer into `out_dir`/pareto.html; returns the page's path (None if no variants).

    A problem here is printed, never fatal: the notebooks' results matter more than the picture.
    """
    from lwkit import pareto

    out_dir = Path(out_dir)
    if not isinstance(ran, (list, tuple)) or not all(isinstance(n, str) for n in ran):
        raise TypeError(f"ran must be a list of notebook names, got {ran!r}")
    target = out_dir / "variants.json"
    try:
        kept = [v for v in report.read_variants(target) if v.notebook not in ran]
        variants = kept + report.read_variants(variants_path)
        target.write_text(json.dumps([asdict(v) for v in variants], indent=1))
        if not variants:
            return None
        page = pareto.export_html(variants, out_dir / "pareto.html", overwrite=True)
        print(f"{len(variants)} variants in {target}; Pareto explorer in {page}", flush=True)
        return page
    except (ValueError, OSError) as exc:
        print(f"error: variants or Pareto export: {exc}", flush=True)
        return None


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # case-insensitive file systems, bind mounts, hard links
    except OSError:
        return False


def _positive_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds per cell, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lwkit.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook paths, names or prefixes (default: all)")
    parser.add_argument("--out", default=str(ROOT / "build"), help="folder for executed copies and results.json")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a value of the notebooks' parameters cell")
    parser.add_argument("--timeout", type=_positive_seconds, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    # Everything is checked before the first notebook runs.
    try:
        paths = find_notebooks(args.notebooks)
    except ValueError as exc:
        parser.error(str(exc))
    if not paths:
        parser.error(f"no notebooks found in {NOTEBOOKS}")
    parameters = {name: parse_value(value) for name, value in args.parameter}
    try:
        applied = check_parameters(parameters, {p.stem: notebook_parameters(p) for p in paths})
    except ValueError as exc:
        parser.error(str(exc))
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--out {str(out_dir)!r} is a file; give a folder for the executed copies")
    paths = list({p.resolve(): p for p in paths}.values())  # `00 00_setup_and_baselines` runs it once
    stems = [p.stem for p in paths]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        parser.error(f"two selected notebooks are named {twins[0]}: their executed copies and results would mix; "
                     "run them separately with different --out folders")
    clash = [p for p in paths if _same_file(out_dir / p.name, p)]
    if clash:
        parser.error(f"--out {str(out_dir)!r} is the folder of {clash[0].name}: the executed copy would replace "
                     "the notebook itself; choose another folder (default build/)")
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / f".records-{os.getpid()}.jsonl"  # one file per run: parallel runs don't mix
    records_path.unlink(missing_ok=True)
    variants_path = out_dir / f".variants-{os.getpid()}.jsonl"
    variants_path.unlink(missing_ok=True)

    results = {"notebooks": {}, "records": []}
    try:
        for path in paths:
            used = applied[path.stem]
            print(f"running {path.name}" + (f" with {used}" if used else "") + " ...", flush=True)
            nb = run_notebook(path, out_dir, used, records_path, args.timeout, variants_path)
            results["notebooks"][path.stem] = {**nb, "parameters": used}
            print(f"  {nb['status']} in {nb['seconds']:.1f} s" + (f"\n  {nb['error']}" if "error" in nb else ""),
                  flush=True)
        try:
            results["records"] = [asdict(r) for r in report.read_records(records_path)]
        except ValueError as exc:
            results["records_error"] = str(exc)
            print(f"error: {exc}", flush=True)
        write_variants(out_dir, variants_path, [p.stem for p in paths])
    finally:
        records_path.unlink(missing_ok=True)
        variants_path.unlink(missing_ok=True)
    # Only what was applied: each name went to at least one notebook (check_parameters); per notebook above.
    results["parameters"] = {k: v for k, v in parameters.items() if any(k in used for used in applied.values())}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(results_table(results))
    failed = [n for n, nb in results["notebooks"].items() if nb["status"] != "ok"]
    outside = [r["key"] for r in results["records"] if not r["ok"]]
    print(f"\n{len(paths) - len(failed)}/{len(paths)} notebooks ok, {len(results['records']) - len(outside)}/"
          f"{len(results['records'])} recorded values in range; results in {out_dir / 'results.json'}")
    return 1 if failed or outside or "records_error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
