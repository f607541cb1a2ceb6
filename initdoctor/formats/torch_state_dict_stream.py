"""A zip state_dict streamed: located without reading a tensor (:func:`zip_tensor_plan`), described
from the file (:func:`describe_streamed_state_dict`) and edited in it (:class:`StreamedCheckpoint`).

A tensor that is not a dense view, a compressed record, a big-endian file or a torch that gives no
offsets has no plan: the caller then loads the checkpoint whole (:mod:`.torch_state_dict`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write
from ..model import ModelDescription
from ..stats import WeightStats
from .base import STREAMABLE, TORCH_CODES, Region, SharedStorage, aliases
from .streaming import StreamedTensors, copy_range, write_all
from .tensors import counted, describe_tensors, weight_count
from .torch_limits import Expansion
from .torch_pickle import find_state_dict, load_torch_object
from .torch_zip_plan import PlainTensor, plain_state, set_offsets


@dataclass(frozen=True)
class ZipTensor:
    """Where one tensor of a zip state_dict lives: its values are ``count`` elements of ``stored``
    (numpy dtype; ``bfloat16``: ``<u2`` bits) from byte ``offset``, laid out by ``stride`` (dense:
    a permutation of a contiguous layout), inside the record ``record`` (a
    :class:`zipfile.ZipInfo`) whose data starts at ``record_start``."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    count: int
    stored: str
    bfloat16: bool
    record: zipfile.ZipInfo
    record_start: int


def zip_tensor_plan(path: Path) -> dict[str, ZipTensor] | None:
    """Locate every tensor of a zip state_dict without reading one.

    ``torch.load(map_location="meta", weights_only=True)`` unpickles the structure only (same
    restricted unpickler; each meta tensor's storage carries ``_checkpoint_offset``, the byte
    offset of its record in the file); every record a tensor uses is checked against the zip's
    own directory (long enough, inside the file) — the check torch's mmap path skips.

    Returns None when the meta load fails or gives no offsets, or a tensor is not plain (a strided
    view that is not dense, a quantized, sparse or exotic tensor, a compressed record, a big-endian
    file): the caller then loads normally, and reports damage or untrusted content from there.
    A view repeating its storage or a compressed record past the budget of :mod:`.torch_limits`
    is refused here, before that load.
    """
    import struct

    plain = plain_state(path)  # without torch where the pickle is a plain state_dict
    try:
        if plain is not None:
            state = find_state_dict(plain[0], path)
        else:
            state = find_state_dict(load_torch_object(path, trust=False, meta=True), path)
    except InputError:
        # untrusted content, damage, or a tensor the meta device cannot hold (quantized...):
        # the normal load says which, or reads it
        return None
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
            order = next(
                (n for n in archive.namelist() if n.endswith("/byteorder") or n == "byteorder"), None
            )
            if order is not None and archive.read(order).strip() not in (b"little", b""):
                return None
            records: dict[int, zipfile.ZipInfo] = {}
            for info in archive.infolist():
                fh.seek(info.header_offset)
                head = fh.read(30)
                if len(head) < 30 or head[:4] != b"PK\x03\x04":
                    raise ValueError(f"bad local header for {info.filename!r}")
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                records[info.header_offset + 30 + name_len + extra_len] = info
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, KeyError) as exc:
        raise InputError(f"{path}: truncated or corrupt zip archive ({exc})") from None
    if plain is not None:
        set_offsets(plain[1], {info.filename: start for start, info in records.items()})
    plan: dict[str, ZipTensor] = {}
    budget = Expansion(path)
    streamable = True
    for key, t in state.items():
        dtype = str(t.dtype).replace("torch.", "")
        if not isinstance(t, PlainTensor) and not _strided(t):
            streamable = False
            continue
        storage = t.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        record = records.get(int(offset)) if offset is not None else None
        need = storage.nbytes()
        budget.view(key, t, need)  # a view repeating its storage: refused past the budget
        if record is not None and record.compress_type != zipfile.ZIP_STORED:
            budget.record(
                f"tensor {key!r}", record
            )  # torch never writes compressed records; torch.load reads them
            streamable = False
        if not streamable or dtype not in STREAMABLE or offset is None:
            streamable = False
            continue
        if not _dense(tuple(t.shape), tuple(t.stride())):
            streamable = False
            continue
        stored, bf16 = STREAMABLE[dtype]
        item = np.dtype(stored).itemsize
        if record is None or record.file_size < need or offset + need > size:
            have = "no record" if record is None else f"a record of {record.file_size} bytes"
            raise InputError(
                f"{path}: truncated or corrupt PyTorch checkpoint (tensor {key!r} needs {need} bytes at "
                f"offset {offset}, the archive has {have} there)"
            )
        if (t.storage_offset() + t.numel()) * item > need:
            raise InputError(
                f"{path}: truncated or corrupt PyTorch checkpoint (tensor {key!r} runs past its storage)"
            )
        plan[key] = ZipTensor(
            dtype,
            tuple(int(d) for d in t.shape),
            tuple(int(d) for d in t.stride()),
            int(offset) + t.storage_offset() * item,
            t.numel(),
            stored,
            bf16,
            record,
            int(offset),
        )
    return plan if streamable else None


