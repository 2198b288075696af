"""Weight sharing (权值共享), Deep Compression's second stage (Han et al. 2016): k-means per layer on the
nonzero weights (`lwkit.quant`), then centroid fine-tuning that keeps the zeros and the groups.

    shared = share_weights(model, bits=5)
    finetune_shared(model, shared, train_loader, epochs=2)

`lwkit.huffman.save_compressed` then Huffman-codes the result into a file. The names are also reachable as
`lwkit.huffman.share_weights` etc.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lwkit import quant, sparse, train

__all__ = ["share_weights", "group_labels", "finetune_shared"]


def _weights(model: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = sparse.prunable_layers(model)
    if not layers:
        raise ValueError("model has no Linear/Conv2d layer to share weights in")
    return layers


def _bits_per_layer(bits, layers: dict) -> dict[str, int]:
    if isinstance(bits, dict):
        unknown = sorted(set(bits) - set(layers))
        if unknown:
            raise ValueError(f"bits names unknown layers {unknown}; layers are {list(layers)}")
        missing = sorted(set(layers) - set(bits))
        if missing:
            raise ValueError(f"bits must give every layer a bit-width; missing {missing}")
        per = dict(bits)
    else:
        per = dict.fromkeys(layers, bits)
    for name, b in per.items():
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
            raise ValueError(f"bits for layer {name!r} must be an int in [1, 8], got {b!r}")
    return per


def share_weights(model: nn.Module, bits: int | dict[str, int] = 5, *, iters: int = 25) -> dict[str, torch.Tensor]:
    """k-means weight sharing in place: each layer's nonzero weights become one of 2**bits centroids.

    Zeros (pruned weights) stay zero and are not clustered. Returns layer -> cluster label of every weight
    (-1 where the weight is zero), what `finetune_shared` needs to keep the groups together.
    """
    layers = _weights(model)
    per = _bits_per_layer(bits, layers)
    labels = {}
    with torch.no_grad():
        for name, layer in layers.items():
            w = layer.weight
            nz = w != 0
            lab = torch.full(w.shape, -1, dtype=torch.long)
            if nz.any():
                centroids, idx = quant.kmeans_quantize(w[nz], bits=per[name], iters=iters)  # on nonzeros only
                w[nz] = centroids[idx].to(w.dtype)
                lab[nz] = idx
            labels[name] = lab
    return labels


def group_labels(model: nn.Module) -> dict[str, torch.Tensor]:
    """The labels `share_weights` would return for a model whose weights are already shared: each distinct
    nonzero value of a layer is one group (-1 where the weight is zero)."""
    labels = {}
    for name, layer in _weights(model).items():
        w = layer.weight.detach()
        values, inverse = torch.unique(w, return_inverse=True)  # values sorted, so 0 has one index
        lab = inverse.clone()
        zero = (values == 0).nonzero().flatten()
        if len(zero):
            lab = torch.where(inverse > zero[0], inverse - 1, inverse)  # number the nonzero values 0..k-1
        lab[w == 0] = -1
        labels[name] = lab
    return labels


def _project(model: nn.Module, labels: dict[str, torch.Tensor]) -> None:
    """Each group takes the mean of its members; pruned weights go back to zero."""
    layers = sparse.prunable_layers(model)
    with torch.no_grad():
        for name, lab in labels.items():
            w, keep = layers[name].weight, lab >= 0
            k = int(lab.max()) + 1 if keep.any() else 0
            sums = torch.zeros(k).index_add_(0, lab[keep], w[keep].float())  # (k,)
            counts = torch.bincount(lab[keep], minlength=k).clamp(min=1)  # (k,)
            w[keep] = (sums / counts)[lab[keep]].to(w.dtype)
            w[~keep] = 0


def finetune_shared(model: nn.Module, labels: dict[str, torch.Tensor], train_loader, *, epochs: int = 2,
                    lr: float = 1e-3, **fit_kwargs) -> train.History:
    """Fine-tune the shared values (centroids) with `lwkit.train.fit`, keeping every group shared.

    Deep Compression sums the gradients of a group into its centroid. Here every weight takes its optimiser
    step, then each group is set to the mean of its members (and pruned weights to zero): the centroid moves
    by the group's mean update, and the model always holds at most 2**bits values per layer.
    """
    layers = _weights(model)
    if not isinstance(labels, dict) or set(labels) - set(layers):
        raise ValueError(f"labels must be the dict returned by share_weights for this model (layers {list(layers)})")
    for name, lab in labels.items():
        if not isinstance(lab, torch.Tensor) or lab.shape != layers[name].weight.shape:
            raise ValueError(f"labels[{name!r}] must be a tensor of shape {tuple(layers[name].weight.shape)}")
    if "after_step" in fit_kwargs:
        raise TypeError("finetune_shared sets after_step itself (to keep the groups shared)")
    saved = copy.deepcopy(model.state_dict())
    done = False
    try:
        history = train.fit(model, train_loader, epochs=epochs, lr=lr, after_step=lambda m: _project(m, labels),
                            **fit_kwargs)
        done = True
    finally:
        if not done:  # an error or an interrupt: put the model back as it was
            model.load_state_dict(saved)
    return history
