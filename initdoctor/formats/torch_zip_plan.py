"""A zip state_dict's tensors located without torch: ``data.pkl`` read by a restricted unpickler
that builds a :class:`PlainTensor` (dtype, shape, stride, storage) for each tensor and reads no
data, so a static inspection of a state_dict does not pay ``import torch`` (1.4–2 s on a 2-CPU
machine, more than streaming 1 GiB of weights).

Only what ``torch.save`` writes for a plain state_dict is understood: ``_rebuild_tensor_v2``,
``_rebuild_parameter``, ``OrderedDict`` and the typed storage classes (``FloatStorage`` …). Any
other global — a quantized or sparse tensor, a tensor subclass, an optimizer's or a module's
object — makes :func:`plain_state` return None and the caller unpickles with torch on the meta
device as before (which reports untrusted or damaged content). This is a subset of what torch's
``weights_only`` unpickler allows, so nothing is read here that ``torch.load(weights_only=True)``
would refuse.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

#: torch's legacy typed storage classes (what a zip ``data.pkl`` names) → dtype name
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4}
ITEMSIZE.update({"int16": 2, "int8": 1, "uint8": 1, "bool": 1})


class _Unplannable(Exception):
    """Something in the pickle beyond a plain state_dict."""


class PlainStorage:
    """One storage record of the zip: ``record`` is its name in the archive; ``_checkpoint_offset``
    (as torch's meta storages name it) is where its data starts, set once the directory is read."""

    def __init__(self, dtype: str, record: str, numel: int) -> None:
        self.dtype, self.record, self.numel = dtype, record, numel
        self._checkpoint_offset: int | None = None

    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


class PlainTensor:
    """What :func:`~initdoctor.formats.torch_state_dict_stream.zip_tensor_plan` reads of a tensor,
    under torch's names (``shape``, ``stride()``, ``storage_offset()``, ``numel()`` …)."""

    is_quantized = False

    def __init__(self, storage: PlainStorage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset = storage, offset
        self.shape, self._stride = shape, stride
        self.dtype = storage.dtype

    def stride(self) -> tuple[int, ...]:
        return self._stride

    def storage_offset(self) -> int:
        return self.offset

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def element_size(self) -> int:
        return ITEMSIZE[self.dtype]

    def untyped_storage(self) -> PlainStorage:
        return self.storage


class _StorageType:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


def _ints(values: Any) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        raise _Unplannable
    return tuple(values)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> PlainTensor:
    if not isinstance(storage, PlainStorage) or type(offset) is not int or offset < 0:
        raise _Unplannable
    shape, strides = _ints(size), _ints(stride)
    if len(shape) != len(strides):
        raise _Unplannable
    return PlainTensor(storage, offset, shape, strides)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    if not isinstance(data, PlainTensor):
        raise _Unplannable
    return data


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, prefix: str) -> None:
        super().__init__(file)
        self.prefix = prefix
        self.storages: dict[str, PlainStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        found = _GLOBALS.get((module, name))
        if found is None:
            raise _Unplannable
        return found

    def persistent_load(self, pid: Any) -> Any:
        # torch.save: ("storage", storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Unplannable
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise _Unplannable
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = PlainStorage(kind.dtype, f"{self.prefix}data/{key}", numel)
        elif known.dtype != kind.dtype or known.numel != numel:
            raise _Unplannable  # one storage seen as two dtypes: torch's own load handles that
        return known


def plain_state(path: Path) -> tuple[Any, list[PlainStorage]] | None:
    """The unpickled ``data.pkl`` of the zip checkpoint ``path`` (tensors as :class:`PlainTensor`)
    and its storages; None when the pickle holds anything else or cannot be read this way."""
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pkl) != 1:
                return None
            with archive.open(pkl[0]) as fh:
                unpickler = _Unpickler(fh, pkl[0][: -len("data.pkl")])
                obj = unpickler.load()
    except Exception:  # noqa: BLE001 - anything unusual: torch's own reader decides
        return None
    return obj, list(unpickler.storages.values())


def set_offsets(storages: list[PlainStorage], starts: dict[str, int]) -> None:
    """Each storage's data start in the file, from the zip directory (``starts``: record name →
    first data byte); a storage without its record keeps None (the plan reports the damage)."""
    for storage in storages:
        storage._checkpoint_offset = starts.get(storage.record)
