"""The structure of modern torch models (issue 14, item 5): norms, residual blocks, attention,
gates — read from torch.fx, torch.export or, when neither can trace the model, the module tree.

Tiny Hugging Face models from configs (no downloads) and torch.nn equivalents of torchvision/timm
nets (tests/structure_nets.py), each inspected with the probe: no crash, the blocks found, each
block's measured growth finite and positive, the roles of attention, gate and head layers. The
model-level verdict is not asserted here (the rules are judged elsewhere)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initdoctor
from initdoctor.formats.torch_module import describe_module_graph
from initdoctor.gains import calculate_gain
from tests import structure_nets as nets

transformers = pytest.importorskip("transformers")
T = transformers


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


def gpt2_lm():
    cfg = T.GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=1000, n_positions=64, use_cache=False)
    cfg.bos_token_id = cfg.eos_token_id = 0
    return _seeded(lambda: T.GPT2LMHeadModel(cfg))


def bert_mlm():
    cfg = T.BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=1000
    )
    return _seeded(lambda: T.BertForMaskedLM(cfg))


def distilbert():
    cfg = T.DistilBertConfig(n_layers=2, dim=64, n_heads=4, hidden_dim=128, vocab_size=1000)
    return _seeded(lambda: T.DistilBertModel(cfg))


def t5_encoder():
    cfg = T.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=1000)
    return _seeded(lambda: T.T5EncoderModel(cfg))


def _decoder_config(cls, layers):
    return cls(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        use_cache=False,
    )


def llama(layers=4):
    return _seeded(lambda: T.LlamaForCausalLM(_decoder_config(T.LlamaConfig, layers)))


def mistral():
    return _seeded(lambda: T.MistralForCausalLM(_decoder_config(T.MistralConfig, 2)))


def qwen2():
    return _seeded(lambda: T.Qwen2ForCausalLM(_decoder_config(T.Qwen2Config, 2)))


def vit(image=32, patch=8):
    cfg = T.ViTConfig(
        image_size=image,
        patch_size=patch,
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
    )
    return _seeded(lambda: T.ViTModel(cfg))


def clip_vision():
    cfg = T.CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
    )
    return _seeded(lambda: T.CLIPVisionModel(cfg))


class Untraceable(nn.Module):
    """Data-dependent control flow in forward: neither torch.fx nor torch.export reads a graph."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        if ids.max() < 0:
            raise ValueError("negative token ids")
        return self.inner(ids).logits


def measured(report):
    """{block name: growth}; every growth a finite positive number."""
    growth = {b.name: b.growth for b in report.residual_blocks}
    assert growth and all(g is not None and math.isfinite(g) and g > 0 for g in growth.values()), growth
    return growth


def by_name(report):
    return {f.name: f for f in report.layers}


# Decoder LLMs: blocks per attention and per MLP (pre-norm: x + attn(norm(x)), x + mlp(norm(x)))
@pytest.mark.parametrize(
    ("build", "layers"), [(llama, 4), (mistral, 2), (qwen2, 2)], ids=["llama", "mistral", "qwen2"]
)
def test_decoder_llms_blocks_and_attention_roles(build, layers):
    report = initdoctor.diagnose(build(), probe=True, batch_size=2)
    growth = measured(report)
    want = [f"model.layers.{i}.{part}" for i in range(layers) for part in ("self_attn", "mlp")]
    assert list(growth) == want
    f = by_name(report)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):  # attention and the stream: no ReLU
        layer = f[f"model.layers.0.self_attn.{proj}"]
        assert (layer.role, layer.nonlinearity, layer.nonlinearity_source) == ("residual", "linear", "graph")
    assert f["model.layers.0.mlp.gate_proj"].nonlinearity == "silu"
    assert f["lm_head"].role == "output"
    # RMSNorm (LlamaRMSNorm, Qwen2RMSNorm, …: written as pow/mean/rsqrt) counts as normalization
    norms = {n.name for n in report.norm_layers}
    assert {
        "model.norm",
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
    } <= norms
    assert all(f.nonlinearity_source != "flag" for f in report.layers)


