"""Writing an ONNX graph and its external data file as one commit.

Two files cannot be renamed into place at once, so the pair is committed through the graph:

1. the new data file gets a name the graph now at OUT does not point to — ``<OUT>.data``, or
   ``<OUT>.initdoctor.data`` when the current graph uses ``<OUT>.data`` (an ``--in-place`` fix of
   an exporter's model, a second fix into the same OUT) — and is written beside OUT through a
   temp file, synced and renamed (nothing committed reads that name, so this changes no model);
2. the new graph, pointing at it, is written to a temp file, read back with the same checks as
   any input (shapes, every external tensor inside the folder and as long as its shape needs) and
   only then renamed onto OUT: **the single commit point**;
3. after it, the data files the replaced graph used that carry one of those two names are
   removed (and a ``<OUT>.initdoctor.data`` no graph points to: left by a run killed between 1
   and 2), never a file of this run's input unless OUT is the input itself (``--in-place``, whose
   ``.bak`` copies were made first).

Invariant: at every instant the graph at OUT points only to complete data files that have not
changed since that graph was committed. A kill before step 2's rename leaves the old model (and
at most one stray data file of ours, replaced or removed by the next run); after it, the new one.

A ``.<OUT>.stage`` folder left by initdoctor 0.7.0 (which staged the pair there) is removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_write, check_output, fsync_dir
from .onnx_data import all_tensors, check_tensors, data_locations, is_external

#: Suffix of the alternate data file name, and of any we would need beyond it.
OURS = ".initdoctor.data"


def _referenced(dst: Path) -> dict[str, None]:
    """The data file names the graph now at ``dst`` points to (none if it is not an ONNX graph)."""
    from .onnx_lean import load_lean

    if not dst.is_file():
        return {}
    try:
        return data_locations(load_lean(dst))
    except Exception:  # noqa: BLE001 - whatever OUT holds now, it is replaced as a whole
        return {}


def _data_name(dst: Path, taken: dict[str, None]) -> str:
    """``<OUT>.data``, else ``<OUT>.initdoctor.data``, else ``<OUT>.<n>.initdoctor.data``: the first
    name the graph now at OUT does not point to."""
    names = [f"{dst.name}.data", f"{dst.name}{OURS}"]
    names += [f"{dst.name}.{n}{OURS}" for n in range(2, len(taken) + 2)]
    return next(name for name in names if name not in taken)


def _ours(dst: Path, name: str) -> bool:
    """A data file name this module gives (and so may remove once no graph points to it)."""
    if Path(name).name != name:  # a path, not a name in OUT's folder
        return False
    return name == f"{dst.name}.data" or (name.startswith(f"{dst.name}.") and name.endswith(OURS))


def _self_check(dst: Path, tmp: Path) -> None:
    """The written graph, read back: it must pass the checks any input passes."""
    from .onnx_lean import load_lean

    try:
        check_tensors(load_lean(tmp), tmp)
    except InputError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise InputError(
            f"{dst}: the fixed model failed its own check ({detail}); nothing was written"
        ) from None


def save_onnx(
    dst: Path, model: Any, write_data: Callable[[Any, str], None] | None, sources: list[Path]
) -> Path:
    """Commit ``model`` to ``dst`` (see the module). ``write_data(fh, name)`` writes the external
    data into the open file ``fh`` and points the model's tensors at ``name``; ``None`` for a
    self-contained graph. ``sources``: the files of the model being fixed (never replaced nor
    removed, unless ``dst`` is one of them)."""
    dst = Path(dst)
    check_output(dst, [] if _is_input(dst, sources) else sources)
    folder = dst.parent
    stage = folder / f".{dst.name}.stage"
    if stage.is_dir() and not stage.is_symlink():
        shutil.rmtree(stage, ignore_errors=True)
    old = _referenced(dst)
    data: Path | None = None
    if write_data is not None:
        name = _data_name(dst, old)
        data = folder / name
        check_output(data, sources)

        def fill(tmp: Path) -> None:
            with open(tmp, "wb", buffering=0) as fh:
                write_data(fh, name)

        atomic_write(data, fill)
        fsync_dir(folder)

    def graph(tmp: Path) -> None:
        tmp.write_bytes(model.SerializeToString())
        _self_check(dst, tmp)

    try:
        atomic_write(dst, graph, suffix=".onnx")
    except BaseException:
        if data is not None:
            data.unlink(missing_ok=True)  # not referenced by any committed graph
        raise
    fsync_dir(folder)
    keep = {p.resolve() for p in sources} if not _is_input(dst, sources) else set()
    for used in [*old, f"{dst.name}{OURS}"]:
        stale = folder / used
        if (
            _ours(dst, used)
            and stale != data
            and stale.is_file()
            and not stale.is_symlink()
            and stale.resolve() not in keep
        ):
            stale.unlink(missing_ok=True)
    return dst


def _is_input(dst: Path, sources: list[Path]) -> bool:
    for source in sources:
        try:
            if os.path.samefile(dst, source):
                return True
        except OSError:
            continue
    return False


def externalize(model: Any, fh: Any, name: str, min_bytes: int = 1024) -> None:
    """Move every tensor's ``raw_data`` of at least ``min_bytes`` into ``fh`` (the data file
    ``name``), as ``onnx.save_model(save_as_external_data=True)`` would, for a model held in
    memory."""
    from .streaming import write_all

    for tensor in all_tensors(model.graph):
        if is_external(tensor) or len(tensor.raw_data) < min_bytes:
            continue
        point_at(tensor, name, fh.tell(), len(tensor.raw_data))
        write_all(fh, tensor.raw_data)
        tensor.ClearField("raw_data")


def point_at(tensor: Any, name: str, offset: int, length: int) -> None:
    """Make ``tensor`` external data at ``offset`` in the file ``name``."""
    del tensor.external_data[:]
    tensor.data_location = 1  # onnx.TensorProto.EXTERNAL
    for key, value in (("location", name), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
