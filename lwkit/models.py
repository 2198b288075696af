"""The course's models: LeNet-300-100 (an MLP) and a small CNN of conv-bn-relu blocks.

The MobileNets of notebook 07 live in `lwkit.mobilenet`; `lwkit.models.MobileNet` etc. keep working.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

__all__ = ["LeNet300100", "ConvBNReLU", "SmallCNN", "MODELS", "build"]

_MOVED = {  # defined in lwkit.mobilenet
    "ACTIVATIONS", "HIDDEN_SCORES", "PRUNED_VARIANTS",
    "conv_params", "conv_macs", "separable_mac_ratio", "make_divisible", "ConvBNAct", "DepthwiseSeparable",
    "InvertedResidual", "MobileNet", "COURSE_SETTINGS", "hidden_channel_scores", "prune_hidden",
    "COURSE_VARIANTS", "CourseRecipe", "train_course_mobilenet", "PRETRAINED", "pretrained",
}


def __getattr__(name: str):
    # lwkit.models.MobileNet etc.: looked up lazily in lwkit.mobilenet, where they are defined
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module("lwkit.mobilenet"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_pos_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class LeNet300100(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; the MLP of Han et al. 2015): 784 -> 300 -> 100 -> 10."""

    def __init__(self, hidden: tuple[int, int] = (300, 100), num_classes: int = 10, in_features: int = 784):
        super().__init__()
        if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
            raise ValueError(f"hidden must be a pair of positive ints (h1, h2), got {hidden!r}")
        h1, h2 = (_check_pos_int(h, "hidden") for h in hidden)
        num_classes = _check_pos_int(num_classes, "num_classes")
        in_features = _check_pos_int(in_features, "in_features")
        self.fc1 = nn.Linear(in_features, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (batch, 784)
        x = self.relu(self.fc1(x))  # (batch, 300)
        x = self.relu(self.fc2(x))  # (batch, 100)
        return self.fc3(x)  # (batch, num_classes)


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (no bias: BatchNorm has one) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SmallCNN(nn.Module):
    """Conv-bn-relu blocks with max-pooling between stages, then one linear head.

    With the default channels (16, 32, 64) on 28x28 inputs: stage 1 at 28x28, stage 2 at 14x14,
    stage 3 at 7x7, then the 64x7x7 feature map goes to the linear head (`head_pool=1` would make it
    global average pooling, which trains more slowly). Every block is a plain Conv2d/BatchNorm2d pair,
    so channel pruning can slice it.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1,
                 head_pool: int = 7):
        super().__init__()
        if not channels or any(not isinstance(c, int) or c <= 0 for c in channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {channels!r}")
        num_classes = _check_pos_int(num_classes, "num_classes")
        in_channels = _check_pos_int(in_channels, "in_channels")
        head_pool = _check_pos_int(head_pool, "head_pool")
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers.append(ConvBNReLU(prev, c))
            prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(head_pool)
        self.classifier = nn.Linear(prev * head_pool * head_pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (batch, channels[-1], h, w)
        x = self.pool(x).flatten(1)  # (batch, channels[-1] * head_pool**2)
        return self.classifier(x)  # (batch, num_classes)


MODELS = {"mlp": LeNet300100, "cnn": SmallCNN}


def build(name: str, **kwargs) -> nn.Module:
    """A fresh (untrained) course model by name: 'mlp' or 'cnn'."""
    if name not in MODELS:
        raise ValueError(f"model name must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)
