"""The inputs a torch model says it takes, read from its Hugging Face-style ``config`` (duck-typed:
transformers is not imported) and its ``forward`` signature.

For a module with ``module.config`` and batch ``B``:

* ``input_ids``: ``[B, T]`` token ids in ``[0, vocab_size)``, ``T = min(16, max_position_embeddings)``
  (``n_positions`` for GPT-2); a multi-modal config reads ``text_config`` (CLIP);
* ``pixel_values``: ``[B, num_channels, image_size, image_size]`` (``vision_config`` for CLIP);
* ``decoder_input_ids``: ``[B, T]`` when ``config.is_encoder_decoder`` (T5, BART);
* ``input_values``: ``[B, S]`` raw audio, ``S`` = 32 frames of the product of ``conv_stride``
  (Wav2Vec2, HuBERT: the feature extractor's total stride).

Each only when ``forward`` takes a parameter of that name. ``use_cache=False`` is passed where
``forward`` takes it (no key/value cache in the output). Nothing is returned for a module without a
config or whose config names none of these: the caller falls back to its first weighted layer.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..model import InputSpec

#: default sequence length of token inputs (capped by the config's position table)
SEQ_LEN = 16

#: the probe's ``--input`` shapes by name while a model loads (:func:`probe_shapes`): a model whose
#: graph only torch.export reads is exported on them, so the probe need not export it again
_GIVEN: ContextVar[dict[str, tuple[int, ...]] | None] = ContextVar("initdoctor_probe_shapes", default=None)


@contextmanager
def probe_shapes(named: Any) -> Iterator[None]:
    """``named``: the probe's ``(name, shape, dtype)`` inputs (``ProbeSettings.named_inputs``)."""
    token = _GIVEN.set({str(n): tuple(int(d) for d in shape) for n, shape, _ in named})
    try:
        yield
    finally:
        _GIVEN.reset(token)


def with_probe_shape(spec: InputSpec) -> InputSpec:
    """``spec`` with the shape ``--input`` gives its name, if any (an export example)."""
    shape = (_GIVEN.get() or {}).get(spec.name or "")
    return dataclasses.replace(spec, shape=shape) if shape else spec


def forward_parameters(module: Any) -> list[str]:
    """Names of ``module.forward``'s parameters, in order (empty when it has no signature)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _image_side(config: Any) -> int | None:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)) and size and all(isinstance(s, int) for s in size):
        return int(size[0]) if len(set(size)) == 1 else None
    return _int(config, "image_size")


def _tokens(name: str, config: Any, batch: int) -> InputSpec | None:
    vocab = _int(config, "vocab_size")
    if vocab is None:
        return None
    positions = _int(config, "max_position_embeddings", "n_positions", "max_seq_len")
    return InputSpec(name, (batch, min(SEQ_LEN, positions or SEQ_LEN)), "int64", vocab)


def config_inputs(module: Any, batch: int) -> list[InputSpec]:
    """The named inputs ``module.config`` describes (see the module docstring), in ``forward``'s
    parameter order; empty when there is no config or it names none."""
    config = getattr(module, "config", None)
    if config is None:
        return []
    params = forward_parameters(module)
    text = getattr(config, "text_config", None) or config
    vision = getattr(config, "vision_config", None) or config
    found: dict[str, InputSpec | None] = {}
    if "input_ids" in params:
        found["input_ids"] = _tokens("input_ids", text, batch)
    if "pixel_values" in params:
        side = _image_side(vision)
        channels = _int(vision, "num_channels") or 3
        found["pixel_values"] = (
            InputSpec("pixel_values", (batch, channels, side, side), "float32") if side else None
        )
    strides = getattr(config, "conv_stride", None)
    if "input_values" in params and isinstance(strides, (list, tuple)) and strides:
        samples = 32 * math.prod(int(s) for s in strides)
        found["input_values"] = InputSpec("input_values", (batch, samples), "float32")
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False) is True:
        decoder = getattr(config, "decoder", None) or text  # EncoderDecoderConfig has its own
        found["decoder_input_ids"] = _tokens("decoder_input_ids", decoder, batch)
    specs = [spec for spec in found.values() if spec is not None]
    return sorted(specs, key=lambda s: params.index(s.name or ""))


def constant_kwargs(module: Any) -> dict[str, Any]:
    """Keyword arguments besides tensors: ``use_cache=False`` where ``forward`` takes it and the
    model has a config (a transformers model would otherwise return its key/value cache)."""
    if getattr(module, "config", None) is not None and "use_cache" in forward_parameters(module):
        return {"use_cache": False}
    return {}


def split_positional(module: Any, named: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Named inputs as ``(args, kwargs)``: those that fill ``forward``'s leading parameters in order
    are passed by position (so ``--input-shape`` values line up with them), the rest by name."""
    params = forward_parameters(module)
    args: list[Any] = []
    for param in params:
        if param not in named:
            break
        args.append(named[param])
    kwargs = {k: v for k, v in named.items() if k not in params[: len(args)]}
    return args, kwargs
