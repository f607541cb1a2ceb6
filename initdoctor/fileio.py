"""Writing files so that nothing the user owns is damaged: temp file in the destination folder,
fsync, ``os.replace``. An interrupted write leaves the destination as it was and no temp file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InputError


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(dst: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` for a temp path beside ``dst``, fsync it, then ``os.replace`` it onto
    ``dst``. On any failure the temp file is removed and ``dst`` is untouched."""
    dst = Path(dst)
    folder = dst.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{dst}: folder {folder} does not exist")
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{dst.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def atomic_write_text(dst: Path, text: str) -> Path:
    return atomic_write(dst, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_dir(dst: Path, write: Callable[[Path], object]) -> Path:
    """Build a folder with ``write(tmpdir)`` beside ``dst``, then rename it onto ``dst`` (which must
    not exist or be empty). On failure the temp folder is removed."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise InputError(f"{dst}: exists and is not an empty folder; choose a new output folder")
    folder = dst.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{dst}: folder {folder} does not exist")
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{dst.name}."))
    try:
        write(tmp)
        for child in tmp.iterdir():
            _fsync_path(child)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def backup(path: Path) -> Path:
    """Copy ``path`` to ``path.bak`` (refusing to overwrite an existing backup)."""
    bak = path.with_name(path.name + ".bak")
    if bak.exists():
        raise InputError(f"{bak}: a backup already exists; move it away before --in-place")
    atomic_write(bak, lambda tmp: shutil.copyfile(path, tmp))
    return bak
