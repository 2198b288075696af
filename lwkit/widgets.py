"""Interactive views on live models (ipywidgets), with a static plot when no front end is attached.

In JupyterLab the sliders drive the live model. In a headless run (papermill, nbval, `make run`, which
set LWKIT_HEADLESS=1) there is nobody to move a slider, so each view draws a few fixed settings instead.

Every draw function here draws and shows exactly one figure and returns None: `interact` displays whatever
the function returns, so returning the figure as well would show it twice in JupyterLab. Colours come from
the Okabe-Ito palette, paired with hatches or markers so that no meaning rests on colour alone.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os
from collections.abc import Callable

import torch

from lwkit import data

__all__ = ["HATCHES", "MARKERS", "OKABE_ITO", "bit_width_explorer", "browse_predictions", "has_frontend",
           "interactive_or_static", "plot_examples", "plot_history", "predict_proba", "show_image_prediction"]

# Okabe & Ito (2008), "Color Universal Design": blue, orange, bluish green, vermillion, sky blue,
# reddish purple, yellow, black. Distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")  # for bars, so a chart reads in grey
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # for lines
_BIT_RANGE = (2, 8)  # bit_width_explorer: 1-bit symmetric has one level (every weight 0), so start at 2


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


def interactive_or_static(draw: Callable, controls: dict, static_values: list[dict]) -> None:
    """With a front end: display `ipywidgets.interactive(draw, **controls)`; otherwise call `draw(**values)`
    for each static setting. Returns None either way, so a cell ending with this call prints no repr."""
    if not callable(draw):
        raise TypeError(f"draw must be a function that draws one figure, got {type(draw).__name__}")
    if not isinstance(controls, dict) or not all(isinstance(k, str) for k in controls):
        raise TypeError(f"controls must be a dict of parameter name -> widget, got {controls!r:.100}")
    if not isinstance(static_values, list | tuple) or not static_values:
        raise ValueError(f"static_values must be a non-empty list of dicts of draw's arguments, got {static_values!r}")
    params = inspect.signature(draw).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for values in static_values:
        if not isinstance(values, dict):
            raise TypeError(f"static_values must hold dicts of draw's arguments, got {values!r}")
        unknown = [k for k in values if k not in params and not takes_any]
        if unknown:
            raise ValueError(f"static_values names {unknown}, which draw does not take; it takes {list(params)}")
    if has_frontend():
        from IPython.display import display
        from ipywidgets import interactive

        @functools.wraps(draw)  # keeps draw's signature, which interactive reads
        def draw_only(**kwargs) -> None:
            draw(**kwargs)  # whatever draw returns is dropped: interactive would display it a second time

        display(interactive(draw_only, **controls))
        return None
    for values in static_values:
        draw(**values)
    return None


def _check_images(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty batch of images (n, ...), got {got}")


def _check_classes(classes) -> None:
    if isinstance(classes, str) or not hasattr(classes, "__len__") or len(classes) == 0 \
            or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a non-empty sequence of class names, got {classes!r:.100}")


def _check_labels(y, n: int, classes: int, name: str = "y") -> None:
    """Labels must be (n,) integer class indices: one-hot (n, 10), (n, 1) or float labels would broadcast."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of class indices, got {type(y).__name__}")
    if y.dim() != 1 or len(y) != n or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must be a 1-D integer tensor of class indices, one per image (shape ({n},)), "
                         f"got {y.dtype} labels of shape {tuple(y.shape)}; one-hot labels: pass y.argmax(1), "
                         "labels shaped (n, 1): y.squeeze(1), float labels: y.long()")
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{name} must be class indices in [0, {classes}), got values from {int(y.min())} "
                         f"to {int(y.max())}")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (n, classes) of `model` on a batch (run in eval mode; the mode is restored)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_images("x", x)
    device = next(iter([*model.parameters(), *model.buffers()]), x).device
    was_training = model.training
    try:
        model.eval()
        logits = model(x.to(device))
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(x):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model must return (batch, classes) logits for x, got {got}")
    return torch.softmax(logits.float(), dim=1).cpu()


