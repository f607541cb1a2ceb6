"""torchvision-like architectures built from torch.nn (torchvision is not usable here), each with
its library's default initialization, small enough for fast tests (CPU, seed 0).

* :func:`vgg` — VGG-11/16-style conv stacks, convs ``kaiming_normal_(mode="fan_out",
  nonlinearity="relu")`` as torchvision's VGG does; ``init="xavier"`` for the broken variant.
* :func:`resnet18` / :func:`resnet50` — basic / bottleneck blocks with BatchNorm, torchvision's
  init (convs fan_out Kaiming, BN γ=1 β=0); ``bn=False`` replaces every BN by ``nn.Identity``.
* :func:`mobilenet` — MobileNetV3/EfficientNet-style inverted residual blocks (expand 1×1, depthwise
  3×3, squeeze-excitation, project 1×1, each conv followed by BatchNorm).
* :func:`densenet` — DenseNet-style blocks concatenating each layer's output to its input.
* :func:`tanh_mlp` — a tanh MLP with ReLU-gain Kaiming (``kaiming_normal_`` default).
"""

from __future__ import annotations

import torch
from torch import nn

VGG11 = (16, "M", 32, "M", 64, 64, "M", 64, 64, "M", 64, 64, "M")
VGG16 = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M", 64, 64, 64, "M")


def _init_tv(model: nn.Module) -> nn.Module:
    """torchvision's ResNet/VGG init: convs kaiming_normal_(fan_out, relu), BN γ=1 β=0, Linear N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def vgg(cfg: tuple = VGG11, init: str = "fan_out", classes: int = 10, seed: int = 0) -> nn.Module:
    """VGG-style: 3×3 convs + ReLU, max pools, a 3-layer classifier (VGG-16: 16 weighted layers).
    ``init``: "fan_out" (torchvision), "fan_in" (Kaiming fan_in) or "xavier" (xavier_normal_,
    gain 1: ×½ per ReLU layer)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    model = nn.Sequential(  # 32×32 input: 1×1 after five pools; torchvision's 3-layer classifier
        *layers,
        nn.Flatten(),
        nn.Linear(c, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )
    _init_tv(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and init == "xavier":
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, nn.Conv2d) and init == "fan_in":
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(m, nn.Linear) and m.out_features != classes:
            nn.init.kaiming_normal_(m.weight, mode="fan_out" if init == "fan_out" else "fan_in")
    return model


def _bn(c: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if bn else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout, bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout, bn)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, bn: bool) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _bn(width, bn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = _bn(width, bn)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn(cout, bn)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNet(nn.Module):
    def __init__(self, block: type, layers: tuple, widths: tuple, bn: bool, classes: int) -> None:
        super().__init__()
        w0 = widths[0]
        self.conv1 = nn.Conv2d(3, w0, 3, 1, 1, bias=False)  # CIFAR stem: 32×32 stays 32×32
        self.bn1 = _bn(w0, bn)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        cin = w0
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blk = block(cin, w, 2 if (j == 0 and i > 0) else 1, bn)
                cin = w * 4 if block is Bottleneck else w
                blocks.append(blk)
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(bn: bool = True, width: int = 16, classes: int = 10, seed: int = 0) -> nn.Module:
    """ResNet-18-style (2, 2, 2, 2 basic blocks), widths ``width·(1, 2, 4, 8)``, torchvision init;
    ``bn=False``: every BatchNorm replaced by ``nn.Identity`` (the unnormalized variant)."""
    torch.manual_seed(seed)
    widths = (width, 2 * width, 4 * width, 8 * width)
    model = _init_tv(ResNet(BasicBlock, (2, 2, 2, 2), widths, bn, classes))
    nn.init.kaiming_uniform_(model.fc.weight, a=5**0.5)  # nn.Linear's default, as torchvision leaves fc
    return model


def resnet50(bn: bool = True, width: int = 8, classes: int = 10, seed: int = 0) -> nn.Module:
    """ResNet-50-style (3, 4, 6, 3 bottleneck blocks), torchvision init."""
    torch.manual_seed(seed)
    widths = (width, 2 * width, 4 * width, 8 * width)
    model = _init_tv(ResNet(Bottleneck, (3, 4, 6, 3), widths, bn, classes))
    nn.init.kaiming_uniform_(model.fc.weight, a=5**0.5)
    return model


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.fc2(s))


class InvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet MBConv: expand 1×1 → BN → act, depthwise 3×3 → BN → act, SE,
    project 1×1 → BN (no activation); identity skip when shapes agree."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU()
        )
        self.se = SqueezeExcite(mid, max(cin // 4, 4))
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.skip else out


def mobilenet(classes: int = 10, seed: int = 0) -> nn.Module:
    """An EfficientNet-B0-like stack: stem, 4 stages of inverted residual blocks (the first of each
    stage changes width: the residual stream restarts there), head. torchvision's init."""
    torch.manual_seed(seed)
    stages = ((16, 2, 1), (24, 3, 2), (40, 3, 2), (80, 4, 2))  # (channels, blocks, first stride)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU()]
    c = 16
    for cout, n, stride in stages:
        for j in range(n):
            layers.append(InvertedResidual(c, cout, 4, stride if j == 0 else 1))
            c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -1 / m.out_features**0.5, 1 / m.out_features**0.5)
            nn.init.zeros_(m.bias)
    return model


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2, self.conv2 = (
            nn.BatchNorm2d(4 * growth),
            nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(torch.relu(self.norm1(x)))
        new = self.conv2(torch.relu(self.norm2(new)))
        return torch.cat([x, new], 1)


def densenet(classes: int = 10, growth: int = 8, seed: int = 0) -> nn.Module:
    """DenseNet-style: 2 dense blocks of 4 layers (BN → ReLU → 1×1 → BN → ReLU → 3×3, output
    concatenated to the input), a transition between them; torchvision's DenseNet init."""
    torch.manual_seed(seed)
    c = 16
    layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
    for b in range(2):
        for _ in range(4):
            layers.append(DenseLayer(c, growth))
            c += growth
        if b == 0:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


def tanh_mlp(
    depth: int = 10, width: int = 128, inputs: int = 32, classes: int = 10, seed: int = 0
) -> nn.Module:
    """A tanh MLP with ReLU-gain Kaiming (``kaiming_normal_`` default: σ_w² = 2), zero biases."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = inputs
    for _ in range(depth):
        lin = nn.Linear(c, width)
        nn.init.kaiming_normal_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
        c = width
    layers.append(nn.Linear(c, classes))
    return nn.Sequential(*layers)


def scale_block(model: nn.Module, prefix: str, factor: float) -> nn.Module:
    """Multiply every conv/linear weight under module ``prefix`` by ``factor`` (std ×factor)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.startswith(prefix) and isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(factor)
    return model


def normal_branches(model: nn.Module, std: float = 1.0) -> nn.Module:
    """Every conv in a residual branch re-drawn from N(0, std²) (an unscaled init)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and name.startswith("layer") and "downsample" not in name:
                m.weight.normal_(0, std)
    return model


def fixup(model: nn.Module, blocks: int = 8) -> nn.Module:
    """A healthy *unnormalized* ResNet: each branch's last conv scaled by ``blocks^(-1/2)`` (the
    Fixup idea, Zhang et al. 2019: the stream then grows ×(1 + 1/L)^L ≈ e, not 2^L)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.startswith("layer") and name.endswith("conv2"):
                m.weight.mul_(blocks**-0.5)
    return model
