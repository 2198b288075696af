import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lwkit import data, models, train, widgets  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """plt.show() does nothing; yields a function giving the figures opened since the test started."""
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    monkeypatch.setattr(plt, "show", lambda: None)
    plt.close("all")
    yield lambda: [plt.figure(n) for n in plt.get_fignums()]
    plt.close("all")


@pytest.fixture
def frontend(monkeypatch):
    """Pretend a JupyterLab front end is attached; collects what interactive_or_static displays."""
    shown = []
    monkeypatch.setattr(widgets, "has_frontend", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    monkeypatch.setattr(plt, "show", lambda: None)
    yield shown
    plt.close("all")


def images(n=20):
    s = data.fashion_mnist()
    return s.x_test[:n], s.y_test[:n]


def palette_colors(ax):
    okabe = {mcolors.to_hex(c) for c in widgets.OKABE_ITO}
    return {mcolors.to_hex(p.get_facecolor()) for p in ax.patches}, okabe


def test_headless_means_no_frontend(monkeypatch):
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    assert widgets.has_frontend() is False


def test_interactive_or_static_draws_each_static_setting(monkeypatch):
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    seen = []
    assert widgets.interactive_or_static(lambda a, b: seen.append((a, b)), {}, [{"a": 1, "b": 2}, {"a": 3, "b": 4}]) is None
    assert seen == [(1, 2), (3, 4)]


def test_review_interactive_or_static_returns_none_and_displays_the_widget_once(frontend):
    # issue #9: interact(...) returned the draw function, so a cell ending with the call printed <function ...>,
    # and a draw that returns its figure was displayed a second time by interact.
    from ipywidgets import IntSlider, interactive

    calls = []

    def draw(x: int = 1):
        calls.append(x)
        fig = plt.figure()
        plt.show()
        return fig  # a draw function that returns its figure: must not be displayed again

    result = widgets.interactive_or_static(draw, {"x": IntSlider(value=1, min=0, max=3)}, [{"x": 2}])
    assert result is None
    assert len(frontend) == 1 and isinstance(frontend[0], interactive)
    assert frontend[0].result is None  # what interactive would display after the figure
    assert calls == [1]  # drawn once, with the slider's value
    frontend[0].children[0].value = 3  # moving the slider redraws with the new value
    assert calls == [1, 3]


def test_interactive_or_static_bad_args():
    with pytest.raises(TypeError, match="draw"):
        widgets.interactive_or_static(None, {}, [{}])
    with pytest.raises(TypeError, match="controls"):
        widgets.interactive_or_static(lambda: None, [], [{}])
    with pytest.raises(ValueError, match="static_values"):
        widgets.interactive_or_static(lambda: None, {}, [])
    with pytest.raises(ValueError, match="static_values"):
        widgets.interactive_or_static(lambda a: None, {}, [{"b": 1}])


def test_browse_predictions_static_figures(figures):
    x, y = images()
    assert widgets.browse_predictions(models.build("mlp"), x, y, static_count=2) is None
    assert len(figures()) == 2


def test_show_image_prediction_one_figure_okabe_ito_and_a_legend(figures):
    x, y = images(1)
    probs = torch.full((10,), 0.02)
    probs[(int(y[0]) + 1) % 10] = 0.82  # a wrong prediction
    assert widgets.show_image_prediction(x[0], int(y[0]), probs) is None
    (fig,) = figures()
    bars = fig.axes[1]
    used, okabe = palette_colors(bars)
    assert used <= okabe and len(used) == 3  # true class, wrong prediction, others
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["true class", "wrong prediction", "other classes"]
    assert bars.get_xlabel() and bars.get_ylabel() and bars.get_title()


def test_plots_have_titles_and_labels(figures):
    x, y = images(200)
    assert widgets.plot_examples(x, y, per_class=2) is None
    h = train.History(loss=[1.0, 0.5], val_acc=[0.5, 0.7])
    assert widgets.plot_history({"m": h, "n": h}) is None
    examples, history = figures()
    assert examples._suptitle.get_text()
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in history.axes)
    assert all(ax.get_legend() is not None for ax in history.axes)
    lines = history.axes[0].lines
    assert {mcolors.to_hex(line.get_color()) for line in lines} <= {mcolors.to_hex(c) for c in widgets.OKABE_ITO}
    assert len({line.get_marker() for line in lines}) == 2  # readable in grey