def test_blocks_on_one_stream_are_linked_by_after():
    desc, _, backend = describe_module_graph(llama(2), path="<llama>", fmt="factory")
    assert backend == "torch.export"
    after = {b.name: b.after for b in desc.blocks}
    assert after == {
        "model.layers.0.self_attn": None,
        "model.layers.0.mlp": "model.layers.0.self_attn",
        "model.layers.1.self_attn": "model.layers.0.mlp",
        "model.layers.1.mlp": "model.layers.1.self_attn",
    }


def test_untraceable_llama_blocks_come_from_the_module_tree():
    """fx and torch.export both fail: the repeated decoder layers are the blocks, measured by hooks
    on each layer module; their projections are residual layers, never the --nonlinearity default."""
    model = Untraceable(llama(4))
    desc, runnable, backend = describe_module_graph(model, path="<llama>", fmt="factory")
    assert backend == "torch" and runnable is model
    names = [f"inner.model.layers.{i}" for i in range(4)]
    assert [b.name for b in desc.blocks] == names
    assert [b.after for b in desc.blocks] == [None, *names[:3]]
    assert desc.blocks[0].skip_tensor == "inner.model.layers.0:in"
    assert len(desc.blocks[0].layers) == 7  # q, k, v, o, gate, up, down
    report = initdoctor.diagnose(model, probe=True, batch_size=2)
    growth = measured(report)
    assert list(growth) == names
    assert max(growth.values()) < 3  # N(0, 0.02) branches on a unit-RMS stream barely move it
    q = by_name(report)["inner.model.layers.0.self_attn.q_proj"]
    assert (q.role, q.nonlinearity, q.nonlinearity_source) == ("residual", "linear", "structure")
    assert not any(f.nonlinearity_source == "flag" for f in report.layers)


def test_gpt2_lm_head_tied():
    """Exported with a dynamic batch: a probe batch other than the export's 2 runs (it used to fail
    with "Guard failed: input_ids.size()[0] == 2")."""
    report = initdoctor.diagnose(gpt2_lm(), probe=True, input_shapes=((4, 16),), vocab_size=1000)
    assert report.probe["inputs"] == [{"shape": [4, 16], "dtype": "int64"}]
    growth = measured(report)
    assert {f"transformer.h.{i}.{p}" for i in range(4) for p in ("attn", "mlp")} <= set(growth)
    f = by_name(report)
    assert f["transformer.h.0.attn.c_attn"].nonlinearity == "linear"  # feeds attention
    assert f["transformer.h.0.mlp.c_fc"].nonlinearity == "gelu"
    assert {"transformer.h.0.ln_1", "transformer.ln_f"} <= {n.name for n in report.norm_layers}


def test_bert_mlm_transform_is_gelu_then_normalized():
    report = initdoctor.diagnose(bert_mlm(), probe=True, batch_size=2)
    measured(report)
    f = by_name(report)
    dense = f["cls.predictions.transform.dense"]  # Linear → GELU → LayerNorm
    assert (dense.nonlinearity, dense.nonlinearity_source, dense.role) == ("gelu", "graph", "normalized")
    assert dense.gain == pytest.approx(calculate_gain("gelu"))
    assert dense.status == "ok"
    assert f["bert.encoder.layer.0.attention.self.query"].nonlinearity == "linear"
    assert f["bert.encoder.layer.0.intermediate.dense"].nonlinearity == "gelu"


