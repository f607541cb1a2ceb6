"""ONNX weights: the graph parsed lean (:mod:`.onnx_lean`), and each initializer's values, inline
or in external data files — located and checked (inside the model's folder, present, long enough)
before anything is read, and streamed by offset and length (:func:`~initdoctor.stats.file_stats`).
A location that resolves outside the model's folder (``..``, an absolute path, a symlink) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..stats import WeightStats, array_stats, file_stats


def load_onnx_proto(path: Path) -> Any:
    """Parse the graph without pulling weights into memory: external data stays external and large
    inline initializers become external references into the file itself (:mod:`.onnx_lean`)."""
    from .onnx_lean import load_lean

    model = load_lean(path)
    if not model.graph.node:
        raise InputError(f"{path}: not a readable ONNX model (the graph has no nodes)")
    return model


def external_location(tensor: Any, base: Path) -> tuple[Path, int, int | None]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    root = base.resolve()
    target = (root / location).resolve()
    if not location or os.path.isabs(location) or root not in target.parents:
        raise InputError(
            f"{base}: external data of {tensor.name!r} points outside the model folder ({location!r})"
        )
    if target.exists() and not target.is_file():  # a FIFO would block the read forever
        raise InputError(f"{base}: external data of {tensor.name!r} is not a regular file ({location!r})")
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if info.get("length") else None
    return target, offset, length


def initializer_array(tensor: Any, base: Path) -> np.ndarray:
    """The initializer's values as numpy (memory-mapped for external data)."""
    import onnx
    from onnx import numpy_helper

    shape = tuple(int(d) for d in tensor.dims)
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{base}: initializer {tensor.name!r} is corrupt ({exc})") from None
    target, offset, dtype, count = external_extent(tensor, base)
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=shape)


def external_extent(tensor: Any, base: Path) -> tuple[Path, int, np.dtype, int]:
    """File, offset, dtype and element count of an external initializer, checked (inside the
    model folder, present, long enough) without reading it."""
    import onnx

    shape = tuple(int(d) for d in tensor.dims)
    target, offset, length = external_location(tensor, base)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    needed = count * dtype.itemsize
    try:
        size = target.stat().st_size
    except OSError:
        raise InputError(
            f"{base}: external data file {target.name!r} of {tensor.name!r} is missing"
        ) from None
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
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        target, offset, stored, count = external_extent(tensor, base)
        if stored.kind in "fiub":
            return file_stats(target, offset, count, stored.newbyteorder("<"), dtype)
        if dtype == "bfloat16":
            return file_stats(target, offset, count, "<u2", dtype, bfloat16=True)
    array = initializer_array(tensor, base)
    if array.dtype.kind == "V" or "bfloat16" in str(array.dtype):  # float8 & co. via ml_dtypes
        array = array.astype(np.float32)
    return array_stats(array, dtype=dtype)
