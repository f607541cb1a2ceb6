"""The values of a tensor stored in a file, as cache-sized blocks for :func:`initdoctor.stats.scan_file`.

Where the kernel can say so (Linux ≥ 5.14: ``madvise(MADV_POPULATE_READ)``), the file is mapped a
:data:`WINDOW` at a time and each block's pages are populated before it is read: the blocks are
views of the page cache, with no copy into a buffer. That copy (``readinto`` of 512 KiB) cost as
much as the block's float64 sum and Σx² together (63 µs of the 146 µs per block of 128K float32
values, ``benchmarks/README.md``). Populating first keeps a file that shrinks under the scan an
error (``EFAULT``), not a ``SIGBUS`` that kills the process. Elsewhere (another OS, an older
kernel, a file that cannot be mapped) the values are read with positioned reads into a buffer of
one block. Either way memory stays at one window (or block) per thread, whatever the tensor's size.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError

BLOCK = 1 << 17  # 128K elements: 512 KiB of float32 and two 1 MiB float64 buffers stay in a 2 MiB L2
WINDOW = 1 << 25  # bytes mapped at once (32 MiB): resident mapped pages stay at a window per thread
MADV_POPULATE_READ = 22  # linux/mman.h; Python only names it from 3.13 on
_can_populate = sys.platform.startswith("linux") and hasattr(mmap.mmap, "madvise")


def _short(path: str | Path, offset: int, count: int) -> InputError:
    return InputError(f"{path}: file ends inside a tensor (offset {offset}, {count} values)")


def file_blocks(
    path: str | Path, offset: int, count: int, stored: np.dtype, lo: int, hi: int
) -> Iterator[np.ndarray]:
    """Values ``[lo, hi)`` of the ``count`` values of dtype ``stored`` at byte ``offset`` of
    ``path``, in blocks of at most :data:`BLOCK` values (read-only; a block is valid until the
    next one is asked for). Raises ``InputError`` if the file ends early."""
    global _can_populate
    size = stored.itemsize
    with open(path, "rb", buffering=0) as fh:
        if os.fstat(fh.fileno()).st_size < offset + count * size:
            raise _short(path, offset, count)
        step = max(BLOCK, WINDOW // size // BLOCK * BLOCK)
        for start in range(lo, hi, step):
            end = min(hi, start + step)
            if _can_populate:
                try:
                    yield from _mapped(fh, offset, stored, start, end)
                    continue
                except _Unsupported:
                    _can_populate = False
                except OSError as exc:
                    if exc.errno == errno.EFAULT:  # pages past the end: the file shrank
                        raise _short(path, offset, count) from None
                    raise
            yield from _read(fh, path, offset, count, stored, start, end)


class _Unsupported(Exception):
    """This kernel or file cannot be mapped and populated: read it instead."""


def _mapped(fh: io.FileIO, offset: int, stored: np.dtype, start: int, end: int) -> Iterator[np.ndarray]:
    size = stored.itemsize
    first = offset + start * size
    base = first - first % mmap.ALLOCATIONGRANULARITY
    try:
        mm = mmap.mmap(fh.fileno(), offset + end * size - base, prot=mmap.PROT_READ, offset=base)
    except (OSError, ValueError):
        raise _Unsupported() from None
    values = np.frombuffer(mm, stored, end - start, first - base)
    page = mmap.PAGESIZE
    for s in range(0, end - start, BLOCK):
        e = min(end - start, s + BLOCK)
        lo_byte = first - base + s * size
        aligned = lo_byte - lo_byte % page
        try:
            mm.madvise(MADV_POPULATE_READ, aligned, first - base + e * size - aligned)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and s == 0:
                raise _Unsupported() from None
            raise
        yield values[s:e]
    # no close: the last block may still be referenced; the map goes when its views do


def _read(
    fh: io.FileIO, path: str | Path, offset: int, count: int, stored: np.dtype, start: int, end: int
) -> Iterator[np.ndarray]:
    raw = np.empty(min(end - start, BLOCK), stored)
    size = stored.itemsize
    for lo in range(start, end, BLOCK):
        n = min(end, lo + BLOCK) - lo
        view = raw[:n].data.cast("B")
        fh.seek(offset + lo * size)
        got = 0
        while got < len(view):
            step = fh.readinto(view[got:])
            if not step:
                raise _short(path, offset, count)
            got += step
        yield raw[:n]
