"""Model formats: each module reads its format into a :class:`LoadedModel` (a
:class:`~initdoctor.model.ModelDescription` plus, where the format has one, something that runs the
model) and writes it back through its editable twin (:class:`Editable`, used by ``fix``).

One dispatch: :func:`detect_format` names the file's format (or ``factory`` for a
``package.module:function`` spec), and that name picks the :class:`Format` entry both :func:`load`
and :func:`open_editable` go through (the name is kept in ``LoadedModel.format_name``). Formats
that execute code when loaded (full pickles, TorchScript, torch.export) need ``trust``.

To add a format: write ``formats/<fmt>.py`` with ``load(source, name, *, trust, weights,
progress) -> LoadedModel`` and ``open_editable(loaded, source, *, trust) -> Editable`` (its twin:
``array``/``scale``/``assign``/``std``/``save``/``runnable``, see :mod:`.base`) and
``FORMAT = Format((name, ...), load, open_editable)``; make :func:`detect_format`
(:mod:`.detect`) return that name; add the module's ``FORMAT`` to :data:`FORMATS` below.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model import ModelDescription
from .base import Editable, Format, LoadedModel
from .detect import detect_format, in_hf_folder

__all__ = [
    "FORMATS",
    "Editable",
    "Format",
    "LoadedModel",
    "TorchModule",
    "describe",
    "detect_format",
    "load",
    "model_files",
    "open_editable",
]

#: The module of every format, under the names :func:`detect_format` gives it (each module's
#: ``FORMAT.names``): a module is imported when its format is first read, so reading an ONNX file
#: does not import the torch, safetensors and Hugging Face readers (a lighter start-up).
_MODULES = {
    "safetensors": "safetensors",
    "safetensors-index": "safetensors",
    "torch-zip": "torch_state_dict",
    "torch-legacy": "torch_state_dict",
    "torchscript": "torch_code",
    "torch.export": "torch_code",
    "onnx": "onnx",
    "factory": "factory",
    "hf-folder": "hf_folder",
}


def _entry(name: str) -> Format | None:
    module = _MODULES.get(name)
    if module is None:
        return None
    entry: Format = importlib.import_module(f"{__name__}.{module}").FORMAT
    return entry


def __getattr__(attr: str) -> Any:
    """``FORMATS`` (every :class:`Format`, importing every format module) and ``TorchModule``,
    on first use."""
    if attr == "FORMATS":
        return tuple(dict.fromkeys(e for e in map(_entry, _MODULES) if e is not None))
    if attr == "TorchModule":
        from .factory import TorchModule

        return TorchModule
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def is_factory_spec(text: str) -> bool:
    from .factory import is_factory_spec as spec

    return spec(text)


def describe(
    source: str | Path, *, trust: bool = False, weights: str | Path | None = None
) -> ModelDescription:
    """Read ``source`` (a file path or ``package.module:callable``) into a description."""
    return load(source, trust=trust, weights=weights).description


def load(
    source: str | Path,
    *,
    trust: bool = False,
    weights: str | Path | None = None,
    progress: Any = None,
    stream: bool = False,
) -> LoadedModel:
    """Read ``source`` into a :class:`LoadedModel` (description + runnable model where possible).
    ``progress(done, total)`` is told of each weight tensor reduced (files with many tensors).
    A Hugging Face folder is streamed (:mod:`.hf_stream`) when ``stream`` or when its checkpoint
    is over half the available memory."""
    text = str(source)
    if is_factory_spec(text):
        name = "factory"
    else:
        if weights:
            raise InputError("--weights goes with a factory source (package.module:function)")
        name = detect_format(Path(text))
    entry = _entry(name)
    if entry is None:  # pragma: no cover - detect_format only names registered formats
        raise InputError(f"{Path(text)}: unsupported format {name}")
    loaded = None
    if name in ("hf-folder", "factory"):  # the two sources that can be streamed
        from .hf_stream import load_if_streamed

        loaded = load_if_streamed(name, text, weights, stream=stream, trust=trust)
    if loaded is None:
        if stream:
            raise InputError(
                f"{text}: --stream takes a Hugging Face folder (config.json + safetensors) or "
                "--model pkg.mod:fn --weights FILE.safetensors"
            )
        loaded = entry.load(text, name, trust=trust, weights=weights, progress=progress)
    loaded.format_name = name
    if name not in ("factory", "hf-folder") and in_hf_folder(Path(text)):
        folder = Path(text).parent
        loaded.description.notes.append(
            f"this file is part of a Hugging Face folder: give the folder ({folder}) for a verdict"
        )
    return loaded


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    """The editable twin of a :class:`LoadedModel`, from the entry that loaded it."""
    entry = _entry(loaded.format_name or "")
    if entry is None:
        raise InputError(f"{source}: cannot write the {loaded.description.format} format")
    if loaded.streamed is not None:  # its parameters hold no values: nothing to write from
        raise InputError(
            f"{source}: the weights were streamed (larger than half the available memory), not held; "
            "fix rewrites a safetensors checkpoint without loading it: give the .safetensors file or index"
        )
    return entry.open_editable(loaded, str(source), trust=trust)


def model_files(path: Path, format_name: str | None = None) -> list[Path]:
    """Every file the model at ``path`` consists of — a Hugging Face folder's config, weights and
    companions, a sharded index and its shards, an ONNX graph and its external data, else the file
    itself: what ``--in-place`` backs up and what no output
    may replace."""
    name = format_name or detect_format(path)
    if name == "hf-folder":
        from .hf_folder import folder_files

        return folder_files(path)
    if name in ("safetensors-index", "safetensors-sharded"):
        from .safetensors import shard_files

        index = path if path.is_file() else sorted(path.glob("*.safetensors.index.json"))[0]
        return [index, *dict.fromkeys(sorted(shard_files(index).values()))]
    if name == "onnx":
        from .onnx import external_files

        return [path, *external_files(path)]
    return [path]
