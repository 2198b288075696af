"""Speed is a curve: latency, throughput and speedup against batch size, for a `lwkit.deploy.measure` table.

Tiny models are overhead-bound at small batches (a fixed cost per call: Python, dispatch, (de)quantizing the
input, thread wake-up) and arithmetic-bound at large ones, so the ratio between two variants changes with the
batch size and lines can cross. `plot_batch_sweep` draws what `deploy.measure(..., batch_sizes=(1, 16, 64,
256))` measured: one line per variant, median with true 25th-75th percentile bars, labelled at its end.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker

from lwkit.widgets import MARKERS, OKABE_ITO

__all__ = ["sweep_points", "plot_batch_sweep"]

_LINESTYLES = ("-", "--", "-.", ":")
# Okabe-Ito without its yellow, which is hard to see as a thin line on white
_COLOURS = tuple(c for c in OKABE_ITO if c.upper() != "#F0E442")


def _check_table(table) -> list[int]:
    from lwkit.compare import Comparison  # DeployTable is a Comparison with latency_ms_b{B} columns

    if not isinstance(table, Comparison):
        raise TypeError(f"table must be the table lwkit.deploy.measure returns, got {type(table).__name__}")
    batches = sorted({int(k[len("latency_ms_b"):]) for r in table.rows for k in r
                      if k.startswith("latency_ms_b") and k[len("latency_ms_b"):].isdigit()})
    if not batches:
        raise ValueError("table has no latency_ms_b{B} columns: measure it with lwkit.deploy.measure(..., "
                         "batch_sizes=(1, 16, 64, 256))")
    return batches


def sweep_points(table, name: str) -> dict:
    """One variant's curve: batch sizes, median ms per batch with its quartiles, items/s and speedup."""
    batches = _check_table(table)
    names = [r["name"] for r in table.rows]
    if name not in names:
        raise ValueError(f"name must be one of {names}, got {name!r}")
    r = table.rows[names.index(name)]
    pts = {"batch": [], "ms": [], "q25": [], "q75": [], "items_per_s": [], "speedup": []}
    for b in batches:
        ms = r.get(f"latency_ms_b{b}")
        if ms is None:  # a fixed-batch file cannot run this batch size
            continue
        iqr = r.get(f"latency_iqr_ms_b{b}") or 0.0
        pts["batch"].append(b)
        pts["ms"].append(ms)
        # true quartiles when measured; older tables only kept the IQR's width
        pts["q25"].append(r.get(f"latency_q25_ms_b{b}", ms - iqr / 2))
        pts["q75"].append(r.get(f"latency_q75_ms_b{b}", ms + iqr / 2))
        pts["items_per_s"].append(1000.0 * b / ms if ms > 0 else float("inf"))
        pts["speedup"].append(r.get(f"speedup_b{b}"))
    return pts


def plot_batch_sweep(table, *, title: str = "Speed against batch size", unit: str = "images") -> None:
    """Three panels: ms per batch (log-log, quartile bars), items per second, and speedup vs the baseline."""
    if not isinstance(title, str) or not isinstance(unit, str):
        raise TypeError(f"title and unit must be str, got {type(title).__name__} and {type(unit).__name__}")
    batches = _check_table(table)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ratios = [1.0]
    for i, r in enumerate(table.rows):
        p = sweep_points(table, r["name"])
        if not p["batch"]:
            continue
        style = dict(color=_COLOURS[i % len(_COLOURS)], marker=MARKERS[i % len(MARKERS)],
                     linestyle=_LINESTYLES[i % len(_LINESTYLES)], markersize=6)
        lo = [m - q for m, q in zip(p["ms"], p["q25"])]
        hi = [q - m for m, q in zip(p["ms"], p["q75"])]
        axes[0].errorbar(p["batch"], p["ms"], yerr=[lo, hi], capsize=3, label=r["name"], **style)
        axes[1].plot(p["batch"], p["items_per_s"], **style)
        sp = [(b, s) for b, s in zip(p["batch"], p["speedup"]) if s is not None and s > 0]
        if sp and r["name"] != table.baseline:  # the baseline is the dotted line at 1
            axes[2].plot([b for b, _ in sp], [s for _, s in sp], **style)
            ratios += [s for _, s in sp]
    axes[2].axhline(1.0, color="grey", linewidth=1, linestyle=":")
    axes[2].text(batches[0], 1.0, f" {table.baseline}", fontsize=8, va="bottom", color="grey")
    labels = (("ms per batch (median, bars: 25th-75th pct)", "log"), (f"{unit} per second", "log"),
              (f"speedup vs {table.baseline} (x, log scale)", "log"))
    for ax, (ylabel, yscale) in zip(axes, labels):
        ax.set_xscale("log", base=2)
        ax.set_yscale(yscale)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    # speedup ticks at powers of two that span the data, no minor labels
    lo, hi = min(ratios), max(ratios)
    ticks = [2.0 ** k for k in range(-8, 9) if lo / 2 <= 2.0 ** k <= hi * 2]
    axes[2].set_yticks(ticks, [f"{t:g}" for t in ticks])
    for ax in axes:
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    axes[0].set_title("latency per call")
    axes[1].set_title("throughput")
    axes[2].set_title("speedup (above the dotted line = faster)")
    threads = f", {table.threads} threads" if getattr(table, "threads", None) else ""
    fig.suptitle(f"{title}{threads}")
    rows_of_legend = -(-len(names) // 4)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    plt.show()
