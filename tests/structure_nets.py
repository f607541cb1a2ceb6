"""torch.nn equivalents of torchvision / timm architectures (torchvision and timm are not usable
here): a ResNet-18-style net with BatchNorm, a MobileNetV3-style net with squeeze-excitation and
hardswish, timm's BatchNormAct2d, and a post-LN encoder on nn.MultiheadAttention. Tiny widths."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet18_like(width=16, classes=10):
    """torchvision's ResNet-18 layout (2-2-2-2 basic blocks, BN), narrow; Kaiming fan_out init."""
    torch.manual_seed(0)
    w = width
    model = nn.Sequential()
    model.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(w)
    model.relu = nn.ReLU(inplace=True)
    model.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = w
    for i, (cout, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)], start=1):
        setattr(model, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
        cin = cout
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.flatten = nn.Flatten()
    model.fc = nn.Linear(cin, classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidual(nn.Module):
    def __init__(self, cin, expand, cout, stride, se):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers = [nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), nn.Hardswish()]
        layers += [
            nn.Conv2d(expand, expand, 3, stride, 1, groups=expand, bias=False),
            nn.BatchNorm2d(expand),
            nn.Hardswish(),
        ]
        if se:
            layers.append(SqueezeExcitation(expand, max(8, expand // 4)))
        layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res else out


def mobilenetv3_like(classes=10):
    """torchvision's MobileNetV3 layout (inverted residuals, SE with hardsigmoid, hardswish), tiny."""
    torch.manual_seed(0)
    features = [nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())]
    features += [
        InvertedResidual(16, 32, 24, 2, True),
        InvertedResidual(24, 48, 24, 1, True),
        InvertedResidual(24, 48, 24, 1, True),
        InvertedResidual(24, 64, 32, 2, False),
    ]
    features.append(nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish()))
    model = nn.Sequential()
    model.features = nn.Sequential(*features)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.flatten = nn.Flatten()
    model.classifier = nn.Sequential(nn.Linear(64, 128), nn.Hardswish(), nn.Linear(128, classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: BatchNorm2d whose forward also applies an activation (and a shape
    check that a plain fx trace cannot step over)."""

    def __init__(self, num_features, act_layer=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x):
        assert x.ndim == 4, f"expected 4D input (got {x.ndim}D input)"
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )
        return self.act(self.drop(x))


def timm_like_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        BatchNormAct2d(16),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        BatchNormAct2d(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class MHANet(nn.Module):
    """Post-LN transformer encoder layers built on nn.MultiheadAttention."""

    def __init__(self, dim=32, layers=2):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, dim)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, 4, batch_first=True) for _ in range(layers))
        self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        h = self.inp(x)
        for attn, norm in zip(self.attn, self.norm, strict=True):
            h = norm(h + attn(h, h, h, need_weights=False)[0])
        return self.head(h)
