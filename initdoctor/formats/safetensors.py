"""safetensors files and sharded checkpoints (``model.safetensors.index.json``): read and written.

Tensors are read one at a time with ``safe_open``, so memory stays near the largest tensor.
safetensors keeps no order (its keys come back sorted as strings), so layers are sorted by
natural module path: ``blocks.2`` before ``blocks.10``.

fix writes through the twins: :class:`StreamedSafetensors` (the header + each edit, a factor or
new values; the file copied and edited ranges rewritten in blocks), :class:`Safetensors` (an
exotic dtype: held in memory through the safetensors library), :class:`ShardedSafetensors` (the
index + the same per shard, saved into a folder).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write, atomic_write_dir
from ..model import ModelDescription
from .base import DTYPE_NAMES, FLOAT_CODES, SAFETENSORS_DTYPES, Editable, Format, LoadedModel, TorchTensors
from .streaming import StreamedTensors, copy_range, write_all
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


MAX_HEADER = 100 * 2**20


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and check a safetensors header without reading tensor data.

    Format: 8 bytes little-endian header length ``N``, ``N`` bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
    data; offsets are relative to the data start. Every entry is checked (known dtype, shape of
    non-negative ints, ``end − begin == prod(shape) · itemsize``, inside the file) so that a
    declared shape can never make initdoctor allocate more than the file holds.
    Returns (entries, metadata, data start).
    """
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
            if dtype not in SAFETENSORS_DTYPES:
                continue  # an exotic dtype (FP8...): left to the safetensors library below
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
            begin, end = (int(o) for o in offsets)
            need = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[dtype][0]).itemsize
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
        dtype = DTYPE_NAMES.get(entry["dtype"], entry["dtype"].lower())
        if entry["dtype"] in SAFETENSORS_DTYPES:
            stored, bf16 = SAFETENSORS_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            count = (end - begin) // np.dtype(stored).itemsize
            return file_stats(owner[key], starts[owner[key]] + begin, count, stored, dtype, bfloat16=bf16)
        from .torch_ops import tensor_stats

        with _open(owner[key]) as handle:
            return tensor_stats(handle.get_tensor(key))

    reported = counted(stats_of, weight_count(list(shapes)), progress)
    return describe_tensors(items, reported, path=str(path), fmt=fmt, order="natural", parameters=params)


# --- the write side (fix) ---------------------------------------------------------------------
class StreamedSafetensors(StreamedTensors):
    """A safetensors file edited without loading it (:class:`StreamedTensors`). The header and
    every untouched tensor are byte-identical; memory stays at one block for scaling, whatever
    the file's size."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.header, _, self.data_start = read_header(path)

    @property
    def reads_every_dtype(self) -> bool:
        """Every dtype in the file is one initdoctor reads itself (else the safetensors library)."""
        return all(e["dtype"] in SAFETENSORS_DTYPES for e in self.header.values())

    def _entry(self, key: str) -> tuple[int, int, str]:
        entry = self.header.get(key)
        if entry is None:
            raise InputError(f"tensor {key!r} not found in the model")
        code = entry["dtype"]
        if code not in FLOAT_CODES:
            raise InputError(f"tensor {key!r} is {code}; only float tensors are rescaled")
        begin, end = (int(o) for o in entry["data_offsets"])
        return self.data_start + begin, (end - begin) // np.dtype(FLOAT_CODES[code]).itemsize, code

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def write_to(self, target: Path) -> None:
        """Write the file to ``target`` in one sequential pass: byte ranges nobody edited are
        copied (``os.copy_file_range`` where the system has it), edited tensors written anew."""
        with open(self.path, "rb") as src, open(target, "wb", buffering=0) as out:
            pos = 0
            for offset, key in self._edits():
                copy_range(src, out, pos, offset)
                for block in self._new_blocks(key, src):
                    write_all(out, block)
                pos = out.tell()
            copy_range(src, out, pos, self.path.stat().st_size)

    def save(self, dst: Path) -> Path:
        return atomic_write(dst, self.write_to)


class Safetensors(TorchTensors):
    """A safetensors file with a dtype initdoctor does not read itself (FP8...): held in memory
    through the safetensors library."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                self.metadata = handle.metadata()
                self.tensors = {key: handle.get_tensor(key) for key in handle}
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None

    def _tensors(self) -> Any:
        return self.tensors

    def write_to(self, target: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors, str(target), metadata=self.metadata)

    def save(self, dst: Path) -> Path:
        return atomic_write(dst, self.write_to)


def _safetensors_twin(path: Path) -> StreamedSafetensors | Safetensors:
    streamed = StreamedSafetensors(path)  # reads and checks the header once
    return streamed if streamed.reads_every_dtype else Safetensors(path)


class ShardedSafetensors(Editable):
    """``*.safetensors.index.json`` and its shards; saved as a folder with the same file names,
    each shard streamed (:class:`StreamedSafetensors`) and copied as is when nothing in it changed."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self.key_to_file = shard_files(index)
        self.shards = {f: _safetensors_twin(f) for f in sorted(set(self.key_to_file.values()))}
        self.changed: set[Path] = set()

    def _shard(self, key: str) -> StreamedSafetensors | Safetensors:
        if key not in self.key_to_file:
            raise InputError(f"tensor {key!r} not found in the model")
        return self.shards[self.key_to_file[key]]

    def array(self, key: str) -> np.ndarray:
        return self._shard(key).array(key)

    def std(self, key: str) -> float:
        return self._shard(key).std(key)

    def scale(self, key: str, factor: float) -> None:
        self.changed.add(self.key_to_file.get(key, self.index))
        self._shard(key).scale(key, factor)

    def assign(self, key: str, values: np.ndarray) -> None:
        self.changed.add(self.key_to_file.get(key, self.index))
        self._shard(key).assign(key, values)

    def save(self, dst: Path) -> Path:
        def write(folder: Path) -> None:
            shutil.copyfile(self.index, folder / self.index.name)
            for shard_path, shard in self.shards.items():
                target = folder / shard_path.name
                if shard_path in self.changed:
                    shard.write_to(target)
                else:
                    shutil.copyfile(shard_path, target)  # untouched shard: the same bytes

        atomic_write_dir(dst, write)
        return dst / self.index.name


# --- registry entry ------------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    path = Path(source)
    if name == "safetensors":
        return LoadedModel(describe_safetensors(path, progress=progress))
    if path.is_dir():
        path = sorted(path.glob("*.safetensors.index.json"))[0]
    return LoadedModel(describe_safetensors(path, index=True, progress=progress))


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    path = Path(source)
    if loaded.description.format == "safetensors":
        return _safetensors_twin(path)
    index = path if path.is_file() else sorted(path.glob("*.safetensors.index.json"))[0]
    return ShardedSafetensors(index)


FORMAT = Format(("safetensors", "safetensors-index"), load, open_editable)
