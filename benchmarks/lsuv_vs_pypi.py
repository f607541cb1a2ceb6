"""LSUV on real data: `initdoctor.fix_model(method="lsuv", inputs=FILE)` vs the PyPI `lsuv` package
(issue 15).

    python benchmarks/lsuv_vs_pypi.py [--seeds 5] [--epochs 20] [--out benchmarks/results/lsuv_vs_pypi.txt]

Needs the `bench` extra (`pip install --no-deps lsuv==0.3.0`). Data: scikit-learn digits, shuffled
and standardised per seed as in examples/paper_figure3.py (1,437 training images). Model per seed:
the 30-layer ReLU MLP of examples/models.py (width 128, xavier_normal_ weights, zero biases). Three
arms on copies of the same net: ``xavier`` as-is; ``initdoctor`` = `fix_model(net, method="lsuv",
inputs=batch.npz)` (defaults: tol 0.05, max_iter from the option table); ``pypi`` =
`lsuv.lsuv_with_singlebatch(net, batch)` with its defaults (orthonormal init first, every Linear
including the output scaled to unit output std, std_tol 0.1, max 10 attempts). Both LSUVs see the
same data batch: the first ``--batch`` (256) training images of the seed's shuffle. Training: SGD
momentum 0.9, lr 0.005, batch 64, ``--epochs`` epochs, same shuffling seed for every arm. Goal:
mean final training loss of ``initdoctor`` ≤ mean + 1 std of ``pypi``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import initdoctor  # noqa: E402
from examples.models import plain_mlp  # noqa: E402
from examples.paper_figure3 import digits, train  # noqa: E402

ARMS = ("xavier", "initdoctor", "pypi")
#: ablations (``--arms``): initdoctor's LSUV on every layer, the output included (``all_layers``);
#: the PyPI LSUV without its orthonormal pre-init (``do_orthonorm=False``: xavier weights rescaled)
ABLATIONS = ("initdoctor-all", "pypi-noortho")


def lsuv_initdoctor(
    model: torch.nn.Module, batch: torch.Tensor, folder: Path, all_layers: bool = False
) -> int:
    """The fix through the public API on a real data file; returns the number of layers changed."""
    path = folder / "batch.npz"
    np.savez(path, input=batch.numpy())
    result = initdoctor.fix_model(model, method="lsuv", inputs=str(path), all_layers=all_layers)
    return len(result.changes)


def lsuv_pypi(model: torch.nn.Module, batch: torch.Tensor, orthonormal: bool = True) -> None:
    import lsuv

    lsuv.lsuv_with_singlebatch(model, batch, verbose=False, do_orthonorm=orthonormal)


def run_seed(
    seed: int, epochs: int, width: int, batch_size: int, lr: float, arms: tuple[str, ...] = ARMS
) -> dict[str, float]:
    torch.set_num_threads(1)
    data = digits(seed)
    batch = data[0][:batch_size].clone()
    base = plain_mlp(depth=30, width=width, in_features=64, classes=10, init="xavier", seed=seed)
    nets = {arm: copy.deepcopy(base) for arm in arms}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("initdoctor", "initdoctor-all"):
            if arm in nets:
                out["changed"] = lsuv_initdoctor(nets[arm], batch, Path(tmp), arm == "initdoctor-all")
    for arm in ("pypi", "pypi-noortho"):
        if arm in nets:
            lsuv_pypi(nets[arm], batch, orthonormal=arm == "pypi")
    for arm in arms:
        losses, _ = train(nets[arm], data, epochs, lr, seed)
        out[arm] = losses[-1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256, help="images in the LSUV data batch")
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS + ABLATIONS)}")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    arms = tuple(args.arms.split(","))
    start = time.perf_counter()
    rows = []
    lines = [f"{'seed':>4}  {'changed':>7}  " + "  ".join(f"{a:>14}" for a in arms)]
    for seed in range(args.seeds):
        r = run_seed(seed, args.epochs, args.width, args.batch, args.lr, arms)
        rows.append(r)
        lines.append(f"{seed:4d}  {int(r.get('changed', 0)):7d}  " + "  ".join(f"{r[a]:14.4f}" for a in arms))
        print(lines[-1], flush=True)
    stats = {a: (statistics.mean(r[a] for r in rows), statistics.stdev(r[a] for r in rows)) for a in arms}
    lines.append("")
    lines.append(f"final training loss after {args.epochs} epochs, mean ± std over {args.seeds} seeds:")
    for arm in arms:
        lines.append(f"  {arm:>14}: {stats[arm][0]:.4f} ± {stats[arm][1]:.4f}")
    if "pypi" in stats and "initdoctor" in stats:
        bound = stats["pypi"][0] + stats["pypi"][1]
        met = "met" if stats["initdoctor"][0] <= bound else "not met"
        lines.append(
            f"goal: initdoctor mean {stats['initdoctor'][0]:.4f} ≤ pypi mean + std {bound:.4f}: {met}"
        )
    lines.append(
        f"(width {args.width}, LSUV batch {args.batch}, SGD lr {args.lr} momentum 0.9 batch 64, "
        f"torch {torch.__version__}, {time.perf_counter() - start:.0f} s)"
    )
    text = "\n".join(lines[args.seeds + 1 :])
    print(text)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
