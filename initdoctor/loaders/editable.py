"""Editable models: the write side of each loader ("twins"), used by :mod:`initdoctor.fix`.

An :class:`Editable` holds a model in memory in its own format, changes named tensors (scale,
replace) and saves itself — atomically — in that same format:

==================  ===============================================  ==========================
format              held as                                          saved with
==================  ===============================================  ==========================
state_dict (zip)    the tensors' places + each edit (streamed; the   the archive copied, edited
                    wrappers' pickle untouched)                      records and their CRCs new
state_dict (legacy) the whole checkpoint object (wrappers kept)      ``torch.save``
safetensors         the header + each edit (a factor or new values)  the file copied, edited
                                                                     ranges rewritten in blocks
sharded index       the same per shard                               index + shards into a folder
ONNX                the ``ModelProto``, initializers edited in place  ``onnx.save_model``; external
                                                                     data stays external
nn.Module (factory) the module                                       its ``state_dict``
trusted pickle      the module                                       ``torch.save(module)``
TorchScript         the module                                       ``torch.jit.save``
torch.export        the program                                      ``torch.export.save``
==================  ===============================================  ==========================

Tensors that are not edited are written back unchanged, bit for bit.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write, atomic_write_dir
from .safetensors_file import _DTYPES, _NAMES


class Editable:
    """Common interface. ``kind`` is the description's format."""

    probe_backend: str | None = None  # "torch" / "onnx" when the held model can be probed

    def array(self, key: str) -> np.ndarray:
        """The tensor's values as float64 numpy (a copy)."""
        raise NotImplementedError

    def scale(self, key: str, factor: float) -> None:
        raise NotImplementedError

    def assign(self, key: str, values: np.ndarray) -> None:
        raise NotImplementedError

    def std(self, key: str) -> float:
        """Population std of the tensor as it now is (in its own dtype)."""
        return float(self.array(key).std())

    def save(self, dst: Path) -> Path:
        raise NotImplementedError

    def runnable(self) -> Any:
        """What :func:`initdoctor.probe.run_probe` runs (the held model, or ONNX bytes)."""
        return None


def _std_of_blocks(blocks: Iterator[np.ndarray]) -> float:
    """Population std of float64 blocks, each reduced two-pass and merged (Chan et al.):
    memory stays at one block."""
    from ..stats import Moments

    total = Moments()
    for wide in blocks:
        mean = float(wide.mean())
        total.merge(int(wide.size), mean, float(np.square(wide - mean).sum()))
    return math.sqrt(total.var)


# --- torch -------------------------------------------------------------------------------------
class _TorchTensors(Editable):
    """Edits a mapping of torch tensors in place, in each tensor's own dtype."""

    def _tensors(self) -> Any:
        raise NotImplementedError

    def _get(self, key: str) -> Any:
        tensors = self._tensors()
        if key not in tensors:
            raise InputError(f"tensor {key!r} not found in the model")
        return tensors[key]

    def array(self, key: str) -> np.ndarray:
        return self._get(key).detach().double().cpu().numpy().copy()

    def scale(self, key: str, factor: float) -> None:
        import torch

        t = self._get(key)
        with torch.no_grad():
            t.copy_((t.double() * factor).to(t.dtype))

    def assign(self, key: str, values: np.ndarray) -> None:
        import torch

        t = self._get(key)
        with torch.no_grad():
            t.copy_(torch.from_numpy(np.asarray(values, dtype=np.float64)).to(t.dtype).reshape(t.shape))


class TorchCheckpoint(_TorchTensors):
    """A state_dict checkpoint file (wrapped or not); saved as the same object."""

    def __init__(self, obj: Any, path: Path) -> None:
        from .torch_file import find_state_dict

        self.obj = obj
        self.state = find_state_dict(obj, path)

    def _tensors(self) -> Any:
        return self.state

    def save(self, dst: Path) -> Path:
        import torch

        return atomic_write(dst, lambda tmp: torch.save(self.obj, tmp))


