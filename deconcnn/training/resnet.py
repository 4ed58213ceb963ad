"""CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks, stages [64, 128, 256, 512], He init."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Norm = Literal["batchnorm", "none"]
STAGE_CHANNELS = (64, 128, 256, 512)


def scaled_channels(channels: int, width: float) -> int:
    """Width-multiplied channel count rounded to a multiple of 8 (the experiment's rule)."""
    return max(8, int(channels * width + 4) // 8 * 8)


def _norm(norm: Norm, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batchnorm" else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: Norm) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.bn1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.bn2 = _norm(norm, out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias),
                _norm(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs with a width multiplier and optional batch norm."""

    def __init__(self, width: float = 1.0, norm: Norm = "batchnorm", num_classes: int = 10) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"model.width must be > 0, got {width}")
        if norm not in ("batchnorm", "none"):
            raise ValueError(f"model.norm must be 'batchnorm' or 'none', got {norm!r}")
        self.width, self.norm = width, norm
        channels = [scaled_channels(c, width) for c in STAGE_CHANNELS]
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=norm == "none"),
            _norm(norm, channels[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        in_channels = channels[0]
        for stage, out_channels in enumerate(channels):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride, norm))
                in_channels = out_channels
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))
