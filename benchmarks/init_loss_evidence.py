"""P206 training evidence: a zoo model healthy, with its head scaled up, and with that head then
rescaled by P206's suggestion; 80 steps of benchmarks/train_evidence.py's task and loop.

Run from the repository root: ``python benchmarks/init_loss_evidence.py`` (about a minute).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable

import torch

sys.path[:0] = ["."]
warnings.filterwarnings("ignore")

import initdoctor  # noqa: E402
from benchmarks.train_evidence import Task, train  # noqa: E402
from tests import realzoo  # noqa: E402

RUNS = [
    ("llama", "lm_head", 30.0, "adamw1e-3"),
    ("resnet", "fc", 20.0, "sgd0.1"),
    ("resnet", "fc", 20.0, "adamw1e-3"),
]


def scaled(build: Callable[[], torch.nn.Module], head: str, k: float, rescale: bool) -> Callable:
    def factory() -> torch.nn.Module:
        model = build()
        with torch.no_grad():
            for p in model.get_submodule(head).parameters():
                p.mul_(k)
        if rescale:
            info = initdoctor.diagnose(model, probe=True).summary.init_loss
            assert info is not None and info["suggested_scale"] is not None
            print(f"  P206 {head}×{k:g}: {info['expected']:.3f} nats, rescale {info['suggested_scale']:.4f}")
            with torch.no_grad():
                for p in model.get_submodule(head).parameters():
                    p.mul_(info["suggested_scale"])
        return model

    return factory


def main() -> None:
    torch.set_num_threads(1)
    task = Task()
    for name, head, k, opt in RUNS:
        entry = realzoo.BY_NAME[name]
        builds = [
            ("healthy", entry.build),
            (f"{head}×{k:g}", scaled(entry.build, head, k, False)),
            (f"{head}×{k:g} + P206 rescale", scaled(entry.build, head, k, True)),
        ]
        for label, build in builds:
            r = train(task, dataclasses.replace(entry, build=build), opt, 80)
            print(
                f"{name:7} {label:24} {opt:10} loss@0 {r['loss0']:7.3f} ln C {r['lnC']:.3f} "
                f"loss@80 {r['lossN']:6.3f} eval@80 {r['eval']:6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
