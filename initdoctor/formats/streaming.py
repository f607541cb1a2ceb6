"""Editing tensors inside a file without loading it, and the byte-level helpers the streamed twins
share (:class:`StreamedTensors`: safetensors, zip state_dicts; the ONNX twin uses the helpers).

A rescale is a factor: each output file is written in one sequential pass, untouched byte ranges
copied (``os.copy_file_range`` where the system has it) and rescaled tensors written block by
block, so memory stays at one block whatever the file's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, overload

import numpy as np

from ..errors import InputError
from .base import FLOAT_CODES, Editable


def std_of_blocks(blocks: Iterator[np.ndarray]) -> float:
    """Population std of float64 blocks, each reduced two-pass and merged (Chan et al.):
    memory stays at one block."""
    from ..stats import Moments

    total = Moments()
    for wide in blocks:
        mean = float(wide.mean())
        total.merge(int(wide.size), mean, float(np.square(wide - mean).sum()))
    return math.sqrt(total.var)


def decode(raw: np.ndarray, code: str) -> np.ndarray:
    """Stored values → float64 (bfloat16 bits widened exactly)."""
    if code == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


def encode(values: np.ndarray, code: str) -> np.ndarray:
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


class StreamedTensors(Editable):
    """Tensors edited in a file without loading it: a scaled tensor is kept as its factor, a
    replaced one as its new values (in the stored dtype); subclasses say where a tensor lives
    (:meth:`_entry`) and write the file in one sequential pass, rescaling block by block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.factors: dict[str, float] = {}
        self.values: dict[str, np.ndarray] = {}

    def _entry(self, key: str) -> tuple[int, int, str]:
        """(byte offset in the file, element count, dtype code of :data:`FLOAT_CODES`)."""
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
        return np.fromfile(self.path, dtype=FLOAT_CODES[code], count=count, offset=offset)

    def array(self, key: str) -> np.ndarray:
        _, _, code = self._entry(key)
        if key in self.values:
            return self._logical(decode(self.values[key], code), key)
        values = decode(self._stored(key), code)
        if key in self.factors:
            values = decode(encode(values * self.factors[key], code), code)
        return self._logical(values, key)

    def scale(self, key: str, factor: float) -> None:
        _, _, code = self._entry(key)
        if key in self.values:
            self.values[key] = encode(decode(self.values[key], code) * factor, code)
        else:
            self.factors[key] = self.factors.get(key, 1.0) * factor

    def assign(self, key: str, values: np.ndarray) -> None:
        _, count, code = self._entry(key)
        if np.size(values) != count:
            raise InputError(f"tensor {key!r} holds {count} values, got {np.size(values)}")
        self.factors.pop(key, None)
        self.values[key] = encode(self._file_order(values, key), code)

    def _new_blocks(self, key: str, src: Any) -> Iterator[np.ndarray]:
        """The edited tensor's new stored values, one block at a time (``src``: the open input)."""
        from ..stats import BLOCK

        if key in self.values:
            yield self.values[key]
            return
        offset, count, code = self._entry(key)
        stored = np.dtype(FLOAT_CODES[code])
        for start in range(0, count, BLOCK):
            src.seek(offset + start * stored.itemsize)
            raw = read_exactly(src, stored, min(BLOCK, count - start))
            yield encode(decode(raw, code) * self.factors[key], code)

    def std(self, key: str) -> float:
        """Streamed for a scaled tensor: memory stays at one block."""
        if key not in self.factors:
            return super().std(key)
        code = self._entry(key)[2]
        with open(self.path, "rb") as src:
            return std_of_blocks(decode(block, code) for block in self._new_blocks(key, src))

    def _edits(self) -> list[tuple[int, str]]:
        """(byte offset, key) of every edited tensor, in file order."""
        return sorted((self._entry(key)[0], key) for key in {*self.values, *self.factors})


@overload
def copy_range(src: Any, out: Any, start: int, end: int, *, crc: None = None) -> None: ...
@overload
def copy_range(src: Any, out: Any, start: int, end: int, *, crc: int) -> int: ...
def copy_range(src: Any, out: Any, start: int, end: int, *, crc: int | None = None) -> int | None:
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
            write_all(out, chunk)
            done = len(chunk)
        start += done
    return crc


def read_exactly(src: Any, dtype: np.dtype, count: int) -> np.ndarray:
    """``count`` values from ``src``'s position; a file that ends early is an error, not a short
    tensor written silently."""
    raw = np.fromfile(src, dtype=dtype, count=count)
    if raw.size != count:
        raise InputError(f"{src.name}: file ended inside a tensor while it was being rewritten")
    return raw


def write_all(out: Any, data: Any) -> None:
    """Write every byte to the unbuffered ``out`` (a raw write may take fewer than it is given)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[out.write(view) :]
