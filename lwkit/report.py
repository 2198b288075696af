"""Headline numbers: notebooks `record` them; `python -m lwkit.run` collects and checks them.

Inside a run, `LWKIT_RECORDS` names a JSON-lines file and `LWKIT_NOTEBOOK` the notebook being run;
`record` appends one line per call. Outside a run it only prints, so notebooks work the same in JupyterLab.

Variants (one compressed model each, for the Pareto explorer of notebook 10) go the same way into a sibling
file named by `LWKIT_VARIANTS`: `record_variant(name, technique, accuracy, size_bytes, macs, latency_ms, batch,
threads, recipe=...)`; `lwkit.run` collects them into `build/variants.json`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RECORDS_ENV", "NOTEBOOK_ENV", "VARIANTS_ENV", "TECHNIQUES", "Record", "record", "read_records",
           "Variant", "record_variant", "read_variants"]

RECORDS_ENV = "LWKIT_RECORDS"
NOTEBOOK_ENV = "LWKIT_NOTEBOOK"
VARIANTS_ENV = "LWKIT_VARIANTS"
# the technique of a variant: what the explorer filters by (a recipe mixing several is a 'pipeline'; a
# per-layer policy found by lwkit.search is 'search')
TECHNIQUES = ("baseline", "pruning", "quantization", "distillation", "peft", "architecture", "deployment",
              "pipeline", "search")


@dataclass
class Record:
    notebook: str  # notebook name without .ipynb ('' outside a run)
    key: str  # dotted name, e.g. 'baseline.mlp.test_accuracy'
    value: float  # may be nan or inf: then `ok` is False
    expected: list[float] | None  # [lo, hi], inclusive, or None for "report only"
    ok: bool  # value finite and inside expected (True for a finite value with no range)


def _scalar(v):
    """A 0-d tensor or numpy value as a Python number; anything else unchanged (and rejected by the caller)."""
    if hasattr(v, "item") and not isinstance(v, numbers.Real):
        try:
            return v.item()
        except (ValueError, RuntimeError):  # more than one element
            return v
    return v


def _check_expected(key: str, expected) -> list[float] | None:
    if expected is None:
        return None
    if not isinstance(expected, (tuple, list)):
        raise TypeError(f"expected for {key!r} must be a (lo, hi) pair or None, got {expected!r}")
    if len(expected) != 2:
        raise ValueError(f"expected for {key!r} must be a (lo, hi) pair, got {len(expected)} values: {expected!r}")
    bounds = [_scalar(v) for v in expected]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in bounds):
        raise TypeError(f"expected for {key!r} must hold two real numbers, got {expected!r}")
    if not all(math.isfinite(v) for v in bounds):
        raise ValueError(f"expected for {key!r} must hold finite numbers (a range nothing can fall outside "
                         f"checks nothing), got {expected!r}")
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected for {key!r} must be (lo, hi) with lo <= hi, got {expected!r}")
    return [float(bounds[0]), float(bounds[1])]


def record(key: str, value, *, expected: tuple[float, float] | None = None, quiet: bool = False) -> Record:
    """Record a headline number with the range it should fall in on a course machine.

    A nan or inf value is recorded but never ok: it is in no range, so the run reports it.
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be a non-empty str such as 'baseline.mlp.test_accuracy', got {key!r}")
    if not key.strip():
        raise ValueError(f"key must be a non-empty str such as 'baseline.mlp.test_accuracy', got {key!r}")
    value = _scalar(value)  # a 0-d tensor or numpy array
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shape = f" of shape {tuple(value.shape)}" if hasattr(value, "shape") else ""
        raise TypeError(f"value for {key!r} must be one real number, got {type(value).__name__}{shape}: "
                        f"{str(value)[:80]}")
    expected = _check_expected(key, expected)
    if not isinstance(quiet, bool):
        raise TypeError(f"quiet must be True or False, got {quiet!r}")
    value = float(value)
    finite = math.isfinite(value)
    ok = finite and (expected is None or expected[0] <= value <= expected[1])
    rec = Record(notebook=os.environ.get(NOTEBOOK_ENV, ""), key=key, value=value, expected=expected, ok=ok)
    path = os.environ.get(RECORDS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(rec)) + "\n")  # one write per line: a crash loses at most this record
    if not quiet:
        rng = f"expected [{expected[0]:.4g}, {expected[1]:.4g}]" if expected else "no range"
        flag = "" if ok else ("  <-- NOT A FINITE NUMBER" if not finite else "  <-- OUTSIDE THE EXPECTED RANGE")
        print(f"recorded {key} = {value:.4g} ({rng}){flag}")
    return rec


def _record_from(obj, where: str) -> Record:
    fields = {"notebook": str, "key": str, "value": numbers.Real, "expected": (list, type(None)), "ok": bool}
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise ValueError(f"{where}: expected an object with keys {sorted(fields)}, got {str(obj)[:200]}")
    for name, kind in fields.items():
        if not isinstance(obj[name], kind) or (name == "value" and isinstance(obj[name], bool)):
            raise ValueError(f"{where}: field {name!r} has the wrong type: {obj[name]!r}")
    return Record(**obj)


