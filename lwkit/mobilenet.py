"""MobileNets for the course (notebook 07): a MobileNetV2-style network for 28x28 images built from inverted
residual blocks with linear bottlenecks (Sandler et al. 2018), with a width multiplier `alpha` and an input
`resolution` (Howard et al. 2017), and its full-convolution twin (`depthwise=False`: every depthwise 3x3
becomes a dense 3x3); hidden-channel pruning that physically slices; the shipped checkpoints.

The analytic cost of a convolution sits next to it, so a notebook can check `lwkit.measure.count_macs`
against the formula. The names are also reachable as `lwkit.models.MobileNet` etc.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lwkit.models import _check_pos_int

__all__ = [
    "conv_params",
    "conv_macs",
    "separable_mac_ratio",
    "make_divisible",
    "ConvBNAct",
    "DepthwiseSeparable",
    "InvertedResidual",
    "MobileNet",
    "COURSE_SETTINGS",
    "hidden_channel_scores",
    "prune_hidden",
    "COURSE_VARIANTS",
    "CourseRecipe",
    "train_course_mobilenet",
    "PRETRAINED",
    "PRUNED_VARIANTS",
    "pretrained",
]


# ---------------------------------------------------------------------------------------------------------
# The cost of a convolution, analytically (no bias, 'same'-style output size given explicitly)


def conv_params(in_channels: int, out_channels: int, kernel_size: int, *, groups: int = 1) -> int:
    """Weights of a bias-free Conv2d: out * (in / groups) * k * k."""
    c_in, c_out = _check_pos_int(in_channels, "in_channels"), _check_pos_int(out_channels, "out_channels")
    k, g = _check_pos_int(kernel_size, "kernel_size"), _check_pos_int(groups, "groups")
    if c_in % g or c_out % g:
        raise ValueError(f"groups={g} must divide in_channels={c_in} and out_channels={c_out}")
    return c_out * (c_in // g) * k * k


def conv_macs(in_channels: int, out_channels: int, kernel_size: int, out_hw: tuple[int, int], *,
              groups: int = 1) -> int:
    """Multiply-accumulates of one image through a Conv2d: every output value needs (in / groups) * k * k.

    Args:
        out_hw: (height, width) of the output feature map.
    """
    if not isinstance(out_hw, (tuple, list)) or len(out_hw) != 2:
        raise ValueError(f"out_hw must be a (height, width) pair, got {out_hw!r}")
    h, w = _check_pos_int(out_hw[0], "out_hw[0]"), _check_pos_int(out_hw[1], "out_hw[1]")
    return conv_params(in_channels, out_channels, kernel_size, groups=groups) * h * w


def separable_mac_ratio(out_channels: int, kernel_size: int) -> float:
    """MACs of depthwise (k x k) + pointwise (1x1) over a standard k x k conv: 1/N + 1/k^2 (MobileNetV1 eq. 5)."""
    n, k = _check_pos_int(out_channels, "out_channels"), _check_pos_int(kernel_size, "kernel_size")
    return 1 / n + 1 / k**2


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round a width to the nearest multiple of `divisor` (at least `min_value`), never more than 10% down."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"value must be a positive number, got {value!r}")
    divisor = _check_pos_int(divisor, "divisor")
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # as torchvision's _make_divisible: don't lose more than 10%
        rounded += divisor
    return rounded


# ---------------------------------------------------------------------------------------------------------
# MobileNet building blocks

ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name](inplace=True)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation ('relu6', 'relu', or None for a linear layer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: str | None = "relu6"):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                            bias=False), nn.BatchNorm2d(out_channels)]
        if activation is not None:
            layers.append(_activation(activation))
        super().__init__(*layers)


class DepthwiseSeparable(nn.Sequential):
    """MobileNetV1's block: depthwise k x k (one filter per channel) -> pointwise 1x1 (mixes channels).

    `depthwise=False` gives the standard convolution it replaces: one dense k x k conv, in -> out.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, kernel_size: int = 3,
                 depthwise: bool = True, activation: str = "relu6"):
        _check_pos_int(in_channels, "in_channels")
        _check_pos_int(out_channels, "out_channels")
        if depthwise:
            super().__init__(ConvBNAct(in_channels, in_channels, kernel_size, stride, in_channels, activation),
                             ConvBNAct(in_channels, out_channels, 1, 1, 1, activation))
        else:
            super().__init__(ConvBNAct(in_channels, out_channels, kernel_size, stride, 1, activation))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 (in -> t*in) -> depthwise 3x3 -> project 1x1 (-> out), no activation
    after the projection (the linear bottleneck), and a skip connection when stride 1 and in == out.

    `depthwise=False` makes the 3x3 a dense conv over the hidden channels (the full-convolution twin).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 6, *,
                 depthwise: bool = True, activation: str = "relu6"):
        super().__init__()
        _check_pos_int(in_channels, "in_channels")
        _check_pos_int(out_channels, "out_channels")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, numbers.Real) or expand_ratio < 1:
            raise ValueError(f"expand_ratio must be a number >= 1, got {expand_ratio!r}")
        hidden = int(round(in_channels * expand_ratio))
        self.stride, self.use_residual = stride, stride == 1 and in_channels == out_channels
        # t = 1 has nothing to expand: the depthwise conv reads the block's input directly
        self.expand = ConvBNAct(in_channels, hidden, 1, activation=activation) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, 3, stride, hidden if depthwise else 1, activation)
        self.project = ConvBNAct(hidden, out_channels, 1, activation=None)

    @property
    def hidden_channels(self) -> int:
        return self.depthwise[0].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x  # (batch, hidden, h, w)
        h = self.depthwise(h)  # (batch, hidden, h / stride, w / stride)
        h = self.project(h)  # (batch, out, h / stride, w / stride)
        return x + h if self.use_residual else h

    @torch.no_grad()
    def prune_hidden(self, keep: torch.Tensor) -> InvertedResidual:
        """Keep only the hidden channels `keep` (sorted indices), slicing expand conv + BN (outputs),
        depthwise conv + BN and the projection's inputs. In place; returns self."""
        if self.expand is None:
            raise ValueError("this block has no expansion (expand_ratio=1): its hidden channels are the block's "
                             "input channels, which the previous block produces; prune those instead")
        hidden = self.hidden_channels
        if (not isinstance(keep, torch.Tensor) or keep.dim() != 1 or keep.dtype == torch.bool
                or keep.is_floating_point() or keep.is_complex()):
            raise TypeError(f"keep must be a 1-D integer tensor of channel indices, got {keep!r}")
        keep = keep.sort().values
        if keep.numel() == 0 or keep.unique().numel() != keep.numel() or keep[0] < 0 or keep[-1] >= hidden:
            raise ValueError(f"keep must be non-empty, distinct indices in [0, {hidden - 1}], got {keep.tolist()}")
        dw = self.depthwise[0]
        if dw.groups not in (1, hidden):
            raise ValueError(f"cannot slice a grouped conv with groups={dw.groups}")
        _slice_conv_(self.expand[0], out_idx=keep)
        _slice_bn_(self.expand[1], keep)
        _slice_conv_(dw, out_idx=keep, in_idx=None if dw.groups == hidden else keep)
        if dw.groups == hidden:
            dw.groups = keep.numel()
        _slice_bn_(self.depthwise[1], keep)
        _slice_conv_(self.project[0], in_idx=keep)
        return self