def test_review_plot_examples_per_class_1(figures):
    # review: per_class=1 crashed with "'Axes' object is not iterable" (plt.subplots squeezed the axes)
    x, y = images(200)
    widgets.plot_examples(x, y, per_class=1)
    (fig,) = figures()
    assert len(fig.axes) == 10 and len(fig.axes[0].images) == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="per_class"):
            widgets.plot_examples(x, y, per_class=bad)


@pytest.mark.parametrize("bad_labels", ["one_hot", "column", "float"])
def test_review_label_shapes_rejected(bad_labels, figures):
    # one-hot (n, 10), (n, 1) or float labels broadcast against (n,) predictions: wrong counts, silently
    x, y = images()
    labels = {"one_hot": torch.eye(10)[y], "column": y[:, None], "float": y.float()}[bad_labels]
    with pytest.raises(ValueError, match="1-D integer tensor of class indices"):
        widgets.browse_predictions(models.build("mlp"), x, labels)
    with pytest.raises(ValueError, match="1-D integer tensor of class indices"):
        widgets.plot_examples(x, labels, per_class=1)
    assert figures() == []


def test_labels_out_of_range_and_class_count():
    x, y = images()
    with pytest.raises(ValueError, match="class indices in"):
        widgets.browse_predictions(models.build("mlp"), x, y + 10)
    with pytest.raises(ValueError, match="classes"):
        widgets.browse_predictions(models.build("mlp"), x, y % 3, classes=("a", "b", "c"))


