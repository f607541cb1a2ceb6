"""R302's pre-norm reference counts a block that adds nothing (Δ ≤ 0) as 0 instead of dropping it
(issue 14, session 4): Gemma with every matrix of layer 1 ×10 trains 1.05 nats worse at 300 steps
(docs/rules-evidence.md "Gemma ×10 in one layer") and its attention block, Var[out]/Var[skip] =
58.6, is an R302 error again."""

from __future__ import annotations

import pytest

import initdoctor
from initdoctor.checks.blocks import jump_growth
from tests import realzoo


def test_blocks_that_add_nothing_count_as_zero() -> None:
    # gemma_broken as exported to ONNX: Var[skip] of layer 1's attention 0.0256 (embeddings std
    # 0.02 × √32); Δ of the other blocks: layer 0's attention and MLP −1e-5 and −4e-6 (nothing),
    # layer 1's ×10 MLP 3.6. Others 0, 0, 3.6 → median 0 < Var[skip]: R = 0.0256, growth kept.
    added = {0: -1e-5, 1: -4e-6, 2: 57.6 * 0.0256, 3: 3.6}
    assert jump_growth(True, 58.6, 0.0256, added, 2) == pytest.approx(58.6)
    # dropping them left 3.6 as the median (capped at 1): R = 1, 1 + 1.47 = 2.47 < 16
    # blocks that add: others 0.5, 0.5, 3.6 → R = 0.5 → 1 + 1.47 / 0.5 = 3.95
    added.update({0: 0.5, 1: 0.5})
    assert jump_growth(True, 58.6, 0.0256, added, 2) == pytest.approx(1 + 57.6 * 0.0256 / 0.5)
    # not pre-normalized: Var[out]/Var[skip] as measured
    assert jump_growth(False, 58.6, 0.0256, added, 2) == 58.6


def test_gemma_broken_is_r302_on_the_attention_block() -> None:
    report = initdoctor.diagnose(realzoo.gemma_broken(), probe=True)
    growth = {b.name: b.growth for b in report.residual_blocks}
    assert report.summary.status == "error" and report.summary.rule == "R302"
    errors = [b.name for b in report.residual_blocks if b.status == "error"]
    assert errors == ["model.layers.1.self_attn"]
    assert growth["model.layers.1.self_attn"] == pytest.approx(58.6, rel=0.01)
    assert growth["model.layers.0.mlp"] == pytest.approx(1.0, abs=0.01)  # the healthy layer adds ~0
