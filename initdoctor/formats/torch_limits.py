"""How much a torch checkpoint may make initdoctor hold beyond the bytes it stores.

A dense tensor holds no more than its storage, and a storage no more than its record (zip) or the
bytes that follow it in the file (legacy): work and memory follow the file's size. Two things can
make a small file expand: a view that repeats its storage (stride 0, i.e. a broadcast, or
overlapping strides: a 16 KiB row declared as 65536×4096 is 1 GiB to reduce or rescale), and a
compressed zip record (deflate packs zeros about 1000:1; torch itself never compresses). Together
they may add at most :data:`EXPANSION_BUDGET` bytes; past that the file is refused with one line
naming the tensor and the numbers, before anything of that size is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Bytes a torch checkpoint may expand by beyond the bytes it stores (views repeating their storage
#: and compressed records together): 256 MiB.
EXPANSION_BUDGET = 256 << 20


class Expansion:
    """The running total of one checkpoint's expansion; raises once it passes the budget."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total = 0
        self.records: set[str] = set()

    def view(self, key: str, tensor: Any, stored: int) -> None:
        """A strided tensor (real or on the meta device) over ``stored`` bytes of storage."""
        shape = tuple(int(d) for d in tensor.shape)
        logical = math.prod(shape) * tensor.element_size()
        if logical > stored:
            dims = "×".join(map(str, shape))
            dtype = str(tensor.dtype).replace("torch.", "")
            strides = tuple(int(s) for s in tensor.stride())
            self._add(
                logical - stored,
                f"tensor {key!r} ({dims} {dtype}, strides {strides}) repeats its {stored} stored bytes "
                f"as {logical} bytes",
            )

    def record(self, key: str, info: Any) -> None:
        """``key``'s storage is the zip record ``info`` (a :class:`zipfile.ZipInfo`), compressed."""
        if info.filename in self.records:
            return
        self.records.add(info.filename)
        self._add(
            max(0, info.file_size - info.compress_size),
            f"{key} is a compressed record of {info.compress_size} bytes that unpacks to "
            f"{info.file_size} bytes",
        )

    def _add(self, extra: int, what: str) -> None:
        self.total += extra
        if self.total > EXPANSION_BUDGET:
            raise InputError(
                f"{self.path}: {what}; a checkpoint may expand by at most {EXPANSION_BUDGET} bytes "
                f"(256 MiB) beyond what it stores (repeating views and compressed records together)"
            )


def check_loaded(path: Path, state: Mapping[str, Any]) -> None:
    """Bound the views of a loaded state_dict (their storages are in memory already, each no larger
    than the bytes the file stores for it): refused past the budget, before a statistic or an edit
    materialises one."""
    import torch

    budget = Expansion(path)
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.layout is torch.strided and not t.is_quantized:
            budget.view(str(key), t, t.untyped_storage().nbytes())


def check_records(path: Path) -> None:
    """Bound a zip checkpoint's compressed records before ``torch.load`` unpacks them (the tensors
    are not known yet: the record's name stands for its tensor)."""
    import zipfile

    budget = Expansion(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return  # torch.load reports the damage
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            budget.record(f"record {info.filename!r}", info)
