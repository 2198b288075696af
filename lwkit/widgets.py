"""Interactive views on live models (ipywidgets), with a static plot when no front end is attached.

In JupyterLab the sliders drive the live model. In a headless run (papermill, nbval, `make run`, which
set LWKIT_HEADLESS=1) there is nobody to move a slider, so each view draws a few fixed settings instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from lwkit import data


def has_frontend() -> bool:
    """True inside a Jupyter kernel with someone to move the sliders (not a headless run)."""
    if os.environ.get("LWKIT_HEADLESS") == "1":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def interactive_or_static(draw: Callable, controls: dict, static_values: list[dict]):
    """`interact(draw, **controls)` with a front end; otherwise call `draw(**values)` for each static setting."""
    if has_frontend():
        from ipywidgets import interact

        return interact(draw, **controls)
    for values in static_values:
        draw(**values)
    return None


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of `model` on a batch (model put in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    return torch.softmax(model(x.to(device)), dim=1).cpu()


def show_image_prediction(x: torch.Tensor, label: int, probs: torch.Tensor, *, classes=data.CLASSES, title=""):
    """One image with its true label next to a bar chart of the model's class probabilities."""
    import matplotlib.pyplot as plt

    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(8, 3), gridspec_kw={"width_ratios": [1, 2]})
    ax_img.imshow(data.denormalize(x).squeeze(), cmap="gray_r")
    ax_img.set_axis_off()
    pred = int(probs.argmax())
    verdict = "correct" if pred == label else "wrong"
    ax_img.set_title(f"true: {classes[label]}\npredicted: {classes[pred]} ({verdict})", fontsize=9)
    colors = ["C2" if i == label else ("C3" if i == pred else "C0") for i in range(len(classes))]
    ax_bar.barh(range(len(classes)), probs.numpy() * 100, color=colors)
    ax_bar.set_yticks(range(len(classes)), classes, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 100)
    ax_bar.set_xlabel("model confidence (%)")
    ax_bar.set_title(title or "class probabilities (green: true class, red: wrong prediction)", fontsize=9)
    fig.tight_layout()
    plt.show()
    return fig


def browse_predictions(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, classes=data.CLASSES,
                       static_count: int = 2):
    """Browse test images with the model's prediction and confidence; optionally only its mistakes."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    probs = predict_proba(model, x)
    wrong = (probs.argmax(1) != y).nonzero().flatten().tolist()

    def draw(index: int = 0, only_mistakes: bool = False):
        pool = wrong if only_mistakes and wrong else list(range(len(x)))
        i = pool[index % len(pool)]
        show_image_prediction(x[i], int(y[i]), probs[i], classes=classes,
                              title=f"test image #{i} ({len(wrong)} of {len(x)} misclassified)")

    from ipywidgets import Checkbox, IntSlider

    controls = {"index": IntSlider(value=0, min=0, max=len(x) - 1, description="image"),
                "only_mistakes": Checkbox(value=False, description="only mistakes")}
    statics = [{"index": 0, "only_mistakes": False}] + [{"index": k, "only_mistakes": True}
                                                         for k in range(static_count - 1)]
    return interactive_or_static(draw, controls, statics)


def plot_examples(x: torch.Tensor, y: torch.Tensor, *, classes=data.CLASSES, per_class: int = 6):
    """A grid of `per_class` images of each class, one row per class, labelled."""
    import matplotlib.pyplot as plt

    if per_class <= 0:
        raise ValueError(f"per_class must be a positive int, got {per_class}")
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9 + 1.6, len(classes) * 0.9))
    for c, row in enumerate(axes):
        idx = (y == c).nonzero().flatten()[:per_class].tolist()
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(idx):
                ax.imshow(data.denormalize(x[idx[j]]).squeeze(), cmap="gray_r")
            if j == 0:
                ax.set_ylabel(f"{c}: {classes[c]}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Fashion-MNIST: one row per class")
    fig.tight_layout()
    plt.show()
    return fig


def plot_history(histories: dict, *, title: str = "Training curves"):
    """Training loss and validation accuracy per epoch for several `lwkit.train.History` objects."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, h in histories.items():
        epochs = range(1, len(h.loss) + 1)
        ax_loss.plot(epochs, h.loss, marker="o", label=name)
        if h.val_acc:
            ax_acc.plot(epochs, [100 * a for a in h.val_acc], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    ax_loss.legend()
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    return fig