def test_predict_proba_restores_mode_and_needs_no_parameters():
    model = models.build("mlp").train()
    probs = widgets.predict_proba(model, torch.zeros(3, 1, 28, 28))
    assert model.training and probs.shape == (3, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert widgets.predict_proba(nn.Flatten(), torch.zeros(2, 5)).shape == (2, 5)  # no parameters, no crash


def test_bit_width_explorer_offers_no_1_bit_symmetric(frontend):
    from ipywidgets import IntSlider

    torch.manual_seed(0)
    net = models.LeNet300100()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    score = lambda m: (m.eval()(x).argmax(1) == y).float().mean().item()  # noqa: E731
    assert widgets.bit_width_explorer(net, score, layer="fc3") is None
    (widget,) = frontend
    slider = next(c for c in widget.children if isinstance(c, IntSlider))
    assert (slider.min, slider.max) == (2, 8)
    assert widget.result is None


def test_bit_width_explorer_bad_args(figures):
    net = models.LeNet300100()
    ok = lambda m: 0.5  # noqa: E731
    with pytest.raises(ValueError, match="bits"):
        widgets.bit_width_explorer(net, ok, static_values=[{"bits": 1, "symmetric": True, "per_channel": False}])
    with pytest.raises(ValueError, match="static_values"):
        widgets.bit_width_explorer(net, ok, static_values=[{"bits": 4}])
    with pytest.raises(ValueError, match="evaluate must return an accuracy"):
        widgets.bit_width_explorer(net, lambda m: 88.0)
    with pytest.raises(TypeError, match="layer"):
        widgets.bit_width_explorer(net, ok, layer=3)
    assert figures() == []


def test_bad_inputs():
    with pytest.raises(TypeError, match="model"):
        widgets.browse_predictions("model", torch.zeros(2, 1, 28, 28), torch.zeros(2))
    with pytest.raises(ValueError, match="equal length"):
        widgets.browse_predictions(models.build("mlp"), torch.zeros(2, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="per_class"):
        widgets.plot_examples(torch.zeros(2, 1, 28, 28), torch.zeros(2), per_class=0)
    with pytest.raises(ValueError, match="histories"):
        widgets.plot_history({})
    with pytest.raises(TypeError, match="histories"):
        widgets.plot_history({"m": [1.0, 0.5]})
    with pytest.raises(ValueError, match="label"):
        widgets.show_image_prediction(torch.zeros(1, 28, 28), 10, torch.full((10,), 0.1))
    with pytest.raises(ValueError, match="probs"):
        widgets.show_image_prediction(torch.zeros(1, 28, 28), 1, torch.full((9,), 0.1))


def test_review_browse_predictions_fallback_keeps_a_colour_key(figures):
    # review (00): the headless frames must keep the legend, in Okabe-Ito colours with hatches (not red vs green)
    x, y = images()
    widgets.browse_predictions(models.build("mlp"), x, y, static_count=2)
    for fig in figures():
        bars = fig.axes[1]
        used, okabe = palette_colors(bars)
        assert used <= okabe and bars.get_legend() is not None
        assert {p.get_hatch() for p in bars.patches} - {None, ""}, "a second cue besides colour"


def test_plot_history_draws_validation_accuracy_next_to_loss(figures):
    widgets.plot_history({"m": train.History(loss=[1.0, 0.5, 0.4], val_acc=[0.5, 0.7, 0.8])})
    (fig,) = figures()
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 1 and list(acc_ax.lines[0].get_ydata()) == [50.0, 70.0, 80.0]
    assert "validation" in acc_ax.get_ylabel()


def _explorer_net():
    torch.manual_seed(0)
    net = models.LeNet300100()
    with torch.no_grad():
        net.fc1.weight[7] *= 0.05  # one narrow row
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    return net, lambda m: (m.eval()(x).argmax(1) == y).float().mean().item()


def test_review_bit_width_explorer_one_figure_per_setting_narrow_channel_and_label(figures):
    # review (03 F2, 04 F15): the per-channel panel showed the widest channel's grid, identical to the
    # per-tensor grid; it must show a narrow channel with its own grid AND the per-tensor grid
    net, score = _explorer_net()
    settings_ = [{"bits": 3, "symmetric": True, "per_channel": False},
                 {"bits": 3, "symmetric": True, "per_channel": True},
                 {"bits": 2, "symmetric": True, "per_channel": False}]
    assert widgets.bit_width_explorer(net, score, layer="fc1", static_values=settings_,
                                      accuracy_label="validation accuracy (%)") is None
    tensor_fig, channel_fig, two_bit_fig = figures()  # exactly one figure per setting
    hist = channel_fig.axes[0]
    labels = [t.get_text() for t in hist.get_legend().get_texts()]
    assert "channel 7 (narrowest) weights" in labels and "per-tensor grid" in labels
    assert "this channel's own grid" in labels
    own = [ln.get_xdata()[0] for ln in hist.lines if ln.get_linestyle() == "-"]
    per_tensor = [ln.get_xdata()[0] for ln in hist.lines if ln.get_linestyle() == "--"]
    assert max(own) < 0.2 * max(per_tensor)  # the narrow row's own step is much finer
    assert all(f.axes[1].get_ylabel() == "validation accuracy (%)" for f in (tensor_fig, channel_fig))
    assert "levels used (≥0.1 % of weights) 3 of 4" in two_bit_fig.axes[0].get_title()  # 2-bit symmetric: -2 barely reached


def test_bit_width_explorer_default_label_and_bad_label(figures):
    net, score = _explorer_net()
    widgets.bit_width_explorer(net, score, static_values=[{"bits": 8, "symmetric": True, "per_channel": False}])
    (fig,) = figures()
    assert fig.axes[1].get_ylabel() == "accuracy (%)"
    for bad in (3, "", None):
        with pytest.raises(TypeError, match="accuracy_label"):
            widgets.bit_width_explorer(net, score, accuracy_label=bad)


def test_bit_width_explorer_draw_returns_none_in_jupyter(frontend):
    net, score = _explorer_net()
    widgets.bit_width_explorer(net, score, layer="fc1")
    (widget,) = frontend
    widget.children[2].value = True  # per-channel switch
    assert widget.result is None