def show_image_prediction(x: torch.Tensor, label: int, probs: torch.Tensor, *, classes=data.CLASSES,
                          title: str = "") -> None:
    """One image with its true label next to a bar chart of the model's class probabilities."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    _check_classes(classes)
    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        raise TypeError(f"x must be one image tensor, got {type(x).__name__}")
    if not isinstance(probs, torch.Tensor) or probs.shape != (len(classes),):
        got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be a 1-D tensor with one probability per class ({len(classes)},), got {got}")
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < len(classes):
        raise ValueError(f"label must be a class index in [0, {len(classes)}), got {label!r}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}")
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(8, 3), gridspec_kw={"width_ratios": [1, 2]})
    ax_img.imshow(data.denormalize(x).squeeze().cpu().numpy(), cmap="gray_r")
    ax_img.set_axis_off()
    pred = int(probs.argmax())
    verdict = "correct" if pred == label else "wrong"
    ax_img.set_title(f"true: {classes[label]}\npredicted: {classes[pred]} ({verdict})", fontsize=9)
    # true class: bluish green, hatched "//"; a wrong prediction: vermillion, hatched "xx"; others: sky blue
    style = {"true": (OKABE_ITO[2], "//"), "wrong": (OKABE_ITO[3], "xx"), "other": (OKABE_ITO[4], "")}
    kinds = ["true" if i == label else ("wrong" if i == pred else "other") for i in range(len(classes))]
    ax_bar.barh(range(len(classes)), probs.detach().cpu().float().numpy() * 100,
                color=[style[k][0] for k in kinds], hatch=[style[k][1] for k in kinds], edgecolor="black")
    ax_bar.set_yticks(range(len(classes)), classes, fontsize=8)
    ax_bar.invert_yaxis()
    ax_bar.set_xlim(0, 100)
    ax_bar.set_xlabel("model confidence (%)")
    ax_bar.set_ylabel("class")
    ax_bar.set_title(title or "class probabilities", fontsize=9)
    names = {"true": "true class", "wrong": "wrong prediction", "other": "other classes"}
    ax_bar.legend(handles=[Patch(facecolor=style[k][0], hatch=style[k][1], edgecolor="black", label=names[k])
                           for k in ("true", "wrong", "other") if k in kinds], fontsize=7, loc="lower right")
    fig.tight_layout()
    plt.show()


def browse_predictions(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, classes=data.CLASSES,
                       static_count: int = 2) -> None:
    """Browse test images with the model's prediction and confidence; optionally only its mistakes."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_images("x", x)
    _check_classes(classes)
    if isinstance(y, torch.Tensor) and y.dim() == 1 and len(y) != len(x):
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    _check_labels(y, len(x), len(classes))
    _check_positive_int("static_count", static_count)
    probs = predict_proba(model, x)
    if probs.shape[1] != len(classes):
        raise ValueError(f"classes has {len(classes)} names but the model returns {probs.shape[1]} logits")
    wrong = (probs.argmax(1) != y.cpu()).nonzero().flatten().tolist()

    def draw(index: int = 0, only_mistakes: bool = False) -> None:
        pool = wrong if only_mistakes and wrong else list(range(len(x)))
        i = pool[index % len(pool)]
        show_image_prediction(x[i], int(y[i]), probs[i], classes=classes,
                              title=f"test image #{i} ({len(wrong)} of {len(x)} misclassified)")

    from ipywidgets import Checkbox, IntSlider

    controls = {"index": IntSlider(value=0, min=0, max=len(x) - 1, description="image"),
                "only_mistakes": Checkbox(value=False, description="only mistakes")}
    statics = [{"index": 0, "only_mistakes": False}] + [{"index": k, "only_mistakes": True}
                                                         for k in range(static_count - 1)]
    interactive_or_static(draw, controls, statics)


