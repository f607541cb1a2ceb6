"""He et al. (2015), Figure 3 at CPU scale: a 30-layer plain ReLU net initialized with xavier does
not learn; after `initdoctor fix` (Kaiming rescale) the same net does.

    python examples/paper_figure3.py [--epochs 30] [--plot curve.png]

Data: scikit-learn's handwritten digits (1,797 8×8 images, 10 classes; shipped inside the
package, no download), standardised, 1,437 for training and 360 held out. Model: 30 Linear layers
of width 256 with ReLU, no normalization, no residuals, zero biases, xavier_normal_ weights.
Both copies train with the same seeded SGD (momentum 0.9, lr 0.005, batch 64); the only difference
is `initdoctor.fix_model(net)` on the second. Prints the training loss per epoch for both and the
held-out accuracy at the end.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import initdoctor  # noqa: E402
from examples.models import plain_mlp  # noqa: E402


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    mean, std = x[:split].mean(0), x[:split].std(0) + 1e-6
    x = (x - mean) / std
    return (
        torch.from_numpy(x[:split]),
        torch.from_numpy(y[:split]),
        torch.from_numpy(x[split:]),
        torch.from_numpy(y[split:]),
    )


def train(model: nn.Module, data, epochs: int, lr: float, seed: int) -> tuple[list[float], float]:
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return losses, accuracy


def run(epochs: int = 30, lr: float = 0.005, seed: int = 0, depth: int = 30, width: int = 256) -> dict:
    data = digits(seed)
    xavier = plain_mlp(depth=depth, width=width, in_features=64, classes=10, init="xavier", seed=seed)
    fixed = copy.deepcopy(xavier)
    fix = initdoctor.fix_model(fixed)  # the Kaiming rescale, in place
    results = {"changed_layers": len(fix.changes)}
    for label, model in (("xavier", xavier), ("fixed", fixed)):
        start = time.perf_counter()
        losses, accuracy = train(model, data, epochs, lr, seed)
        results[label] = {"losses": losses, "accuracy": accuracy, "seconds": time.perf_counter() - start}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    results = run(args.epochs, args.lr, args.seed)
    print(f"initdoctor fix rescaled {results['changed_layers']} layers of the xavier net")
    print(f"{'epoch':>5}  {'xavier loss':>11}  {'fixed loss':>10}")
    for epoch, (a, b) in enumerate(
        zip(results["xavier"]["losses"], results["fixed"]["losses"], strict=False), 1
    ):
        print(f"{epoch:5d}  {a:11.4f}  {b:10.4f}")
    for label in ("xavier", "fixed"):
        r = results[label]
        print(f"{label}: held-out accuracy {r['accuracy']:.1%}, training took {r['seconds']:.1f} s")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for label in ("xavier", "fixed"):
            ax.plot(range(1, args.epochs + 1), results[label]["losses"], label=label)
        ax.axhline(np.log(10), color="#888", ls="--", lw=1, label="chance (ln 10)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title("30-layer plain ReLU MLP on digits")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
