"""Issue 14, session 4: parallel-residual decoders. GPT-NeoX computes
``x + attn(ln1(x)) + mlp(ln2(x))``: the add of the two branches is no residual block of its own
(its "skip" would be the MLP's output), the add of their sum to ``x`` is ONE pre-LN block. Before
0.11 the stock tiny GPT-NeoX was an R301 error ("exponential growth over 8 unnormalized blocks",
×5.66). The same model with ``use_parallel_residual=False`` has two sequential pre-LN blocks per
layer; Phi-2 (one shared LayerNorm) one block per layer, as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import initdoctor
from tests.conftest import invoke
from tests.realzoo import times_ten

NEOX = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, intermediate_size=256, num_attention_heads=4)
BRANCH = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def _neox(tmp: Path, name: str, *, parallel: bool = True, broken: bool = False) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**NEOX, use_parallel_residual=parallel))
    if broken:
        times_ten(model, "gpt_neox.layers.1")
    model.save_pretrained(tmp / name)
    return tmp / name


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("neox")
    return {
        "parallel": _neox(tmp, "parallel"),
        "sequential": _neox(tmp, "sequential", parallel=False),
        "broken": _neox(tmp, "broken", broken=True),
    }


def test_parallel_residual_is_one_pre_ln_block_per_layer(folders: dict[str, Path]) -> None:
    code, out, _ = invoke("check", str(folders["parallel"]))
    assert code == 0 and ": ok — " in out, out
    report = initdoctor.diagnose(folders["parallel"], probe=True)
    blocks = report.residual_blocks
    assert [b.name for b in blocks] == [f"gpt_neox.layers.{i}" for i in range(4)]
    for i, b in enumerate(blocks):  # both branches' four layers in the one block
        assert b.layers == [f"gpt_neox.layers.{i}.{n}" for n in BRANCH]
        assert b.status == "ok" and b.growth is not None and 1.0 < b.growth < 4.0, (b.name, b.growth)
    desc = initdoctor.describe(folders["parallel"])
    assert len(desc.blocks) == 4 and all(block.pre_norm for block in desc.blocks)


def test_sequential_residual_keeps_two_blocks_per_layer(folders: dict[str, Path]) -> None:
    report = initdoctor.diagnose(folders["sequential"], probe=True)
    assert report.summary.status == "ok", report.summary.message
    assert len(report.residual_blocks) == 8  # attention, then MLP, each its own pre-LN block


def test_a_block_ten_times_too_large_is_still_r302(folders: dict[str, Path]) -> None:
    code, out, _ = invoke("check", str(folders["broken"]))
    assert code == 1 and "gpt_neox.layers.1 (×" in out, out
    report = initdoctor.diagnose(folders["broken"], probe=True)
    assert (report.summary.status, report.summary.rule) == ("error", "R302")
    bad = [b for b in report.residual_blocks if b.status == "error"]
    assert [b.name for b in bad] == ["gpt_neox.layers.1"]  # the one culprit, no R301 on the others
    assert bad[0].growth is not None and bad[0].growth > 100  # std ×10 in both branches: ×~2e3 measured