def plot_examples(x: torch.Tensor, y: torch.Tensor, *, classes=data.CLASSES, per_class: int = 6) -> None:
    """A grid of `per_class` images of each class, one row per class, labelled."""
    import matplotlib.pyplot as plt

    _check_positive_int("per_class", per_class)
    _check_images("x", x)
    _check_classes(classes)
    _check_labels(y, len(x), len(classes))
    # squeeze=False: always a (classes, per_class) array of axes, even for per_class=1
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9 + 1.6, len(classes) * 0.9),
                             squeeze=False)
    for c, row in enumerate(axes):
        idx = (y == c).nonzero().flatten()[:per_class].tolist()
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(idx):
                ax.imshow(data.denormalize(x[idx[j]]).squeeze().cpu().numpy(), cmap="gray_r")
            if j == 0:
                ax.set_ylabel(f"{c}: {classes[c]}", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{per_class} example{'s' * (per_class > 1)} per class (one row per class)")
    fig.tight_layout()
    plt.show()


def plot_history(histories: dict, *, title: str = "Training curves") -> None:
    """Training loss and validation accuracy per epoch for several `lwkit.train.History` objects."""
    import matplotlib.pyplot as plt

    if not isinstance(histories, dict) or not histories:
        raise ValueError(f"histories must be a non-empty dict of name -> lwkit.train.History, got {histories!r:.100}")
    for name, h in histories.items():
        if not isinstance(getattr(h, "loss", None), list) or not h.loss:
            raise TypeError(f"histories[{name!r}] must be a lwkit.train.History with a non-empty loss list, "
                            f"got {type(h).__name__}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k, (name, h) in enumerate(histories.items()):
        style = {"color": OKABE_ITO[k % len(OKABE_ITO)], "marker": MARKERS[k % len(MARKERS)], "label": name}
        ax_loss.plot(range(1, len(h.loss) + 1), h.loss, **style)
        if getattr(h, "val_acc", None):
            ax_acc.plot(range(1, len(h.val_acc) + 1), [100 * a for a in h.val_acc], **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    ax_loss.legend()
    if ax_acc.lines:
        ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()


# --- quantization views


def _check_setting(values) -> None:
    if not isinstance(values, dict) or set(values) != {"bits", "symmetric", "per_channel"}:
        raise ValueError(f"static_values must hold dicts with keys bits, symmetric, per_channel, got {values!r}")
    bits = values["bits"]
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not _BIT_RANGE[0] <= bits <= _BIT_RANGE[1]:
        raise ValueError(f"static_values bits must be an int in [{_BIT_RANGE[0]}, {_BIT_RANGE[1]}] (the slider's "
                         f"range; 1-bit symmetric has a single level, 0), got {bits!r}")
    if not isinstance(values["symmetric"], bool) or not isinstance(values["per_channel"], bool):
        raise TypeError(f"static_values symmetric and per_channel must be True or False, got {values!r}")


def bit_width_explorer(model: torch.nn.Module, evaluate: Callable, *, layer: str | None = None,
                       static_values: list[dict] | None = None, accuracy_label: str = "accuracy (%)") -> None:
    """Bit-width slider (2-8), symmetric and per-channel switches on a live model.

    Left: per-tensor, one layer's weight histogram with the grid on top; per-channel, the histogram of the
    layer's NARROWEST output channel with its own grid next to the per-tensor grid (the widest channel's
    grid is the per-tensor grid, so it would show nothing). The title gives the layer's error, SQNR and how
    many of the 2^bits levels hold >= 0.1 % of the weights (2-bit symmetric: 3, as only -max reaches -2). Right:
    `evaluate(model) -> accuracy in [0, 1]` (label the split with `accuracy_label`) and size of the whole
    model with every Linear/Conv2d weight quantized that way, next to fp32. The slider starts at 2 bits:
    1-bit symmetric has the single level 0; asymmetric 1-bit can be tried with quant.fake_quantize(w, bits=1).
    """
    import matplotlib.pyplot as plt

    from lwkit import quant

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> accuracy, got {type(evaluate).__name__}")
    if not isinstance(accuracy_label, str) or not accuracy_label.strip():
        raise TypeError(f"accuracy_label must be a non-empty str such as 'validation accuracy (%)', "
                        f"got {accuracy_label!r}")
    layers = quant.quantizable_layers(model)
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str) or None, got {type(layer).__name__}")
    layer = next(iter(layers)) if layer is None else layer
    if layer not in layers:
        raise ValueError(f"layer must be one of {list(layers)}, got {layer!r}")
    if static_values is not None:
        if not isinstance(static_values, list | tuple) or not static_values:
            raise ValueError(f"static_values must be None or a non-empty list of settings, got {static_values!r}")
        for values in static_values:
            _check_setting(values)
    w = layers[layer].weight.detach()
    fp32_acc = evaluate(model)
    if isinstance(fp32_acc, bool) or not isinstance(fp32_acc, numbers.Real) or not 0 <= fp32_acc <= 1:
        raise ValueError(f"evaluate must return an accuracy in [0, 1], got {fp32_acc!r} for the fp32 model")
    fp32_bytes = quant.quantized_size_bytes(model, None)
    narrow = int(w.flatten(1).abs().amax(1).argmin())  # the output channel with the smallest range
    cache: dict = {}

    def draw(bits: int = 4, symmetric: bool = True, per_channel: bool = False) -> None:
        qmin, qmax = quant.qrange(bits, symmetric)
        grids, w_hat, used = {}, None, 0
        for pc in (False, True):
            scale, zero_point = quant.choose_qparams(w, bits=bits, symmetric=symmetric, axis=0 if pc else None)
            q = quant.quantize(w, scale, zero_point, qmin, qmax)
            s = scale.flatten()[narrow] if pc else scale
            z = zero_point.flatten()[narrow] if pc else zero_point
            grids[pc] = quant.dequantize(torch.arange(qmin, qmax + 1), s, z)
            if pc == per_channel:
                w_hat = quant.dequantize(q, scale, zero_point)
                rows = q.flatten(1) if pc else q.reshape(1, -1)  # levels holding >= 0.1 % of a row's weights
                used = max(int((torch.bincount(r - qmin, minlength=qmax - qmin + 1) >= 0.001 * len(r)).sum())
                           for r in rows)
        key = (bits, symmetric, per_channel)
        if key not in cache:
            q_model = quant.quantize_weights(model, bits=bits, per_channel=per_channel, symmetric=symmetric)
            cache[key] = evaluate(q_model), quant.quantized_size_bytes(model, bits, per_channel=per_channel)
        acc, size = cache[key]
        fig, (ax_h, ax_a) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
        shown = w[narrow].flatten() if per_channel else w.flatten()
        ax_h.hist(shown.numpy(), bins=60 if per_channel else 120, color=OKABE_ITO[0], alpha=0.6,
                  label=f"channel {narrow} (narrowest) weights" if per_channel else "fp32 weights")
        styles = {False: (OKABE_ITO[3], "--", "per-tensor grid"), True: (OKABE_ITO[2], "-", "this channel's own grid")}
        for pc in ((False, True) if per_channel else (False,)):
            color, ls, name = styles[pc]
            for i, g in enumerate(grids[pc].tolist() if len(grids[pc]) <= 64 else []):
                ax_h.axvline(g, color=color, ls=ls, lw=1.0, label=name if i == 0 else None)
        if per_channel:  # zoom on the channel, with room to see the per-tensor levels nearest to it
            lim = 1.6 * float(w[narrow].abs().max())
            ax_h.set_xlim(-lim, lim)
        what = f"per-channel (channel {narrow}, the narrowest)" if per_channel else "per-tensor"
        ax_h.set_xlabel("weight value")
        ax_h.set_ylabel("count")
        ax_h.set_title(f"{layer}: {bits}-bit {'symmetric' if symmetric else 'asymmetric'}, {what}\n"
                       f"layer MSE {float(((w - w_hat) ** 2).mean()):.2e}, SQNR {quant.sqnr_db(w, w_hat):.1f} dB\n"
                       f"levels used (≥0.1 % of weights) {used} of {2 ** bits}", fontsize=9)
        ax_h.legend(fontsize=7, loc="upper right")
        bars = ax_a.bar(["fp32", f"{bits}-bit"], [100 * fp32_acc, 100 * acc], color=[OKABE_ITO[0], OKABE_ITO[1]],
                        hatch=["", "//"], edgecolor="black")
        ax_a.bar_label(bars, labels=[f"{100 * fp32_acc:.1f}%\n{fp32_bytes / 1024:.0f} KB",
                                     f"{100 * acc:.1f}%\n{size / 1024:.0f} KB"], fontsize=8)
        ax_a.set(ylim=(0, 115), xlabel="weights", ylabel=accuracy_label,
                 title="whole model: accuracy and weight size")
        fig.tight_layout()
        plt.show()

    from ipywidgets import Checkbox, IntSlider

    controls = {"bits": IntSlider(value=4, min=_BIT_RANGE[0], max=_BIT_RANGE[1], description="bits"),
                "symmetric": Checkbox(value=True, description="symmetric"),
                "per_channel": Checkbox(value=False, description="per-channel")}
    statics = static_values or [{"bits": 8, "symmetric": True, "per_channel": False},
                                {"bits": 3, "symmetric": True, "per_channel": False},
                                {"bits": 3, "symmetric": True, "per_channel": True}]
    interactive_or_static(draw, controls, list(statics))
