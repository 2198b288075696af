"""The side-by-side table of measured models that `lwkit.measure.compare` fills: text, HTML and bar charts.

Rows are plain dicts (name, params, macs, size_bytes, latency_ms, accuracy, ratios); a missing value shows
as a dash. Ratios are baseline / model, so higher means smaller or faster.
"""

from __future__ import annotations

import html
import math
import numbers
from dataclasses import dataclass

__all__ = ["COLUMNS", "Comparison", "format_bytes"]

# ---------------------------------------------------------------------------------------------------------

COLUMNS = [  # (key, header, format)
    ("params", "params", "{:,}"),
    ("nonzero", "nonzero params", "{:,}"),
    ("macs", "MACs", "{:,}"),
    ("size_bytes", "size on disk", None),
    ("latency_ms", "latency ms (IQR)", None),
    ("accuracy", "accuracy", "{:.2%}"),
    ("macs_ratio", "MACs ratio", "{:.2f}x"),
    ("size_ratio", "size ratio", "{:.2f}x"),
    ("speedup", "measured speedup", "{:.2f}x"),
    ("acc_delta_pp", "Δ acc (pts)", "{:+.2f}"),
]
_PLOT_LABELS = {"size_bytes": "size on disk (KB)", "latency_ms": "latency (ms)", "accuracy": "test accuracy (%)",
                "params": "parameters", "nonzero": "nonzero parameters", "macs": "MACs (millions)"}


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KB' (powers of 1024)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Real) or not 0 <= n < math.inf:
        raise ValueError(f"n must be a finite number of bytes >= 0, got {n!r}")
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class Comparison:
    """Rows of measurements, one per model, with ratios to a baseline row. Renders as a table."""

    rows: list[dict]
    baseline: str
    threads: int | None = None
    batch_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.rows, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                                      for r in self.rows):
            raise TypeError(f"rows must be a list of dicts, each with a str 'name', got {self.rows!r:.200}")
        if not isinstance(self.baseline, str):
            raise TypeError(f"baseline must be a str, got {type(self.baseline).__name__}")
        for name in ("threads", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r['name'] for r in self.rows]}")

    def _cell(self, r: dict, key: str, fmt: str | None) -> str:
        value = r.get(key)
        if value is None:
            return "–"
        if key == "size_bytes":
            return format_bytes(value)
        if key == "latency_ms":
            return f"{value:.3f} ({r.get('latency_iqr_ms', 0):.3f})"
        return fmt.format(value)

    def _columns(self):
        return [c for c in COLUMNS if any(r.get(c[0]) is not None for r in self.rows)]

    def caption(self) -> str:
        parts = [f"ratios are baseline / model (higher = smaller or faster), baseline: {self.baseline}"]
        if self.threads:
            parts.append(f"latency: median of timed runs (IQR = 25th-75th percentile), batch {self.batch_size}, "
                         f"{self.threads} threads")
        return "; ".join(parts)

    def __str__(self) -> str:
        cols = self._columns()
        table = [["model"] + [c[1] for c in cols]]
        table += [[r["name"]] + [self._cell(r, k, f) for k, _, f in cols] for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in table]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines + [self.caption()])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cols = self._columns()
        head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
        body = "".join(
            "<tr><td style='text-align:left'><b>" + html.escape(r["name"]) + "</b></td>"
            + "".join(f"<td>{html.escape(self._cell(r, k, f))}</td>" for k, _, f in cols) + "</tr>"
            for r in self.rows
        )
        return (f"<table><thead><tr><th>model</th>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p><small>{html.escape(self.caption())}</small></p>")

    def plot(self, keys=("size_bytes", "latency_ms", "accuracy")) -> None:
        """Bar charts of the chosen columns, one panel each; draws and shows one figure, returns None."""
        import matplotlib.pyplot as plt

        from lwkit.widgets import HATCHES, OKABE_ITO

        measured = {k for r in self.rows for k, v in r.items() if isinstance(v, int | float) and k != "name"}
        if isinstance(keys, str) or not all(isinstance(k, str) and (k in _PLOT_LABELS or k in measured)
                                            for k in keys):
            raise ValueError(f"keys must be a sequence of column names such as {list(_PLOT_LABELS)}, got {keys!r}")
        keys = [k for k in keys if any(r.get(k) is not None for r in self.rows)]
        if not keys:
            raise ValueError("keys: none of the chosen columns has a value in any row (did you measure it?)")
        scale = {"size_bytes": 1 / 1024, "accuracy": 100, "macs": 1e-6}
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        names = [r["name"] for r in self.rows]
        for ax, key in zip(axes[0], keys):
            values = [(r.get(key) or 0) * scale.get(key, 1) for r in self.rows]
            bars = ax.bar(names, values, color=[OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(names))],
                          hatch=[HATCHES[i % len(HATCHES)] for i in range(len(names))], edgecolor="black")
            if key == "latency_ms":
                errs = [r.get("latency_iqr_ms", 0) / 2 for r in self.rows]
                ax.errorbar(names, values, yerr=errs, fmt="none", color="black", capsize=3,
                            label="IQR (25th-75th percentile)")
                ax.legend(fontsize=8)
            ax.bar_label(bars, fmt="%.4g", fontsize=8)
            ax.set_title(_PLOT_LABELS.get(key, key))
            ax.set_ylabel(_PLOT_LABELS.get(key, key))
            ax.set_xlabel("model")
            ax.tick_params(axis="x", rotation=30)
            plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        fig.suptitle(f"Model comparison (baseline: {self.baseline})")
        fig.tight_layout()
        plt.show()
