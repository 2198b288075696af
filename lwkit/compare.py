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
    ("macs", "MACs per batch", "{:,}"),
    ("size_bytes", "size on disk", None),
    ("latency_ms", "latency ms (IQR)", None),
    ("accuracy", "accuracy", "{:.2%}"),
    ("macs_ratio", "MACs ratio", "{:.2f}x"),
    ("size_ratio", "size ratio", "{:.2f}x"),
    ("speedup", "measured speedup", "{:.2f}x"),
    ("acc_delta_pp", "Δ acc (pts)", "{:+.2f}"),
]
_PLOT_LABELS = {"size_bytes": "size on disk (KB)", "latency_ms": "latency per batch (ms)",
                "accuracy": "accuracy (%)", "params": "parameters", "nonzero": "nonzero parameters",
                "macs": "MACs per batch (millions)"}


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
        if self.batch_size:
            parts.append(f"MACs and latency: one forward pass of a batch of {self.batch_size}")
        if self.threads:
            parts.append(f"latency: median of timed runs (IQR = 25th-75th percentile), {self.threads} threads")
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

    def _quartiles(self, r: dict, key: str) -> tuple[float, float, bool] | None:
        """(q25, q75, true_quartiles) of a latency column; median ± IQR/2 only when quartiles were not kept."""
        median = r.get(key)
        if median is None:
            return None
        suffix = key[len("latency_ms"):]  # "" or "_b64"
        q25, q75 = r.get(f"latency_q25_ms{suffix}"), r.get(f"latency_q75_ms{suffix}")
        if q25 is not None and q75 is not None:
            return q25, q75, True
        half = (r.get(f"latency_iqr_ms{suffix}") or 0) / 2
        return median - half, median + half, False

    def _plot_ratios(self, ax, colours, hatches) -> None:
        """Grouped log-scale bars: model / baseline for params, MACs, size and latency."""
        base = self.row(self.baseline)
        keys = [k for k in ("params", "macs", "size_bytes", "latency_ms") if base.get(k)]
        others = [r for r in self.rows if r["name"] != self.baseline]
        labels = {"params": "params", "macs": "MACs", "size_bytes": "size", "latency_ms": "latency"}
        width = 0.8 / max(1, len(others))
        for j, r in enumerate(others):
            i = self.rows.index(r)
            xs = [k + (j - (len(others) - 1) / 2) * width for k in range(len(keys))]
            values = [r[k] / base[k] if r.get(k) else float("nan") for k in keys]
            bars = ax.bar(xs, [v - 1 for v in values], width, bottom=1, color=colours[i], hatch=hatches[i],
                          edgecolor="black", label=r["name"])  # each bar grows from 1x, up or down
            ax.bar_label(bars, labels=[f"{v:.3g}x" if v == v else "" for v in values], fontsize=8, padding=2)
        ax.axhline(1, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(keys)), [labels[k] for k in keys])
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low / 1.5, high * 2.5)  # room for the labels on a log axis
        ax.set(title=f"model / {self.baseline} (log scale)", ylabel="ratio to the baseline (x)",
               xlabel="quantity (1x = same as the baseline)")
        ax.legend(fontsize=8)

    def _plot_accuracy(self, ax, colours, markers, accuracy_n) -> None:
        """Accuracy as points on a zoomed axis (never 0-100 % bars), with ± 1 standard error if n is known."""
        rows = [r for r in self.rows if r.get("accuracy") is not None]
        for k, r in enumerate(rows):
            i, p = self.rows.index(r), r["accuracy"]
            se = 100 * math.sqrt(p * (1 - p) / accuracy_n) if accuracy_n else 0
            ax.errorbar([k], [100 * p], yerr=[se] if se else None, fmt=markers[i], color=colours[i], ms=9,
                        capsize=4, mec="black")
            ax.annotate(f"{100 * p:.2f}", (k, 100 * p), xytext=(10, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows])
        ax.set_xlim(-0.5, len(rows) - 0.3)
        values = [100 * r["accuracy"] for r in rows]
        pad = max(0.5, (max(values) - min(values)) * 0.3) + (100 / math.sqrt(accuracy_n) if accuracy_n else 0)
        ax.set_ylim(max(0, min(values) - pad), min(100, max(values) + pad))
        what = f"; ± 1 SE, n = {accuracy_n:,}" if accuracy_n else ""
        ax.set(title=f"accuracy (zoomed{what})", ylabel="accuracy (%)")

    def plot(self, keys=("size_bytes", "latency_ms", "accuracy"), *, ratios: bool = False,
             accuracy_n: int | None = None) -> None:
        """Panels of the chosen columns (and, with `ratios`, model / baseline on a log axis); shows one figure.

        Latency bars carry the true 25th-75th percentiles when the rows have them (`latency_q25_ms`, ...);
        otherwise median ± IQR/2, and the panel says so. Accuracy is drawn as points on a zoomed axis, with
        ± 1 standard error sqrt(p(1-p)/n) when `accuracy_n` (the number of test examples) is given.
        """
        import matplotlib.pyplot as plt

        from lwkit.widgets import HATCHES, MARKERS, OKABE_ITO

        measured = {k for r in self.rows for k, v in r.items() if isinstance(v, int | float) and k != "name"}
        if isinstance(keys, str) or not all(isinstance(k, str) and (k in _PLOT_LABELS or k in measured)
                                            for k in keys):
            raise ValueError(f"keys must be a sequence of column names such as {list(_PLOT_LABELS)}, got {keys!r}")
        if not isinstance(ratios, bool):
            raise TypeError(f"ratios must be True or False, got {ratios!r}")
        if accuracy_n is not None and (isinstance(accuracy_n, bool) or not isinstance(accuracy_n, numbers.Integral)
                                       or accuracy_n < 1):
            raise ValueError(f"accuracy_n must be None or the number of test examples (an int >= 1), "
                             f"got {accuracy_n!r}")
        keys = [k for k in keys if any(r.get(k) is not None for r in self.rows)]
        if ratios and len(self.rows) < 2:
            raise ValueError("ratios=True needs at least two rows (a baseline and a model to compare with it)")
        if not keys and not ratios:
            raise ValueError("keys: none of the chosen columns has a value in any row (did you measure it?)")
        n = len(self.rows)
        colours = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n)]
        hatches = [HATCHES[i % len(HATCHES)] for i in range(n)]
        markers = [MARKERS[i % len(MARKERS)] for i in range(n)]
        panels = (["ratios"] if ratios else []) + keys
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        names = [r["name"] for r in self.rows]
        notes = []
        for ax, key in zip(axes[0], panels):
            if key == "ratios":
                self._plot_ratios(ax, colours, hatches)
                continue
            if key == "accuracy":
                self._plot_accuracy(ax, colours, markers, accuracy_n)
            else:
                scale = {"size_bytes": 1 / 1024, "macs": 1e-6}.get(key, 1)
                values = [(r.get(key) or 0) * scale for r in self.rows]
                ax.bar(names, values, color=colours, hatch=hatches, edgecolor="black")
                tops = values
                if key.startswith("latency_ms"):
                    quart = [self._quartiles(r, key) or (0, 0, True) for r in self.rows]
                    low = [max(0.0, v - q[0]) for v, q in zip(values, quart)]
                    high = [max(0.0, q[1] - v) for v, q in zip(values, quart)]
                    true = all(q[2] for q in quart)
                    what = "25th-75th percentile" if true else "median ± IQR/2 (quartiles not recorded)"
                    ax.errorbar(names, values, yerr=[low, high], fmt="none", color="black", capsize=4, label=what)
                    tops = [v + h for v, h in zip(values, high)]
                    ax.legend(fontsize=7, loc="upper left")
                    notes.append(f"latency: median, error bars {what}")
                for x, (v, top) in enumerate(zip(values, tops)):  # labels above the whisker, never on it
                    ax.annotate(f"{v:.3g}", (x, top), xytext=(0, 3), textcoords="offset points", ha="center",
                                va="bottom", fontsize=8)
                ax.set_ylim(0, max(tops) * 1.25 if max(tops) > 0 else 1)
                label = _PLOT_LABELS.get(key, key)
                ax.set(title=label, ylabel=label)
            ax.set_xlabel("model")
            ax.tick_params(axis="x", rotation=30)
            plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        batch = f", batch {self.batch_size}" if self.batch_size else ""
        fig.suptitle(f"Model comparison (baseline: {self.baseline}{batch}" + (f"; {notes[0]}" if notes else "") + ")",
                     fontsize=10)
        fig.tight_layout()
        plt.show()
