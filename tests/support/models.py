"""Small BatchNorm CNNs whose curvature can be checked exactly (the tests and the trace benchmark)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_bn_cnn() -> nn.Sequential:
    """One conv + BN layer, 3 classes, seeded: small enough for an exact Hessian."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def two_conv_bn_cnn(channels: int = 6) -> nn.Sequential:
    """Two conv + BN layers, 10 classes (976 parameters at 6 channels): an exact trace in ~1 s."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * channels, 10),
    )
