"""The real-architecture zoo (tests/realzoo.py) is what it claims to be: the ground truth of issue
14's accuracy table. Each broken twin differs from its healthy model exactly as described, every
culprit names a module of the model, and every model runs on its probe inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests import realzoo

pytest.importorskip("transformers")


@pytest.mark.parametrize("entry", realzoo.MATRIX, ids=lambda e: e.name)
def test_entry_builds_runs_and_names_real_modules(entry):
    model = entry.build()
    assert not model.training
    assert entry.healthy == (not entry.culprits) == (not entry.broken_how)
    names = [n for n, _ in model.named_modules()]
    for culprit in entry.culprits:  # "any of": at least one spelling exists (ViT's differs by version)
        if not any(n == culprit or n.startswith(culprit) for n in names):
            assert len(entry.culprits) > 1, culprit
    assert any(n.startswith(c) for n in names for c in entry.culprits) or entry.healthy
    with torch.no_grad():
        out = model(**realzoo.probe_inputs(entry, batch=2))
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    logits = logits if logits is not None else out.logits_per_image
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()


def _matrices(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix + ".") and p.dim() >= 2}


@pytest.mark.parametrize("name", ["gpt2", "bert", "distilbert", "t5", "mistral", "qwen2", "vit", "clip"])
def test_times_ten_twin_scales_exactly_one_block(name):
    healthy, broken = realzoo.BY_NAME[name], realzoo.BY_NAME[f"{name}_broken"]
    model = broken.build()
    a, b = dict(healthy.build().named_parameters()), dict(model.named_parameters())
    prefix = next(c for c in broken.culprits if _matrices(model, c))
    scaled = {n for n in a if not torch.equal(a[n], b[n])}
    assert scaled == set(_matrices(model, prefix)) and len(scaled) >= 4
    for n in scaled:  # std ×10, and nothing else changed (same seed, same draws)
        assert torch.allclose(b[n], 10 * a[n])


def test_llama_broken_is_unit_normal_everywhere():
    model = realzoo.llama_broken()
    q = model.model.layers[0].self_attn.q_proj.weight
    # initializer_range=1.0: N(0, 1) against the default N(0, 0.02)
    assert q.std().item() == pytest.approx(1.0, rel=0.05)
    assert realzoo.llama().model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(
        0.02, rel=0.05
    )


def test_vgg_is_kaiming_fan_out_and_its_twin_is_xavier():
    healthy, broken = realzoo.vgg16(), realzoo.vgg16_xavier()
    convs = [m for m in healthy.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and len([m for m in healthy.modules() if isinstance(m, nn.Linear)]) == 3
    conv = convs[3]  # 16 → 16 channels, 3×3: fan_out = 16·9 = 144, std sqrt(2/144) = 0.118
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.1)
    # torchvision's N(0, 0.01) at its fan_in 25088, rescaled to the zoo's 64 (realcnn.VGG)
    assert healthy.classifier[0].weight.std().item() == pytest.approx(0.01 * math.sqrt(25088 / 64), rel=0.1)
    xconv = [m for m in broken.features if isinstance(m, nn.Conv2d)][3]
    # xavier: sqrt(2 / (fan_in + fan_out)) = sqrt(2 / 288) = 0.083, i.e. variance ×1/2 per ReLU layer
    assert xconv.weight.std().item() == pytest.approx(math.sqrt(2 / 288), rel=0.1)


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "densenet"])
def test_nobn_twin_differs_only_by_its_batchnorms(name):
    healthy, broken = realzoo.BY_NAME[name].build(), realzoo.BY_NAME[f"{name}_nobn"].build()
    bns = [m for m in healthy.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) >= 10 and not any(isinstance(m, nn.BatchNorm2d) for m in broken.modules())
    convs = {n: p for n, p in healthy.named_parameters() if p.dim() == 4}
    assert {n: p.shape for n, p in broken.named_parameters() if p.dim() == 4} == {
        n: p.shape for n, p in convs.items()
    }
    x = realzoo.probe_inputs(realzoo.BY_NAME[name])["x"]
    with torch.no_grad():  # at init, eval-mode BatchNorm is the identity: the same function
        assert torch.allclose(healthy(x), broken(x), rtol=1e-3, atol=1e-3)  # BN: x / sqrt(1 + 1e-5)
