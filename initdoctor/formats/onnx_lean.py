"""Read an ONNX file's graph without copying its embedded weights.

A ``.onnx`` file with weights inside the protobuf (``raw_data``) would be parsed whole by
``onnx.load``: every weight copied into Python. Here the file is memory-mapped and walked at the
protobuf wire level: the bytes of every ``TensorProto.raw_data`` of the graph's initializers are
left out of the message that protobuf parses, and each such initializer is rewritten as *external
data pointing into the .onnx file itself* (``location`` = the file's name, ``offset``/``length`` =
where the raw bytes sit). Readers of external data — :func:`initdoctor.formats.onnx_data.initializer_array`
(``np.memmap``) and onnxruntime — then read the weights straight from the file, one at a time.

Wire format (protobuf encoding): each field is a varint key ``(number << 3) | wire_type``; wire
type 2 is a varint length followed by that many bytes. ``ModelProto.graph`` = 7,
``GraphProto.initializer`` = 5, ``TensorProto.raw_data`` = 9, ``TensorProto.external_data`` = 13,
``TensorProto.data_location`` = 14 (``EXTERNAL`` = 1).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
#: Initializers smaller than this stay inline (not worth an external reference).
MIN_EXTERNAL_BYTES = 1024


class _Truncated(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (field number, wire type, field start, payload start, payload end) over a message."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            yield number, wire, field_start, pos, pos
        elif wire == 1:
            pos += 8
            yield number, wire, field_start, pos - 8, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated
            yield number, wire, field_start, pos, pos + length
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, field_start, pos - 4, pos
        else:
            raise _Truncated
        if pos > end:
            raise _Truncated


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint((number << 3) | 2) + _encode_varint(len(payload)) + payload


def _external_entry(key: str, value: str) -> bytes:
    return _len_field(1, key.encode()) + _len_field(2, value.encode())  # StringStringEntryProto


def _tensor(buf: Any, start: int, end: int, location: str) -> bytes:
    """A TensorProto without its raw_data, pointing at it as external data in this file."""
    kept = bytearray()
    raw: tuple[int, int] | None = None
    for number, wire, field_start, p0, p1 in _fields(buf, start, end):
        if number == _TENSOR_RAW_DATA and wire == 2 and p1 - p0 >= MIN_EXTERNAL_BYTES:
            raw = (p0, p1 - p0)
            continue
        kept += buf[field_start:p1]
    if raw is None:
        return bytes(buf[start:end])
    offset, length = raw
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        kept += _len_field(_TENSOR_EXTERNAL_DATA, _external_entry(key, value))
    kept += _encode_varint(_TENSOR_DATA_LOCATION << 3) + _encode_varint(1)
    return bytes(kept)


def _graph(buf: Any, start: int, end: int, location: str) -> bytes:
    out = bytearray()
    for number, wire, field_start, p0, p1 in _fields(buf, start, end):
        if number == _GRAPH_INITIALIZER and wire == 2:
            out += _len_field(_GRAPH_INITIALIZER, _tensor(buf, p0, p1, location))
        else:
            out += buf[field_start:p1]
    return bytes(out)


def load_lean(path: Path) -> Any:
    """Parse ``path`` into a ``ModelProto`` whose large inline initializers became external data
    pointing into ``path`` itself; the weights are not read."""
    import onnx

    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            out = bytearray()
            for number, wire, field_start, p0, p1 in _fields(buf, 0, len(buf)):
                if number == _MODEL_GRAPH and wire == 2:
                    out += _len_field(_MODEL_GRAPH, _graph(buf, p0, p1, path.name))
                else:
                    out += buf[field_start:p1]
    except (_Truncated, ValueError, OSError) as exc:
        detail = "truncated" if isinstance(exc, _Truncated) else type(exc).__name__
        raise InputError(f"{path}: not a readable ONNX model ({detail})") from None
    try:
        return onnx.ModelProto.FromString(bytes(out))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
