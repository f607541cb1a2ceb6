"""Tiny Hugging Face models built from configs (no downloads, seed 0) as factories
``tests.inputs_zoo:NAME`` for the probe-input tests (tests/test_inputs.py)."""

from __future__ import annotations

import torch
import transformers


def _seeded(model_class, config):
    torch.manual_seed(0)
    return model_class(config).eval()


def llama():
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return _seeded(transformers.LlamaForCausalLM, config)


def mistral():
    config = transformers.MistralConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return _seeded(transformers.MistralForCausalLM, config)


def qwen2():
    config = transformers.Qwen2Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return _seeded(transformers.Qwen2ForCausalLM, config)


def gpt2():
    config = transformers.GPT2Config(
        vocab_size=1000, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return _seeded(transformers.GPT2LMHeadModel, config)


def bert():
    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    return _seeded(transformers.BertModel, config)


def vit64():
    config = transformers.ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64,
    )  # fmt: skip
    return _seeded(transformers.ViTModel, config)


def clip():
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=0,
                eos_token_id=2)  # fmt: skip
    vision = dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)  # fmt: skip
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    return _seeded(transformers.CLIPModel, config)


def t5():
    config = transformers.T5Config(
        vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
    )  # fmt: skip
    return _seeded(transformers.T5ForConditionalGeneration, config)


class TwoLayer(torch.nn.Module):
    """Linear(16, 32) → ReLU → Linear(32, 10); ``forward(x)`` takes its input by the name ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def mlp():
    torch.manual_seed(0)
    return TwoLayer()
