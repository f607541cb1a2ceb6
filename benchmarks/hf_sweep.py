"""Issue 14's user-style sweep: transformers architectures that are not in tests/realzoo.py's
MATRIX, each built from a tiny config with the library's own init (``torch.manual_seed(0)``),
saved with ``save_pretrained`` to a temporary folder and checked the way a user would:
``initdoctor check FOLDER`` and ``initdoctor inspect FOLDER -f json`` (the CLI's typer app, in
process).

One line per model: summary status, exit codes of check and inspect, deciding rule, the first
finding (an error/warn layer or block, else the summary message). Run from the repository root:
``PYTHONPATH=$PWD python benchmarks/hf_sweep.py [NAME…]`` (a few minutes on 2 CPUs); the 0.11
output is benchmarks/results/hf_sweep_0.11.txt."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, ".")
warnings.filterwarnings("ignore")

H = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
DEC = dict(H, vocab_size=512, max_position_embeddings=64, use_cache=False)
VISION = dict(image_size=32, num_channels=3)

#: name → (model class, config class, config kwargs)
SWEEP: dict[str, tuple[str, str, dict]] = {
    "opt": (
        "OPTForCausalLM",
        "OPTConfig",
        dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            ffn_dim=128,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
        ),
    ),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(vocab_size=512, hidden_size=64, n_layer=4, n_head=4)),
    "gpt_neo": (
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        dict(
            vocab_size=512,
            hidden_size=64,
            num_layers=4,
            num_heads=4,
            attention_types=[[["global", "local"], 2]],
            max_position_embeddings=64,
        ),
    ),
    "codegen": (
        "CodeGenForCausalLM",
        "CodeGenConfig",
        dict(vocab_size=512, n_embd=64, n_layer=4, n_head=4, rotary_dim=8, n_positions=64, n_ctx=64),
    ),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", dict(DEC, num_key_value_heads=2)),
    "mixtral": (
        "MixtralForCausalLM",
        "MixtralConfig",
        dict(DEC, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    ),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(DEC, num_key_value_heads=2, head_dim=16)),
    "olmo": ("OlmoForCausalLM", "OlmoConfig", dict(DEC, num_key_value_heads=2)),
    "falcon_new_decoder": (
        "FalconForCausalLM",
        "FalconConfig",
        dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            new_decoder_architecture=True,
            num_kv_heads=2,
        ),
    ),
    "roberta": ("RobertaForMaskedLM", "RobertaConfig", dict(H, vocab_size=512, max_position_embeddings=80)),
    "albert": (
        "AlbertForMaskedLM",
        "AlbertConfig",
        dict(H, vocab_size=512, embedding_size=32, max_position_embeddings=64),
    ),
    "electra": (
        "ElectraForMaskedLM",
        "ElectraConfig",
        dict(H, vocab_size=512, embedding_size=32, max_position_embeddings=64),
    ),
    "deberta_v2": (
        "DebertaV2ForMaskedLM",
        "DebertaV2Config",
        dict(H, vocab_size=512, max_position_embeddings=64),
    ),
    "bart": (
        "BartForConditionalGeneration",
        "BartConfig",
        dict(
            vocab_size=512,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=64,
        ),
    ),
    "wav2vec2": (
        "Wav2Vec2Model",
        "Wav2Vec2Config",
        dict(
            H,
            conv_dim=(32, 32),
            conv_stride=(5, 2),
            conv_kernel=(10, 3),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "convnext": (
        "ConvNextForImageClassification",
        "ConvNextConfig",
        dict(num_channels=3, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10),
    ),
    "resnet_hf": (
        "ResNetForImageClassification",
        "ResNetConfig",
        dict(
            num_channels=3,
            embedding_size=16,
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            num_labels=10,
        ),
    ),
    "swin": (
        "SwinForImageClassification",
        "SwinConfig",
        dict(
            VISION, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=10
        ),
    ),
}


def build(name: str):
    import torch
    import transformers

    model_cls, config_cls, cfg = SWEEP[name]
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**cfg)).eval()


def cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``initdoctor ARGS``: the CLI's own entry point, in this
    process (one torch/transformers import for the whole sweep instead of one per command)."""
    from typer.testing import CliRunner

    from initdoctor.cli import app

    result = CliRunner().invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 99, result.stdout, f"{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, result.stdout, result.stderr


def first_finding(data: dict) -> str:
    for key in ("residual_blocks", "layers"):
        for f in data.get(key, []):
            if f.get("status") in ("error", "warn"):
                return f"{f['name']}: {f.get('rule')} {f.get('message', '')}"[:160]
    return data["summary"]["message"][:160]


def main(names: list[str]) -> None:
    for name in names:
        t = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                build(name).save_pretrained(os.path.join(tmp, name))
            except Exception as exc:  # noqa: BLE001  # a config this transformers cannot build
                print(f"{name:20} BUILD-FAILED {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            folder = os.path.join(tmp, name)
            check = cli("check", folder)
            inspect = cli("inspect", folder, "-f", "json")
        try:
            data = json.loads(inspect[1])
        except json.JSONDecodeError:
            err = ((inspect[2] or check[2]).strip().splitlines() or ["?"])[-1]
            print(f"{name:20} CRASH    check={check[0]} inspect={inspect[0]} {err[:150]}", flush=True)
            continue
        s = data["summary"]
        print(
            f"{name:20} {s['status']:7} check={check[0]} inspect={inspect[0]} "
            f"{str(s.get('rule')):5} {time.time() - t:5.1f}s  {first_finding(data)}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or list(SWEEP))