def _slice_conv_(conv: nn.Conv2d, *, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None):
    w = conv.weight.detach()  # (out, in / groups, kh, kw)
    if out_idx is not None:
        w = w[out_idx]
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[out_idx].clone())
        conv.out_channels = w.shape[0]
    if in_idx is not None:
        w = w[:, in_idx]
        conv.in_channels = w.shape[1] * conv.groups
    conv.weight = nn.Parameter(w.clone())
    if out_idx is not None and conv.groups > 1:  # depthwise: in follows out
        conv.in_channels = w.shape[0]


def _slice_bn_(bn: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            setattr(bn, name, nn.Parameter(getattr(bn, name).detach()[keep].clone()))
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(bn, name, getattr(bn, name)[keep].clone())
    bn.num_features = keep.numel()


# (expand ratio t, output channels c, repeats n, first stride s), as MobileNetV2's Table 2, sized for 28x28:
# stem at 28x28, then 14x14 -> 7x7 -> 4x4, global average pool, one linear layer.
COURSE_SETTINGS = ((1, 16, 1, 2), (4, 24, 2, 1), (4, 32, 2, 2), (4, 64, 2, 2))


class MobileNet(nn.Module):
    """A MobileNetV2-style network for 28x28 Fashion-MNIST.

    Stem: a 3x3 conv at stride 1 (ImageNet's stride-2 stem would throw away three quarters of a 28x28
    image). Then inverted residual stages (`settings`), a 1x1 conv to `last_channels`, global average
    pooling and a linear classifier.

    Args:
        alpha: width multiplier: every channel count is scaled by alpha (rounded to a multiple of 4), so
            params and MACs fall roughly as alpha^2.
        resolution: input side in pixels; images are resized to it first (MobileNetV1's rho = resolution / 28).
            MACs scale with resolution^2, params don't change.
        depthwise: False builds the full-convolution twin (dense 3x3 over the hidden channels).
        activation: 'relu6' (MobileNet's) or 'relu' (what cross-layer equalization needs).
    """

    def __init__(self, alpha: float = 1.0, *, resolution: int = 28, num_classes: int = 10, in_channels: int = 1,
                 stem_channels: int = 16, last_channels: int = 128, settings=COURSE_SETTINGS,
                 depthwise: bool = True, activation: str = "relu6", dropout: float = 0.0):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 4:
            raise ValueError(f"alpha must be a number in (0, 4], got {alpha!r}")
        self.resolution = _check_pos_int(resolution, "resolution")
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
        if not isinstance(depthwise, bool):
            raise TypeError(f"depthwise must be True or False, got {depthwise!r}")
        _activation(activation)
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not settings or any(len(s) != 4 for s in settings):
            raise ValueError(f"settings must be a non-empty list of (t, c, n, s) tuples, got {settings!r}")
        self.alpha, self.depthwise_blocks, self.activation = float(alpha), depthwise, activation
        prev = make_divisible(stem_channels * alpha)
        layers: list[nn.Module] = [ConvBNAct(in_channels, prev, 3, 1, activation=activation)]
        for t, c, n, s in settings:
            out = make_divisible(c * alpha)
            for i in range(n):
                layers.append(InvertedResidual(prev, out, s if i == 0 else 1, t, depthwise=depthwise,
                                               activation=activation))
                prev = out
        last = make_divisible(last_channels * alpha)
        layers.append(ConvBNAct(prev, last, 1, activation=activation))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)

    def blocks(self) -> list[InvertedResidual]:
        return [m for m in self.features if isinstance(m, InvertedResidual)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=self.resolution < x.shape[-1])
        x = self.features(x)  # (batch, last_channels, h / 8, w / 8)
        x = self.pool(x).flatten(1)  # (batch, last_channels)
        return self.classifier(self.dropout(x))  # (batch, num_classes)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, resolution={self.resolution}, depthwise={self.depthwise_blocks}"


