"""The probe on the He et al. (2015) setting: 30-layer plain ReLU nets, Kaiming vs xavier.

    python examples/probe_figures.py [--seeds 3] [--batch 32]

Prints, per net and seed, the measured per-layer variance ratios (min–max), the geometric mean
over the chain, the depth ratio Var[y_last]/Var[y_first] and the gradient depth ratio — the
figures quoted in the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import initdoctor  # noqa: E402
from examples.models import plain_cnn, plain_mlp  # noqa: E402

NETS = {
    "mlp30 w256": lambda init, seed: plain_mlp(init=init, seed=seed),
    "cnn30 w32": lambda init, seed: plain_cnn(init=init, seed=seed),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"{'net':12s} {'init':8s} seed  per-layer ratio   chain  depth ratio  grad depth  status")
    for label, build in NETS.items():
        for init in ("kaiming", "xavier"):
            for seed in range(args.seeds):
                report = initdoctor.diagnose(
                    build(init, seed), probe=True, backward=True, batch_size=args.batch
                )
                ratios = [f.variance_ratio for f in report.layers if f.role == "hidden" and f.variance_ratio]
                s = report.summary
                print(
                    f"{label:12s} {init:8s} {seed:4d}  {min(ratios):5.2f}–{max(ratios):5.2f}     "
                    f"{s.measured_chain_ratio:5.2f}  {s.depth_ratio:11.3g}  {s.grad_depth_ratio:10.3g}  "
                    f"{s.status}"
                )


if __name__ == "__main__":
    main()
