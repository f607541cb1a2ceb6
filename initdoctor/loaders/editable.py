"""Editable models: the write side of each loader ("twins"), used by :mod:`initdoctor.fix`.

An :class:`Editable` holds a model in memory in its own format, changes named tensors (scale,
replace) and saves itself — atomically — in that same format:

==================  ===============================================  ==========================
format              held as                                          saved with
==================  ===============================================  ==========================
state_dict file     the whole checkpoint object (wrappers kept)      ``torch.save``
safetensors         tensors + the file's ``__metadata__``            ``safetensors.save_file``
sharded index       per shard, rewritten only when a tensor changes  index + shards into a folder
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

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write, atomic_write_dir


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

    def save(self, dst: Path) -> Path:
        raise NotImplementedError

    def runnable(self) -> Any:
        """What :func:`initdoctor.probe.run_probe` runs (the held model, or ONNX bytes)."""
        return None


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
class Safetensors(_TorchTensors):
    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                self.metadata = handle.metadata()
                self.tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None

    def _tensors(self) -> Any:
        return self.tensors

    def save(self, dst: Path) -> Path:
        from safetensors.torch import save_file

        return atomic_write(dst, lambda tmp: save_file(self.tensors, str(tmp), metadata=self.metadata))


class ShardedSafetensors(_TorchTensors):
    """``*.safetensors.index.json`` and its shards; saved as a folder with the same file names."""

    def __init__(self, index: Path) -> None:
        from .safetensors_file import shard_files

        self.index = index
        self.key_to_file = shard_files(index)
        self.shards = {f: Safetensors(f) for f in sorted(set(self.key_to_file.values()))}
        self.changed: set[Path] = set()

    def _tensors(self) -> Any:
        return {k: self.shards[f].tensors[k] for k, f in self.key_to_file.items()}

    def _mark(self, key: str) -> None:
        self.changed.add(self.key_to_file[key])

    def scale(self, key: str, factor: float) -> None:
        self._mark(key)
        super().scale(key, factor)

    def assign(self, key: str, values: np.ndarray) -> None:
        self._mark(key)
        super().assign(key, values)

    def save(self, dst: Path) -> Path:
        from safetensors.torch import save_file

        def write(folder: Path) -> None:
            shutil.copyfile(self.index, folder / self.index.name)
            for shard_path, shard in self.shards.items():
                target = folder / shard_path.name
                if shard_path in self.changed:
                    save_file(shard.tensors, str(target), metadata=shard.metadata)
                else:
                    shutil.copyfile(shard_path, target)  # untouched shard: the same bytes

        atomic_write_dir(dst, write)
        return dst / self.index.name


# --- ONNX --------------------------------------------------------------------------------------
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
            onnx.save_model(copy, str(folder / dst.name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)  # fmt: skip

        # model + data file: built in a temp folder, then each moved into place (data first)
        stage = dst.resolve().parent / f".{dst.name}.stage"
        atomic_write_dir(stage, write)
        try:
            atomic_write(dst.with_name(data_name), lambda tmp: shutil.move(str(stage / data_name), tmp))
            atomic_write(dst, lambda tmp: shutil.move(str(stage / dst.name), tmp))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dst


def open_editable(loaded: Any, source: str, *, trust: bool) -> Editable:
    """The editable twin of a :class:`~initdoctor.loaders.LoadedModel`."""
    from . import detect_format

    fmt = loaded.description.format
    if loaded.runnable is not None and loaded.backend in ("torch", "torchscript", "torch.export"):
        return TorchModule(loaded.runnable, fmt)
    path = Path(source)
    if fmt == "onnx":
        return Onnx(path)
    if fmt == "safetensors":
        return Safetensors(path)
    if fmt == "safetensors-sharded":
        index = path if path.is_file() else sorted(path.glob("*.safetensors.index.json"))[0]
        return ShardedSafetensors(index)
    if detect_format(path) in ("torch-zip", "torch-legacy"):
        from .torch_file import load_torch_object

        return TorchCheckpoint(load_torch_object(path, trust=trust), path)
    raise InputError(f"{source}: cannot write the {fmt} format")