@pytest.mark.parametrize(
    ("build", "query", "blocks"),
    [
        (
            distilbert,
            "transformer.layer.0.attention.q_lin",
            ["transformer.layer.1.attention", "transformer.layer.1.ffn"],
        ),
        (t5_encoder, "encoder.block.0.layer.0.SelfAttention.q", ["encoder.block.1.layer.0.SelfAttention"]),
        (vit, "layers.0.attention.q_proj", ["layers.1.attention", "layers.1.mlp"]),
        (
            clip_vision,
            "encoder.layers.0.self_attn.q_proj",
            ["encoder.layers.1.self_attn", "encoder.layers.1.mlp"],
        ),
    ],
    ids=["distilbert", "t5", "vit", "clip"],
)
def test_encoders(build, query, blocks):
    report = initdoctor.diagnose(build(), probe=True, batch_size=2)
    growth = measured(report)
    assert set(blocks) <= set(growth)
    q = by_name(report)[query]
    assert (q.role, q.nonlinearity) == ("residual", "linear")
    if build in (vit, clip_vision):  # the patch embedding feeds the stream (through concat/add): linear
        patch = next(f for f in report.layers if f.kind == "conv2d")
        assert (patch.role, patch.nonlinearity, patch.nonlinearity_source) == ("stream", "linear", "graph")


def test_vit_larger_images_do_not_crash():
    """A 64×64 ViT used to crash ("unknown nonlinearity 'norm'") when torch.export at an inferred
    32×32 failed; its config's image size now gives torch.export its example, so the graph is read
    (attention and MLP branches as blocks). The module-order fallback is covered by
    test_untraceable_llama_blocks_come_from_the_module_tree."""
    report = initdoctor.diagnose(vit(64, 16), probe=True, input_shapes=((2, 3, 64, 64),))
    assert "graph read from torch.export" in " ".join(report.notes)
    assert list(measured(report)) == [f"layers.{i}.{b}" for i in (0, 1) for b in ("attention", "mlp")]
    f = by_name(report)
    # module order: the layer before the first block starts the stream; the pooler's tanh ends a head
    assert (f["embeddings.patch_embeddings.projection"].role, f["pooler.dense"].role) == ("stream", "output")
    assert "norm" not in {f.nonlinearity for f in report.layers}


def test_resnet18_like_blocks_and_fan_out_convs():
    report = initdoctor.diagnose(nets.resnet18_like(), probe=True, batch_size=4)
    growth = measured(report)
    assert list(growth) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    desc = describe_module_graph(nets.resnet18_like(), path="<resnet>", fmt="factory")[0]
    # one stream through each stage (after the post-add ReLU); a downsampling skip restarts it
    assert [b.after for b in desc.blocks] == [
        None,
        "layer1.0",
        None,
        "layer2.0",
        None,
        "layer3.0",
        None,
        "layer4.0",
    ]
    f = by_name(report)
    assert all(f[n].role == "normalized" for n in f if n.startswith("layer"))  # every conv → BN
    assert f["fc"].role == "output"


def test_torchscript_resnet_and_mobilenet_do_not_crash():
    resnet = initdoctor.diagnose(torch.jit.script(nets.resnet18_like().eval()), probe=True, batch_size=2)
    assert [b.name for b in resnet.residual_blocks] == [
        f"layer{i}.{j}" for i in range(1, 5) for j in range(2)
    ]
    assert by_name(resnet)["conv1"].nonlinearity == "normalized"  # conv1 → bn1: was the raw op "norm"
    assert "8 blocks not measured: TorchScript takes no hooks" in resnet.probe["notes"]
    mobile = initdoctor.diagnose(torch.jit.script(nets.mobilenetv3_like().eval()), probe=True, batch_size=2)
    assert by_name(mobile)["features.0.0"].nonlinearity == "normalized"
    assert len(mobile.layers) == 22


