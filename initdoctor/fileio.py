"""Writing files so that nothing the user owns is damaged: temp file in the destination folder,
fsync, ``os.replace``. An interrupted write leaves the destination as it was and no temp file."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import InputError


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the renames done in ``folder`` durable (the order of two commits survives a power
    loss). A file system that cannot sync a folder is left as it is."""
    with contextlib.suppress(OSError):
        _fsync_path(Path(folder))


def _umask() -> int:
    """The process's umask: read from /proc (Linux ≥ 4.7) where it can be, so that no other thread
    ever sees a changed mask; else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(dst: Path) -> int:
    """The permissions a new output gets: those of the file it replaces (``--in-place`` keeps
    MODEL's), else what ``open()`` would give (0666 less the umask) — not mkstemp's 0600."""
    try:
        return stat.S_IMODE(os.stat(dst).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(dst: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` for a temp path beside ``dst``, fsync it, then ``os.replace`` it onto
    ``dst``. On any failure the temp file is removed and ``dst`` is untouched."""
    dst = Path(dst)
    check_output(dst)
    folder = dst.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{dst}: folder {folder} does not exist")
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{dst.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(dst))
        _fsync_path(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def stage_path(dst: Path) -> Path:
    """A hidden path beside ``dst`` (same suffix, so the format reads the same) where an output is
    written and checked before :func:`commit_staged` puts it in place."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.initdoctor-check{dst.suffix}")


def commit_staged(staged: Path, dst: Path) -> Path:
    """Put a checked output in place: the mode of the file it replaces (or a new file's), then
    ``os.replace`` and a folder sync."""
    os.chmod(staged, _mode_for(dst))
    os.replace(staged, dst)
    fsync_dir(Path(dst).resolve().parent)
    return Path(dst)


def atomic_write_text(dst: Path, text: str) -> Path:
    return atomic_write(dst, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_dir(dst: Path, write: Callable[[Path], object]) -> Path:
    """Build a folder with ``write(tmpdir)`` beside ``dst``, then rename it onto ``dst`` (which must
    not exist or be empty). On failure the temp folder is removed."""
    dst = Path(dst)
    check_output(dst, folder=True)
    folder = dst.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{dst}: folder {folder} does not exist")
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{dst.name}."))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        for child in tmp.iterdir():
            _fsync_path(child)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def backup_all(paths: Iterable[Path]) -> list[Path]:
    """Copy each of ``paths`` to ``<path>.bak`` — every file a model consists of (an ONNX graph and
    its external data, so that restoring the ``.bak`` files gives the original pair). Refuses
    before copying anything when one of the backups already exists."""
    pairs = [(Path(p), Path(p).with_name(Path(p).name + ".bak")) for p in paths]
    for _, bak in pairs:
        if bak.exists() or bak.is_symlink():
            raise InputError(f"{bak}: a backup already exists; move it away before --in-place")
    for path, bak in pairs:
        atomic_write(bak, functools.partial(shutil.copyfile, path))
    return [bak for _, bak in pairs]


def check_output(dst: Path, inputs: Iterable[Path] = (), *, folder: bool = False) -> None:
    """Refuse an output path that would destroy something the user did not ask to replace:

    * a symbolic link (refused, not followed: ``os.replace`` would cut the link, writing through
      it would change a file elsewhere) — give the real path;
    * an existing OUT that is not a regular file (a FIFO, a socket, a device node such as the null
      device: it would be replaced by a regular file); with ``folder``, one that is not an empty
      folder;
    * one of this run's ``inputs`` (the same file by inode, whatever the path's spelling).
    """
    dst = Path(dst)
    if dst.is_symlink():
        raise InputError(f"{dst}: is a symbolic link; give the path of a regular file as the output")
    if not dst.exists():
        return
    if folder:  # a folder output (sharded, Hugging Face): into a new or an empty folder only
        if not dst.is_dir() or any(dst.iterdir()):
            raise InputError(f"{dst}: exists and is not an empty folder; choose a new output folder")
    elif not dst.is_file():
        kind = "a directory" if dst.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise InputError(f"{dst}: exists and is {kind}; refusing to replace it with the output")
    for path in inputs:
        try:
            same = os.path.samefile(dst, path)
        except OSError:
            continue
        if same:
            raise InputError(f"{dst}: is an input of this run ({path}); write the output elsewhere")
