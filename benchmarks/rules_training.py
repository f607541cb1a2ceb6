"""Trainability behind the rules of issue 14 (docs/rules-evidence.md): each net of tests/archs.py,
healthy and broken, trained briefly on a synthetic task (seed 0, CPU) next to initdoctor's verdict.

    PYTHONPATH=.:tests python benchmarks/rules_training.py [--steps 100] [NAME ...]

Task: 10 classes; an input is its class's fixed random pattern (N(0, 1)) plus N(0, 1) noise:
3×8×8 images (ResNet-18 at width 8, MobileNet, DenseNet), 3×32×32 (VGG), 32-vectors (tanh MLP);
batches of 32, SGD with momentum 0.9 at each net's usual learning rate (0.1; VGG and MLP 0.01).
Loss: cross-entropy; chance ln 10 = 2.30.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import archs
import torch
from archs import fixup
from torch import nn

import initdoctor

BATCH = 32
NETS = {
    "vgg11_fan_out": (lambda: archs.vgg(), "sgd", 0.01),
    "vgg16_fan_out": (lambda: archs.vgg(archs.VGG16), "sgd", 0.01),
    "vgg16_xavier": (lambda: archs.vgg(archs.VGG16, "xavier"), "sgd", 0.01),
    "resnet18_bn": (lambda: archs.resnet18(width=8), "sgd", 0.1),
    "resnet18_no_bn": (lambda: archs.resnet18(bn=False, width=8), "sgd", 0.1),
    "resnet18_no_bn_fixup": (lambda: fixup(archs.resnet18(bn=False, width=8)), "sgd", 0.1),
    "resnet18_no_bn_fixup_x10": (
        lambda: archs.scale_block(fixup(archs.resnet18(bn=False, width=8)), "layer3.1", 10.0),
        "sgd",
        0.1,
    ),
    "resnet50_bn": (lambda: archs.resnet50(), "sgd", 0.1),
    "mobilenet": (lambda: archs.mobilenet(), "sgd", 0.1),
    "densenet": (lambda: archs.densenet(), "sgd", 0.1),
    "tanh_relu_kaiming": (lambda: archs.tanh_mlp(), "sgd", 0.01),
    "tanh_xavier": (lambda: _reinit(archs.tanh_mlp(), "xavier"), "sgd", 0.01),
    "tanh_default": (lambda: _reinit(archs.tanh_mlp(), "default"), "sgd", 0.01),
}


def _reinit(model: nn.Module, how: str) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if how == "xavier":
                nn.init.xavier_normal_(m.weight, gain=5 / 3)
            else:
                m.reset_parameters()
    return model


def data(shape: tuple, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    patterns = torch.randn(10, *shape, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = patterns[y] + torch.randn(n, *shape, generator=gen)
    return x, y, patterns


def train(name: str, steps: int) -> dict:
    build, opt_name, lr = NETS[name]
    model = build()
    # VGG needs 32×32 (five pools); the others train on 8×8 to keep CPU runs short
    sample = (32,) if name.startswith("tanh") else (3, 32, 32) if name.startswith("vgg") else (3, 8, 8)
    t0 = time.time()
    report = initdoctor.diagnose(model, probe=True, input_shapes=((8, *sample),))
    verdict_s = time.time() - t0
    gen = torch.Generator().manual_seed(0)
    x, y, _ = data(sample, BATCH * steps, gen)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for step in range(steps):
        xb, yb = x[step * BATCH : (step + 1) * BATCH], y[step * BATCH : (step + 1) * BATCH]
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    first = losses[0]
    tail = losses[-20:]
    final = sum(tail) / len(tail)
    s = report.summary
    return {
        "name": name,
        "status": s.status,
        "rule": s.rule,
        "mode": s.kaiming_mode,
        "message": s.message,
        "loss0": first,
        "final": final,
        "steps": len(losses),
        "verdict_s": verdict_s,
        "flagged_blocks": [b.name for b in report.residual_blocks if b.status == "error"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.names or list(NETS):
        r = train(name, args.steps)
        print(
            f"| {r['name']} | {r['status']} {r['rule'] or ''} ({r['mode']}) | {r['loss0']:.3g} | "
            f"{r['final']:.3g} ({r['steps']} steps) | {', '.join(r['flagged_blocks']) or '-'} | "
            f"{r['message'][:140]} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