def test_mobilenetv3_like_squeeze_excitation_gates():
    report = initdoctor.diagnose(nets.mobilenetv3_like(), probe=True, batch_size=4)
    growth = measured(report)
    assert list(growth) == ["features.2.block", "features.3.block"]  # the stride-1, same-width blocks
    f = by_name(report)
    gates = [n for n in f if f[n].role == "gate"]
    assert gates == [f"features.{i}.block.6.{fc}" for i in (1, 2, 3) for fc in ("fc1", "fc2")]
    assert all(f[n].status == "ok" and "gate" in f[n].message for n in gates)
    assert f["features.1.block.6.fc2"].nonlinearity_source == "structure"  # before a hardsigmoid
    # the squeeze conv is Kaiming fan_out with gain √2 (fan_out 12, fan_in 48): the model is judged
    # in the fan_out mode it follows (auto), where its std ratio is 1 (it was 2 against fan_in)
    assert report.summary.kaiming_mode == "fan_out"
    assert f["features.1.block.6.fc1"].std_ratio == pytest.approx(1.0, rel=0.1)
    assert f["features.1.block.0"].role == "normalized"


def test_timm_batchnormact_is_a_norm():
    """BatchNormAct2d (BatchNorm2d + activation in one module, with a shape assert that stops a
    plain fx trace) is traced as one norm node: the conv before it is normalized."""
    report = initdoctor.diagnose(nets.timm_like_cnn(), probe=True, batch_size=4)
    assert not any("torch.export" in n or "could not trace" in n for n in report.notes)
    f = by_name(report)
    assert (f["0"].role, f["2"].role, f["6"].role) == ("normalized", "normalized", "output")
    assert [(n.name, n.kind) for n in report.norm_layers] == [("1", "batchnorm"), ("3", "batchnorm")]


def test_custom_rmsnorm_class_is_a_norm():
    class T5LayerNorm(nn.Module):  # transformers-style: no torch.nn norm class, a 1-D weight
        def __init__(self, dim):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), T5LayerNorm(32), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    report = initdoctor.diagnose(model, probe=True, batch_size=8)
    f = by_name(report)
    assert (f["0"].role, f["0"].nonlinearity) == ("normalized", "normalized")
    assert (f["2"].role, f["2"].nonlinearity) == ("hidden", "relu")
    assert [(n.name, n.kind) for n in report.norm_layers] == [("1", "layernorm")]


def test_multihead_attention_out_proj_is_a_residual_layer():
    """nn.MultiheadAttention never calls out_proj (F.multi_head_attention_forward uses its
    weight): out_proj stands for the attention node, in the residual branch, measured by a hook."""
    report = initdoctor.diagnose(nets.MHANet(), probe=True, batch_size=4, input_shapes=((4, 6, 16),))
    growth = measured(report)
    assert list(growth) == ["attn.0.out_proj", "attn.1.out_proj"]
    f = by_name(report)
    for i in range(2):
        out = f[f"attn.{i}.out_proj"]
        assert (out.role, out.nonlinearity, out.nonlinearity_source) == ("residual", "linear", "graph")
        assert out.activation_var is not None and out.activation_var > 0
    assert not any("not called" in n for n in report.probe["notes"])


class _PreLNBlock(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


def test_fx_traced_attention_projections_are_linear():
    """A torch.nn pre-LN transformer torch.fx can trace: q/k/v feed scaled_dot_product_attention
    (follower linear), o and fc2 feed the stream; 2 layers → 4 blocks on one stream."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), _PreLNBlock(), _PreLNBlock(), nn.Linear(32, 4))
    desc, _, backend = describe_module_graph(model, path="<fx>", fmt="factory")
    assert backend == "torch"
    assert [(b.name, b.after) for b in desc.blocks] == [
        ("1", None),
        ("1#2", "1"),
        ("2", "1#2"),
        ("2#2", "2"),
    ]
    report = initdoctor.diagnose(model, probe=True, input_shapes=((4, 6, 8),))
    assert list(measured(report)) == ["1", "1#2", "2", "2#2"]
    f = by_name(report)
    for name in ("1.q", "1.k", "1.v", "1.o", "1.fc2"):
        assert (f[name].role, f[name].nonlinearity, f[name].nonlinearity_source) == (
            "residual",
            "linear",
            "graph",
        )
    assert f["1.fc1"].nonlinearity == "gelu"
    assert f["0"].role == "stream"
