"""A residual net without normalization on scikit-learn digits (issue 15): as-is, after
`initdoctor.fix_model(model, method="auto")`, and a Kaiming + BatchNorm reference.

    python examples/resnet_digits.py [--blocks 16] [--width 16] [--epochs 6]

Data: the 8×8 digits images of examples/paper_figure3.py (1,437 for training, standardised).
Model: a stem conv (1 → width), ``--blocks`` basic blocks (conv3×3 – ReLU – conv3×3, identity
skip, ReLU after the sum) at constant width and 8×8 resolution, 2×2 average pooling to 4×4, a Linear
head on the ``width × 4 × 4`` features (global pooling would leave the head ``width`` nearly
collinear non-negative features: no-BN nets barely learned through it); every conv
``kaiming_normal_`` (fan_in, relu), zero biases — no normalization. The reference is the same net
with a BatchNorm after every conv. Arms, each a copy of the same seeded net:

- ``as-is``: Kaiming, no BN (the residual stream doubles its variance per block);
- ``auto``: `initdoctor.fix_model(net, method="auto", inputs=...)` (skipped with a message where this
  initdoctor has no ``auto`` method);
- ``lsuv``: `initdoctor.fix_model(net, method="lsuv", inputs=...)` with a data batch;
- ``fixup (manual)``: Fixup by hand (Zhang et al. 2019, m = 2 layers per branch): each branch's
  first conv × L^(-1/(2m-2)) = L^(-1/2), its last conv zeroed;
- ``bn reference``: the same net with BatchNorm, Kaiming.

Each arm: the verdict of `initdoctor.diagnose(net, probe=True, inputs=batch)` before training,
then SGD (momentum 0.9, lr 0.02, batch 64) for ``--epochs`` epochs on the same seed; prints the
final training loss per arm and the ratio to the BN reference (the acceptance of issue 15 for
``auto``: within 1.2×).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import initdoctor  # noqa: E402
from examples.paper_figure3 import digits  # noqa: E402


class Block(nn.Module):
    def __init__(self, width: int, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class DigitsResNet(nn.Module):
    """Input ``(N, 1, 8, 8)``; ``blocks`` basic blocks of ``width`` channels; 10 classes."""

    def __init__(self, blocks: int = 16, width: int = 16, norm: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.layers = nn.Sequential(*[Block(width, norm) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(width * 16, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build(blocks: int = 16, width: int = 16, norm: bool = False, seed: int = 0) -> DigitsResNet:
    torch.manual_seed(seed)
    return DigitsResNet(blocks, width, norm)


def images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The standardised training images as ``(N, 1, 8, 8)`` and their labels."""
    x, y, _, _ = digits(seed)
    return x.reshape(-1, 1, 8, 8), y


def manual_fixup(model: DigitsResNet) -> DigitsResNet:
    """Fixup (Zhang et al. 2019) with m = 2 layers per branch: the first conv of each of the L
    branches × L^(-1/(2m-2)) = L^(-1/2), the last conv (weight and bias) zeroed. In place."""
    blocks = list(model.layers)
    scale = len(blocks) ** (-1 / (2 * 2 - 2))
    with torch.no_grad():
        for block in blocks:
            block.conv1.weight.mul_(scale)
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
    return model


def fixed(model: nn.Module, method: str, batch: torch.Tensor) -> tuple[nn.Module | None, str]:
    """``fix_model(model, method)`` on a copy; ``(None, why)`` when this initdoctor lacks the method."""
    from initdoctor.options import METHODS

    if method not in METHODS:
        return None, f"method {method!r} is not in this initdoctor ({', '.join(METHODS)}): skipped"
    net = copy.deepcopy(model)
    # the data batch for every method: fix judges the net as the verdict below does (same probe
    # inputs), so auto acts on the R301 that inspect reports
    result = initdoctor.fix_model(net, method=method, inputs={"x": batch})
    return net, f"{len(result.changes)} layers changed"


def verdict(model: nn.Module, batch: torch.Tensor) -> tuple[str, list[str]]:
    """The model-level status and the rules of the error findings, probe on with the data batch."""
    report = initdoctor.diagnose(model, probe=True, inputs={"x": batch})
    rules = {f.rule for f in report.layers if f.status == "error" and f.rule}
    rules |= {b.rule for b in report.residual_blocks if b.status == "error" and getattr(b, "rule", None)}
    if report.summary.rule:
        rules.add(report.summary.rule)
    return str(report.summary.status), sorted(rules)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> float:
    """SGD (momentum 0.9, batch 64, gradient norm not clipped); the last epoch's mean loss (NaN
    when it diverged)."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = math.nan
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                return math.nan
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        last = total / len(x)
    return last


def run(
    blocks: int = 16, width: int = 16, epochs: int = 6, lr: float = 0.02, seed: int = 0, n: int = 0
) -> dict:
    """Every arm's verdict before training and final training loss (``n``: use the first ``n``
    training images only, 0 = all)."""
    torch.set_num_threads(1)
    x, y = images(seed)
    if n:
        x, y = x[:n], y[:n]
    batch = x[:256]
    base = build(blocks, width, norm=False, seed=seed)
    arms: dict[str, tuple[nn.Module | None, str]] = {"as-is": (copy.deepcopy(base), "Kaiming, no BN")}
    arms["auto"] = fixed(base, "auto", batch)
    arms["lsuv"] = fixed(base, "lsuv", batch)
    arms["fixup (manual)"] = (manual_fixup(copy.deepcopy(base)), f"{blocks} branches")
    arms["bn reference"] = (build(blocks, width, norm=True, seed=seed), "Kaiming + BatchNorm")
    results: dict[str, dict[str, Any]] = {}
    for label, (model, note) in arms.items():
        if model is None:
            results[label] = {"note": note, "status": None, "rules": [], "loss": None}
            continue
        status, rules = verdict(model, batch)
        start = time.perf_counter()
        loss = train(model, x, y, epochs, lr, seed)
        results[label] = {
            "note": note,
            "status": status,
            "rules": rules,
            "loss": loss,
            "seconds": time.perf_counter() - start,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = run(args.blocks, args.width, args.epochs, args.lr, args.seed)
    reference = results["bn reference"]["loss"]
    print(
        f"{args.blocks} blocks, width {args.width}, {args.epochs} epochs SGD lr {args.lr}, seed {args.seed}"
    )
    print(f"{'arm':<16} {'verdict before':<22} {'final loss':>10} {'vs BN':>7}  note")
    for label, r in results.items():
        if r["loss"] is None:
            print(f"{label:<16} {'-':<22} {'-':>10} {'-':>7}  {r['note']}")
            continue
        status = r["status"] + (f" {','.join(r['rules'])}" if r["rules"] else "")
        ratio = r["loss"] / reference if reference else math.nan
        print(f"{label:<16} {status:<22} {r['loss']:10.4f} {ratio:6.2f}×  {r['note']}")


if __name__ == "__main__":
    main()
