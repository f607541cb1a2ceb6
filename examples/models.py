"""Example models for initdoctor: plain deep ReLU nets as in He et al. (2015), Figure 3.

Factories (usable as ``initdoctor inspect examples.models:xavier_mlp``) and a writer that saves
them to disk in every format initdoctor reads::

    python examples/models.py            # writes examples/out/*.pt, *.safetensors, *.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


def plain_mlp(
    depth: int = 30,
    width: int = 256,
    in_features: int = 64,
    classes: int = 10,
    init: str = "kaiming",
    seed: int = 0,
) -> nn.Sequential:
    """``depth`` Linear layers with a ReLU after each hidden one; no norm, no residuals."""
    torch.manual_seed(seed)
    dims = [in_features] + [width] * (depth - 1) + [classes]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < depth - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    apply_init(model, init)
    return model


def plain_cnn(
    depth: int = 30,
    width: int = 32,
    in_channels: int = 3,
    classes: int = 10,
    init: str = "kaiming",
    seed: int = 0,
) -> nn.Sequential:
    """``depth - 1`` 3×3 convolutions with ReLU, global average pooling, a Linear classifier."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(depth - 1):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    model = nn.Sequential(*layers)
    apply_init(model, init)
    return model


def apply_init(model: nn.Module, init: str) -> None:
    """``kaiming`` (normal, fan_in, relu), ``xavier`` (normal) or ``default`` (PyTorch's own)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if init == "kaiming":
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_normal_(module.weight)
            elif init != "default":
                raise ValueError(f"unknown init {init!r}")
            if init != "default":
                nn.init.zeros_(module.bias)


def xavier_mlp() -> nn.Module:
    return plain_mlp(init="xavier")


def kaiming_mlp() -> nn.Module:
    return plain_mlp(init="kaiming")


def write_all(out: Path) -> list[Path]:
    """Save the xavier and kaiming 30-layer MLPs as state_dict, safetensors and ONNX."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for init in ("xavier", "kaiming"):
        model = plain_mlp(init=init)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, out / f"{init}_mlp30.pt")
        save_file(state, str(out / f"{init}_mlp30.safetensors"))
        torch.onnx.export(model, (torch.randn(1, 64),), str(out / f"{init}_mlp30.onnx"), dynamo=False)
        written += [out / f"{init}_mlp30.{ext}" for ext in ("pt", "safetensors", "onnx")]
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out"
    for path in write_all(target):
        print(path)
