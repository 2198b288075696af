import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lwkit import compare, macs, measure, models  # noqa: E402


def test_count_params_options():
    model = models.build("mlp")
    assert measure.count_params(model) == 266_610
    model.fc1.requires_grad_(False)
    assert measure.count_params(model, trainable_only=True) == 266_610 - (784 * 300 + 300)
    with torch.no_grad():
        model.fc3.weight.zero_()
    assert measure.count_params(model, nonzero_only=True) == 266_610 - 1000
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert measure.count_params(tied) == 9 + 3 + 3


def test_model_size_bytes_is_what_torch_save_writes(tmp_path):
    model = models.build("mlp")
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert measure.model_size_bytes(model) == path.stat().st_size
    assert measure.model_size_bytes(model.state_dict()) == path.stat().st_size
    assert 266_610 * 4 < path.stat().st_size < 266_610 * 4 * 1.05


def test_measure_latency_reports_and_restores_threads():
    torch.set_num_threads(2)
    lat = measure.measure_latency(nn.Linear(8, 8), torch.zeros(4, 8), warmup=2, repeats=7, threads=1)
    assert lat.threads == 1 and lat.repeats == 7 and lat.batch_size == 4 and len(lat.samples_ms) == 7
    assert 0 < lat.min_ms <= lat.median_ms and lat.q25_ms <= lat.median_ms <= lat.q75_ms
    assert torch.get_num_threads() == 2
    assert "1 threads" in str(lat)


def test_compare_ratios_and_rendering():
    big, small = nn.Linear(100, 100), nn.Linear(100, 10)
    table = measure.compare({"big": big, "small": small}, torch.zeros(8, 100), accuracy={"big": 0.9, "small": 0.8},
                            repeats=5, warmup=1)
    row = table.row("small")
    assert row["params"] == 1010 and row["macs"] == 8 * 100 * 10
    assert row["macs_ratio"] == pytest.approx(10.0)
    assert row["acc_delta_pp"] == pytest.approx(-10.0)
    assert row["speedup"] == pytest.approx(table.row("big")["latency_ms"] / row["latency_ms"])
    html = table._repr_html_()
    assert "<table>" in html and "measured speedup" in html and "MACs ratio" in html
    assert "small" in str(table)
    with pytest.raises(KeyError, match="no row named"):
        table.row("medium")


def test_environment_lists_what_later_notebooks_need():
    env = measure.environment()
    for key in ("torch", "cpu_capability", "quantized_engines", "timing_threads"):
        assert key in env


def test_bad_inputs():
    with pytest.raises(TypeError, match="model"):
        measure.count_params("model")
    with pytest.raises(TypeError, match="example_input"):
        measure.count_macs(nn.Linear(2, 2), [1, 2])
    with pytest.raises(TypeError, match="state_dict"):
        measure.model_size_bytes(3)
    with pytest.raises(ValueError, match="repeats"):
        measure.measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), repeats=0)
    with pytest.raises(ValueError, match="threads"):
        measure.measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), threads=0)
    with pytest.raises(ValueError, match="warmup"):
        measure.measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), warmup=-1)
    with pytest.raises(ValueError, match="non-empty"):
        measure.compare({})
    with pytest.raises(ValueError, match="baseline"):
        measure.compare({"a": nn.Linear(2, 2)}, baseline="b", latency=False)
    with pytest.raises(ValueError, match="not in models"):
        measure.compare({"a": nn.Linear(2, 2)}, accuracy={"b": 0.5}, latency=False)


def test_count_params_on_sparse_csr_weights():
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]))
    layer.weight = nn.Parameter(layer.weight.detach().to_sparse_csr(), requires_grad=False)
    assert measure.count_params(layer) == 12
    assert measure.count_params(layer, nonzero_only=True) == 3


