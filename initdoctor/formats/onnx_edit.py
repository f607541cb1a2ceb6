"""The ONNX twins fix writes through: :class:`Onnx` (the ``ModelProto`` with every weight in
memory, initializers edited in place; ``onnx.save_model``, external data staying external) and
:class:`StreamedOnnx` (a model with external data edited without loading its weights)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Editable
from .onnx_data import all_tensors, data_files, external_extent, is_external, load_onnx_proto
from .onnx_save import externalize, point_at, save_onnx
from .streaming import copy_range, read_exactly, std_of_blocks, write_all


def _keeps_data_files(model: Any, path: Path) -> bool:
    """The model keeps tensors in files of their own (only then is the output split too)."""
    return any(
        is_external(t) and {e.key: e.value for e in t.external_data}.get("location") != path.name
        for t in all_tensors(model.graph)
    )


class Onnx(Editable):
    """An ONNX model with all its weights in memory; saved with external data when it had some."""

    probe_backend = "onnx"

    def __init__(self, path: Path) -> None:
        import onnx

        lean = load_onnx_proto(path)  # validates, refusing external data outside the model folder
        self.external = _keeps_data_files(lean, path)
        self.sources = [path, *data_files(lean, path)]
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
        """``dst`` (and ``<dst>.data`` when the model had external data), committed as a pair
        (:mod:`.onnx_save`)."""
        import onnx

        copy = onnx.ModelProto()
        copy.CopyFrom(self.model)
        write = None if not self.external else lambda fh, name: externalize(copy, fh, name)
        return save_onnx(dst, copy, write, self.sources)


class StreamedOnnx(Editable):
    """An ONNX model with external data, edited without loading its weights: the graph is read
    lean (every weight an external reference), a rescale is kept as a factor and new values as an
    array; :meth:`save` writes one new data file ``<OUT>.data`` sequentially — each weight copied
    or rescaled block by block — then the graph pointing at it. Values are rounded as the
    in-memory twin rounds them (``(x · f).astype(dtype)`` in numpy)."""

    probe_backend = "onnx"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model = load_onnx_proto(path)  # validates, refusing external data outside the model folder
        self.sources = [path, *data_files(self.model, path)]
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.factors: dict[str, float] = {}
        self.values: dict[str, np.ndarray] = {}
        self._live: Onnx | None = None

    @property
    def has_data_files(self) -> bool:
        """The model keeps tensors in files of their own (only then is the output split too)."""
        return _keeps_data_files(self.model, self.path)

    def _tensor(self, key: str) -> Any:
        if key not in self.inits:
            raise InputError(f"initializer {key!r} not found in the model")
        return self.inits[key]

    def _extent(self, key: str) -> tuple[Path, int, np.dtype, int] | None:
        """(file, byte offset, dtype, count) of an external initializer; None when inline."""
        import onnx

        tensor = self._tensor(key)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return None
        return external_extent(tensor, self.path.parent)

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

    def _scaled_blocks(
        self, key: str, extent: tuple[Path, int, np.dtype, int], src: Any
    ) -> Iterator[np.ndarray]:
        """The rescaled external weight ``key`` (at ``extent``, see :meth:`_extent`), block by block."""
        from ..stats import BLOCK

        _, offset, dtype, count = extent
        for start in range(0, count, BLOCK):
            src.seek(offset + start * dtype.itemsize)
            raw = read_exactly(src, dtype, min(BLOCK, count - start))
            yield (raw.astype(np.float64) * self.factors[key]).astype(dtype)

    def std(self, key: str) -> float:
        """Streamed for a rescaled external weight: memory stays at one block."""
        extent = self._extent(key) if key in self.factors else None
        if extent is None:
            return super().std(key)
        with open(extent[0], "rb") as src:
            return std_of_blocks(block.astype(np.float64) for block in self._scaled_blocks(key, extent, src))

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
        """Write every external tensor of ``model`` into ``data`` — the weights (copied, rescaled
        or replaced) in graph order, then any other (``Constant`` values, subgraphs: copied) — and
        point the graph at it, so that the output needs no file of the input's folder; edited
        inline tensors get their new bytes."""
        sources: dict[Path, Any] = {}
        weights = len(model.graph.initializer)  # all_tensors yields them first
        try:
            for number, tensor in enumerate(all_tensors(model.graph)):
                key, editable = tensor.name, number < weights
                if not editable and not is_external(tensor):
                    continue
                if not is_external(tensor):
                    if key in self.values or key in self.factors:
                        tensor.raw_data = self.array(key).astype(self._dtype(key)).tobytes()
                        for field in ("float_data", "double_data", "int32_data", "int64_data"):
                            tensor.ClearField(field)
                    continue
                extent = self._extent(key) if editable else external_extent(tensor, self.path.parent)
                assert extent is not None  # external
                target, offset, dtype, count = extent
                src = sources.get(target) or sources.setdefault(target, open(target, "rb"))  # noqa: SIM115 (closed in the finally below)
                start = data.tell()
                if editable and key in self.values:
                    write_all(data, self.values[key])
                elif editable and key in self.factors:
                    for block in self._scaled_blocks(key, extent, src):
                        write_all(data, block)
                else:
                    copy_range(src, data, offset, offset + count * dtype.itemsize)
                point_at(tensor, data_name, start, data.tell() - start)
        finally:
            for handle in sources.values():
                handle.close()

    def save(self, dst: Path) -> Path:
        """``dst`` and its data file, committed as a pair (:mod:`.onnx_save`): one data file
        written sequentially, each weight copied or rescaled block by block."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        return save_onnx(dst, model, lambda fh, name: self._write_data(model, fh, name), self.sources)
