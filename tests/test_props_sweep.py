"""lwkit.sweep: the batch-size sweep of a deploy.measure table (points and plot)."""

import matplotlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwkit import compare, sweep
from lwkit.deploy import DeployTable

matplotlib.use("Agg")

COVERED = {"lwkit.sweep.sweep_points", "lwkit.sweep.plot_batch_sweep"}
EXEMPT: dict[str, str] = {}


def table():
    """Two variants at batch 1 and 64; 'b' cannot run batch 64 (a fixed-batch file) and has no quartiles."""
    rows = [
        {"name": "a", "size_bytes": 100, "latency_ms_b1": 2.0, "latency_iqr_ms_b1": 0.4, "latency_q25_ms_b1": 1.9,
         "latency_q75_ms_b1": 2.3, "speedup_b1": 1.0, "latency_ms_b64": 64.0, "latency_iqr_ms_b64": 2.0,
         "latency_q25_ms_b64": 63.0, "latency_q75_ms_b64": 65.0, "speedup_b64": 1.0},
        {"name": "b", "size_bytes": 50, "latency_ms_b1": 4.0, "latency_iqr_ms_b1": 1.0, "speedup_b1": 0.5,
         "latency_ms_b64": None, "latency_iqr_ms_b64": None, "speedup_b64": None},
    ]
    return DeployTable(rows=rows, baseline="a", threads=2, batch_size=1)


def test_points_use_true_quartiles_skip_unrunnable_batches_and_compute_throughput():
    a = sweep.sweep_points(table(), "a")
    assert a["batch"] == [1, 64] and a["q25"] == [1.9, 63.0] and a["q75"] == [2.3, 65.0]
    assert a["items_per_s"] == [500.0, 1000.0] and a["speedup"] == [1.0, 1.0]
    b = sweep.sweep_points(table(), "b")
    assert b["batch"] == [1] and b["q25"] == [3.5] and b["q75"] == [4.5]  # IQR width only: centred on the median


def test_plot_draws_one_figure_with_three_panels(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    table().plot_batch_sweep(title="t")
    assert len(shown) == 1 and len(shown[0].axes) == 3
    assert shown[0].axes[0].get_xlabel() == "batch size" and "25th-75th" in shown[0].axes[0].get_ylabel()
    plt.close("all")


def test_measured_table_carries_quartiles():
    import torch

    from lwkit import deploy

    t = deploy.measure({"lin": torch.nn.Linear(4, 2).eval()}, torch.randn(8, 4), batch_sizes=(1, 8), repeats=4,
                       rounds=2, warmup=1)
    r = t.row("lin")
    for b in (1, 8):
        assert r[f"latency_q25_ms_b{b}"] <= r[f"latency_ms_b{b}"] <= r[f"latency_q75_ms_b{b}"]
    assert r["latency_q25_ms"] == r["latency_q25_ms_b1"]


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
def test_bad_table_is_a_type_error(bad):
    with pytest.raises(TypeError, match="table must be"):
        sweep.sweep_points(bad, "a")
    with pytest.raises(TypeError, match="table must be"):
        sweep.plot_batch_sweep(bad)


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=5).filter(lambda s: s not in ("a", "b")))
def test_unknown_variant_names_the_choices(name):
    with pytest.raises(ValueError, match=r"name must be one of \['a', 'b'\]"):
        sweep.sweep_points(table(), name)


def test_a_table_without_a_sweep_and_bad_titles():
    plain = compare.Comparison(rows=[{"name": "a", "latency_ms": 1.0}], baseline="a")
    with pytest.raises(ValueError, match="batch_sizes"):
        sweep.plot_batch_sweep(plain)
    with pytest.raises(TypeError, match="title and unit"):
        sweep.plot_batch_sweep(table(), title=3)