class TorchModule(_TorchTensors):
    """A live model: ``nn.Module`` (factory or trusted pickle), TorchScript, or ``ExportedProgram``."""

    probe_backend = "torch"

    def __init__(self, model: Any, fmt: str) -> None:
        self.model = model
        self.fmt = fmt

    def _tensors(self) -> Any:
        import torch

        if isinstance(self.model, torch.export.ExportedProgram):
            return self.model.state_dict
        return self.model.state_dict(keep_vars=True)

    def runnable(self) -> Any:
        return self.model

    def save(self, dst: Path) -> Path:
        import torch

        if self.fmt == "factory":
            state = {k: v.detach() for k, v in self._tensors().items()}
            return atomic_write(dst, lambda tmp: torch.save(state, tmp))
        if self.fmt == "torchscript":
            return atomic_write(dst, lambda tmp: torch.jit.save(self.model, str(tmp)))
        if self.fmt == "torch.export":
            return atomic_write(dst, lambda tmp: torch.export.save(self.model, str(tmp)), suffix=".pt2")
        return atomic_write(dst, lambda tmp: torch.save(self.model, tmp))


# --- safetensors -------------------------------------------------------------------------------
#: safetensors float codes → stored numpy dtype (bfloat16 as its ``<u2`` bits), from the reader's table
_FLOAT_CODES = {code: _DTYPES[code][0] for code in ("F64", "F32", "F16", "BF16")}


def _decode(raw: np.ndarray, code: str) -> np.ndarray:
    """Stored values → float64 (bfloat16 bits widened exactly)."""
    if code == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


def _encode(values: np.ndarray, code: str) -> np.ndarray:
    """float64 → the stored dtype, rounded as torch's ``tensor.to(dtype)`` from float64 does
    (through float32 for half and bfloat16; round to nearest even; NaN kept)."""
    if code == "F64":
        return values.astype("<f8")
    f32 = values.astype(np.float32)
    if code == "F32":
        return f32.astype("<f4")
    if code == "F16":
        return f32.astype("<f2")
    bits = f32.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype("<u2")
    return np.where(np.isnan(f32), np.uint16(0x7FC0), rounded).astype("<u2")


class _StreamedTensors(Editable):
    """Tensors edited in a file without loading it: a scaled tensor is kept as its factor, a
    replaced one as its new values (in the stored dtype); subclasses say where a tensor lives
    (:meth:`_entry`) and write the file in one sequential pass, rescaling block by block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.factors: dict[str, float] = {}
        self.values: dict[str, np.ndarray] = {}

    def _entry(self, key: str) -> tuple[int, int, str]:
        """(byte offset in the file, element count, dtype code of :data:`_FLOAT_CODES`)."""
        raise NotImplementedError

    def _shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def _logical(self, flat: np.ndarray, key: str) -> np.ndarray:
        """Values in file order → the tensor (the file holds them in row-major order)."""
        return flat.reshape(self._shape(key))

    def _file_order(self, values: np.ndarray, key: str) -> np.ndarray:
        """The tensor → values in file order (inverse of :meth:`_logical`)."""
        return np.asarray(values, dtype=np.float64).reshape(-1)

    def _stored(self, key: str) -> np.ndarray:
        offset, count, code = self._entry(key)
        return np.fromfile(self.path, dtype=_FLOAT_CODES[code], count=count, offset=offset)

    def array(self, key: str) -> np.ndarray:
        _, _, code = self._entry(key)
        if key in self.values:
            return self._logical(_decode(self.values[key], code), key)
        values = _decode(self._stored(key), code)
        if key in self.factors:
            values = _decode(_encode(values * self.factors[key], code), code)
        return self._logical(values, key)

    def scale(self, key: str, factor: float) -> None:
        _, _, code = self._entry(key)
        if key in self.values:
            self.values[key] = _encode(_decode(self.values[key], code) * factor, code)
        else:
            self.factors[key] = self.factors.get(key, 1.0) * factor

    def assign(self, key: str, values: np.ndarray) -> None:
        _, count, code = self._entry(key)
        if np.size(values) != count:
            raise InputError(f"tensor {key!r} holds {count} values, got {np.size(values)}")
        self.factors.pop(key, None)
        self.values[key] = _encode(self._file_order(values, key), code)

    def _new_blocks(self, key: str, src: Any) -> Iterator[np.ndarray]:
        """The edited tensor's new stored values, one block at a time (``src``: the open input)."""
        from ..stats import BLOCK

        if key in self.values:
            yield self.values[key]
            return
        offset, count, code = self._entry(key)
        stored = np.dtype(_FLOAT_CODES[code])
        for start in range(0, count, BLOCK):
            src.seek(offset + start * stored.itemsize)
            raw = _read_exactly(src, stored, min(BLOCK, count - start))
            yield _encode(_decode(raw, code) * self.factors[key], code)

    def std(self, key: str) -> float:
        """Streamed for a scaled tensor: memory stays at one block."""
        if key not in self.factors:
            return super().std(key)
        code = self._entry(key)[2]
        with open(self.path, "rb") as src:
            return _std_of_blocks(_decode(block, code) for block in self._new_blocks(key, src))

    def _edits(self) -> list[tuple[int, str]]:
        """(byte offset, key) of every edited tensor, in file order."""
        return sorted((self._entry(key)[0], key) for key in {*self.values, *self.factors})


