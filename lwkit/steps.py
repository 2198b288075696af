"""The steps of a compression recipe (`lwkit.pipeline.Recipe`): plain dataclasses, each built on one course module
and checked when it is made.

    Prune     lwkit.prune   magnitude/random masks, global or per layer, optional fine-tuning with masks held
    FineTune  lwkit.prune   training that keeps pruned weights at zero
    Distill   lwkit.distill the model as it entered the recipe teaches the current one (masks held)
    LoRA      lwkit.peft    low-rank adapters trained, then merged (masks held)
    Quantize  lwkit.mixed / lwkit.huffman / lwkit.qat   uniform or k-means weights, optional int activations
    Export    lwkit.deploy / lwkit.huffman   a real file: ONNX, ExecuTorch .pte, or the Huffman-coded file

`STEPS` maps each step's name (as written in a recipe file) to its class. The names are also reachable as
`lwkit.pipeline.Prune` etc.
"""


from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from lwkit import distill, huffman, mixed, peft, prune, qat, sparse, train

__all__ = ["STEPS", "Prune", "FineTune", "Distill", "LoRA", "Quantize", "Export"]


def _fail(step: str, msg: str):
    raise ValueError(f"{step}: {msg}")


def _number(step, name, v, lo, hi, *, integer=False, lo_open=False, hi_open=False):
    kind = numbers.Integral if integer else numbers.Real
    span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
        _fail(step, f"{name} must be {'an int' if integer else 'a number'} in {span}, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        _fail(step, f"{name} must be in {span}, got {v!r}")


def _choice(step, name, v, options):
    if v not in options:
        _fail(step, f"{name} must be one of {options}, got {v!r}")


def _per_layer(step, name, v, check):
    """An int/float or a dict layer -> value; layer names are checked against the model in Recipe.check."""
    if isinstance(v, dict):
        if not v or not all(isinstance(k, str) for k in v):
            _fail(step, f"{name} as a dict must map layer names (str) to values, got {v!r}")
        for k, x in v.items():
            check(f"{name}[{k!r}]", x)
    else:
        check(name, v)


@dataclass
class Prune:
    """Zero the smallest weights (magnitude) or random ones; fine-tune `epochs` with the masks held."""

    sparsity: float | dict = 0.5  # fraction of weights removed: over all layers (global) or per layer / a dict
    scope: str = "global"  # 'global': one threshold for all layers; 'layer': the same fraction in each
    criterion: str = "magnitude"  # 'magnitude' or 'random' (the baseline)
    epochs: int = 0  # fine-tuning epochs after pruning, pruned weights held at zero
    lr: float = 2e-3  # fine-tuning learning rate
    name: ClassVar[str] = "prune"

    def __post_init__(self):
        # a fraction in [0, 1): 1 would remove every weight of a layer
        _per_layer("prune", "sparsity", self.sparsity, lambda n, v: _number("prune", n, v, 0, 1, hi_open=True))
        _choice("prune", "scope", self.scope, ("global", "layer"))
        _choice("prune", "criterion", self.criterion, ("magnitude", "random"))
        _number("prune", "epochs", self.epochs, 0, 1000, integer=True)
        _number("prune", "lr", self.lr, 0, 1, lo_open=True)

    def layer_names(self):
        return list(self.sparsity) if isinstance(self.sparsity, dict) else []

    def apply(self, ctx):
        if self.scope == "global" and not isinstance(self.sparsity, dict) and self.criterion == "magnitude":
            masks = prune.layer_masks(ctx.model, self.sparsity, scope="global")
        else:
            masks = prune.layer_masks(ctx.model, self.sparsity, scope="layer", criterion=self.criterion)
        if ctx.masks:  # keep earlier pruning: a weight once removed stays removed
            masks = {k: m & ctx.masks[k] if k in ctx.masks else m for k, m in masks.items()}
        prune.apply_masks(ctx.model, masks)
        ctx.masks = masks
        if self.epochs:
            prune.fine_tune(ctx.model, masks, ctx.train_loader, epochs=self.epochs, lr=self.lr, progress=False)


@dataclass
class FineTune:
    """Ordinary training (pruned weights held at zero)."""

    epochs: int = 1  # passes over the training data
    lr: float = 1e-3  # peak learning rate (AdamW, cosine-decayed)
    name: ClassVar[str] = "fine_tune"

    def __post_init__(self):
        _number("fine_tune", "epochs", self.epochs, 1, 1000, integer=True)
        _number("fine_tune", "lr", self.lr, 0, 1, lo_open=True)

    def apply(self, ctx):
        prune.fine_tune(ctx.model, ctx.masks or {}, ctx.train_loader, epochs=self.epochs, lr=self.lr,
                        progress=False)


@dataclass
class Distill:
    """Knowledge distillation from the model as it entered the recipe (pruned weights held at zero)."""

    epochs: int = 2  # passes over the training data
    temperature: float = 4.0  # softens both softmaxes
    alpha: float = 0.9  # weight of the soft (teacher) term
    lr: float = 1e-3  # peak learning rate
    name: ClassVar[str] = "distill"

    def __post_init__(self):
        _number("distill", "epochs", self.epochs, 1, 1000, integer=True)
        _number("distill", "temperature", self.temperature, 0, 100, lo_open=True)
        _number("distill", "alpha", self.alpha, 0, 1)
        _number("distill", "lr", self.lr, 0, 1, lo_open=True)

    def apply(self, ctx):
        masks = ctx.masks or {}
        distill.distill(ctx.model, ctx.teacher, ctx.train_loader, temperature=self.temperature, alpha=self.alpha,
                        epochs=self.epochs, lr=self.lr, progress=False,
                        after_step=lambda m: prune.apply_masks(m, masks) if masks else None)


@dataclass
class LoRA:
    """Low-rank adapters on the chosen Linear layers, trained `epochs`, then merged (masks re-applied)."""

    targets: list | None = None  # Linear layer names; None = every Linear
    rank: int = 4  # rank r of the update B A
    alpha: float = 8.0  # scaling = alpha / rank
    epochs: int = 1  # passes over the training data
    lr: float = 2e-3  # learning rate of the adapters
    name: ClassVar[str] = "lora"

    def __post_init__(self):
        if self.targets is not None and (not isinstance(self.targets, list) or not self.targets
                                         or not all(isinstance(t, str) for t in self.targets)):
            _fail("lora", f"targets must be None or a non-empty list of layer names, got {self.targets!r}")
        _number("lora", "rank", self.rank, 1, 4096, integer=True)
        _number("lora", "alpha", self.alpha, 0, 1e6, lo_open=True)
        _number("lora", "epochs", self.epochs, 1, 1000, integer=True)
        _number("lora", "lr", self.lr, 0, 1, lo_open=True)

    def layer_names(self):
        return list(self.targets or [])

    def apply(self, ctx):
        targets = self.targets or [n for n, m in ctx.model.named_modules() if isinstance(m, nn.Linear)]
        peft.add_lora(ctx.model, targets, rank=self.rank, alpha=self.alpha)
        train.fit(ctx.model, ctx.train_loader, epochs=self.epochs, lr=self.lr, progress=False)
        peft.merge_lora(ctx.model)
        for p in ctx.model.parameters():
            p.requires_grad_(True)
        if ctx.masks:  # the merged update is dense: put the pruned zeros back
            prune.apply_masks(ctx.model, ctx.masks)


@dataclass
class Quantize:
    """Weights on `bits`: 'uniform' (per-tensor or per-channel symmetric) or 'kmeans' (shared values,
    `epochs` of centroid fine-tuning); optionally activations on `act_bits` (calibrated on training data)."""

    bits: int | dict = 8  # weight bits, or a dict layer -> bits (mixed precision)
    method: str = "uniform"  # 'uniform' or 'kmeans' (Deep Compression's weight sharing)
    per_channel: bool = False  # uniform only; per-tensor keeps one codebook per layer, so the .dc file applies
    act_bits: int | None = None  # None: float activations; 8: the survey's activation='uniform'
    epochs: int = 0  # kmeans only: centroid fine-tuning epochs
    lr: float = 1e-3  # centroid fine-tuning learning rate
    name: ClassVar[str] = "quantize"

    def __post_init__(self):
        _choice("quantize", "method", self.method, ("uniform", "kmeans"))
        top = 8 if self.method == "kmeans" else 16
        _per_layer("quantize", "bits", self.bits, lambda n, v: _number("quantize", n, v, 1 if top == 8 else 2, top,
                                                                          integer=True))
        if not isinstance(self.per_channel, bool):
            _fail("quantize", f"per_channel must be True or False, got {self.per_channel!r}")
        if self.act_bits is not None:
            _number("quantize", "act_bits", self.act_bits, 2, 16, integer=True)
        _number("quantize", "epochs", self.epochs, 0, 1000, integer=True)
        if self.epochs and self.method != "kmeans":
            _fail("quantize", f"epochs={self.epochs} fine-tunes k-means centroids: use method='kmeans' "
                              "(or fine-tune before quantizing)")
        _number("quantize", "lr", self.lr, 0, 1, lo_open=True)

    def layer_names(self):
        return list(self.bits) if isinstance(self.bits, dict) else []

    def apply(self, ctx):
        if self.method == "uniform":
            ctx.model = mixed.quantize_weights(ctx.model, bits=self.bits, per_channel=self.per_channel)
        else:
            bits = self.bits if isinstance(self.bits, int) else {**dict.fromkeys(sparse.prunable_layers(ctx.model), 8),
                                                                  **self.bits}
            labels = huffman.share_weights(ctx.model, bits)
            if self.epochs:
                huffman.finetune_shared(ctx.model, labels, ctx.train_loader, epochs=self.epochs, lr=self.lr,
                                        progress=False)
        if self.act_bits is not None:
            ctx.model = qat.calibrate(qat.prepare_ptq(ctx.model, bits=None, act_bits=self.act_bits),
                                      ctx.train_loader, num_batches=4)


@dataclass
class Export:
    """Write the model as a deployable file; its size and (for runtimes) its measured latency are reported."""

    format: str = "onnx"  # 'onnx' (ONNX Runtime), 'pte' (ExecuTorch/XNNPACK) or 'dc' (Huffman-coded weights)
    name: ClassVar[str] = "export"

    def __post_init__(self):
        _choice("export", "format", self.format, ("onnx", "pte", "dc"))

    def apply(self, ctx):
        from lwkit import deploy

        path = ctx.out_dir / f"model.{self.format}"
        if self.format == "dc":
            huffman.save_compressed(ctx.model, path, overwrite=True)
            ctx.exported = (path, None)
            return
        if self.format == "onnx":
            deploy.export_onnx(ctx.model, ctx.example_input, path, overwrite=True)
        else:
            deploy.export_pte(ctx.model, ctx.example_input, path, overwrite=True)
        ctx.exported = (path, deploy.load(path, threads=ctx.threads))


STEPS = {cls.name: cls for cls in (Prune, FineTune, Distill, LoRA, Quantize, Export)}
