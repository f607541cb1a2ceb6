"""Writing a Hugging Face folder back (the twin of :mod:`.hf_folder`): the live model is edited in
place (:class:`~.base.TorchTensors`), then saved as the same folder.

A weight file holding no changed tensor is copied byte for byte, as are config.json, the index and
every other top-level file (tokenizer, generation config); a file with a changed tensor is
rewritten with the same tensor names, dtypes and order — safetensors with the file's own metadata
(``{"format": "pt"}`` as ``save_pretrained`` writes it), ``.bin`` with ``torch.save``. Every output
keeps its input file's mode. ``fix -o OUT`` builds the folder beside OUT and renames it into place
(:func:`~initdoctor.fileio.atomic_write_dir`); ``--in-place`` replaces only the changed files, each
atomically, after :func:`~initdoctor.fileio.backup_all` of exactly those
(:meth:`HFFolder.replaced_files`).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write, atomic_write_dir
from .base import TorchTensors


@dataclass
class WeightFile:
    """One file of the checkpoint: its tensor names in file order, and (safetensors) metadata."""

    path: Path
    kind: str  # "safetensors" | "bin"
    keys: list[str]
    metadata: dict[str, str] = field(default_factory=dict)


class HFFolder(TorchTensors):
    """A Hugging Face folder held as its built model; saved as the same folder layout."""

    probe_backend = "torch"

    def __init__(
        self,
        folder: Path,
        model: Any,
        files: list[WeightFile],
        names: dict[str, str],
        unused: dict[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        self.model = model
        self.files = files
        self.names = names
        self.unused = unused or {}  # file tensors the model does not hold: written back as read
        self.edited: set[int] = set()  # data pointers of the storages changed

    def _tensors(self) -> Any:
        return self.model.state_dict(keep_vars=True)

    def _edit(self, key: str) -> Any:
        tensor = super()._edit(key)
        self.edited.add(tensor.untyped_storage().data_ptr())
        return tensor

    def runnable(self) -> Any:
        return self.model

    def _tensor(self, file_key: str) -> Any:
        if file_key in self.unused:
            return self.unused[file_key]
        return self._tensors()[self.names[file_key]]

    def changed(self) -> list[WeightFile]:
        """The weight files holding a tensor whose storage was edited (through any name)."""
        return [
            f
            for f in self.files
            if any(self._tensor(k).untyped_storage().data_ptr() in self.edited for k in f.keys)
        ]

    def replaced_files(self) -> list[Path]:
        """What ``--in-place`` replaces (and backs up first)."""
        return [f.path for f in self.changed()]

    def _write(self, weight_file: WeightFile, target: Path) -> None:
        import torch

        seen: set[int] = set()
        tensors: dict[str, Any] = {}
        for key in weight_file.keys:
            t = self._tensor(key).detach()
            ptr = t.untyped_storage().data_ptr()
            t = t.contiguous() if ptr not in seen else t.clone()  # safetensors refuses shared tensors
            seen.add(ptr)
            tensors[key] = t
        if weight_file.kind == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(target), metadata=weight_file.metadata or {"format": "pt"})
        else:
            torch.save(tensors, target)

    def save(self, dst: Path) -> Path:
        changed = self.changed()
        if dst.exists() and dst.resolve() == self.folder.resolve():  # --in-place
            for weight_file in changed:
                atomic_write(weight_file.path, functools.partial(self._write, weight_file))
            return dst

        root = self.folder.resolve()
        outputs = {p.resolve(): Path(p.name) for p in self.folder.iterdir() if p.is_file()}
        for f in self.files:  # a shard in a subfolder keeps its place
            outputs.setdefault(f.path.resolve(), f.path.resolve().relative_to(root))
        rewritten = {f.path.resolve(): f for f in changed}

        def write(out: Path) -> None:
            for src, name in sorted(outputs.items(), key=lambda item: str(item[1])):
                if name.name.endswith(".bak"):
                    continue
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if src in rewritten:
                    self._write(rewritten[src], target)
                else:
                    shutil.copyfile(src, target)  # untouched: the same bytes
                os.chmod(target, stat.S_IMODE(src.stat().st_mode))

        atomic_write_dir(dst, write)
        return dst