def _strided(t: Any) -> bool:
    import torch

    return t.layout is torch.strided and not t.is_quantized


def describe_streamed_state_dict(path: Path, progress: Any = None) -> ModelDescription | None:
    """A zip state_dict described without reading its tensors into memory: located by
    :func:`zip_tensor_plan`, each weight streamed from the file by
    :func:`~initdoctor.stats.file_stats`. Memory stays flat whatever the checkpoint's size.
    None when there is no plan (the caller loads normally)."""
    from ..stats import file_stats

    plan = zip_tensor_plan(path)
    if plan is None:
        return None

    def stats_of(key: str) -> WeightStats:
        t = plan[key]
        return file_stats(path, t.offset, t.count, t.stored, t.dtype, bfloat16=t.bfloat16)

    shared: set[tuple[int, tuple[int, ...]]] = set()
    parameters = 0
    for t in plan.values():
        if (t.offset, t.shape) not in shared:
            shared.add((t.offset, t.shape))
            parameters += t.count
    return describe_tensors(
        [(k, t.shape) for k, t in plan.items()],
        counted(stats_of, weight_count(list(plan)), progress),
        path=str(path),
        fmt="state_dict",
        order="checkpoint",
        parameters=parameters,
        aliases=aliases({k: _region(t) for k, t in plan.items()}),
    )


def _region(t: ZipTensor) -> Region:
    """The bytes of the file a planned tensor's values span (its record is the storage)."""
    return (t.record_start, t.offset, t.offset + t.count * np.dtype(t.stored).itemsize)


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """The view covers ``numel`` consecutive elements (contiguous, or a permutation of a contiguous
    layout such as a transposed weight): then its statistics are those of that flat range."""
    expected = 1
    for dim, step in sorted(zip(shape, stride, strict=False), key=lambda p: p[1]):
        if dim == 1:
            continue
        if step != expected:
            return False
        expected *= dim
    return True


