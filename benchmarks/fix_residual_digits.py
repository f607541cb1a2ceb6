"""A residual net without normalization (examples.resnets.ResNet, 8 blocks, width 16) on
scikit-learn digits (8×8, repeated to 3 channels): final training loss after 5 epochs of SGD
(momentum 0.9, batch 64) as-is, after fix_model(method="auto") / "fixup", and the same net with
BatchNorm, with inspect's exit code for each. Usage:
PYTHONPATH=$PWD python benchmarks/fix_residual_digits.py [LR] [SEEDS]   (defaults 0.05 3)."""

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits

import initdoctor
from examples.resnets import ResNet

torch.set_num_threads(1)


X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8).repeat(1, 3, 1, 1)
X = (X - X.mean()) / X.std()
y = torch.tensor(y)


def build(norm, seed):
    torch.manual_seed(seed)
    return ResNet(blocks=8, width=16, norm=norm)


LR = float(sys.argv[1]) if len(sys.argv) > 1 else 0.05
SEEDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def train(model, epochs=5, lr=LR):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(X), y).item()


rows = {}
for seed in range(SEEDS):
    for name in ("as-is", "auto", "fixup", "bn"):
        m = build(name == "bn", seed)
        if name in ("auto", "fixup"):
            initdoctor.fix_model(m, method=name, input_shapes=((16, 3, 8, 8),))
        code = initdoctor.diagnose(m, probe=True, input_shapes=((16, 3, 8, 8),)).exit_code()
        rows.setdefault(name, []).append((train(m), code))
for name, r in rows.items():
    losses = [loss for loss, _ in r]
    print(
        f"{name:6s} final train loss (5 epochs SGD lr {LR} m 0.9) mean {np.mean(losses):.4f} "
        f"± {np.std(losses):.4f} over {SEEDS} seeds: {[round(v, 4) for v in losses]}; "
        f"inspect exit {[c for _, c in r]}"
    )
