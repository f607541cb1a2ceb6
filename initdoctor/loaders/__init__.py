"""Loaders: turn a model file or factory into a :class:`~initdoctor.model.ModelDescription`.

:func:`detect_format` looks at the file's content (magic bytes, zip members), not its extension,
except for ONNX, whose protobuf has no magic number. :func:`describe` dispatches to the reader.
Formats that execute code when loaded (full pickles, TorchScript, torch.export) need ``trust``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model import ModelDescription


def detect_format(path: Path) -> str:
    """One of ``torch-zip``, ``torch-legacy``, ``torchscript``, ``torch.export``, ``safetensors``,
    ``safetensors-index``, ``onnx``; raises :class:`InputError` for anything else."""
    from .torch_file import zip_kind

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if len(index) == 1:
            return "safetensors-index"
        raise InputError(f"{path}: is a directory; point at a model file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if not head:
        raise InputError(f"{path}: empty file")
    if path.name.endswith(".json"):
        return "safetensors-index"
    if head.startswith(b"PK\x03\x04"):
        return zip_kind(path)
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < 100_000_000:
            return "safetensors"
    if head[0] == 0x80 and path.suffix.lower() != ".onnx":  # pickle protocol 2+ (legacy torch.save)
        return "torch-legacy"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".pt2"):
        raise InputError(f"{path}: not a PyTorch checkpoint (no zip or pickle header): truncated or corrupt")
    raise InputError(
        f"{path}: unknown model format; expected a PyTorch checkpoint, TorchScript, torch.export "
        ".pt2, .safetensors (or its index .json), .onnx, or a factory package.module:function"
    )


@dataclass
class LoadedModel:
    """A description plus, where the format has one, something that can run the model.

    ``runnable`` is an ``nn.Module`` (factory, trusted pickle), a TorchScript module, a
    ``torch.export.ExportedProgram``, or the path of an ONNX file; ``None`` for a bare state_dict
    or safetensors file, which holds weights but no graph.
    """

    description: ModelDescription
    runnable: Any = None
    backend: str | None = None  # "torch" | "torchscript" | "torch.export" | "onnx" | None


def describe(
    source: str | Path, *, trust: bool = False, weights: str | Path | None = None
) -> ModelDescription:
    """Read ``source`` (a file path or ``package.module:callable``) into a description."""
    return load(source, trust=trust, weights=weights).description


def load(
    source: str | Path, *, trust: bool = False, weights: str | Path | None = None, progress: Any = None
) -> LoadedModel:
    """Read ``source`` into a :class:`LoadedModel` (description + runnable model where possible).
    ``progress(done, total)`` is told of each weight tensor reduced (files with many tensors)."""
    from .factory import build_from_factory, is_factory_spec

    text = str(source)
    if is_factory_spec(text):
        from .torch_module import describe_module_graph

        model = build_from_factory(text, str(weights) if weights else None, trust=trust)
        return LoadedModel(*describe_module_graph(model, path=text, fmt="factory"))
    if weights:
        raise InputError("--weights goes with a factory source (package.module:function)")
    path = Path(text)
    fmt = detect_format(path)
    if fmt == "safetensors":
        from .safetensors_file import describe_safetensors

        return LoadedModel(describe_safetensors(path, progress=progress))
    if fmt == "safetensors-index":
        from .safetensors_file import describe_safetensors

        if path.is_dir():
            path = sorted(path.glob("*.safetensors.index.json"))[0]
        return LoadedModel(describe_safetensors(path, index=True, progress=progress))
    if fmt == "onnx":
        from .onnx_file import describe_onnx

        return LoadedModel(describe_onnx(path, progress), path, "onnx")
    if fmt in ("torch-zip", "torch-legacy"):
        from .torch_file import describe_streamed_state_dict, describe_torch_object, load_torch_object

        if fmt == "torch-zip" and not trust:
            streamed = describe_streamed_state_dict(path, progress)
            if streamed is not None:
                return LoadedModel(streamed)

        obj = load_torch_object(path, trust=trust)
        import torch

        if isinstance(obj, torch.nn.Module):
            from .torch_module import describe_module_graph

            return LoadedModel(*describe_module_graph(obj, path=str(path), fmt="torch-module"))
        return LoadedModel(describe_torch_object(obj, path, "state_dict", progress))
    if fmt == "torchscript":
        from .torch_file import load_torchscript
        from .torch_module import describe_module

        module = load_torchscript(path, trust=trust)
        return LoadedModel(describe_module(module, path=str(path), fmt="torchscript"), module, "torchscript")
    if fmt == "torch.export":
        from .torch_file import load_exported
        from .torch_module import describe_exported

        program = load_exported(path, trust=trust)
        return LoadedModel(describe_exported(program, path=str(path)), program, "torch.export")
    raise InputError(f"{path}: unsupported format {fmt}")  # pragma: no cover
