"""ONNX weights: the graph parsed lean (:mod:`.onnx_lean`), and each tensor's values, inline or in
external data files — located and checked (inside the model's folder, present, long enough)
before anything is read, and streamed by offset and length (:func:`~initdoctor.stats.file_stats`).

Rules for every tensor of the graph (initializers, ``Constant`` values, subgraphs), checked when
the model is read (:func:`load_onnx_proto`):

* a shape has no negative dimension and holds fewer than 2**62 bytes (an impossible shape is
  refused, never wrapped around to a small or empty tensor);
* external data resolves inside the model's folder: ``..``, absolute paths and symlinks out of it
  are refused. A self-contained graph reached through a symbolic link (the Hugging Face cache:
  ``snapshots/<rev>/model.onnx → ../../blobs/<sha>``) is read through its real file
  (:func:`model_path`): it has no external data, only its own bytes;
* an external data file with more than one name (a hard link: ``st_nlink > 1``) is refused — it
  cannot be told apart from a file outside the folder, and an unpacked tar can plant one;
* the data holds exactly the bytes the shape needs (``length``, when given, equals them, as
  onnxruntime requires).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..stats import WeightStats, array_stats, file_stats

#: No tensor may declare this many bytes or more (an impossible shape).
MAX_TENSOR_BYTES = 2**62


def model_path(path: Path) -> Path:
    """The path to read the model at ``path`` through: ``path`` itself, or its real file when
    ``path`` is reached through a symbolic link and the graph keeps no tensor in another file
    (its inline weights are then read from the real file, inside the real file's folder)."""
    from .onnx_lean import load_lean

    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: reading it says so
        return path
    if real == path.absolute() or any(loc != path.name for loc in data_locations(load_lean(path))):
        return path
    return real


def load_onnx_proto(path: Path) -> Any:
    """Parse the graph without pulling weights into memory: external data stays external and large
    inline initializers become external references into the file itself (:mod:`.onnx_lean`).
    Every tensor's shape and external data is checked here (see the module's rules)."""
    from .onnx_lean import load_lean

    model = load_lean(path)
    if not model.graph.node:
        raise InputError(f"{path}: not a readable ONNX model (the graph has no nodes)")
    check_tensors(model, path)
    return model


def all_tensors(graph: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of ``graph``: initializers, sparse initializers, node attributes
    (``Constant`` values and the like) and those of subgraphs (``If``, ``Loop``, ``Scan``)."""
    graphs = [graph]
    while graphs:
        current = graphs.pop()
        yield from current.initializer
        for sparse in current.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sparse in (
                    *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
                    *attribute.sparse_tensors,
                ):
                    yield from (sparse.values, sparse.indices)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def is_external(tensor: Any) -> bool:
    return int(tensor.data_location) == 1  # onnx.TensorProto.EXTERNAL


def data_locations(model: Any) -> dict[str, None]:
    """The ``location`` of every external tensor of ``model``, in order, without checking them."""
    found: dict[str, None] = {}
    for tensor in all_tensors(model.graph):
        if is_external(tensor):
            found[{e.key: e.value for e in tensor.external_data}.get("location", "")] = None
    return found


def data_files(model: Any, path: Path) -> list[Path]:
    """The files (resolved) that ``model``, read from ``path``, keeps tensors in besides ``path``."""
    found: dict[Path, None] = {}
    for tensor in all_tensors(model.graph):
        location = {e.key: e.value for e in tensor.external_data}.get("location")
        if is_external(tensor) and location != path.name:  # load_lean points into the file itself
            found[external_location(tensor, path.parent)[0]] = None
    return list(found)


def tensor_dtype(tensor: Any, base: Path) -> np.dtype:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{base}: tensor {tensor.name!r} has an unknown data type ({tensor.data_type})"
        ) from None


def tensor_count(tensor: Any, where: Path) -> int:
    """The element count of ``tensor``'s shape, refusing an impossible one (a negative dimension,
    or more bytes than any file holds) instead of letting it wrap around."""
    dims = [int(d) for d in tensor.dims]
    shown = dims if len(dims) <= 8 else f"{dims[:8]} and {len(dims) - 8} more"
    if any(d < 0 for d in dims):
        raise InputError(
            f"{where}: tensor {tensor.name!r} has an impossible shape {shown} (a negative dimension)"
        )
    try:  # only for the bound: a data type this onnx does not know is judged where it is read
        itemsize = max(1, tensor_dtype(tensor, where).itemsize)
    except InputError:
        itemsize = 1
    count = 0 if 0 in dims else 1
    for d in dims if count else ():  # stops at the bound: a million dims never build a huge int
        count *= d
        if count * itemsize >= MAX_TENSOR_BYTES:
            raise InputError(
                f"{where}: tensor {tensor.name!r} has an impossible shape {shown} (2**62 bytes or more)"
            )
    return count


def check_tensors(model: Any, path: Path) -> None:
    """Every tensor's shape is possible and every external one's data is where and as long as it
    must be (the module's rules), for ``model`` read from ``path``: what reading (or writing) the
    model may rely on. Each data file is located and looked at once, however many tensors it holds."""
    base, itself = path.parent, path.resolve()
    files: dict[str, tuple[Path, os.stat_result | None]] = {}
    first: dict[str, str] = {}  # location → the first tensor stored there
    for tensor in all_tensors(model.graph):
        tensor_count(tensor, path)
        if is_external(tensor):
            external_extent(tensor, base, files)
            first.setdefault({e.key: e.value for e in tensor.external_data}.get("location", ""), tensor.name)
    for location, (target, found) in files.items():
        if found is not None and found.st_nlink > 1 and target != itself:
            raise InputError(
                f"{base}: external data of {first[location]!r} is a hard link ({location!r} has "
                f"{found.st_nlink} names): it may be a file from outside the model folder; give "
                "initdoctor a copy"
            )


def _locate(location: str, name: str, base: Path) -> tuple[Path, os.stat_result | None]:
    """The file ``location`` names (resolved, inside the model folder) and its stat (None: absent)."""
    root = base.resolve()
    target = None
    if location and "\x00" not in location and not os.path.isabs(location):
        try:
            target = (root / location).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            target = None
    if target is None or root not in target.parents:
        raise InputError(f"{base}: external data of {name!r} points outside the model folder ({location!r})")
    try:
        found = target.stat()
    except OSError:
        return target, None
    if not stat.S_ISREG(found.st_mode):  # a FIFO would block the read forever
        raise InputError(f"{base}: external data of {name!r} is not a regular file ({location!r})")
    return target, found


def external_location(
    tensor: Any, base: Path, files: dict[str, tuple[Path, os.stat_result | None]] | None = None
) -> tuple[Path, int, int | None]:
    """(file, offset, length) of an external tensor, the file inside the model folder; ``files``
    caches :func:`_locate` by location."""
    return _external(tensor, base, {} if files is None else files)[:3]


def _external(
    tensor: Any, base: Path, files: dict[str, tuple[Path, os.stat_result | None]]
) -> tuple[Path, int, int | None, os.stat_result | None]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if location not in files:
        files[location] = _locate(location, tensor.name, base)
    target, found = files[location]
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise InputError(f"{base}: external data of {tensor.name!r} has a bad offset or length") from None
    return target, offset, length, found


def initializer_array(tensor: Any, base: Path) -> np.ndarray:
    """The initializer's values as numpy (memory-mapped for external data)."""
    from onnx import numpy_helper

    shape = tuple(int(d) for d in tensor.dims)
    if not is_external(tensor):
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{base}: initializer {tensor.name!r} is corrupt ({exc})") from None
    target, offset, dtype, count = external_extent(tensor, base)
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=shape)


def external_extent(
    tensor: Any, base: Path, files: dict[str, tuple[Path, os.stat_result | None]] | None = None
) -> tuple[Path, int, np.dtype, int]:
    """File, offset, dtype and element count of an external tensor, checked (inside the model
    folder, present, holding exactly the bytes its shape needs) without reading it."""
    count = tensor_count(tensor, base)
    target, offset, length, found = _external(tensor, base, {} if files is None else files)
    dtype = tensor_dtype(tensor, base)
    needed = count * dtype.itemsize
    if found is None:
        raise InputError(f"{base}: external data file {target.name!r} of {tensor.name!r} is missing")
    size = found.st_size
    if length is not None and length != needed and offset >= 0 and offset + length <= size:
        raise InputError(
            f"{base}: external data of {tensor.name!r} holds {length} bytes; its shape "
            f"{[int(d) for d in tensor.dims]} of {dtype} needs {needed}"
        )
    if offset < 0 or (length is not None and length < needed) or offset + needed > size:
        raise InputError(
            f"{base}: external data of {tensor.name!r} is truncated ({size} bytes in "
            f"{target.name!r}, needs {offset + needed})"
        )
    return target, offset, dtype, count


def weight_stats(tensor: Any, base: Path) -> WeightStats:
    """External data (and large inline data, made external by the lean loader) is streamed from
    the file (:func:`~initdoctor.stats.file_stats`); small inline tensors go through numpy."""
    import onnx

    dtype = onnx.helper.tensor_dtype_to_string(tensor.data_type).replace("TensorProto.", "").lower()
    if is_external(tensor):
        target, offset, stored, count = external_extent(tensor, base)
        if stored.kind in "fiub":
            return file_stats(target, offset, count, stored.newbyteorder("<"), dtype)
        if dtype == "bfloat16":
            return file_stats(target, offset, count, "<u2", dtype, bfloat16=True)
    array = initializer_array(tensor, base)
    if array.dtype.kind == "V" or "bfloat16" in str(array.dtype):  # float8 & co. via ml_dtypes
        array = array.astype(np.float32)
    return array_stats(array, dtype=dtype)
