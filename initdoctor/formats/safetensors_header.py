"""The safetensors header and the sharded index, read as strictly as the safetensors library reads
them (its Rust crate: ``Metadata::validate`` and serde_json), so that initdoctor never accepts a
file the library refuses — where two readers disagree, the same file means two different models.

A file is 8 bytes little-endian ``N``, ``N`` bytes of UTF-8 JSON, then the data. The header is
refused when:

* ``N`` is over 100,000,000 bytes or runs past the end of the file, or the JSON is not valid
  UTF-8, or not strict JSON: ``NaN``/``Infinity``, a lone surrogate escape, nesting deeper than
  128 levels, or a key given twice (the library keeps one of the two silently; initdoctor refuses);
* it is not an object, or ``__metadata__`` is not an object of strings (``null`` is allowed);
* an entry lacks ``dtype`` (one of the library's), ``shape`` (integers 0 ≤ d < 2**64) or
  ``data_offsets`` (exactly two such integers); booleans and floats (``4.0``) are not integers;
* sorted by offsets, the tensors do not tile the data exactly: each starts where the previous
  ended (the first at 0; no gap, no overlap), holds ``prod(shape) × bits / 8`` bytes (a whole
  number, without overflow), and the last ends at the end of the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError

#: The safetensors library's header limit, in bytes.
MAX_HEADER = 100_000_000
#: serde_json's nesting limit.
MAX_DEPTH = 128
#: Every dtype the safetensors library knows → its size in bits.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
_USIZE = 2**64


class _Bad(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Bad(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Bad(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """Parse ``text`` as serde_json would (see the module); :class:`ValueError` says why not."""
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except RecursionError:
        raise _Bad(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    except _Bad:
        raise
    except ValueError as exc:
        raise _Bad(f"not valid JSON: {exc}") from None
    stack = [(value, 1)]
    while stack:  # depth and lone surrogates, without recursion
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > MAX_DEPTH:
            raise _Bad(f"the JSON is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key in item:
                _utf8(key)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            _utf8(item)
    return value


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"a string holds a lone surrogate escape ({text!r})") from None


def _shown(shape: list[int]) -> str:
    return str(shape) if len(shape) <= 8 else f"{shape[:8]} and {len(shape) - 8} more"


def _usize(value: Any) -> bool:
    return type(value) is int and 0 <= value < _USIZE


def _check_entries(header: dict[str, Any], data_size: int) -> None:
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise _Bad(f"tensor {name!r} is not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise _Bad(f"tensor {name!r} has no {missing[0]!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise _Bad(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_usize(d) for d in shape)):
            raise _Bad(
                f"tensor {name!r}: bad shape {_shown(shape) if isinstance(shape, list) else repr(shape)}"
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_usize(o) for o in offsets)):
            raise _Bad(f"tensor {name!r}: bad data offsets {offsets!r}")
        spans.append((offsets[0], offsets[1], name, dtype, shape))
    end = 0
    for begin, stop, name, dtype, shape in sorted(spans, key=lambda s: (s[0], s[1])):
        if begin != end or stop < begin:
            how = "overlap another tensor" if begin < end else "leave a gap"
            raise _Bad(f"tensor {name!r}: data offsets [{begin}, {stop}] {how} (expected to start at {end})")
        count = 1
        for d in shape:  # as the library's checked multiplication: stops at the first overflow
            count *= d
            if count >= _USIZE:
                raise _Bad(f"tensor {name!r}: shape {_shown(shape)} overflows")
        bits = count * DTYPE_BITS[dtype]
        if bits >= _USIZE:
            raise _Bad(f"tensor {name!r}: shape {_shown(shape)} overflows")
        if bits % 8 or stop - begin != bits // 8:
            raise _Bad(
                f"tensor {name!r}: data offsets [{begin}, {stop}] do not hold shape "
                f"{_shown(shape)} of {dtype}"
            )
        end = stop
    if end != data_size:
        raise _Bad(f"the tensors cover {end} bytes of a data section of {data_size}")


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and check a safetensors header without reading tensor data (see the module), so that
    a declared shape can never make initdoctor read or allocate more than the file holds.
    Returns (entries, metadata, data start)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _Bad("file shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER:
                raise _Bad(f"header length {n} is over the limit of {MAX_HEADER} bytes")
            if n < 2 or 8 + n > size:
                raise _Bad(f"header length {n} does not fit the file ({size} bytes)")
            raw = fh.read(n)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("the header is not valid UTF-8") from None
        header = strict_json(text)
        if not isinstance(header, dict):
            raise _Bad("the header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        if metadata is None:
            metadata = {}
        if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
            raise _Bad("__metadata__ is not an object of strings")
        _check_entries(header, size - 8 - n)
    except (_Bad, OSError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise InputError(f"{path}: truncated or corrupt safetensors file ({detail})") from None
    return header, metadata, 8 + n


def shard_files(index_path: Path) -> dict[str, Path]:
    """Map each tensor name to its shard, refusing shard paths outside the index's folder, and
    shards that are hard links (``st_nlink > 1``: a file from outside the folder looks the same)."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except RecursionError:
        raise InputError(
            f"{index_path}: not a valid safetensors index (the JSON is nested too deeply)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else exc
        raise InputError(f"{index_path}: not a valid safetensors index ({detail})") from None
    root = index_path.parent.resolve()
    out: dict[str, Path] = {}
    seen: dict[str, Path] = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or "\x00" in shard:
            raise InputError(f"{index_path}: shard {shard!r} of {key!r} is not a file name")
        if shard in seen:
            out[key] = seen[shard]
            continue
        try:
            target = (root / shard).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            target = root
        if root not in target.parents:
            raise InputError(f"{index_path}: shard {shard!r} points outside the model folder")
        if not target.is_file():
            raise InputError(f"{index_path}: shard {shard!r} is missing")
        names = target.stat().st_nlink
        if names > 1:
            raise InputError(
                f"{index_path}: shard {shard!r} is a hard link ({names} names): it may be a file "
                "from outside the model folder; give initdoctor a copy"
            )
        out[key] = seen[shard] = target
    return out


def check_shards(index: Path, key_to_file: dict[str, Path], headers: dict[Path, dict[str, Any]]) -> None:
    """The index decides where each tensor is: every tensor it lists must be in that shard, and
    no shard may hold a tensor the index puts elsewhere (or does not list) — an inconsistent
    set of shards would let two readers see two different models."""
    for shard, header in headers.items():
        for key in header:
            home = key_to_file.get(key)
            if home != shard:
                where = f"the index puts it in {home.name!r}" if home else "the index does not list it"
                raise InputError(
                    f"{index}: tensor {key!r} is in shard {shard.name!r} but {where}: "
                    "the shards are inconsistent"
                )
    for key, shard in key_to_file.items():
        if key not in headers[shard]:
            raise InputError(
                f"{index}: tensor {key!r} is not in shard {shard.name!r}, where the index puts it"
            )
