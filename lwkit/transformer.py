"""Compressing a BERT encoder: score and remove attention heads, drop layers, distil into fewer layers.

- Head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?"): put a gate
  xi_h = 1 on every head's output and score each head by |dL/dxi_h| summed over data, normalised per layer.
- Head pruning really slices: the query/key/value rows and the output projection's input columns of a
  removed head go, so the matrices get smaller (transformers 5 no longer ships `prune_heads`).
- Layer dropping (Sajjad et al. 2020) keeps a chosen list of layers; a DistilBERT-style student starts as
  the teacher with one layer out of two and is distilled on embeddings, logits and hidden states.

Works on transformers' BertModel (and anything with the same `encoder.layer[i].attention` layout).
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lwkit.distill import kd_loss

__all__ = [
    "encoder_layers", "head_shape", "masked_heads", "head_importance", "heads_to_keep", "prune_heads",
    "count_heads", "drop_layers", "alternate_layers", "student_from_teacher", "hidden_state_loss",
    "embedding_distill_loss", "train_steps",
]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer layers of a BertModel, or of a model that holds one (e.g. `model.bert`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        layers = getattr(getattr(module, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "attention"):
            return layers
    raise TypeError(f"model must be (or contain) a BERT encoder with .encoder.layer[i].attention, "
                    f"got {type(model).__name__}")


def _self_attention(layer: nn.Module) -> nn.Module:
    return layer.attention.self


def head_shape(model: nn.Module) -> tuple[int, int]:
    """(layers, heads per layer) of the unpruned model; a pruned layer reports its remaining heads in count_heads."""
    layers = encoder_layers(model)
    return len(layers), max(_self_attention(layer).num_attention_heads for layer in layers)


def count_heads(model: nn.Module) -> list[int]:
    """Heads left in each layer."""
    return [_self_attention(layer).num_attention_heads for layer in encoder_layers(model)]


def _check_mask(mask, layers: int, heads: Sequence[int], name: str = "mask") -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape (layers, heads), got {type(mask).__name__}")
    if mask.shape != (layers, max(heads)):
        raise ValueError(f"{name} must have shape ({layers}, {max(heads)}) (layers, heads), got {tuple(mask.shape)}")
    return mask


# ---------------------------------------------------------------------------------------------------------
# Head gates: multiply each head's context vector by a number before the output projection


@contextlib.contextmanager
def masked_heads(model: nn.Module, mask: torch.Tensor):
    """Inside the block, head h of layer l is multiplied by mask[l, h] (0 switches it off, 1 leaves it).

    The gate sits on the input of `attention.output.dense`, where the heads' outputs are concatenated,
    so a float mask with requires_grad gives d loss / d gate: Michel et al.'s importance.
    """
    layers = encoder_layers(model)
    heads = count_heads(model)
    _check_mask(mask, len(layers), heads)
    if any(h != heads[0] for h in heads):
        raise ValueError(f"masked_heads needs an unpruned model (same heads in every layer), got {heads}")
    handles = []

    def gate(row: int):
        def hook(module, args):
            context = args[0]  # (batch, seq, heads * head_dim)
            shape = context.shape
            per_head = context.view(*shape[:-1], heads[row], -1)  # (batch, seq, heads, head_dim)
            return ((per_head * mask[row].to(context.dtype).view(-1, 1)).view(shape),) + tuple(args[1:])
        return hook

    try:
        for row, layer in enumerate(layers):
            handles.append(layer.attention.output.dense.register_forward_pre_hook(gate(row)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def head_importance(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], batches: Iterable, *,
                    normalize: bool = True) -> torch.Tensor:
    """Michel et al. (2019): importance[l, h] = sum over batches of |d loss / d gate[l, h]| at gate = 1.

    Args:
        model: the BERT (or a model containing it) whose heads are scored.
        loss_fn: loss_fn(batch) -> scalar loss, running the model on one batch (e.g. cross-entropy of a
            classifier built on `model`).
        batches: an iterable of whatever `loss_fn` takes.
        normalize: divide each layer's scores by their L2 norm, as the paper does, so layers compare.
    Returns:
        (layers, heads) float tensor, higher = more important.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable(batch) -> loss, got {type(loss_fn).__name__}")
    layers, heads = head_shape(model)
    gates = torch.ones(layers, heads, requires_grad=True)
    scores = torch.zeros(layers, heads)
    seen = 0
    params = [p for p in model.parameters()]
    saved = [p.requires_grad for p in params]
    try:
        for p in params:  # only the gates need gradients: faster, and the weights' .grad stay untouched
            p.requires_grad_(False)
        with masked_heads(model, gates), torch.enable_grad():
            for batch in batches:
                loss = loss_fn(batch)
                (grad,) = torch.autograd.grad(loss, gates)
                scores += grad.abs()
                seen += 1
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
    if seen == 0:
        raise ValueError("batches must yield at least one batch")
    if normalize:
        scores = scores / scores.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return scores


def heads_to_keep(importance: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean (layers, heads) mask that removes the `fraction` least important heads overall.

    Every layer keeps at least its most important head (a layer with no heads has nothing to attend with).
    """
    if not isinstance(importance, torch.Tensor) or importance.dim() != 2:
        raise TypeError(f"importance must be a (layers, heads) tensor, got {getattr(importance, 'shape', importance)!r}")
    layers, heads = importance.shape
    limit = 1 - 1 / heads
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= limit:
        raise ValueError(f"fraction must be a number in [0, {limit:.3f}] (each layer keeps one head), got {fraction!r}")
    n_prune = int(round(fraction * layers * heads))
    keep = torch.ones(layers, heads, dtype=torch.bool)
    protected = importance.argmax(dim=1)  # (layers,) the best head of each layer is never removed
    order = importance.flatten().argsort()  # least important first
    for flat in order.tolist():
        if n_prune == 0:
            break
        row, col = divmod(flat, heads)
        if col != int(protected[row]):
            keep[row, col] = False
            n_prune -= 1
    return keep


# ---------------------------------------------------------------------------------------------------------
# Physical pruning and layer dropping


def _slice_linear(linear: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (dim=0, outputs) or columns (dim=1, inputs) `idx` of `linear`."""
    weight = linear.weight.detach().index_select(dim, idx).clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if dim == 1 else linear.bias.detach()[idx])
    return new


