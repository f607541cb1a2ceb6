"""Training evidence for the classifier-head rule (K101 → note for head layers): does the scale of
the penultimate linear of a classifier head (torchvision's ``N(0, 0.01)``) matter for training,
against the same factor on a hidden conv of the feature stack? Prints numbers; not a test.

    python benchmarks/head_layers.py [--steps 120] [--seeds 0,1,2] [--only vgg11,mobilenet] [--out FILE]

Models: the zoo's ``vgg11`` and ``mobilenet`` (tests/realcnn.py, torchvision's init loops), rebuilt
per seed (``torch.manual_seed(seed)`` before construction and init). Variants (each changes one
layer's weight only):

* ``default``   — torchvision's init as is (the head layer flagged K101 in 0.9.0);
* ``head_kai``  — the flagged head layer rescaled to its Kaiming std (``gain / sqrt(fan_in)``);
* ``head_1e-2`` — the head layer at 0.1× Kaiming std (variance ×1e-2);
* ``head_1e-4`` — the head layer at 0.01× Kaiming std (variance ×1e-4);
* ``tv`` — (MobileNet) both classifier linears ``N(0, 0.01)`` scaled to torchvision's
  MobileNetV3-large fan_ins (960, 1280): the real model's variance factors (×0.032, output ×0.128);
  ``tv_head_kai`` the same with the head layer at Kaiming;
* ``mid_same``  — (VGG) a conv in the middle of the feature stack (no BN after it) scaled by the
  head layer's default variance factor; ``mid_1e-4`` the same conv at variance ×1e-4.

Task: train_evidence.Task's image task (10 classes, prototype + colour + noise). Batches: seed
``1000·seed + step``; held-out: 4 batches of 32 (seeds 10^6…). Optimizers: SGD lr 0.01 momentum 0.9
weight decay 1e-4 (torchvision's VGG recipe) and AdamW lr 1e-3. Reported: mean training loss of
the last 20 steps and the held-out loss; mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_evidence import CNN_BATCH, Task  # noqa: E402
from tests.realcnn import VGG, MobileNetV3, tv_init  # noqa: E402

#: model → (builder, head layer, its follower's gain, a mid-stack conv or None)
MODELS = {
    "vgg11": (lambda: tv_init(VGG(11), "fan_out", "vgg_scaled"), "classifier.3", math.sqrt(2), "features.8"),
    "mobilenet": (lambda: tv_init(MobileNetV3(), "fan_out", "normal"), "classifier.0", 1.7367, None),
}
VARIANTS = ("default", "head_kai", "mid_same", "head_1e-4", "head_1e-2", "mid_1e-4", "tv", "tv_head_kai")
#: MobileNetV3-large's classifier at torchvision's widths: Linear(960, 1280), Linear(1280, 1000)
TV_FAN_IN = {"mobilenet": (960, 1280)}


def build(name: str, variant: str, seed: int) -> nn.Module | None:
    make, head_name, gain, mid_name = MODELS[name]
    torch.manual_seed(seed)
    model = make()
    mods = dict(model.named_modules())
    head = mods[head_name]
    kai = gain / math.sqrt(head.weight.shape[1])  # Kaiming std, fan_in (He et al. 2015, eq. 10)
    factor = (head.weight.std().item() / kai) ** 2  # the default's variance factor
    with torch.no_grad():
        if variant.startswith("tv"):
            if name not in TV_FAN_IN:
                return None
            # N(0, 0.01) at torchvision's fan_ins: the variance factors of the real-width model
            for lin, tv_fan_in in zip(model.classifier[::3], TV_FAN_IN[name], strict=True):
                lin.weight.mul_((tv_fan_in / lin.in_features) ** 0.5)
            if variant == "tv_head_kai":
                head.weight.mul_(kai / head.weight.std())
        elif variant == "head_kai":
            head.weight.mul_(kai / head.weight.std())
        elif variant == "head_1e-2":
            head.weight.mul_(0.1 * kai / head.weight.std())
        elif variant == "head_1e-4":
            head.weight.mul_(0.01 * kai / head.weight.std())
        elif variant.startswith("mid"):
            if mid_name is None:
                return None
            mods[mid_name].weight.mul_(math.sqrt(factor) if variant == "mid_same" else 0.01)
    return model


def sd(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def train(task: Task, model: nn.Module, opt_name: str, steps: int, seed: int) -> tuple[float, float]:
    model.train()
    if opt_name == "sgd0.01":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        x, y = task.images(torch.Generator().manual_seed(1000 * seed + step), CNN_BATCH)
        loss = F.cross_entropy(model(x), y)
        if not math.isfinite(loss.item()):
            return math.nan, math.nan
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        held = [
            F.cross_entropy(model(x), y).item()
            for x, y in (task.images(torch.Generator().manual_seed(10**6 + i), CNN_BATCH) for i in range(4))
        ]
    return sum(losses[-20:]) / 20, sum(held) / len(held)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", default="vgg11,mobilenet")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(
        f"# head_layers: {args.steps} steps, seeds {seeds}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    emit(
        f"{'model':<10} {'variant':<10} {'optimizer':<10} {'train loss':>16} {'held-out loss':>16}"
        "  per seed (held-out)"
    )
    task = Task()
    for name in args.only.split(","):
        for variant in args.variants.split(","):
            for opt_name in ("sgd0.01", "adamw1e-3"):
                runs = []
                for seed in seeds:
                    model = build(name, variant, seed)
                    if model is None:
                        break
                    runs.append(train(task, model, opt_name, args.steps, seed))
                if not runs:
                    continue
                tr, ev = [r[0] for r in runs], [r[1] for r in runs]
                emit(
                    f"{name:<10} {variant:<10} {opt_name:<10} {statistics.mean(tr):>8.3f} ± {sd(tr):<5.3f} "
                    f"{statistics.mean(ev):>8.3f} ± {sd(ev):<5.3f}  " + " ".join(f"{e:.3f}" for e in ev)
                )
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
