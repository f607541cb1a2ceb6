"""safetensors files and sharded checkpoints (``model.safetensors.index.json``).

Tensors are read one at a time with ``safe_open``, so memory stays near the largest tensor.
safetensors keeps no order (its keys come back sorted as strings), so layers are sorted by
natural module path: ``blocks.2`` before ``blocks.10``.
"""

from __future__ import annotations

import json
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
    from .torch_module import tensor_stats

    key_to_file = shard_files(path) if index else None
    files = sorted(set(key_to_file.values())) if key_to_file else [path]
    handles = {f: _open(f) for f in files}
    owner: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for f, handle in handles.items():
        for key in handle.keys():
            owner[key] = f
            shapes[key] = tuple(int(s) for s in handle.get_slice(key).get_shape())
    if key_to_file:
        missing = [k for k in key_to_file if k not in owner]
        if missing:
            raise InputError(f"{path}: tensor {missing[0]!r} listed in the index is in no shard")

    def stats_of(key: str):
        try:
            return tensor_stats(handles[owner[key]].get_tensor(key))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{owner[key]}: cannot read tensor {key!r} ({exc})") from None

    keys = sorted(shapes, key=natural_key)
    params = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= s
        params += n
    return describe_tensors(
        [(k, shapes[k]) for k in keys],
        stats_of,
        path=str(path),
        fmt="safetensors-sharded" if index else "safetensors",
        order="natural",
        parameters=params,
    )
