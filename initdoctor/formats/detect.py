"""Which format a file is, from its content (magic bytes, zip members), not its extension — except
for ONNX, whose protobuf has no magic number."""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import InputError
from .torch_pickle import zip_kind


def _is_tar(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(257)
        return fh.read(5) == b"ustar"


#: The weight files of a Hugging Face folder, in the order transformers prefers them.
HF_WEIGHTS = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def hf_weights(folder: Path) -> Path:
    """The weights of a Hugging Face folder (the first of :data:`HF_WEIGHTS` present)."""
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise InputError(
        f"{folder}: a Hugging Face folder (config.json) without weights: expected " + ", ".join(HF_WEIGHTS)
    )


def in_hf_folder(path: Path) -> bool:
    """``path`` is a weight file that sits beside a config.json (part of a Hugging Face folder)."""
    return path.is_file() and (path.parent / "config.json").is_file() and path.name != "config.json"


def detect_format(path: Path) -> str:
    """One of ``torch-zip``, ``torch-legacy``, ``torchscript``, ``torch.export``, ``safetensors``,
    ``safetensors-index``, ``onnx``, ``hf-folder`` (a folder with config.json); raises
    :class:`InputError` for anything else."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if (path / "config.json").is_file():
            if len(index) == 1 and not any((path / name).is_file() for name in HF_WEIGHTS):
                return "safetensors-index"  # weights under another name: the index alone
            hf_weights(path)  # one line when there are none
            return "hf-folder"
        if len(index) == 1:
            return "safetensors-index"
        raise InputError(f"{path}: is a directory; point at a model file or a Hugging Face folder")
    if not path.is_file():  # a FIFO would block the first read forever, a device never ends
        raise InputError(f"{path}: not a regular file (a FIFO, socket or device); point at a model file")
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
    if _is_tar(path):  # torch's oldest format: the legacy loader says what it needs
        return "torch-legacy"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".pt2"):
        raise InputError(f"{path}: not a PyTorch checkpoint (no zip or pickle header): truncated or corrupt")
    raise InputError(
        f"{path}: unknown model format; expected a PyTorch checkpoint, TorchScript, torch.export "
        ".pt2, .safetensors (or its index .json), .onnx, or a factory package.module:function"
    )
