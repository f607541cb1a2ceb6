"""Training evidence for the real-architecture matrix (tests/realzoo.py): does each healthy model
train, and does its broken twin train worse? Prints numbers; not a test.

    python benchmarks/train_evidence.py [--steps 80] [--only gpt2,resnet_nobn] [--out FILE]

Every model is trained from its factory (seed 0, CPU) for ``--steps`` steps on a synthetic task
it can learn, with fresh seeded batches each step (the data stream is the same for a healthy model
and its twin):

* causal LMs (GPT-2, LLaMA, Mistral, Qwen2): next-token prediction on a fixed random Markov chain
  over ids 0..998 (4 successors per id, probabilities .55/.25/.15/.05: entropy 1.11 nats);
* masked LMs (BERT, DistilBERT): the same sequences, 15% of positions replaced by id 999, loss on
  those positions;
* T5: copy (labels = input ids, the decoder teacher-forced);
* image classifiers (ViT, the CNNs): 10 classes, each a fixed random N(0, 1) prototype image and
  a fixed colour cast (a per-channel constant, N(0, 0.5²)); an example is N(0, 1) noise + 0.25 ·
  its class's prototype + its colour. Tried first and dropped: a linear teacher on pooled
  Gaussian images (nothing, healthy or broken, learned it within 80 steps) and the prototypes
  alone (ViT learned them, the global-pooling CNNs did not);
* CLIP: 32 distinct pairs per batch out of 256 classes (a fixed token sequence and a fixed
  prototype image + N(0, 0.5²) noise per class), CLIP's own contrastive loss.

Optimizers: AdamW lr 1e-3 (torch defaults otherwise, no clipping, no schedule) for the
transformers; for the CNNs both SGD (momentum 0.9, lr 0.1, weight decay 1e-4: torchvision's
recipe) and AdamW lr 1e-3. Columns: ``loss@0`` the training loss of the first batch (train mode),
``ln C`` the loss of a uniform guess (C = vocabulary, classes or CLIP batch), ``loss@N`` the mean
training loss of the last 10 steps, ``eval@N`` the eval-mode loss on a held-out batch, ``nan``
whether any step's loss was not finite (training stops there).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import realzoo  # noqa: E402

BATCH, SEQ, MASK = 16, 32, realzoo.VOCAB - 1
CNN_BATCH, CLIP_BATCH, CLIP_CLASSES, PROTOTYPE = 32, 32, 256, 0.25


class Task:
    """The seeded data of every task (fixed tables from seed 1234, batches from the step's seed)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.successors = torch.stack([torch.randperm(MASK, generator=g)[:4] for _ in range(MASK)])
        self.probs = torch.tensor([0.55, 0.25, 0.15, 0.05])
        self.prototypes = torch.randn(realzoo.CLASSES, 3, realzoo.IMAGE, realzoo.IMAGE, generator=g)
        self.colours = 0.5 * torch.randn(realzoo.CLASSES, 3, 1, 1, generator=g)
        self.clip_text = torch.randint(3, realzoo.VOCAB, (CLIP_CLASSES, realzoo.SEQ), generator=g)
        self.clip_image = torch.randn(CLIP_CLASSES, 3, realzoo.IMAGE, realzoo.IMAGE, generator=g)

    def markov(self, g: torch.Generator) -> torch.Tensor:
        ids = torch.empty(BATCH, SEQ, dtype=torch.long)
        ids[:, 0] = torch.randint(0, MASK, (BATCH,), generator=g)
        for t in range(1, SEQ):
            pick = torch.multinomial(self.probs.expand(BATCH, 4), 1, generator=g).squeeze(1)
            ids[:, t] = self.successors[ids[:, t - 1], pick]
        return ids

    def images(self, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, realzoo.CLASSES, (n,), generator=g)
        noise = torch.randn(n, 3, realzoo.IMAGE, realzoo.IMAGE, generator=g)
        return noise + PROTOTYPE * self.prototypes[y] + self.colours[y], y

    def loss(self, entry: realzoo.Entry, model: torch.nn.Module, seed: int) -> torch.Tensor:
        """The loss of ``model`` on the batch of ``seed``."""
        g = torch.Generator().manual_seed(seed)
        name = entry.name.removesuffix("_broken")
        if name in ("gpt2", "llama", "mistral", "qwen2"):
            ids = self.markov(g)
            logits = model(input_ids=ids).logits
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        if name in ("bert", "distilbert"):
            ids = self.markov(g)
            masked = torch.rand(ids.shape, generator=g) < 0.15
            masked[:, 0] = True  # at least one position per row
            logits = model(input_ids=ids.masked_fill(masked, MASK)).logits
            return F.cross_entropy(logits[masked], ids[masked])
        if name == "t5":
            ids = self.markov(g)
            return model(input_ids=ids, labels=ids).loss
        if name == "clip":
            classes = torch.randperm(CLIP_CLASSES, generator=g)[:CLIP_BATCH]
            noise = 0.5 * torch.randn(CLIP_BATCH, 3, realzoo.IMAGE, realzoo.IMAGE, generator=g)
            pixels = self.clip_image[classes] + noise
            return model(input_ids=self.clip_text[classes], pixel_values=pixels, return_loss=True).loss
        x, y = self.images(g, CNN_BATCH)
        out = model(pixel_values=x).logits if entry.inputs == "pixels" else model(x)
        return F.cross_entropy(out, y)


def classes(entry: realzoo.Entry) -> int:
    if entry.inputs in ("tokens", "seq2seq"):
        return realzoo.VOCAB
    return CLIP_BATCH if entry.inputs == "clip" else realzoo.CLASSES


def optimizers(entry: realzoo.Entry) -> list[str]:
    return ["sgd0.1", "adamw1e-3"] if entry.inputs == "image" else ["adamw1e-3"]


def fit(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_at: Callable[[int], torch.Tensor],
    steps: int,
    seed0: int = 0,
) -> tuple[list[float], int | None, float]:
    """``steps`` steps of ``opt`` on ``loss_at(seed0 + step)`` (a fresh seeded batch each step), stopped
    at the first non-finite loss, then the eval-mode loss on the held-out batch ``loss_at(10**6)``:
    (the training losses, the step of the non-finite one or None, the held-out loss)."""
    losses: list[float] = []
    nan_at = None
    for step in range(steps):
        loss = loss_at(seed0 + step)
        if not math.isfinite(loss.item()):
            nan_at = step
            break
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        held_out = loss_at(10**6).item()
    return losses, nan_at, held_out


def train(task: Task, entry: realzoo.Entry, opt_name: str, steps: int) -> dict:
    model = entry.build().train()
    torch.manual_seed(0)
    if opt_name == "sgd0.1":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    losses, nan_at, held_out = fit(model, opt, lambda seed: task.loss(entry, model, seed=seed), steps)
    tail = losses[-10:]
    return {
        "loss0": losses[0] if losses else math.nan,
        "lnC": math.log(classes(entry)),
        "lossN": sum(tail) / len(tail) if tail else math.nan,
        "eval": held_out,
        "nan": nan_at,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--only", default="", help="comma-separated matrix names (default: all)")
    parser.add_argument("--out", type=Path, help="also write the output to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 threads on a loaded 2-core machine ran 10× slower
    wanted = set(filter(None, args.only.split(",")))
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(
        f"# train_evidence: {args.steps} steps, seed 0, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    cols = ("loss@0", "ln C", "loss@N", "eval@N", "nan", "s")
    header = f"{'model':<18} {'init':<8} {'optimizer':<10} " + " ".join(f"{c:>7}" for c in cols)
    emit(header)
    emit("-" * len(header))
    task, total = Task(), time.perf_counter()
    for entry in realzoo.MATRIX:
        if wanted and entry.name not in wanted:
            continue
        for opt_name in optimizers(entry):
            r = train(task, entry, opt_name, args.steps)
            nan = "-" if r["nan"] is None else f"@{r['nan']}"
            init = "healthy" if entry.healthy else "broken"
            emit(
                f"{entry.name:<18} {init:<8} {opt_name:<10} {r['loss0']:>7.3f} {r['lnC']:>7.3f} "
                f"{r['lossN']:>7.3f} {r['eval']:>7.3f} {nan:>7} {r['seconds']:>7.1f}"
            )
    emit(f"# total {time.perf_counter() - total:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
