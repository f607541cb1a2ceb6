"""Issue 14: do the four K103 warnings of the user-style sweep (benchmarks/hf_sweep.py) mark a real
trainability problem? Each model is built from hf_sweep's tiny config (a task head where the sweep
has none) and trained from the library's own init and from the init with the flagged layer's W
multiplied by initdoctor's ``suggested_scale`` (what ``initdoctor fix`` writes), and with W ×0.01 as
a clearly too-small control. 3 seeds each, AdamW lr 1e-3, ``torch.set_num_threads(1)``, fresh
seeded batches each step (benchmarks.train_evidence.fit), held-out loss mean ± std. Not a test.

    PYTHONPATH=$PWD python benchmarks/sweep_warnings.py [--steps 200] [NAME…]

Tasks: ALBERT / ELECTRA masked LM on topic sequences (16 topics of 16 ids each; a sequence of 32
ids drawn uniformly from its topic; 15% of positions → id 1, loss on those: ln 512 = 6.24 for a
uniform guess, ln 16 = 2.77 once the topic is read from the context); Wav2Vec2 sequence
classification of 4 sine frequencies (40, 42, 44, 46 cycles in 1600 samples) in N(0, 3²)
noise; ConvNeXt classification of sklearn
digits (8×8 → 32×32, 3 channels; 1437 train / 360 held out)."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
sys.path.insert(0, "benchmarks")
warnings.filterwarnings("ignore")

import hf_sweep  # noqa: E402
from train_evidence import fit  # noqa: E402

#: name → (head class, flagged parameter, gain initdoctor judges it with)
FLAGGED = {
    "albert": ("AlbertForMaskedLM", "albert.encoder.embedding_hidden_mapping_in.weight", 1.0),
    "electra": ("ElectraForMaskedLM", "electra.embeddings_project.weight", 1.0),
    "wav2vec2": (
        "Wav2Vec2ForSequenceClassification",
        "wav2vec2.feature_projection.projection.weight",
        2**0.5,
    ),
    "convnext": (
        "ConvNextForImageClassification",
        "convnext.encoder.stages.1.downsampling_layer.1.weight",
        1.0,
    ),
}
BATCH = 32


def build(name: str, seed: int):
    import transformers

    cls, cfg_cls, cfg = hf_sweep.SWEEP[name]
    cls = FLAGGED[name][0]
    extra = {"num_labels": 4} if name == "wav2vec2" else {}
    torch.manual_seed(seed)
    return getattr(transformers, cls)(getattr(transformers, cfg_cls)(**cfg, **extra))


def mlm_loss(model, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    topic = torch.randint(0, 16, (BATCH, 1), generator=g)
    ids = 2 + topic * 16 + torch.randint(0, 16, (BATCH, 32), generator=g)
    mask = torch.rand(ids.shape, generator=g) < 0.15
    mask[:, 0] |= ~mask.any(1)
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    return model(input_ids=torch.where(mask, torch.ones_like(ids), ids), labels=labels).loss


def audio_loss(model, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (BATCH,), generator=g)
    t = torch.arange(1600) / 1600
    phase = torch.rand(BATCH, 1, generator=g) * 6.283
    x = torch.sin(6.283 * (40 + 2 * y[:, None]) * t + phase) + 3.0 * torch.randn(BATCH, 1600, generator=g)
    return model(input_values=x, labels=y).loss


_DIGITS: list[torch.Tensor] = []


def digits_loss(model, seed: int) -> torch.Tensor:
    if not _DIGITS:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 8 - 1
        x = F.interpolate(x, size=32, mode="nearest").expand(-1, 3, -1, -1).contiguous()
        _DIGITS.extend([x, torch.tensor(d.target)])
    x, y = _DIGITS
    if seed == 10**6:  # held out: the last 360 images
        return F.cross_entropy(model(pixel_values=x[-360:]).logits, y[-360:])
    idx = torch.randint(0, len(x) - 360, (BATCH,), generator=torch.Generator().manual_seed(seed))
    return F.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])


LOSS = {"albert": mlm_loss, "electra": mlm_loss, "wav2vec2": audio_loss, "convnext": digits_loss}


def run(name: str, variant: str, seed: int, steps: int) -> float:
    model = build(name, seed).train()
    w = dict(model.named_parameters())[FLAGGED[name][1]]
    fan_in = w[0].numel()
    kaiming = FLAGGED[name][2] / math.sqrt(fan_in)
    with torch.no_grad():
        if variant == "fix":
            w.mul_(kaiming / w.std().item())  # initdoctor's suggested_scale
        elif variant == "x0.01":
            w.mul_(0.01)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _, nan_at, held = fit(model, opt, lambda s: LOSS[name](model, s), steps, seed0=seed * 100_000)
    return math.nan if nan_at is not None else held


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--variants", default="default,fix,x0.01")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.names or list(FLAGGED):
        for variant in args.variants.split(","):
            held = [run(name, variant, seed, args.steps) for seed in range(3)]
            print(
                f"{name:9} {variant:8} steps={args.steps} held-out {statistics.mean(held):.3f} ± "
                f"{statistics.stdev(held):.3f}  ({', '.join(f'{h:.3f}' for h in held)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
