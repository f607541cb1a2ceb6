"""Is ``tests.realzoo:gemma_broken`` broken? (issue 14, session 4). Prints numbers; not a test.

    PYTHONPATH=$PWD python benchmarks/gemma_broken.py [--steps 300] [--seeds 0,1,2] [--only ARM,ARM]

Every arm is a realzoo config built with ``torch.manual_seed(seed)`` (so the seed changes the init
and the data stream), trained with AdamW lr 1e-3 (torch defaults otherwise, no clipping) for
``--steps`` steps, one thread, on next-token prediction over a fixed random Markov chain (4
successors per id, probabilities .55/.25/.15/.05: entropy 1.11 nats; batch 16 × 32, a fresh seeded
batch each step, benchmarks/train_evidence.Task's chain restricted to the model's vocabulary).
Columns: the training loss of the first batch, the mean training loss of the last 10 steps, the
held-out loss (eval mode, one batch of 16 × 32 never trained on), the step of the first non-finite
loss, and initdoctor's verdict (probed) on the seed-0 model. The last line of each arm is the
mean ± std over the seeds.

Arms: ``gemma`` (realzoo's tiny Gemma, default init), ``gemma_x10_one`` (every weight matrix of
``model.layers.1`` ×10: realzoo's gemma_broken up to session 4), ``gemma_x10_all`` (every weight
matrix of every block ×10), ``gemma_n01`` (``initializer_range=1.0``: every matrix N(0, 1), as
llama_broken), ``llama``, ``llama_n01`` (realzoo's llama_broken).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import initdoctor  # noqa: E402
from benchmarks.train_evidence import fit  # noqa: E402
from tests import realzoo  # noqa: E402

BATCH, SEQ = 16, 32


def build(arm: str, seed: int) -> tuple[torch.nn.Module, int]:
    import transformers

    torch.manual_seed(seed)
    if arm.startswith("gemma"):
        cfg = dict(realzoo._SMALL, head_dim=8)
        if arm == "gemma_n01":
            cfg["initializer_range"] = 1.0
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(**cfg))
        if arm == "gemma_x10_one":
            realzoo.times_ten(model, f"model.layers.{realzoo.BROKEN_BLOCK}")
        if arm == "gemma_x10_all":
            realzoo.times_ten(model, "model.layers")
        return model, realzoo.SMALL_VOCAB
    cfg = dict(realzoo._DECODER)
    if arm == "llama_n01":
        cfg["initializer_range"] = 1.0
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)), realzoo.VOCAB


class Chain:
    def __init__(self, vocab: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.successors = torch.stack([torch.randperm(vocab, generator=g)[:4] for _ in range(vocab)])
        self.probs = torch.tensor([0.55, 0.25, 0.15, 0.05])
        self.vocab = vocab

    def loss(self, model: torch.nn.Module, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        ids = torch.empty(BATCH, SEQ, dtype=torch.long)
        ids[:, 0] = torch.randint(0, self.vocab, (BATCH,), generator=g)
        for t in range(1, SEQ):
            pick = torch.multinomial(self.probs.expand(BATCH, 4), 1, generator=g).squeeze(1)
            ids[:, t] = self.successors[ids[:, t - 1], pick]
        logits = model(input_ids=ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="gemma,gemma_x10_one,gemma_x10_all,gemma_n01,llama,llama_n01")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# {args.steps} steps, seeds {seeds}, torch {torch.__version__}, 1 thread")
    print(f"{'arm':<14} {'seed':>4} {'loss@0':>7} {'loss@N':>7} {'held':>7} {'nan':>5}  verdict")
    for arm in args.only.split(","):
        helds = []
        for seed in seeds:
            model, vocab = build(arm, seed)
            verdict = ""
            if seed == seeds[0]:
                r = initdoctor.diagnose(model.eval(), probe=True)
                verdict = f"{r.summary.status} {r.summary.rule or ''}".strip()
            chain = Chain(vocab - 1)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            losses, nan_at, held = fit(
                model, opt, lambda s, c=chain, m=model: c.loss(m, s), args.steps, seed * 100_000
            )
            tail = losses[-10:]
            nan = "-" if nan_at is None else f"@{nan_at}"
            held = held if nan_at is None else math.nan
            helds.append(held)
            print(
                f"{arm:<14} {seed:>4} {losses[0]:>7.3f} {sum(tail) / len(tail):>7.3f} {held:>7.3f} "
                f"{nan:>5}  {verdict}",
                flush=True,
            )
        sd = statistics.stdev(helds) if len(helds) > 1 else 0.0
        print(f"{arm:<14} mean held-out {statistics.mean(helds):.3f} ± {sd:.3f}", flush=True)


if __name__ == "__main__":
    main()