class StreamedCheckpoint(StreamedTensors):
    """A zip state_dict edited without loading it (:class:`StreamedTensors`), tensors located by
    :func:`zip_tensor_plan`. The archive is rewritten in one
    sequential pass: ``data.pkl`` (wrappers such as Lightning's included) and every untouched
    record byte for byte; each edited record's CRC-32 is computed while it is written and patched
    into its local header, data descriptor and central-directory entry, so the output is a valid
    zip (``zipfile.testzip``) as well as a torch checkpoint."""

    def __init__(self, path: Path, plan: dict[str, Any]) -> None:
        super().__init__(path)
        self.plan = plan
        self.tied = aliases({k: _region(t) for k, t in plan.items()})
        self.shared = SharedStorage(lambda k: _region(self.plan[k]) if k in self.plan else None)

    def scale(self, key: str, factor: float) -> None:
        """A tied name is edited as its first name (one record, written once)."""
        self.shared.edit(key)
        super().scale(self.tied.get(key, key), factor)

    def assign(self, key: str, values: np.ndarray) -> None:
        self.shared.edit(key)
        first = self.tied.get(key, key)
        if first != key:  # same bytes, perhaps another layout: through the file order
            values = self._logical(self._file_order(values, key), first)
        super().assign(first, values)

    def array(self, key: str) -> np.ndarray:
        first = self.tied.get(key, key)
        if first == key:
            return super().array(key)
        return self._logical(self._file_order(super().array(first), first), key)

    def std(self, key: str) -> float:
        return super().std(self.tied.get(key, key))

    def _entry(self, key: str) -> tuple[int, int, str]:
        t = self.plan.get(key)
        if t is None:
            raise InputError(f"tensor {key!r} not found in the model")
        if t.dtype not in TORCH_CODES:
            raise InputError(f"tensor {key!r} is {t.dtype}; only float tensors are rescaled")
        return t.offset, t.count, TORCH_CODES[t.dtype]

    def _shape(self, key: str) -> tuple[int, ...]:
        return self.plan[key].shape

    def _strided(self, flat: np.ndarray, key: str) -> np.ndarray:
        t = self.plan[key]
        return np.lib.stride_tricks.as_strided(flat, t.shape, [s * flat.itemsize for s in t.stride])

    def _logical(self, flat: np.ndarray, key: str) -> np.ndarray:
        """A tensor stored transposed (any dense stride order) is read back in its own layout."""
        return self._strided(flat, key).copy()

    def _file_order(self, values: np.ndarray, key: str) -> np.ndarray:
        flat = np.empty(self.plan[key].count, np.float64)
        self._strided(flat, key)[...] = np.asarray(values, dtype=np.float64).reshape(self._shape(key))
        return flat

    def write_to(self, target: Path) -> None:
        import zlib

        records: dict[int, list[tuple[int, str]]] = {}  # record data start → edited tensors in it
        for offset, key in self._edits():
            records.setdefault(self.plan[key].record_start, []).append((offset, key))
        crcs: dict[str, tuple[zipfile.ZipInfo, int, int]] = {}  # name → (info, data start, new CRC)
        with open(self.path, "rb") as src, open(target, "w+b", buffering=0) as out:
            pos = 0
            for start, tensors in sorted(records.items()):
                info = self.plan[tensors[0][1]].record
                copy_range(src, out, pos, start)
                crc, cur = 0, start
                for offset, key in tensors:
                    crc = copy_range(src, out, cur, offset, crc=crc)
                    for block in self._new_blocks(key, src):
                        crc = zlib.crc32(block.data.cast("B"), crc)
                        write_all(out, block)
                    cur = out.tell()
                crc = copy_range(src, out, cur, start + info.file_size, crc=crc)
                crcs[info.filename] = (info, start, crc)
                pos = out.tell()
            copy_range(src, out, pos, self.path.stat().st_size)
            _patch_crcs(src, out, crcs)

    def save(self, dst: Path) -> Path:
        return atomic_write(dst, self.write_to)


def _patch_crcs(src: Any, out: Any, crcs: dict[str, tuple[zipfile.ZipInfo, int, int]]) -> None:
    """Write each rewritten record's CRC-32 where the zip keeps it: the local header (offset 14,
    unless it holds 0 because a data descriptor follows), the data descriptor after the data
    (optional signature ``PK\\x07\\x08``), and the central-directory entry (offset 16)."""
    import struct

    for info, start, crc in crcs.values():
        packed = struct.pack("<I", crc)
        src.seek(info.header_offset + 14)
        if src.read(4) != b"\0\0\0\0":
            out.seek(info.header_offset + 14)
            write_all(out, packed)
        if info.flag_bits & 0x08:
            src.seek(start + info.compress_size)
            at = start + info.compress_size + (4 if src.read(4) == b"PK\x07\x08" else 0)
            out.seek(at)
            write_all(out, packed)
    with zipfile.ZipFile(src) as archive:
        pos = archive.start_dir
    names = set(crcs)
    while names:
        src.seek(pos)
        head = src.read(46)
        if len(head) < 46 or head[:4] != b"PK\x01\x02":
            raise InputError(f"{src.name}: central directory entry not found while rewriting")
        name_len, extra_len, comment_len = struct.unpack("<HHH", head[28:34])
        name = src.read(name_len).decode("utf-8", "replace")
        if name in names:
            out.seek(pos + 16)
            write_all(out, struct.pack("<I", crcs[name][2]))
            names.discard(name)
        pos += 46 + name_len + extra_len + comment_len