def _read_text(path: Path, what: str) -> str | None:
    """The file's text, None if it does not exist; an unreadable file is a ValueError naming it."""
    if not path.exists():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path} is unreadable ({type(exc).__name__}: {exc})") from exc


def read_records(path: str | Path) -> list[Record]:
    """Records from a JSON-lines file written by `record` ([] if the file does not exist).

    A corrupted or truncated file raises ValueError naming the file and line.
    """
    path = Path(path)
    text = _read_text(path, "records")
    if text is None:
        return []
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"records file {path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is corrupted or truncated ({exc.msg}): {line[:200]!r}") from exc
        records.append(_record_from(obj, where))
    return records


# --- Variants: one compressed model each, for the Pareto explorer ------------------------------------------


@dataclass
class Variant:
    notebook: str  # notebook that made it ('' outside a run)
    name: str  # e.g. 'MLP 92 % sparse'
    technique: str  # one of TECHNIQUES
    accuracy: float  # test accuracy in [0, 1]
    size_bytes: int  # bytes on disk of the file this variant is stored as
    macs: int  # multiply-accumulates of one forward pass on one input (what runs, zeros included)
    latency_ms: float  # measured median latency of one forward pass at `batch`
    batch: int  # batch size of the latency measurement
    threads: int  # CPU threads of the latency measurement
    recipe: str  # how it was made, in words or as a lwkit.pipeline recipe text


def _real(name: str, v, *, low: float = 0.0, high: float = math.inf, integer: bool = False, what: str = ""):
    v = _scalar(v)
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, kind):
        raise TypeError(f"{name} must be {'a whole number' if integer else 'a real number'}{what}, got {v!r}")
    if not math.isfinite(v) or not low <= v <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]{what}, got {v!r}")
    return int(v) if integer else float(v)


def _variant(notebook, name, technique, accuracy, size_bytes, macs, latency_ms, batch, threads, recipe) -> Variant:
    for arg, v in (("name", name), ("recipe", recipe), ("notebook", notebook)):
        if not isinstance(v, str):
            raise TypeError(f"{arg} must be a str, got {type(v).__name__}: {v!r:.80}")
    if not name.strip():
        raise ValueError(f"name must be a non-empty str such as 'MLP 92 % sparse', got {name!r}")
    if technique not in TECHNIQUES:
        raise ValueError(f"technique must be one of {TECHNIQUES}, got {technique!r}")
    return Variant(notebook=notebook, name=name, technique=technique,
                   accuracy=_real("accuracy", accuracy, high=1.0, what=" (a fraction, e.g. 0.87)"),
                   size_bytes=_real("size_bytes", size_bytes, low=1, integer=True, what=" (bytes on disk)"),
                   macs=_real("macs", macs, integer=True, what=" (per input)"),
                   latency_ms=_real("latency_ms", latency_ms, what=" (milliseconds, measured)"),
                   batch=_real("batch", batch, low=1, integer=True),
                   threads=_real("threads", threads, low=1, integer=True), recipe=recipe)


def record_variant(name: str, technique: str, accuracy: float, size_bytes: int, macs: int, latency_ms: float,
                   batch: int, threads: int, *, recipe: str = "", quiet: bool = False) -> Variant:
    """Record one compressed model for the course's Pareto explorer (every argument checked first).

    Inside a run (`LWKIT_VARIANTS` set) one JSON line is appended to that file; outside, it only prints.
    """
    v = _variant(os.environ.get(NOTEBOOK_ENV, ""), name, technique, accuracy, size_bytes, macs, latency_ms, batch,
                 threads, recipe)
    path = os.environ.get(VARIANTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(v)) + "\n")
    if not quiet:
        print(f"variant {name!r} ({technique}): accuracy {v.accuracy:.2%}, {v.size_bytes:,} bytes, "
              f"{v.latency_ms:.3g} ms at batch {v.batch}")
    return v


def read_variants(path: str | Path) -> list[Variant]:
    """Variants from a JSON-lines file written by `record_variant` or a JSON list (variants.json); [] if absent.

    A damaged file or entry raises ValueError naming the file and the entry.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    text = _read_text(path, "variants")
    if text is None:
        return []
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"variants file {path} is corrupted or truncated ({exc.msg}, line {exc.lineno})") from exc
    out = []
    for n, obj in enumerate(items, 1):
        if not isinstance(obj, dict) or set(obj) != {f for f in Variant.__dataclass_fields__}:
            raise ValueError(f"variants file {path}, entry {n}: expected the fields of Variant, got {str(obj)[:200]}")
        try:
            out.append(_variant(**obj))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"variants file {path}, entry {n}: {exc}") from exc
    return out
