"""The real-architecture zoo of issue 14: tiny, seeded versions of the models people have, in
their library's default initialization, each with a deliberately broken twin.

Every builder is a module-level factory, so ``initdoctor inspect tests.realzoo:llama_broken``
works from the repository root; :data:`MATRIX` lists them with what a correct diagnosis says.

* Hugging Face ``transformers`` models from configs (no downloads): hidden 64, 4 layers,
  vocabulary 1000, images 32×32, built with ``torch.manual_seed(0)`` and the library's own init.
  Broken twin: every weight matrix of one block ×10 (std ×10), LLaMA with
  ``initializer_range=1.0`` (N(0, 1) everywhere).
* torchvision-equivalent CNNs written with ``torch.nn`` (the PyPI torchvision wheel needs a CUDA
  torch, so it cannot be installed here), with torchvision's init code copied line for line:
  VGG (convs ``kaiming_normal_(mode="fan_out")``, linears N(0, 0.01) rescaled to torchvision's
  fan_ins: see realcnn.VGG), a ResNet-50-style bottleneck net with BatchNorm, a
  MobileNetV3-style inverted-residual net with squeeze-excitation, a DenseNet-style concatenating
  net. Broken twins: a xavier-scaled VGG-16, the nets with their BatchNorms removed.

All models are returned in eval mode; :func:`probe_inputs` makes the inputs they take.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

VOCAB = 1000
HIDDEN = 64
LAYERS = 4
IMAGE = 32
CLASSES = 10
SEQ = 16
#: the block whose weight matrices the "×10" twins scale
BROKEN_BLOCK = B = 1


# --- Hugging Face transformers ------------------------------------------------------------------
def _hf(model_cls: str, config_cls: str, **config) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
    return model.eval()


def times_ten(model: nn.Module, prefix: str) -> nn.Module:
    """Multiply every weight matrix (≥ 2-D; norms untouched) under ``prefix`` by 10 in place."""
    with torch.no_grad():
        hit = [
            p.mul_(10.0) for n, p in model.named_parameters() if n.startswith(prefix + ".") and p.dim() >= 2
        ]
    assert hit, prefix
    return model


_DECODER = dict(
    hidden_size=HIDDEN,
    intermediate_size=2 * HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    use_cache=False,
)


def gpt2() -> nn.Module:
    cfg = dict(n_layer=LAYERS, n_embd=HIDDEN, n_head=4, vocab_size=VOCAB, n_positions=64, use_cache=False)
    return _hf("GPT2LMHeadModel", "GPT2Config", bos_token_id=0, eos_token_id=0, **cfg)


def bert() -> nn.Module:
    cfg = dict(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, intermediate_size=2 * HIDDEN
    )
    return _hf("BertForMaskedLM", "BertConfig", vocab_size=VOCAB, max_position_embeddings=64, **cfg)


def distilbert() -> nn.Module:
    cfg = dict(n_layers=LAYERS, dim=HIDDEN, n_heads=4, hidden_dim=2 * HIDDEN, max_position_embeddings=64)
    return _hf("DistilBertForMaskedLM", "DistilBertConfig", vocab_size=VOCAB, **cfg)


def t5() -> nn.Module:
    cfg = dict(num_layers=LAYERS, d_model=HIDDEN, d_kv=16, d_ff=2 * HIDDEN, num_heads=4, use_cache=False)
    return _hf("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, decoder_start_token_id=0, **cfg)


def llama() -> nn.Module:
    return _hf("LlamaForCausalLM", "LlamaConfig", **_DECODER)


def mistral() -> nn.Module:
    return _hf("MistralForCausalLM", "MistralConfig", **_DECODER)


def qwen2() -> nn.Module:
    return _hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER)


def vit() -> nn.Module:
    cfg = dict(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, intermediate_size=2 * HIDDEN
    )
    return _hf(
        "ViTForImageClassification", "ViTConfig", image_size=IMAGE, patch_size=8, num_labels=CLASSES, **cfg
    )


def clip() -> nn.Module:
    tower = dict(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4
    )
    # eos_token_id=2: the pooled text token is the position of the largest id (CLIP's legacy rule)
    text = dict(
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=1, **tower
    )
    vision = dict(image_size=IMAGE, patch_size=8, **tower)
    return _hf("CLIPModel", "CLIPConfig", text_config=text, vision_config=vision, projection_dim=HIDDEN)


#: Gemma and Phi at the sizes of issue 14's brief: 2 layers, hidden 32, vocabulary 512
SMALL_VOCAB = 512
_SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=SMALL_VOCAB,
    max_position_embeddings=64,
    use_cache=False,
)


_PHI3 = dict(_SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def gemma() -> nn.Module:
    """Gemma: RMSNorm scales by ``1 + w`` (w initialized to 0), embeddings ×√hidden, GeGLU MLP."""
    return _hf("GemmaForCausalLM", "GemmaConfig", head_dim=8, **_SMALL)


def phi() -> nn.Module:
    """Phi-2: one LayerNorm per block, attention and MLP in parallel, partial rotary, gelu_new."""
    return _hf("PhiForCausalLM", "PhiConfig", partial_rotary_factor=0.5, **_SMALL)


def phi3() -> nn.Module:
    """Phi-3: LLaMA-like, with fused ``qkv_proj`` and ``gate_up_proj``."""
    return _hf("Phi3ForCausalLM", "Phi3Config", **_PHI3)


#: parallel-residual decoders (issue 14, session 4): ``x + attn(ln1(x)) + mlp(ln2(x))`` (GPT-NeoX,
#: Falcon's new decoder) or one shared LayerNorm (GPT-J, Falcon-7B); the GPT-NeoX config of the issue
_PARALLEL = dict(vocab_size=SMALL_VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4)


def gpt_neox() -> nn.Module:
    """GPT-NeoX (Pythia): two LayerNorms, attention and MLP in parallel (``use_parallel_residual``)."""
    return _hf(
        "GPTNeoXForCausalLM", "GPTNeoXConfig", intermediate_size=4 * HIDDEN, use_cache=False, **_PARALLEL
    )


def gptj() -> nn.Module:
    """GPT-J: one LayerNorm shared by the parallel attention and MLP, partial rotary."""
    cfg = dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, rotary_dim=8, n_positions=64, use_cache=False)
    return _hf("GPTJForCausalLM", "GPTJConfig", vocab_size=SMALL_VOCAB, bos_token_id=0, eos_token_id=0, **cfg)


def falcon() -> nn.Module:
    """Falcon-7B style: ``parallel_attn``, one LayerNorm, multi-query attention, rotary."""
    return _hf("FalconForCausalLM", "FalconConfig", parallel_attn=True, use_cache=False, **_PARALLEL)


def gpt_neox_broken() -> nn.Module:
    return times_ten(gpt_neox(), f"gpt_neox.layers.{BROKEN_BLOCK}")


def gptj_broken() -> nn.Module:
    return times_ten(gptj(), f"transformer.h.{BROKEN_BLOCK}")


def falcon_broken() -> nn.Module:
    return times_ten(falcon(), f"transformer.h.{BROKEN_BLOCK}")


def gemma_broken() -> nn.Module:
    return times_ten(gemma(), f"model.layers.{BROKEN_BLOCK}")


def phi_broken() -> nn.Module:
    return times_ten(phi(), f"model.layers.{BROKEN_BLOCK}")


def phi3_broken() -> nn.Module:
    return _hf("Phi3ForCausalLM", "Phi3Config", **{**_PHI3, "initializer_range": 1.0})


def gpt2_broken() -> nn.Module:
    return times_ten(gpt2(), f"transformer.h.{BROKEN_BLOCK}")


def bert_broken() -> nn.Module:
    return times_ten(bert(), f"bert.encoder.layer.{BROKEN_BLOCK}")


def distilbert_broken() -> nn.Module:
    return times_ten(distilbert(), f"distilbert.transformer.layer.{BROKEN_BLOCK}")


def t5_broken() -> nn.Module:
    return times_ten(t5(), f"encoder.block.{BROKEN_BLOCK}")


def llama_broken() -> nn.Module:
    return _hf("LlamaForCausalLM", "LlamaConfig", **{**_DECODER, "initializer_range": 1.0})


def mistral_broken() -> nn.Module:
    return times_ten(mistral(), f"model.layers.{BROKEN_BLOCK}")


def qwen2_broken() -> nn.Module:
    return times_ten(qwen2(), f"model.layers.{BROKEN_BLOCK}")


def vit_broken() -> nn.Module:
    model = vit()  # transformers 5 names the blocks vit.layers.N, 4.x vit.encoder.layer.N
    names = {n for n, _ in model.named_modules()}
    return times_ten(model, next(p for p in (f"vit.layers.{B}", f"vit.encoder.layer.{B}") if p in names))


def clip_broken() -> nn.Module:
    return times_ten(clip(), f"vision_model.encoder.layers.{BROKEN_BLOCK}")


from tests.realcnn import VGG, DenseNet, MobileNetV3, ResNet, tv_init  # noqa: E402


def _seeded(build: Callable[[], nn.Module], conv_mode: str, linear: str) -> nn.Module:
    torch.manual_seed(0)
    return tv_init(build(), conv_mode, linear).eval()


def vgg11() -> nn.Module:
    return _seeded(lambda: VGG(11), "fan_out", "vgg_scaled")


def vgg16() -> nn.Module:
    return _seeded(lambda: VGG(16), "fan_out", "vgg_scaled")


def vgg16_xavier() -> nn.Module:
    """VGG-16 with every conv and linear at ``xavier_normal_`` (gain 1), biases 0."""
    model = vgg16()
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
    return model


def resnet() -> nn.Module:
    return _seeded(ResNet, "fan_out", "default")


def resnet_nobn() -> nn.Module:
    return _seeded(lambda: ResNet(bn=False), "fan_out", "default")


def mobilenet() -> nn.Module:
    return _seeded(MobileNetV3, "fan_out", "normal")


def mobilenet_nobn() -> nn.Module:
    return _seeded(lambda: MobileNetV3(bn=False), "fan_out", "normal")


def densenet() -> nn.Module:
    return _seeded(DenseNet, "fan_in", "zero_bias")


def densenet_nobn() -> nn.Module:
    """BatchNorm removed: not an init defect in a concatenating net (it trains as well as with BN
    at SGD lr 0.01/0.03 and AdamW; docs/rules-evidence.md 'DenseNet without BN: the backward
    signal'), so the matrix counts it healthy."""
    return _seeded(lambda: DenseNet(bn=False), "fan_in", "zero_bias")


def densenet_broken() -> nn.Module:
    """DenseNet without BatchNorm whose second dense block's convs are ×10 (variance ×100 each):
    the concatenation carries them to the head (expected initial loss ~5.7e4 nats against ln 10)."""
    model = densenet_nobn()
    with torch.no_grad():
        for p in model.features.denseblock2.parameters():
            if p.dim() == 4:
                p.mul_(10)
    return model


# --- the matrix ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One model of the matrix.

    ``inputs``: what it takes — ``tokens`` (input_ids), ``small_tokens`` (input_ids < 512),
    ``seq2seq`` (input_ids, decoder_input_ids),
    ``pixels`` (HF pixel_values), ``clip`` (input_ids, pixel_values), ``image`` (a torch.nn ``x``).
    ``culprits``: for a broken entry, layer or block name prefixes; a correct diagnosis names at
    least one of them in an error-level finding. ``hf``: ``save_pretrained`` applies.
    """

    name: str
    build: Callable[[], nn.Module]
    healthy: bool
    inputs: str
    culprits: tuple[str, ...] = ()
    broken_how: str = ""
    hf: bool = False

    @property
    def factory(self) -> str:
        return f"tests.realzoo:{self.name}"


def _pair(
    name: str, inputs: str, culprit: str | tuple[str, ...], how: str = "std ×10 in one block", hf: bool = True
) -> list[Entry]:
    g = globals()
    culprits = (culprit,) if isinstance(culprit, str) else culprit
    return [
        Entry(name, g[name], True, inputs, hf=hf),
        Entry(f"{name}_broken", g[f"{name}_broken"], False, inputs, culprits, how, hf),
    ]


MATRIX: list[Entry] = [
    *_pair("gpt2", "tokens", f"transformer.h.{B}"),
    *_pair("bert", "tokens", f"bert.encoder.layer.{B}"),
    *_pair("distilbert", "tokens", f"distilbert.transformer.layer.{B}"),
    *_pair("t5", "seq2seq", f"encoder.block.{B}"),
    *_pair("llama", "tokens", "model.layers.0", "N(0, 1): initializer_range=1.0"),
    *_pair("mistral", "tokens", f"model.layers.{B}"),
    *_pair("qwen2", "tokens", f"model.layers.{B}"),
    *_pair("vit", "pixels", (f"vit.layers.{B}", f"vit.encoder.layer.{B}")),
    *_pair("clip", "clip", f"vision_model.encoder.layers.{B}"),
    *_pair("gemma", "small_tokens", f"model.layers.{B}"),
    *_pair("phi", "small_tokens", f"model.layers.{B}"),
    *_pair("phi3", "small_tokens", "model.layers.0", "N(0, 1): initializer_range=1.0"),
    *_pair("gpt_neox", "small_tokens", f"gpt_neox.layers.{B}"),
    *_pair("gptj", "small_tokens", f"transformer.h.{B}"),
    *_pair("falcon", "small_tokens", f"transformer.h.{B}"),
    Entry("vgg11", vgg11, True, "image"),
    Entry("vgg16", vgg16, True, "image"),
    Entry("vgg16_xavier", vgg16_xavier, False, "image", ("features",), "xavier-scaled VGG-16"),
    Entry("resnet", resnet, True, "image"),
    Entry("resnet_nobn", resnet_nobn, False, "image", ("layer",), "BatchNorm removed"),
    Entry("mobilenet", mobilenet, True, "image"),
    Entry("mobilenet_nobn", mobilenet_nobn, False, "image", ("features",), "BatchNorm removed"),
    Entry("densenet", densenet, True, "image"),
    Entry("densenet_nobn", densenet_nobn, True, "image"),
    Entry(
        "densenet_broken",
        densenet_broken,
        False,
        "image",
        ("features.denseblock2",),
        "no BN, std ×10 in one block",
    ),
]
BY_NAME = {e.name: e for e in MATRIX}
#: broken twins that the 80-step training runs (benchmarks/results/train_evidence.txt) did not
#: separate clearly from their healthy model: broken by construction, weakly confirmed by training
WEAK_EVIDENCE = frozenset({"bert_broken", "distilbert_broken", "t5_broken", "vit_broken", "vgg16_xavier"})
#: broken only for plain SGD at lr 0.1 (stuck or NaN); with AdamW lr 1e-3 they train better than
#: their BatchNorm versions
SGD_ONLY = frozenset({"resnet_nobn"})


def probe_inputs(entry: Entry, batch: int = 4, seed: int = 0, seq: int = SEQ) -> dict[str, torch.Tensor]:
    """Seeded example inputs, by the model's forward argument names: token ids in [0, VOCAB),
    N(0, 1) images of 3×32×32."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(
        0, SMALL_VOCAB if entry.inputs == "small_tokens" else VOCAB, (batch, seq), generator=g
    )
    image = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)
    return {
        "tokens": {"input_ids": ids},
        "small_tokens": {"input_ids": ids},
        "seq2seq": {
            "input_ids": ids,
            "decoder_input_ids": torch.randint(0, VOCAB, (batch, seq), generator=g),
        },
        "pixels": {"pixel_values": image},
        "clip": {"input_ids": ids, "pixel_values": image},
        "image": {"x": image},
    }[entry.inputs]