class StreamedSafetensors(_StreamedTensors):
    """A safetensors file edited without loading it (:class:`_StreamedTensors`). The header and
    every untouched tensor are byte-identical; memory stays at one block for scaling, whatever
    the file's size."""

    def __init__(self, path: Path) -> None:
        from .safetensors_file import read_header

        super().__init__(path)
        self.header, _, self.data_start = read_header(path)

    @property
    def reads_every_dtype(self) -> bool:
        """Every dtype in the file is one initdoctor reads itself (else the safetensors library)."""
        return all(e["dtype"] in _DTYPES for e in self.header.values())

    def _entry(self, key: str) -> tuple[int, int, str]:
        entry = self.header.get(key)
        if entry is None:
            raise InputError(f"tensor {key!r} not found in the model")
        code = entry["dtype"]
        if code not in _FLOAT_CODES:
            raise InputError(f"tensor {key!r} is {code}; only float tensors are rescaled")
        begin, end = (int(o) for o in entry["data_offsets"])
        return self.data_start + begin, (end - begin) // np.dtype(_FLOAT_CODES[code]).itemsize, code

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def write_to(self, target: Path) -> None:
        """Write the file to ``target`` in one sequential pass: byte ranges nobody edited are
        copied (``os.copy_file_range`` where the system has it), edited tensors written anew."""
        with open(self.path, "rb") as src, open(target, "wb", buffering=0) as out:
            pos = 0
            for offset, key in self._edits():
                _copy_range(src, out, pos, offset)
                for block in self._new_blocks(key, src):
                    _write_all(out, block)
                pos = out.tell()
            _copy_range(src, out, pos, self.path.stat().st_size)

    def save(self, dst: Path) -> Path:
        return atomic_write(dst, self.write_to)


#: torch dtype name → dtype code of :data:`_FLOAT_CODES` (the safetensors reader's names)
_TORCH_CODES = {_NAMES[code]: code for code in _FLOAT_CODES}


class StreamedCheckpoint(_StreamedTensors):
    """A zip state_dict edited without loading it (:class:`_StreamedTensors`), tensors located by
    :func:`~initdoctor.loaders.torch_file.zip_tensor_plan`. The archive is rewritten in one
    sequential pass: ``data.pkl`` (wrappers such as Lightning's included) and every untouched
    record byte for byte; each edited record's CRC-32 is computed while it is written and patched
    into its local header, data descriptor and central-directory entry, so the output is a valid
    zip (``zipfile.testzip``) as well as a torch checkpoint."""

    def __init__(self, path: Path, plan: dict[str, Any]) -> None:
        super().__init__(path)
        self.plan = plan

    def _entry(self, key: str) -> tuple[int, int, str]:
        t = self.plan.get(key)
        if t is None:
            raise InputError(f"tensor {key!r} not found in the model")
        if t.dtype not in _TORCH_CODES:
            raise InputError(f"tensor {key!r} is {t.dtype}; only float tensors are rescaled")
        return t.offset, t.count, _TORCH_CODES[t.dtype]

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
                _copy_range(src, out, pos, start)
                crc, cur = 0, start
                for offset, key in tensors:
                    crc = _copy_range(src, out, cur, offset, crc=crc)
                    for block in self._new_blocks(key, src):
                        crc = zlib.crc32(memoryview(block).cast("B"), crc)
                        _write_all(out, block)
                    cur = out.tell()
                crc = _copy_range(src, out, cur, start + info.file_size, crc=crc)
                crcs[info.filename] = (info, start, crc)
                pos = out.tell()
            _copy_range(src, out, pos, self.path.stat().st_size)
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
            _write_all(out, packed)
        if info.flag_bits & 0x08:
            src.seek(start + info.compress_size)
            at = start + info.compress_size + (4 if src.read(4) == b"PK\x07\x08" else 0)
            out.seek(at)
            _write_all(out, packed)
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
            _write_all(out, struct.pack("<I", crcs[name][2]))
            names.discard(name)
        pos += 46 + name_len + extra_len + comment_len


