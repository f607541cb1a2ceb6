"""safetensors files and sharded checkpoints (``model.safetensors.index.json``): read and written.

Headers and indexes are read and checked by :mod:`.safetensors_header` (as strictly as the
safetensors library; in a sharded checkpoint the index decides which shard holds each tensor, and
shards that disagree with it are an error). Tensors are read one at a time, so memory stays near
the largest tensor.
safetensors keeps no order (its keys come back sorted as strings), so layers are sorted by
natural module path: ``blocks.2`` before ``blocks.10``.

fix writes through the twins: :class:`StreamedSafetensors` (the header + each edit, a factor or
new values; the file copied and edited ranges rewritten in blocks), :class:`Safetensors` (an
exotic dtype: held in memory through the safetensors library), :class:`ShardedSafetensors` (the
index + the same per shard, saved into a folder).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write, atomic_write_dir
from ..model import ModelDescription
from .base import DTYPE_NAMES, FLOAT_CODES, SAFETENSORS_DTYPES, Editable, Format, LoadedModel, TorchTensors
from .safetensors_header import check_shards, read_header, shard_files
from .streaming import StreamedTensors, copy_range, write_all
from .tensors import counted, describe_tensors, natural_key, weight_count


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
    headers: dict[Path, dict[str, Any]] = {}
    for f in files:
        headers[f], _, starts[f] = read_header(f)
        for key, entry in headers[f].items():
            owner[key], entries[key] = f, entry
    if key_to_file is not None:
        check_shards(path, key_to_file, headers)  # so each key has one shard: the index's
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
        from .torch_moments import weight_stats

        with _open(owner[key]) as handle:
            return weight_stats(handle.get_tensor(key))

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


def _keys(twin: StreamedSafetensors | Safetensors) -> dict[str, Any]:
    return twin.header if isinstance(twin, StreamedSafetensors) else twin.tensors


class ShardedSafetensors(Editable):
    """``*.safetensors.index.json`` and its shards; saved as a folder with the same file names,
    each shard streamed (:class:`StreamedSafetensors`) and copied as is when nothing in it changed."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self.key_to_file = shard_files(index)
        self.shards = {f: _safetensors_twin(f) for f in sorted(set(self.key_to_file.values()))}
        check_shards(index, self.key_to_file, {f: _keys(twin) for f, twin in self.shards.items()})
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
