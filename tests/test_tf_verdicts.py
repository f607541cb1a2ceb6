"""Transformer verdicts (issue 14, round 2): tiny real Hugging Face models from tests/realzoo.py,
diagnosed from the factory with the probe, as the survey does. The numbers asserted are the ones
the probe measures (seed 0), so a human can re-check them with ``initdoctor diagnose
tests.realzoo:NAME --probe``."""

from __future__ import annotations

import re

import pytest

import initdoctor
from initdoctor.checks.blocks import jump_growth

pytest.importorskip("transformers")


def _diagnose(name: str):
    return initdoctor.diagnose(f"tests.realzoo:{name}", probe=True)


def _blocks(report):
    return {b.name: b for b in report.residual_blocks}


def test_jump_growth_judges_a_prenormed_branch_against_what_the_others_add():
    # CLIP text block 0: skip 5e-4, adds 0.0164 (×33.8); the other blocks add ~0.03 → ×1.55
    added = {0: 0.0164, 1: 0.024, 2: 0.086, 3: 0.03}
    assert jump_growth(True, 33.8, 5e-4, added, 0) == pytest.approx(1 + 32.8 * 5e-4 / 0.03)
    # the same branch without a norm in front keeps the raw ratio
    assert jump_growth(False, 33.8, 5e-4, added, 0) == 33.8
    # LLaMA initializer_range=1: every block adds ~4e3; the reference is capped at 1 (a unit-gain
    # branch from a normalized input), so block 0 stays ×4e3
    assert jump_growth(True, 4301.0, 1.0, {0: 4300.0, 1: 3000.0, 2: 5000.0}, 0) == pytest.approx(4301.0)
    # a shrinking block keeps its ratio
    assert jump_growth(True, 0.01, 1.0, added, 0) == 0.01


def test_embedding_sums_are_not_residual_blocks():
    gpt2 = _blocks(_diagnose("gpt2"))
    assert "transformer.wpe" not in gpt2  # wte + wpe was a "block" growing ×2.07
    assert len(gpt2) == 8  # attn + mlp of 4 layers
    bert = _blocks(_diagnose("bert"))
    assert not any("embeddings" in name or name.startswith("block") for name in bert)
    assert len(bert) == 8
    for b in bert.values():  # post-LN, std 0.02: every add grows the stream ×1.00
        assert b.growth == pytest.approx(1.0, abs=0.01)


def test_clip_text_stream_starting_tiny_is_no_jump():
    r = _diagnose("clip")
    assert r.summary.status == "ok", r.summary.message
    text0 = _blocks(r)["text_model.encoder.layers.0.self_attn"]
    assert text0.growth == pytest.approx(33.8, rel=0.01)  # raw Var[out]/Var[skip] is still reported
    assert text0.status == "ok" and text0.rule is None


@pytest.mark.parametrize(
    ("name", "block", "jump"),
    [
        ("gpt2_broken", "transformer.h.1.attn", 352),
        ("llama_broken", "model.layers.0.self_attn", 4.18e3),
        ("mistral_broken", "model.layers.1.self_attn", 7.56e3),  # 6.71e3 before Δ ≤ 0 counted as 0
        ("clip_broken", "vision_model.encoder.layers.1.self_attn", 1.04e3),
    ],
)
def test_prenormed_jumps_keep_their_error(name, block, jump):
    r = _diagnose(name)
    assert r.summary.status == "error" and r.summary.rule == "R302"
    b = _blocks(r)[block]
    assert b.rule == "R302"
    # the number as printed (3 significant digits), to 1 %
    got = float(re.search(r"changes the stream ×([0-9.e+-]+)", b.message).group(1))
    assert got == pytest.approx(jump, rel=0.01)


@pytest.mark.parametrize(
    ("name", "attention", "ffn", "growths"),
    [
        ("bert_broken", "bert.encoder.layer.1.attention", "bert.encoder.layer.1", (4.44, 6.55)),
        (
            "distilbert_broken",
            "distilbert.transformer.layer.1.attention",
            "distilbert.transformer.layer.1.ffn",
            (4.14, 6.04),
        ),
    ],
)
def test_post_norm_branch_that_dwarfs_the_skip_is_an_error(name, attention, ffn, growths):
    r = _diagnose(name)
    assert r.summary.status == "error" and r.summary.rule == "R303"
    blocks = _blocks(r)
    for block, growth in zip((attention, ffn), growths, strict=True):
        assert blocks[block].rule == "R303"
        assert blocks[block].growth == pytest.approx(growth, rel=0.01)
    others = [b for n, b in blocks.items() if n not in (attention, ffn)]
    assert others and all(b.status == "ok" and b.growth < 1.01 for b in others)


def test_vit_patch_projection_feeding_a_prenormed_stream_is_ok():
    r = _diagnose("vit")
    assert r.summary.status == "ok", r.summary.message
    proj = next(f for f in r.layers if f.name == "vit.embeddings.patch_embeddings.projection")
    assert proj.status == "ok" and proj.role == "stream"
    assert proj.weight_variance_ratio == pytest.approx(0.0779, rel=0.02)  # std 0.02 vs Kaiming 0.0722
    assert "pre-norm" in proj.message