class Safetensors(_TorchTensors):
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


def _copy_range(src: Any, out: Any, start: int, end: int, *, crc: int | None = None) -> int | None:
    """Append bytes ``[start, end)`` of ``src`` to the unbuffered ``out`` (``os.copy_file_range``
    where the system has it). With ``crc``, the bytes are read and written through Python and
    the CRC-32 is carried on and returned."""
    import os
    import zlib

    src.seek(start)
    while start < end:
        done = 0
        if crc is None and hasattr(os, "copy_file_range"):
            try:
                done = os.copy_file_range(src.fileno(), out.fileno(), end - start, start)
            except OSError:  # e.g. across file systems on an older kernel: plain copy below
                done = 0
        if not done:
            src.seek(start)
            chunk = src.read(min(end - start, 8 << 20))
            if not chunk:
                raise InputError(f"{src.name}: file ended while it was being copied")
            if crc is not None:
                crc = zlib.crc32(chunk, crc)
            _write_all(out, chunk)
            done = len(chunk)
        start += done
    return crc


def _read_exactly(src: Any, dtype: np.dtype, count: int) -> np.ndarray:
    """``count`` values from ``src``'s position; a file that ends early is an error, not a short
    tensor written silently."""
    raw = np.fromfile(src, dtype=dtype, count=count)
    if raw.size != count:
        raise InputError(f"{src.name}: file ended inside a tensor while it was being rewritten")
    return raw


