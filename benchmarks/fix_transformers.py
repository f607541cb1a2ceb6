"""Does ``fix --method auto`` make a broken transformer train? (issue 15). Prints numbers; not a test.

    PYTHONPATH=$PWD python benchmarks/fix_transformers.py [--steps 200] [--only llama,gpt2x8]

Arms (tests/realzoo.py's tiny models, the next-token task of benchmarks/train_evidence.py, AdamW
lr 1e-3, ``--steps`` steps, seed 0, one thread): the stock LLaMA; ``llama_broken``
(``initializer_range=1.0``: every matrix N(0, 1)) as it is and after
``initdoctor.fix_model(model, method="auto")``; the stock GPT-2 (pre-LN) and the same GPT-2 with
every branch's output projection (attn.c_proj, mlp.c_proj) ×8, as it is and after ``auto``.
Columns: inspect's verdict (probed) before training, the number of changes ``auto`` made, the
mean training loss of the last 10 steps, the held-out loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import initdoctor  # noqa: E402
from benchmarks.train_evidence import Task, fit  # noqa: E402
from tests import realzoo  # noqa: E402


def gpt2_x8() -> torch.nn.Module:
    model = realzoo.gpt2()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(8.0)
            block.mlp.c_proj.weight.mul_(8.0)
    return model


def run(task: Task, name: str, build, fix: bool, steps: int) -> str:
    model = build()
    changes = "-"
    if fix:
        result = initdoctor.fix_model(model, method="auto")
        changes = f"{len(result.changes)} ({','.join(sorted({c.method for c in result.changes}))})"
    report = initdoctor.diagnose(model, probe=True)
    verdict = f"{report.summary.status} {report.summary.rule or ''}".strip()
    entry = _entry(name)
    model.train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, nan_at, held = fit(model, opt, lambda seed: task.loss(entry, model, seed=seed), steps)
    if nan_at is not None:
        losses.append(float("nan"))  # a non-finite step makes the tail's mean NaN
    tail = losses[-10:]
    arm = f"{name}{' + fix auto' if fix else ''}"
    return (
        f"{arm:<26} {verdict:<12} {changes:<22} {losses[0]:>7.3f} {sum(tail) / len(tail):>7.3f} {held:>7.3f}"
    )


def _entry(name: str):
    base = "llama" if name.startswith("llama") else "gpt2"
    return next(e for e in realzoo.MATRIX if e.name == base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--only", default="llama,gpt2x8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = Task()
    arms = {
        "llama": [
            ("llama", realzoo.llama, False),
            ("llama_broken", realzoo.llama_broken, False),
            ("llama_broken", realzoo.llama_broken, True),
        ],
        "gpt2x8": [("gpt2", realzoo.gpt2, False), ("gpt2_x8", gpt2_x8, False), ("gpt2_x8", gpt2_x8, True)],
    }
    print(f"# {args.steps} steps AdamW 1e-3, seed 0, torch {torch.__version__}")
    print(f"{'arm':<26} {'verdict':<12} {'changes':<22} {'loss@0':>7} {'loss@N':>7} {'eval':>7}")
    for group in args.only.split(","):
        for name, build, fix in arms[group]:
            print(run(task, name, build, fix, args.steps), flush=True)


if __name__ == "__main__":
    main()