# ---------------------------------------------------------------------------------------------------------
# Structured pruning of the inverted residuals' hidden channels

HIDDEN_SCORES = ("l1", "bn")


def hidden_channel_scores(block: InvertedResidual, score: str = "l1") -> torch.Tensor:
    """One importance score per hidden channel of a block: 'l1', the L1 norm of its expand filter times its
    BatchNorm scale |gamma / sqrt(var + eps)| (the filter's effective size), or 'bn', the depthwise BN's |gamma|."""
    if not isinstance(block, InvertedResidual):
        raise TypeError(f"block must be an InvertedResidual, got {type(block).__name__}")
    if score not in HIDDEN_SCORES:
        raise ValueError(f"score must be one of {HIDDEN_SCORES}, got {score!r}")
    if block.expand is None:
        raise ValueError("block has no expansion (expand_ratio=1): no hidden channels of its own to score")
    if score == "bn":
        return block.depthwise[1].weight.detach().abs()
    conv, bn = block.expand[0], block.expand[1]
    bn_scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs()  # (hidden,)
    return conv.weight.detach().flatten(1).abs().sum(1) * bn_scale  # (hidden,)


def prune_hidden(model: nn.Module, sparsity: float, *, score: str = "l1") -> nn.Module:
    """A copy of `model` with the fraction `sparsity` of every expanding inverted residual's hidden channels
    removed (lowest scores first), physically sliced. The thin bottleneck channels between blocks are left
    alone: they carry the residual stream and are already the narrowest tensors of the network."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of hidden channels removed), "
                         f"got {sparsity!r}")
    if score not in HIDDEN_SCORES:
        raise ValueError(f"score must be one of {HIDDEN_SCORES}, got {score!r}")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual) and m.expand is not None]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no inverted residual block with an expansion to prune")
    pruned = copy.deepcopy(model)
    for block in (m for m in pruned.modules() if isinstance(m, InvertedResidual) and m.expand is not None):
        scores = hidden_channel_scores(block, score)  # (hidden,)
        n_keep = max(1, scores.numel() - round(sparsity * scores.numel()))
        block.prune_hidden(torch.topk(scores, n_keep).indices.sort().values)
    return pruned.eval()


# ---------------------------------------------------------------------------------------------------------
# The trained course MobileNets (notebook 07): variants, recipe, shipped checkpoints

# variant -> MobileNet keyword arguments
COURSE_VARIANTS = {
    "mobilenet": {},
    "twin": {"depthwise": False},
    "alpha0.5": {"alpha": 0.5},
    "res16": {"resolution": 16},
}


@dataclass(frozen=True)
class CourseRecipe:
    """How the shipped course MobileNets were trained (scripts/train_mobilenet.py; FULL=True in notebook 07)."""

    epochs: int = 4  # passes over the training split
    lr: float = 3e-3  # AdamW peak learning rate, cosine-decayed to 0
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0  # seeds initialisation and shuffling


def train_course_mobilenet(variant: str, splits, *, recipe: CourseRecipe = CourseRecipe(), progress: bool = True):
    """Train one course variant from scratch on `splits` (lwkit.data.Splits); returns (model, History)."""
    from lwkit import train

    if variant not in COURSE_VARIANTS:
        raise ValueError(f"variant must be one of {list(COURSE_VARIANTS)}, got {variant!r}")
    train.seed_everything(recipe.seed)
    train_loader, val_loader, _ = splits.loaders(recipe.batch_size, seed=recipe.seed)
    net = MobileNet(**COURSE_VARIANTS[variant])
    history = train.fit(net, train_loader, epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                        val_loader=val_loader, progress=progress, desc=f"{variant} ({recipe.epochs} epochs)")
    return net.cpu().eval(), history


# variant -> SHA-256 of the shipped data/mobilenet_<variant>.pt (made by scripts/train_mobilenet.py)
PRETRAINED: dict[str, str] = {
    "mobilenet": "84fd5da9844ceaa2542f933d5e1cca762948771c8411ed10a6cfaa35705988dd",
    "alpha0.5": "63900ccc0fcc8f062ad493a894a7057c820855f1008f94e7ebeaa6d104705cb3",
    "res16": "118f38b9649183a50f0cc36fd7fea5b8b17282bbee5bdeb881ab3f6a5e863043",
    "pruned50": "3dc54c2825494ed320d694c0b7448830990a0cb254c1f8a103672f70f4e94387",
    "pruned70": "4d86445472bb7ef309cb20ee9aaa280f6b562432ee615a69841c522ac0954278",
    "twin": "4383c9fa4663bb64a43f2e08e5114c0fe460a84dd5a8fe0d007ee4b00b346e4b",
}


# Shipped pruned models: name -> (base variant, fraction of hidden channels removed, fine-tuning recipe).
# Made by `python scripts/train_mobilenet.py pruned50 pruned70`: the shipped base, `prune_hidden`, then fine-tuned.
PRUNED_VARIANTS = {"pruned50": ("mobilenet", 0.5, {"epochs": 8, "lr": 2e-3, "seed": 0}),
                   "pruned70": ("mobilenet", 0.7, {"epochs": 8, "lr": 2e-3, "seed": 0})}


def pretrained(variant: str = "mobilenet") -> MobileNet:
    """A shipped course MobileNet (trained on the embedded subset), checksum-verified, loaded weights-only.

    `variant`: one of COURSE_VARIANTS, or of PRUNED_VARIANTS (the base with its hidden channels pruned and
    fine-tuned longer than a workshop run can afford). The files store float16 (half the bytes);
    `load_state_dict` copies them into the float32 model.
    """
    from lwkit import data

    if variant not in COURSE_VARIANTS and variant not in PRUNED_VARIANTS:
        raise ValueError(f"variant must be one of {list(COURSE_VARIANTS) + list(PRUNED_VARIANTS)}, got {variant!r}")
    path = data.data_dir() / f"mobilenet_{variant}.pt"
    hint = f"restore it with `git checkout -- data/`, or rebuild it with `python scripts/train_mobilenet.py {variant}`"
    if variant not in PRETRAINED:
        raise data.DataFileError(f"no checksum is pinned for {path.name}: {hint}")
    data.verify_file(path, PRETRAINED[variant], hint=hint)
    if variant in PRUNED_VARIANTS:
        base, sparsity, _ = PRUNED_VARIANTS[variant]
        net = prune_hidden(MobileNet(**COURSE_VARIANTS[base]), sparsity)  # the pruned shapes; weights loaded next
    else:
        net = MobileNet(**COURSE_VARIANTS[variant])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()
