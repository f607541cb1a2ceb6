"""Residual nets for the graph-aware checks: a ResNet with BatchNorm, the same without BatchNorm,
and a VGG-style plain net — all with torchvision-style Kaiming init (fan_out, relu)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels: int, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not norm)
        self.bn1 = nn.BatchNorm2d(channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not norm)
        self.bn2 = nn.BatchNorm2d(channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(x + out)


class ResNet(nn.Module):
    """Stem conv, ``blocks`` basic blocks at constant width, global pooling, a Linear head."""

    def __init__(self, blocks: int = 8, width: int = 32, norm: bool = True, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=not norm)
        self.bn = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.layers = nn.Sequential(*[Block(width, norm) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_bn(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(norm=True)


def resnet_plain(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(norm=False)