@torch.no_grad()
def prune_heads(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Remove the heads where `keep` is False (in place; returns the model).

    Per layer: keep_idxs = the head_dim output rows of q, k and v of each kept head, and the same input
    columns of the output projection. The remaining heads compute exactly what they did before.
    """
    layers = encoder_layers(model)
    heads = count_heads(model)
    _check_mask(keep, len(layers), heads, name="keep")
    if keep.dtype != torch.bool:
        raise TypeError(f"keep must be a bool tensor (True = keep the head), got dtype {keep.dtype}")
    if any(h != heads[0] for h in heads):
        raise ValueError(f"prune_heads needs an unpruned model (same heads in every layer), got {heads}")
    empty = [i for i in range(len(layers)) if not keep[i].any()]
    if empty:
        raise ValueError(f"keep must keep at least one head per layer; layers {empty} would have none")
    for row, layer in enumerate(layers):  # everything is validated: now change the model
        attn = _self_attention(layer)
        d = attn.attention_head_size
        kept = keep[row].nonzero().flatten()  # (kept heads,)
        idx = (kept.view(-1, 1) * d + torch.arange(d)).flatten()  # (kept heads * head_dim,)
        for name in ("query", "key", "value"):
            setattr(attn, name, _slice_linear(getattr(attn, name), idx, dim=0))
        layer.attention.output.dense = _slice_linear(layer.attention.output.dense, idx, dim=1)
        attn.num_attention_heads = len(kept)
        attn.all_head_size = len(kept) * d
    return model


def drop_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only the transformer layers with these indices, in order (in place; returns the model)."""
    layers = encoder_layers(model)
    n = len(layers)
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise TypeError(f"keep must be a list of layer indices, got {type(keep).__name__}")
    if (not keep or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n for i in keep)
            or list(keep) != sorted(set(keep))):
        raise ValueError(f"keep must be a non-empty increasing list of distinct layer indices in [0, {n - 1}], "
                         f"got {list(keep)!r}")
    owner = next(m for m in model.modules() if getattr(getattr(m, "encoder", None), "layer", None) is layers)
    owner.encoder.layer = nn.ModuleList([layers[i] for i in keep])
    if hasattr(owner, "config"):
        owner.config.num_hidden_layers = len(keep)
    return model


def alternate_layers(total: int, kept: int) -> list[int]:
    """`kept` evenly spaced layer indices out of `total`, starting at 0 (DistilBERT: one layer out of two)."""
    for name, v in (("total", total), ("kept", kept)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if kept > total:
        raise ValueError(f"kept must be <= total ({total}), got {kept}")
    return [round(i * total / kept) for i in range(kept)]


def student_from_teacher(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A deep copy of the teacher with only `layers` kept: the DistilBERT initialisation."""
    return drop_layers(copy.deepcopy(teacher), layers)


# ---------------------------------------------------------------------------------------------------------
# Distillation losses for encoders


def hidden_state_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                      attention_mask: torch.Tensor, layer_map: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Mean over (student, teacher) layer pairs of 1 - cosine of their hidden states, over real tokens.

    DistilBERT's cosine loss on hidden states, generalised to a layer map: pair (i, j) aligns student
    hidden state i with teacher hidden state j (index 0 = the embeddings output, as transformers numbers them).
    """
    if not layer_map:
        raise ValueError("layer_map must name at least one (student, teacher) pair")
    mask = attention_mask.bool()  # (batch, seq)
    total = 0.0
    for i, j in layer_map:
        if not (0 <= i < len(student_states) and 0 <= j < len(teacher_states)):
            raise ValueError(f"layer_map pair ({i}, {j}) is out of range: the student has {len(student_states)} "
                             f"hidden states, the teacher {len(teacher_states)}")
        s, t = student_states[i][mask], teacher_states[j][mask].detach()  # (real tokens, hidden)
        total = total + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    return total / len(layer_map)


def embedding_distill_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, student_logits: torch.Tensor,
                           teacher_logits: torch.Tensor, labels: torch.Tensor, *, beta: float = 1.0,
                           temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """kd_loss on the task logits + beta * (1 - cosine) between student and teacher sentence embeddings."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or beta < 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    if student_emb.shape != teacher_emb.shape:
        raise ValueError(f"student_emb and teacher_emb must have the same shape, got {tuple(student_emb.shape)} "
                         f"and {tuple(teacher_emb.shape)}")
    cos = F.cosine_similarity(student_emb, teacher_emb.detach(), dim=-1)  # (batch,)
    return kd_loss(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha) + beta * (1 - cos).mean()


def train_steps(model: nn.Module, batches: Iterable, loss_fn: Callable, *, lr: float = 5e-5,
                epochs: int = 1, weight_decay: float = 0.01) -> list[float]:
    """AdamW over the trainable parameters: for each epoch, for each batch, loss_fn(model, batch).backward().

    `batches` is re-iterated every epoch (a list, or anything iterable more than once). Returns the losses.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True): unfreeze something first")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    try:
        for _ in range(epochs):
            for batch in batches:
                opt.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses
