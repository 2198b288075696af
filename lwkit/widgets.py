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


# --- quantization views


def bit_width_explorer(model: torch.nn.Module, evaluate: Callable, *, layer: str | None = None,
                       static_values: list[dict] | None = None):
    """Bit-width slider (1-8), symmetric and per-channel switches on a live model.

    Left: one layer's weight histogram with the quantization grid on top (per-tensor grid, or the grid of
    the widest channel). Right: accuracy (`evaluate(model) -> accuracy in [0, 1]`) and size of the whole
    model with every Linear/Conv2d weight quantized that way, next to fp32. The title gives the layer's
    error and SQNR.
    """
    import matplotlib.pyplot as plt

    from lwkit import quant

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> accuracy, got {type(evaluate).__name__}")
    layers = quant.quantizable_layers(model)
    layer = layer or next(iter(layers))
    if layer not in layers:
        raise ValueError(f"layer must be one of {list(layers)}, got {layer!r}")
    w = layers[layer].weight.detach()
    fp32_acc = evaluate(model)
    fp32_bytes = quant.quantized_size_bytes(model, None)
    cache: dict = {}

    def draw(bits: int = 4, symmetric: bool = True, per_channel: bool = False):
        axis = 0 if per_channel else None
        scale, zero_point = quant.choose_qparams(w, bits=bits, symmetric=symmetric, axis=axis)
        qmin, qmax = quant.qrange(bits, symmetric)
        w_hat = quant.dequantize(quant.quantize(w, scale, zero_point, qmin, qmax), scale, zero_point)
        key = (bits, symmetric, per_channel)
        if key not in cache:
            q_model = quant.quantize_weights(model, bits=bits, per_channel=per_channel, symmetric=symmetric)
            cache[key] = evaluate(q_model), quant.quantized_size_bytes(model, bits, per_channel=per_channel)
        acc, size = cache[key]
        c = int(w.flatten(1).abs().amax(1).argmax()) if per_channel else None  # the widest channel
        s = scale.flatten()[c] if per_channel else scale
        z = zero_point.flatten()[c] if per_channel else zero_point
        grid = quant.dequantize(torch.arange(qmin, qmax + 1), s, z)
        fig, (ax_h, ax_a) = plt.subplots(1, 2, figsize=(10, 3.3), gridspec_kw={"width_ratios": [2, 1]})
        ax_h.hist(w.flatten().numpy(), bins=120, color="C0", alpha=0.7, label="fp32 weights")
        for i, g in enumerate(grid.tolist() if len(grid) <= 64 else []):
            ax_h.axvline(g, color="C3", lw=0.8, alpha=0.7, label="grid levels" if i == 0 else None)
        ax_h.set(xlabel="weight value", ylabel="count",
                 title=f"{layer}: {bits}-bit {'symmetric' if symmetric else 'asymmetric'}, "
                       f"{'per-channel (grid of the widest channel)' if per_channel else 'per-tensor'}\n"
                       f"MSE {float(((w - w_hat) ** 2).mean()):.2e}, SQNR {quant.sqnr_db(w, w_hat):.1f} dB")
        ax_h.legend(fontsize=8)
        bars = ax_a.bar(["fp32", f"{bits}-bit"], [100 * fp32_acc, 100 * acc], color=["C0", "C1"])
        ax_a.bar_label(bars, labels=[f"{100 * fp32_acc:.1f}%\n{fp32_bytes / 1024:.0f} KB",
                                     f"{100 * acc:.1f}%\n{size / 1024:.0f} KB"], fontsize=8)
        ax_a.set(ylim=(0, 115), ylabel="accuracy (%)", title="whole model: accuracy and weight size")
        fig.tight_layout()
        plt.show()
        return fig

    from ipywidgets import Checkbox, IntSlider

    controls = {"bits": IntSlider(value=4, min=1, max=8, description="bits"),
                "symmetric": Checkbox(value=True, description="symmetric"),
                "per_channel": Checkbox(value=False, description="per-channel")}
    statics = static_values or [{"bits": 8, "symmetric": True, "per_channel": False},
                                {"bits": 3, "symmetric": True, "per_channel": False},
                                {"bits": 3, "symmetric": True, "per_channel": True}]
    return interactive_or_static(draw, controls, statics)
