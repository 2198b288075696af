"""Headline numbers: notebooks `record` them; `python -m lwkit.run` collects and checks them.

Inside a run, `LWKIT_RECORDS` names a JSON-lines file and `LWKIT_NOTEBOOK` the notebook being run;
`record` appends one line per call. Outside a run it only prints, so notebooks work the same in JupyterLab.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RECORDS_ENV = "LWKIT_RECORDS"
NOTEBOOK_ENV = "LWKIT_NOTEBOOK"


@dataclass
class Record:
    notebook: str  # notebook name without .ipynb ('' outside a run)
    key: str  # dotted name, e.g. 'baseline.mlp.test_accuracy'
    value: float
    expected: list[float] | None  # [lo, hi], inclusive, or None for "report only"
    ok: bool  # value inside expected (True when there is no range)


def record(key: str, value, *, expected: tuple[float, float] | None = None, quiet: bool = False) -> Record:
    """Record a headline number with the range it should fall in on a course machine."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"value for {key!r} must be a finite real number, got {value!r}")
    if expected is not None:
        if (not isinstance(expected, (tuple, list)) or len(expected) != 2
                or not all(isinstance(v, numbers.Real) for v in expected) or expected[0] > expected[1]):
            raise ValueError(f"expected must be a (lo, hi) pair with lo <= hi, got {expected!r}")
        expected = [float(expected[0]), float(expected[1])]
    ok = expected is None or expected[0] <= value <= expected[1]
    rec = Record(notebook=os.environ.get(NOTEBOOK_ENV, ""), key=key, value=float(value), expected=expected, ok=ok)
    path = os.environ.get(RECORDS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(rec)) + "\n")
    if not quiet:
        rng = f"expected [{expected[0]:.4g}, {expected[1]:.4g}]" if expected else "no range"
        print(f"recorded {key} = {value:.4g} ({rng}){'' if ok else '  <-- OUTSIDE THE EXPECTED RANGE'}")
    return rec


def read_records(path: str | Path) -> list[Record]:
    """Records from a JSON-lines file written by `record`."""
    path = Path(path)
    if not path.exists():
        return []
    return [Record(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
