"""safetensors files and sharded checkpoints (``model.safetensors.index.json``).

Tensors are read one at a time with ``safe_open``, so memory stays near the largest tensor.
safetensors keeps no order (its keys come back sorted as strings), so layers are sorted by
natural module path: ``blocks.2`` before ``blocks.10``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model import ModelDescription
from .tensors import describe_tensors, natural_key


def shard_files(index_path: Path) -> dict[str, Path]:
    """Map each tensor name to its shard, refusing shard paths outside the index's folder."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{index_path}: not a valid safetensors index ({exc})") from None
    root = index_path.parent.resolve()
    out: dict[str, Path] = {}
    for key, shard in weight_map.items():
        target = (root / str(shard)).resolve()
        if root not in target.parents:
            raise InputError(f"{index_path}: shard {shard!r} points outside the model folder")
        if not target.is_file():
            raise InputError(f"{index_path}: shard {shard!r} is missing")
        out[key] = target
    return out


def _open(path: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def describe_safetensors(path: Path, *, index: bool = False) -> ModelDescription:
    """Describe a safetensors file or sharded checkpoint, one shard open at a time (an open
    ``safe_open`` handle keeps its file mapped, so pages read stay resident until it closes)."""
    from ..stats import WeightStats
    from .torch_module import tensor_stats

    key_to_file = shard_files(path) if index else None
    files = sorted(set(key_to_file.values())) if key_to_file else [path]
    owner: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with _open(f) as handle:
            for key in handle.keys():
                owner[key] = f
                shapes[key] = tuple(int(s) for s in handle.get_slice(key).get_shape())
    if key_to_file:
        missing = [k for k in key_to_file if k not in owner]
        if missing:
            raise InputError(f"{path}: tensor {missing[0]!r} listed in the index is in no shard")
    keys = sorted(shapes, key=natural_key)
    items = [(k, shapes[k]) for k in keys]
    params = sum(math.prod(shape) for shape in shapes.values())
    fmt = "safetensors-sharded" if index else "safetensors"

    # which tensors the description reads (weights, norm biases), then read them shard by shard
    needed: list[str] = []
    placeholder = WeightStats(0, "float32", 0.0, 0.0, 0.0, 0.0)
    describe_tensors(items, lambda key: needed.append(key) or placeholder, path=str(path), fmt=fmt,
                     order="natural", parameters=params)  # fmt: skip
    stats: dict[str, WeightStats] = {}
    for f in files:
        wanted = [k for k in needed if owner[k] == f]
        if not wanted:
            continue
        with _open(f) as handle:
            for key in wanted:
                try:
                    stats[key] = tensor_stats(handle.get_tensor(key))
                except Exception as exc:  # noqa: BLE001
                    raise InputError(f"{f}: cannot read tensor {key!r} ({exc})") from None
    return describe_tensors(items, stats.__getitem__, path=str(path), fmt=fmt, order="natural", parameters=params)
