import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lwkit import data, models, train, widgets  # noqa: E402


def test_headless_means_no_frontend(monkeypatch):
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    assert widgets.has_frontend() is False


def test_interactive_or_static_draws_each_static_setting(monkeypatch):
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    seen = []
    assert widgets.interactive_or_static(lambda a, b: seen.append((a, b)), {}, [{"a": 1, "b": 2}, {"a": 3, "b": 4}]) is None
    assert seen == [(1, 2), (3, 4)]


def test_browse_predictions_static_figures(monkeypatch):
    monkeypatch.setenv("LWKIT_HEADLESS", "1")
    monkeypatch.setattr(plt, "show", lambda: None)
    s = data.fashion_mnist()
    before = len(plt.get_fignums())
    widgets.browse_predictions(models.build("mlp"), s.x_test[:20], s.y_test[:20], static_count=2)
    assert len(plt.get_fignums()) == before + 2
    plt.close("all")


def test_plots_have_titles_and_labels(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda: None)
    s = data.fashion_mnist()
    fig = widgets.plot_examples(s.x_test, s.y_test, per_class=2)
    assert fig._suptitle.get_text()
    h = train.History(loss=[1.0, 0.5], val_acc=[0.5, 0.7])
    fig = widgets.plot_history({"m": h})
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in fig.axes)
    plt.close("all")


def test_bad_inputs():
    with pytest.raises(TypeError, match="model"):
        widgets.browse_predictions("model", torch.zeros(2, 1, 28, 28), torch.zeros(2))
    with pytest.raises(ValueError, match="equal length"):
        widgets.browse_predictions(models.build("mlp"), torch.zeros(2, 1, 28, 28), torch.zeros(3))
    with pytest.raises(ValueError, match="per_class"):
        widgets.plot_examples(torch.zeros(2, 1, 28, 28), torch.zeros(2), per_class=0)