def test_old_names_still_work():
    # MAC counting moved to lwkit.macs and the table to lwkit.compare; lwkit.measure re-exports them
    assert measure.count_macs is macs.count_macs and measure.MacCounter is macs.MacCounter
    assert measure.MAC_RULES is macs.MAC_RULES
    assert measure.Comparison is compare.Comparison and measure.format_bytes is compare.format_bytes
    assert measure.COLUMNS is compare.COLUMNS


def test_review_measure_latency_restores_mode_and_threads_on_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.calls = nn.Linear(2, 2), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt  # the learner interrupts the kernel mid-measurement
            return self.fc(x)

    torch.set_num_threads(2)
    model = Broken().train()
    with pytest.raises(KeyboardInterrupt):
        measure.measure_latency(model, torch.zeros(1, 2), warmup=1, repeats=5, threads=1)
    assert torch.get_num_threads() == 2 and model.training
    ok = nn.Linear(2, 2).train()
    measure.measure_latency(ok, torch.zeros(1, 2), warmup=0, repeats=1, threads=1)
    assert ok.training  # the mode is restored after a normal run too


def test_review_measure_latency_bad_args():
    layer, x = nn.Linear(2, 2), torch.zeros(1, 2)
    for kwargs, name in [({"warmup": -1}, "warmup"), ({"warmup": 1.5}, "warmup"), ({"repeats": 0}, "repeats"),
                         ({"repeats": True}, "repeats"), ({"threads": 0}, "threads"), ({"threads": "2"}, "threads")]:
        with pytest.raises(ValueError, match=name):
            measure.measure_latency(layer, x, **kwargs)
    for bad in (torch.tensor(1.0), torch.zeros(0, 2)):
        with pytest.raises(ValueError, match="example_input"):
            measure.measure_latency(layer, bad)
    with pytest.raises(TypeError, match="example_input"):
        measure.measure_latency(layer, ())


def test_measure_latency_takes_a_dict_of_inputs():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, input_ids, scale):
            return self.fc(input_ids) * scale

    lat = measure.measure_latency(Keyword(), {"input_ids": torch.zeros(4, 3), "scale": torch.ones(1)},
                                  warmup=0, repeats=2, threads=1)
    assert lat.batch_size == 4


def test_default_threads_rejects_a_bad_environment_variable(monkeypatch):
    monkeypatch.setenv("LWKIT_THREADS", "two")
    with pytest.raises(ValueError, match="LWKIT_THREADS"):
        measure.default_threads()
    monkeypatch.setenv("LWKIT_THREADS", "3")
    assert measure.default_threads() == 3


def test_model_size_bytes_rejects_what_is_not_a_state_dict():
    with pytest.raises(TypeError, match="model"):
        measure.model_size_bytes({"fc": nn.Linear(2, 2)})  # would pickle the whole module
    with pytest.raises(TypeError, match="str keys"):
        measure.model_size_bytes({1: torch.zeros(2)})
    assert measure.model_size_bytes({"w": torch.zeros(2), "meta": {"step": 3}}) > 0


