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
from .tensors import counted, describe_tensors, natural_key, weight_count


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


#: safetensors dtype → (numpy dtype of the stored bits, is bfloat16)
_DTYPES = {
    "F64": ("<f8", False),
    "F32": ("<f4", False),
    "F16": ("<f2", False),
    "BF16": ("<u2", True),
    "I64": ("<i8", False),
    "I32": ("<i4", False),
    "I16": ("<i2", False),
    "I8": ("i1", False),
    "U8": ("u1", False),
    "BOOL": ("u1", False),
}
MAX_HEADER = 100 * 2**20
#: safetensors dtype → the torch-style name reported in ``dtype``
_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and check a safetensors header without reading tensor data.

    Format: 8 bytes little-endian header length ``N``, ``N`` bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
    data; offsets are relative to the data start. Every entry is checked (known dtype, shape of
    non-negative ints, ``end − begin == prod(shape) · itemsize``, inside the file) so that a
    declared shape can never make initdoctor allocate more than the file holds.
    Returns (entries, metadata, data start).
    """
    import numpy as np

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n <= 1 or n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        data_size = size - 8 - n
        for name, entry in header.items():
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            if dtype not in _DTYPES:
                continue  # an exotic dtype (FP8...): left to the safetensors library below
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
            begin, end = (int(o) for o in offsets)
            need = math.prod(shape) * np.dtype(_DTYPES[dtype][0]).itemsize
            if not 0 <= begin <= end <= data_size or end - begin != need:
                raise ValueError(
                    f"tensor {name!r}: data offsets {offsets} do not hold shape {shape} of {dtype}"
                )
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    return header, metadata, 8 + n


def _open(path: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def describe_safetensors(path: Path, *, index: bool = False, progress: Any = None) -> ModelDescription:
    """Describe a safetensors file or sharded checkpoint. Headers are parsed and checked by
    :func:`read_header`; each tensor the description needs is streamed on its own
    (:func:`~initdoctor.stats.file_stats`: positioned reads of a few MiB at a time, so memory
    stays flat whatever the tensor's size) and torch is not imported (exotic dtypes fall back to
    the safetensors library)."""
    import numpy as np

    from ..stats import WeightStats, file_stats

    key_to_file = shard_files(path) if index else None
    files = sorted(set(key_to_file.values())) if key_to_file else [path]
    owner: dict[str, Path] = {}
    entries: dict[str, dict[str, Any]] = {}
    starts: dict[Path, int] = {}
    for f in files:
        header, _, starts[f] = read_header(f)
        for key, entry in header.items():
            owner[key], entries[key] = f, entry
    if key_to_file:
        missing = [k for k in key_to_file if k not in owner]
        if missing:
            raise InputError(f"{path}: tensor {missing[0]!r} listed in the index is in no shard")
    shapes = {k: tuple(int(d) for d in e["shape"]) for k, e in entries.items()}
    items = [(k, shapes[k]) for k in sorted(shapes, key=natural_key)]
    params = sum(math.prod(shape) for shape in shapes.values())
    fmt = "safetensors-sharded" if index else "safetensors"

    def stats_of(key: str) -> WeightStats:
        entry = entries[key]
        dtype = _NAMES.get(entry["dtype"], entry["dtype"].lower())
        if entry["dtype"] in _DTYPES:
            stored, bf16 = _DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            count = (end - begin) // np.dtype(stored).itemsize
            return file_stats(owner[key], starts[owner[key]] + begin, count, stored, dtype, bfloat16=bf16)
        from .torch_module import tensor_stats

        with _open(owner[key]) as handle:
            return tensor_stats(handle.get_tensor(key))

    stats_of = counted(stats_of, weight_count(list(shapes)), progress)
    return describe_tensors(items, stats_of, path=str(path), fmt=fmt, order="natural", parameters=params)
