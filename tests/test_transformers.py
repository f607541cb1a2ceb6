"""Real architectures nobody here wrote: Hugging Face GPT-2 and BERT built from configs (no
downloads), in their library-default init. No false alarms, in torch and in ONNX."""

from __future__ import annotations

import pytest
import torch

import initdoctor

transformers = pytest.importorskip("transformers")


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=4,
        n_embd=128,
        n_head=4,
        vocab_size=500,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=256, vocab_size=500
    )
    return transformers.BertModel(config).eval()


def vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
    )
    return transformers.ViTModel(config).eval()


@pytest.mark.parametrize("build", [gpt2, bert, vit], ids=["gpt2", "bert", "vit"])
def test_library_default_init_is_not_an_error(tmp_path, build):
    model = build()
    example = torch.randn(2, 3, 32, 32) if build is vit else torch.randint(0, 500, (2, 16))
    static = initdoctor.diagnose(model)
    probed = initdoctor.diagnose(model, probe=True, batch_size=4)
    for report in (static, probed):
        assert report.summary.status != "error", report.summary.message
        assert report.summary.error == 0
    assert "torch.export" in static.notes[0]  # torch.fx cannot trace them: the graph came from torch.export
    linears = [f for f in static.layers if f.kind in ("linear", "matmul")]
    # judged by the residual stream (heads such as BERT's pooler: output layers); none as a plain chain
    assert {f.role for f in linears} <= {"residual", "output"} and sum(
        f.role == "residual" for f in linears
    ) >= 8
    # N(0, 0.02) on a width-128 layer: std ratio 0.02·sqrt(128) = 0.23 for a gain-1 layer
    attn = next(
        f
        for f in static.layers
        if f.name.endswith(("attn.c_attn", "attention.self.query", "attention.attention.query", "q_proj"))
    )
    assert attn.weight_std == pytest.approx(0.02, rel=0.05)
    growth = [b.growth for b in probed.residual_blocks]
    assert len(growth) >= 4 and all(g is not None for g in growth)
    # the transformer blocks (after the embedding sums) barely grow the stream
    assert max(growth[-4:]) < 1.6
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (example,), str(path), dynamo=True)
    onnx_report = initdoctor.diagnose(path, probe=True, batch_size=4)
    assert onnx_report.summary.status != "error", onnx_report.summary.message
    onnx_layers = {f.name: (f.role, f.status) for f in onnx_report.layers}
    for f in probed.layers:  # same names, roles and verdicts where the export kept the layer
        if f.name in onnx_layers:
            assert onnx_layers[f.name] == (f.role, f.status), f.name
    assert len(onnx_layers) >= len(probed.layers) - 2


def test_gpt2_tied_embedding_and_head_are_one_tensor():
    model = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    report = initdoctor.diagnose(model)
    tied = [f for f in report.layers if f.shape == [500, 128]]
    assert len(tied) == 1 and tied[0].kind == "embedding"
    params = sum(p.numel() for p in model.parameters())  # parameters() counts the tied tensor once
    assert report.model["parameters"] == params
    conv1d = next(f for f in report.layers if f.name == "transformer.h.0.mlp.c_fc")
    # Hugging Face Conv1D stores W as [in, out] = [128, 512]: fan_in 128, fan_out 512
    assert (conv1d.shape, conv1d.fan_in, conv1d.fan_out) == ([128, 512], 128, 512)
