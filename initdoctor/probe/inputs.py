"""The probe's seeded inputs (the same for every backend), the cap on their size, and the graph
tensors besides layer inputs/outputs that a description asks to be measured."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..settings import ProbeSettings
from .types import ProbeError


def random_inputs(
    specs: list[tuple[tuple[int, ...], str]],
    rng: np.random.Generator,
    vocab: int | None,
    max_input_mib: float = 1024.0,
) -> list[np.ndarray]:
    """Seeded inputs as numpy arrays (the same for every backend): N(0, 1) for float dtypes,
    token ids uniform in ``[0, vocab)`` for integer ones; refused beyond ``max_input_mib``."""
    check_input_size(specs, ProbeSettings(max_input_mib=max_input_mib))
    arrays = []
    for shape, dtype in specs:
        if dtype.startswith("int"):
            if not vocab:
                raise ProbeError("integer inputs need --vocab-size (no embedding layer to read it from)")
            arrays.append(rng.integers(0, vocab, size=shape, dtype=np.dtype(dtype)))
        else:
            arrays.append(rng.standard_normal(size=shape, dtype=np.float32))
    return arrays


def default_vocab(desc: Any, settings: ProbeSettings) -> int | None:
    """``--vocab-size``, else the smallest embedding table (ids valid for every table)."""
    if settings.vocab_size:
        return settings.vocab_size
    tables = [layer.shape[0] for layer in desc.layers if layer.kind == "embedding"]
    return min(tables) if tables else None


def check_input_size(specs: list[tuple[tuple[int, ...], str]], settings: ProbeSettings) -> None:
    """Refuse a probe batch larger than ``max_input_mib`` before allocating it."""
    total = sum(
        math.prod(shape) * np.dtype(dtype.replace("bfloat16", "float16")).itemsize for shape, dtype in specs
    )
    if total > settings.max_input_mib * 2**20:
        raise ProbeError(
            f"the probe batch would take {total / 2**20:.0f} MiB (inputs "
            f"{[list(s) for s, _ in specs]}); the cap is "
            f"{settings.max_input_mib:g} MiB — lower --batch-size or --input-shape"
        )


def extra_tensors(desc: Any) -> list[str]:
    """Graph tensors besides layer inputs/outputs that the probe measures: each residual block's
    skip input and output (growth = Var[out] / Var[skip])."""
    names: list[str] = []
    for block in getattr(desc, "blocks", []):
        for t in (block.skip_tensor, block.out_tensor):
            if t not in names:
                names.append(t)
    return names
