"""torch.nn equivalents of torchvision's CNNs for the real-architecture zoo (tests/realzoo.py):
the PyPI torchvision wheel needs a CUDA torch, so the architectures are rebuilt here at 1/8 width
for 32×32 images, with torchvision's init loops copied (:func:`tv_init`). ``bn=False`` replaces
every BatchNorm by ``nn.Identity`` (the broken twins)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

CLASSES = 10


def _norm(c: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if bn else nn.Identity()


def tv_init(model: nn.Module, conv_mode: str, linear: str) -> nn.Module:
    """torchvision's init loops: convs Kaiming normal (``conv_mode``), BN 1/0, linears as named."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear == "normal":  # VGG, MobileNetV3
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear == "zero_bias":  # DenseNet
            nn.init.zeros_(m.bias)
    if linear == "vgg_scaled":  # see VGG: N(0, 0.01) at torchvision's fan_ins
        for m, tv_fan_in in zip(model.classifier[::3], VGG.TV_FAN_IN, strict=True):
            nn.init.normal_(m.weight, 0, 0.01 * (tv_fan_in / m.in_features) ** 0.5)
            nn.init.zeros_(m.bias)
    return model


class VGG(nn.Module):
    """torchvision ``VGG``: convs 3×3 + ReLU, max-pools, a 3-layer classifier; ``width`` 8 (the
    zoo's, 1/8 of the channels, pool 1, hidden 64) or 1 (torchvision's: channels 64…512, pool 7,
    classifier 25088 → 4096 → 4096).

    torchvision's linears are ``N(0, 0.01)``: at its fan_ins (25088, 4096, 4096) that multiplies
    the variance by 1.25, 0.2 and (output, gain 1) 0.41; at the tiny fan_ins (64) it would be
    ×0.0032 per hidden linear — a classifier that really vanishes (measured ×2.8e-6), which
    torchvision's is not. The zoo's VGG therefore draws its linears at ``0.01 · sqrt(25088 /
    fan_in)`` etc. (``tv_init(..., "vgg_scaled")``): the per-layer variance factors of
    torchvision's VGG at 1/8 width."""

    CFG = {
        11: [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"],
        16: [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"],
    }
    TV_FAN_IN = (512 * 7 * 7, 4096, 4096)  # torchvision's classifier fan_ins

    def __init__(self, depth: int = 11, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in self.CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v) * 8 // width, 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v) * 8 // width
        pool, hidden = (7, 4096) if width == 1 else (1, 64)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck``: 1×1 → 3×3 (stride) → 1×1 ×4, BN after each, ReLU(out + identity)."""

    def __init__(self, cin: int, planes: int, stride: int, bn: bool) -> None:
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), _norm(planes, bn)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), _norm(planes, bn)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), _norm(out, bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), _norm(out, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision ``ResNet`` (Bottleneck, stem 7×7/2 + max-pool) at 1/8 width, 2 blocks per stage."""

    def __init__(self, bn: bool = True, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), _norm(8, bn)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin = 8
        for i, n in enumerate(blocks):
            planes = 8 * 2**i
            stage = []
            for j in range(n):
                stage.append(Bottleneck(cin, planes, 2 if (i and not j) else 1, bn))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, CLASSES)
        self.stages = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation``: x · hardsigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def _cna(
    cin: int, cout: int, k: int, stride: int, groups: int, act: type[nn.Module] | None, bn: bool
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv (no bias) → BN → activation."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), _norm(cout, bn)]
    return nn.Sequential(*layers, *([act()] if act else []))


class InvertedResidual(nn.Module):
    """MobileNetV3's block: expand 1×1 → depthwise k×k → [SE] → project 1×1 (BN, no activation);
    ``x + block(x)`` when the shape is kept."""

    def __init__(
        self, cin: int, exp: int, cout: int, k: int, se: bool, act: type[nn.Module], stride: int, bn: bool
    ):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_cna(cin, exp, 1, 1, 1, act, bn))
        layers.append(_cna(exp, exp, k, stride, exp, act, bn))
        if se:
            layers.append(SqueezeExcitation(exp, max(8, exp // 4)))
        layers.append(_cna(exp, cout, 1, 1, 1, None, bn))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3(nn.Module):
    """A MobileNetV3-small-style net: stem 3×3/2, 6 inverted residuals (4 with SE), head 1×1 → MLP."""

    SETTINGS = [  # cin, expanded, out, kernel, SE, activation, stride (torchvision's table, shortened)
        (16, 16, 16, 3, True, nn.ReLU, 2),
        (16, 64, 24, 3, False, nn.ReLU, 2),
        (24, 72, 24, 3, False, nn.ReLU, 1),
        (24, 96, 40, 5, True, nn.Hardswish, 2),
        (40, 120, 40, 5, True, nn.Hardswish, 1),
        (40, 120, 48, 5, True, nn.Hardswish, 1),
    ]

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        blocks = [_cna(3, 16, 3, 2, 1, nn.Hardswish, bn)]
        blocks += [InvertedResidual(*s, bn=bn) for s in self.SETTINGS]
        blocks.append(_cna(48, 96, 1, 1, 1, nn.Hardswish, bn))
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer``: BN-ReLU-conv 1×1 (4k) → BN-ReLU-conv 3×3 (k); its output is
    concatenated to its input."""

    def __init__(self, cin: int, growth: int, bn: bool) -> None:
        super().__init__()
        self.norm1, self.relu1 = _norm(cin, bn), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.relu2 = _norm(4 * growth, bn), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, y], 1)


class DenseNet(nn.Module):
    """torchvision ``DenseNet`` (growth 8, blocks 3-3-3, 16 initial features): stem 7×7/2 + max-pool,
    dense blocks joined by transitions (BN-ReLU-conv 1×1 halving-avg-pool 2), norm5, ReLU, linear."""

    def __init__(self, bn: bool = True, growth: int = 8, blocks: tuple[int, ...] = (3, 3, 3)) -> None:
        super().__init__()
        c = 16
        feats: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(3, c, 7, 2, 3, bias=False)),
            ("norm0", _norm(c, bn)),
        ]
        feats += [("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn))
                c += growth
            feats.append((f"denseblock{i + 1}", nn.Sequential(*layers)))
            if i != len(blocks) - 1:
                trans = nn.Sequential(
                    _norm(c, bn),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c, c // 2, 1, bias=False),
                    nn.AvgPool2d(2, 2),
                )
                feats.append((f"transition{i + 1}", trans))
                c //= 2
        feats.append(("norm5", _norm(c, bn)))
        self.features = nn.Sequential(OrderedDict(feats))
        self.classifier = nn.Linear(c, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.adaptive_avg_pool2d(nn.functional.relu(self.features(x)), 1)
        return self.classifier(torch.flatten(y, 1))