def _write_all(out: Any, data: Any) -> None:
    """Write every byte to the unbuffered ``out`` (a raw write may take fewer than it is given)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[out.write(view) :]


def _safetensors_twin(path: Path) -> StreamedSafetensors | Safetensors:
    streamed = StreamedSafetensors(path)  # reads and checks the header once
    return streamed if streamed.reads_every_dtype else Safetensors(path)


class ShardedSafetensors(Editable):
    """``*.safetensors.index.json`` and its shards; saved as a folder with the same file names,
    each shard streamed (:class:`StreamedSafetensors`) and copied as is when nothing in it changed."""

    def __init__(self, index: Path) -> None:
        from .safetensors_file import shard_files

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


# --- ONNX --------------------------------------------------------------------------------------
def _save_with_data(dst: Path, data_name: str, write: Any) -> Path:
    """A model file + its data file: ``write(folder)`` builds both in a temp folder beside ``dst``,
    then each is moved into place atomically, the data first (the graph never points at a data
    file that is not there yet)."""
    stage = dst.resolve().parent / f".{dst.name}.stage"
    atomic_write_dir(stage, write)
    try:
        atomic_write(dst.with_name(data_name), lambda tmp: shutil.move(str(stage / data_name), tmp))
        atomic_write(dst, lambda tmp: shutil.move(str(stage / dst.name), tmp))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dst


class Onnx(Editable):
    """An ONNX model with all its weights in memory; saved with external data when it had some."""

    probe_backend = "onnx"

    def __init__(self, path: Path) -> None:
        import onnx

        from .onnx_file import load_onnx_proto

        lean = load_onnx_proto(path)  # validates, refusing external data outside the model folder
        self.external = any(
            t.data_location == onnx.TensorProto.EXTERNAL
            and {e.key: e.value for e in t.external_data}.get("location") != path.name
            for t in lean.graph.initializer
        )
        try:
            self.model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: cannot read the ONNX model's weights ({exc})") from None
        self.inits = {t.name: t for t in self.model.graph.initializer}

    def _tensor(self, key: str) -> Any:
        if key not in self.inits:
            raise InputError(f"initializer {key!r} not found in the model")
        return self.inits[key]

    def array(self, key: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self._tensor(key)).astype(np.float64)

    def _store(self, key: str, values: np.ndarray) -> None:
        from onnx import numpy_helper

        tensor = self._tensor(key)
        old = numpy_helper.to_array(tensor)
        new = numpy_helper.from_array(np.asarray(values).astype(old.dtype).reshape(old.shape), tensor.name)
        tensor.ClearField("raw_data")
        for field in ("float_data", "double_data", "int32_data", "int64_data"):
            tensor.ClearField(field)
        tensor.raw_data = new.raw_data

    def scale(self, key: str, factor: float) -> None:
        self._store(key, self.array(key) * factor)

    def assign(self, key: str, values: np.ndarray) -> None:
        self._store(key, values)

    def runnable(self) -> Any:
        return self.model.SerializeToString()

    def save(self, dst: Path) -> Path:
        import onnx

        if not self.external:
            return atomic_write(dst, lambda tmp: onnx.save_model(self.model, str(tmp)), suffix=".onnx")
        data_name = dst.name + ".data"

        def write(folder: Path) -> None:
            copy = onnx.ModelProto()
            copy.CopyFrom(self.model)
            onnx.save_model(
                copy,
                str(folder / dst.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )

        return _save_with_data(dst, data_name, write)


class StreamedOnnx(Editable):
    """An ONNX model with external data, edited without loading its weights: the graph is read
    lean (every weight an external reference), a rescale is kept as a factor and new values as an
    array; :meth:`save` writes one new data file ``<OUT>.data`` sequentially — each weight copied
    or rescaled block by block — then the graph pointing at it. Values are rounded as the
    in-memory twin rounds them (``(x · f).astype(dtype)`` in numpy)."""

    probe_backend = "onnx"

    def __init__(self, path: Path) -> None:
        from .onnx_file import load_onnx_proto

        self.path = path
        self.model = load_onnx_proto(path)  # validates, refusing external data outside the model folder
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.factors: dict[str, float] = {}
        self.values: dict[str, np.ndarray] = {}
        self._live: Onnx | None = None

    @property
    def has_data_files(self) -> bool:
        """The model keeps weights in files of their own (only then is the output split too)."""
        import onnx

        return any(
            t.data_location == onnx.TensorProto.EXTERNAL
            and {e.key: e.value for e in t.external_data}.get("location") != self.path.name
            for t in self.model.graph.initializer
        )

    def _tensor(self, key: str) -> Any:
        if key not in self.inits:
            raise InputError(f"initializer {key!r} not found in the model")
        return self.inits[key]

    def _extent(self, key: str) -> tuple[Path, int, np.dtype, int] | None:
        """(file, byte offset, dtype, count) of an external initializer; None when inline."""
        import onnx

        from .onnx_file import _external_extent

        tensor = self._tensor(key)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return None
        return _external_extent(tensor, self.path.parent)

    def _stored(self, key: str) -> np.ndarray:
        from onnx import numpy_helper

        extent = self._extent(key)
        if extent is None:
            return numpy_helper.to_array(self._tensor(key)).reshape(-1)
        target, offset, dtype, count = extent
        return np.fromfile(target, dtype=dtype, count=count, offset=offset)

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._tensor(key).dims)

    def _dtype(self, key: str) -> np.dtype:
        import onnx

        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self._tensor(key).data_type))

    def array(self, key: str) -> np.ndarray:
        if key in self.values:
            return self.values[key].astype(np.float64).reshape(self._shape(key))
        stored = self._stored(key)
        values = stored.astype(np.float64)
        if key in self.factors:
            values = (values * self.factors[key]).astype(stored.dtype).astype(np.float64)
        return values.reshape(self._shape(key))

    def _scaled_blocks(self, key: str, src: Any) -> Iterator[np.ndarray]:
        from ..stats import BLOCK

        _, offset, dtype, count = self._extent(key)  # type: ignore[misc]
        for start in range(0, count, BLOCK):
            src.seek(offset + start * dtype.itemsize)
            raw = _read_exactly(src, dtype, min(BLOCK, count - start))
            yield (raw.astype(np.float64) * self.factors[key]).astype(dtype)

    def std(self, key: str) -> float:
        """Streamed for a rescaled external weight: memory stays at one block."""
        if key not in self.factors or self._extent(key) is None:
            return super().std(key)
        with open(self._extent(key)[0], "rb") as src:  # type: ignore[index]
            return _std_of_blocks(block.astype(np.float64) for block in self._scaled_blocks(key, src))

    def scale(self, key: str, factor: float) -> None:
        self._live = None
        if key in self.values:
            self.values[key] = (self.values[key].astype(np.float64) * factor).astype(self.values[key].dtype)
        else:
            self._tensor(key)  # it exists
            self.factors[key] = self.factors.get(key, 1.0) * factor

    def assign(self, key: str, values: np.ndarray) -> None:
        self._live = None
        dtype = self._dtype(key)
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if flat.size != int(np.prod(self._shape(key), dtype=np.int64)):
            raise InputError(
                f"initializer {key!r} holds {int(np.prod(self._shape(key)))} values, got {flat.size}"
            )
        self.factors.pop(key, None)
        self.values[key] = flat.astype(dtype)

    def runnable(self) -> Any:
        """The edited model as bytes (``--method lsuv`` probes it between steps): built in memory."""
        if self._live is None:
            live = Onnx(self.path)
            for key, values in self.values.items():
                live.assign(key, values.astype(np.float64))
            for key, factor in self.factors.items():
                live.scale(key, factor)
            self._live = live
        return self._live.runnable()

    def _write_data(self, model: Any, data: Any, data_name: str) -> None:
        """Write every external weight of ``model`` into ``data`` in graph order and point the
        graph at it; edited inline tensors get their new bytes."""
        import onnx

        sources: dict[Path, Any] = {}
        try:
            for tensor in model.graph.initializer:
                key = tensor.name
                extent = self._extent(key)
                if extent is None:
                    if key in self.values or key in self.factors:
                        tensor.raw_data = self.array(key).astype(self._dtype(key)).tobytes()
                        for field in ("float_data", "double_data", "int32_data", "int64_data"):
                            tensor.ClearField(field)
                    continue
                target, offset, dtype, count = extent
                src = sources.get(target) or sources.setdefault(target, open(target, "rb"))  # noqa: SIM115 (closed in the finally below)
                start = data.tell()
                if key in self.values:
                    _write_all(data, self.values[key])
                elif key in self.factors:
                    for block in self._scaled_blocks(key, src):
                        _write_all(data, block)
                else:
                    _copy_range(src, data, offset, offset + count * dtype.itemsize)
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (
                    ("location", data_name),
                    ("offset", str(start)),
                    ("length", str(data.tell() - start)),
                ):
                    tensor.external_data.add(key=k, value=v)
        finally:
            for handle in sources.values():
                handle.close()

    def save(self, dst: Path) -> Path:
        import onnx

        data_name = dst.name + ".data"
        model = onnx.ModelProto()
        model.CopyFrom(self.model)

        def write(folder: Path) -> None:
            with open(folder / data_name, "wb", buffering=0) as data:
                self._write_data(model, data, data_name)
            (folder / dst.name).write_bytes(model.SerializeToString())

        return _save_with_data(dst, data_name, write)


def open_editable(loaded: Any, source: str, *, trust: bool) -> Editable:
    """The editable twin of a :class:`~initdoctor.loaders.LoadedModel`."""
    from . import detect_format

    fmt = loaded.description.format
    if loaded.runnable is not None and loaded.backend in ("torch", "torchscript", "torch.export"):
        return TorchModule(loaded.runnable, fmt)
    path = Path(source)
    if fmt == "onnx":
        streamed = StreamedOnnx(path)
        return streamed if streamed.has_data_files else Onnx(path)
    if fmt == "safetensors":
        return _safetensors_twin(path)
    if fmt == "safetensors-sharded":
        index = path if path.is_file() else sorted(path.glob("*.safetensors.index.json"))[0]
        return ShardedSafetensors(index)
    if detect_format(path) == "torch-zip" and not trust:
        from .torch_file import zip_tensor_plan

        plan = zip_tensor_plan(path)
        if plan is not None:
            return StreamedCheckpoint(path, plan)
    if detect_format(path) in ("torch-zip", "torch-legacy"):
        from .torch_file import load_torch_object

        return TorchCheckpoint(load_torch_object(path, trust=trust), path)
    raise InputError(f"{source}: cannot write the {fmt} format")