def export_onnx(entry: Entry, folder, batch: int = 4):
    """``entry`` exported to ``folder/NAME.onnx`` the way docs/onnx-export.md says: the dynamo
    exporter with the zoo's probe inputs as keyword arguments, the legacy one (``dynamo=False``)
    for the models the dynamo exporter cannot export (:data:`LEGACY_EXPORT`); a file already
    there is reused."""
    from pathlib import Path

    path = Path(folder) / f"{entry.name}.onnx"
    if not path.exists():
        model = entry.build()
        tmp = path.with_suffix(".tmp.onnx")
        dynamo = entry.name.removesuffix("_broken") not in LEGACY_EXPORT
        torch.onnx.export(model, (), str(tmp), kwargs=probe_inputs(entry, batch=batch), dynamo=dynamo)
        tmp.replace(path)
    return path


#: torch 2.13's dynamo exporter fails on transformers 5's T5 ("Cannot view a tensor with shape
#: [4, 16, 4, 16] … as a tensor with shape (4, 16, 64)" in the attention's reshape, step 2/3)
LEGACY_EXPORT = frozenset({"t5"})


@functools.cache
def factory_report(name: str):
    """The factory's report (probe on, default flags), computed once per model for every test
    module that asks (tests/test_real_matrix.py and tests/test_onnx_transformers.py share it)."""
    import initdoctor

    return initdoctor.diagnose(f"tests.realzoo:{name}", probe=True)


def named_errors(report) -> list[str]:
    """The layers and residual blocks an error-level finding names."""
    layers = [f.name for f in report.layers if f.status == "error"]
    return layers + [b.name for b in report.residual_blocks if b.status == "error"]