def test_compare_bad_args_name_the_argument():
    a = {"a": nn.Linear(2, 2)}
    cases = [
        (dict(models={1: nn.Linear(2, 2)}, latency=False), TypeError, "models"),
        (dict(models={"a": 3}, latency=False), TypeError, r"models\['a'\]"),
        (dict(models=a, accuracy={"a": 88.0}, latency=False), ValueError, "percentage"),
        (dict(models=a, accuracy={"a": float("nan")}, latency=False), TypeError, "accuracy"),
        (dict(models=a, accuracy=[0.5], latency=False), TypeError, "accuracy"),
        (dict(models=a, macs={"a": -1}, latency=False), ValueError, "macs"),
        (dict(models=a, latency="yes"), TypeError, "latency"),
        (dict(models=a, threads=0), ValueError, "threads"),
        (dict(models=a, repeats=0), ValueError, "repeats"),
        (dict(models=a, example_input=[1, 2]), TypeError, "example_input"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            measure.compare(**kwargs)


def test_compare_counts_attention_and_lstm_models():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    x = torch.randn(2, 5, 4)
    table = measure.compare({"tagger": Tagger()}, x, latency=False)
    assert table.row("tagger")["macs"] == 10 * 4 * 8 * 12 + 10 * 8 * 3


def test_comparison_validates_and_plots_one_figure(monkeypatch):
    with pytest.raises(TypeError, match="rows"):
        measure.Comparison(rows=[{"params": 3}], baseline="a")
    with pytest.raises(ValueError, match="threads"):
        measure.Comparison(rows=[], baseline="a", threads=0)
    table = measure.compare({"big": nn.Linear(100, 100), "small": nn.Linear(100, 10)}, torch.zeros(8, 100),
                            accuracy={"big": 0.9, "small": 0.8}, latency=False)
    with pytest.raises(ValueError, match="keys"):
        table.plot("accuracy")
    with pytest.raises(ValueError, match="keys"):
        table.plot(("latency_ms",))  # not measured
    monkeypatch.setattr(plt, "show", lambda: None)
    before = len(plt.get_fignums())
    assert table.plot(("size_bytes", "macs", "accuracy")) is None
    assert len(plt.get_fignums()) == before + 1
    fig = plt.gcf()
    assert all(ax.get_title() and ax.get_ylabel() for ax in fig.axes)
    plt.close("all")


def test_format_bytes():
    assert [measure.format_bytes(n) for n in (0, 1023, 1536, 3 * 1024**2)] == ["0 B", "1023 B", "1.5 KB", "3.0 MB"]
    for bad in (-1, float("inf"), "3", True):
        with pytest.raises(ValueError, match="n must be"):
            measure.format_bytes(bad)


def test_comparison_plot_draws_true_quartiles_and_a_ratio_panel(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda: None)
    rows = [{"name": "a", "params": 100, "macs": 1000, "latency_ms": 2.0, "latency_q25_ms": 1.5,
             "latency_q75_ms": 3.0, "latency_iqr_ms": 1.5, "accuracy": 0.9},
            {"name": "b", "params": 20, "macs": 8000, "latency_ms": 10.0, "latency_iqr_ms": 2.0, "accuracy": 0.91}]
    table = measure.Comparison(rows=rows, baseline="a", threads=1, batch_size=4)
    assert "MACs per batch" in str(table) and "batch of 4" in table.caption()
    assert table.plot(("latency_ms", "accuracy"), ratios=True, accuracy_n=1000) is None
    fig = plt.gcf()
    ax_ratio, ax_lat, ax_acc = fig.axes
    assert ax_ratio.get_yscale() == "log"
    heights = sorted(round(p.get_y() + p.get_height(), 6) for p in ax_ratio.patches)
    assert set(heights) == {0.2, 8.0, 5.0}  # b / a: params, MACs, latency (each bar grows from 1)
    # error bars: row a from its true quartiles, row b (no quartiles) from median ± IQR/2, and the legend says so
    segments = [seg for coll in ax_lat.collections for seg in coll.get_segments()]
    spans = sorted((round(float(s[0][1]), 6), round(float(s[1][1]), 6)) for s in segments)
    assert spans == [(1.5, 3.0), (9.0, 11.0)]
    assert "quartiles not recorded" in ax_lat.get_legend().get_texts()[0].get_text()
    assert "SE" in ax_acc.get_title() and ax_acc.get_ylim()[0] > 50  # zoomed, not 0-100 %
    plt.close("all")
    with pytest.raises(TypeError, match="ratios"):
        table.plot(ratios="yes")
    with pytest.raises(ValueError, match="accuracy_n"):
        table.plot(accuracy_n=0)


def test_compare_keeps_the_latency_quartiles():
    table = measure.compare({"a": nn.Linear(4, 4)}, torch.zeros(2, 4), repeats=5, warmup=0, threads=1)
    r = table.row("a")
    assert r["latency_q25_ms"] <= r["latency_ms"] <= r["latency_q75_ms"]
    assert abs(r["latency_q75_ms"] - r["latency_q25_ms"] - r["latency_iqr_ms"]) < 1e-9
