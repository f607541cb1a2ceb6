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


def _hf(model_cls: str, config_cls: str, **config):
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()


def test_attention_mask_add_is_no_block() -> None:
    """GPT-Neo's local attention adds a mask to the scores before the softmax: before 0.11 that add
    was a residual block "×3.5e-79" (R302 error on a healthy model); now 2 blocks per layer."""
    cfg = dict(vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64)
    model = _hf("GPTNeoForCausalLM", "GPTNeoConfig", attention_types=[[["global", "local"], 1]], **cfg)
    desc = initdoctor.describe(model)
    assert [b.name for b in desc.blocks] == [
        f"transformer.h.{i}.{p}" for i in (0, 1) for p in ("attn.attention", "mlp")
    ]


def test_post_ln_stream_renormalized_is_no_exponential_growth() -> None:
    """ELECTRA (post-LN, a 32→64 embedding projection at std 0.02): every block measures ×1.00, and
    the stream is no R301 error (it was: "×75 over 8 unnormalized blocks", no block flagged)."""
    h = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    model = _hf("ElectraForMaskedLM", "ElectraConfig", vocab_size=512, embedding_size=32, **h)
    report = initdoctor.diagnose(model, probe=True)
    assert report.summary.status != "error" and report.summary.rule != "R301", report.summary.message
    assert all(b.growth is not None and 0.9 < b.growth < 1.1 for b in report.residual_blocks)


def test_audio_input_values_from_the_config() -> None:
    """Wav2Vec2 takes raw audio ``input_values [B, S]``: S = 32 frames × the conv strides' product
    (5·2 = 10 → 320 samples), not a 4-D guess from the first conv1d (the probe crashed on it)."""
    from initdoctor.formats.model_inputs import config_inputs

    cfg = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    model = _hf(
        "Wav2Vec2Model", "Wav2Vec2Config", conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), **cfg
    )
    (spec,) = config_inputs(model, 4)
    assert (spec.name, spec.shape, spec.dtype) == ("input_values", (4, 320), "float32")
