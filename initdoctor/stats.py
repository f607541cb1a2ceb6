"""Weight statistics, computed in one streaming pass with float64 accumulation.

Arrays are reduced in cache-sized blocks (:data:`BLOCK` elements): each block's mean and sum of
squared deviations are computed in float64 and merged with Chan et al.'s parallel formula, so the
result does not suffer the cancellation of ``E[x²] − E[x]²`` and memory stays at two blocks per
thread; large arrays are split across threads (:func:`scan`). NaN and Inf values are counted and
left out of mean and std. The probe's activations use :func:`fast_moments` (``CHUNK`` elements).

A scan started inside :func:`scan_deadline` checks the deadline between blocks, in every thread it
runs on, and stops with :class:`DeadlineExceeded` once it has passed (``--timeout``: the worker
threads must not keep reading a large tensor after the main thread has given up).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK = 1 << 22  # 4M elements: 32 MB of float64 per chunk


@dataclass(frozen=True)
class WeightStats:
    """Summary of one tensor: ``std`` is the population std (ddof=0) of its finite values."""

    numel: int
    dtype: str
    mean: float
    std: float
    nan_count: int = 0
    inf_count: int = 0
    max_abs: float = math.nan  # the largest finite |value| (NaN where the reader has no scan)

    @property
    def finite_count(self) -> int:
        return self.numel - self.nan_count - self.inf_count

    @property
    def all_zero(self) -> bool:
        """Every finite value is zero (true when there is none): mean = std = 0, i.e. Σx² = 0."""
        return self.finite_count == 0 or (self.mean == 0.0 and self.std == 0.0)


def is_float_dtype(dtype: str) -> bool:
    """True for the floating dtypes initdoctor judges (float16/32/64, bfloat16). float8 weights
    are quantized (stored with scales beside them): not judged, like integer ones."""
    if "float8" in dtype or dtype.startswith("F8"):
        return False
    return any(tag in dtype for tag in ("float", "bfloat", "half", "double"))


@dataclass
class Moments:
    """Running count / mean / sum of squared deviations (float64), merged with Chan et al.'s formula."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def merge(self, count: int, mean: float, m2: float) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def merge_moments(self, other: Moments) -> None:
        self.merge(other.count, other.mean, other.m2)

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def second_moment(self) -> float:
        """E[x²] = Var[x] + E[x]²."""
        return self.var + self.mean**2 if self.count else math.nan


@dataclass
class Scan:
    """One pass over an array: moments of the finite values and counts of the rest."""

    moments: Moments
    nan: int = 0
    inf: int = 0
    max_abs: float = 0.0

    def merge(self, other: Scan) -> None:
        self.moments.merge_moments(other.moments)
        self.nan += other.nan
        self.inf += other.inf
        self.max_abs = max(self.max_abs, other.max_abs)


class DeadlineExceeded(BaseException):  # not an Exception: passes through the loaders' error handling
    """A scan passed the deadline of :func:`scan_deadline`."""


_deadline = threading.local()


@contextmanager
def scan_deadline(when: float | None) -> Iterator[None]:
    """Scans started by this thread inside the block raise :class:`DeadlineExceeded` between two
    blocks once ``time.monotonic()`` is past ``when`` (None: no deadline), in whichever thread
    they run; the previous deadline is put back on exit."""
    previous = getattr(_deadline, "when", None)
    _deadline.when = when
    try:
        yield
    finally:
        _deadline.when = previous


def current_deadline() -> float | None:
    """This thread's :func:`scan_deadline` (``time.monotonic()``), None when there is none: a scan
    handed to another thread takes it along (``with scan_deadline(current_deadline())``)."""
    return getattr(_deadline, "when", None)


BLOCK = 1 << 17  # 128K elements: 512 KiB of float32 and two 1 MiB float64 buffers stay in a 2 MiB L2
PARALLEL_MIN = 1 << 21  # from 2M elements (8 MiB of float32) the work is split across threads
_pool = None


def _forget_pool() -> None:
    """In a forked child the parent's worker threads do not exist: start a new pool if needed."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool)


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _in_parallel(count: int, reduce_range: Callable[[int, int, float | None], Scan]) -> Scan:
    """``reduce_range(lo, hi)`` over ``[0, count)`` cut into one block-aligned range per CPU (up
    to 8), run in threads (numpy releases the GIL inside its loops; file reads release it too),
    the partial results merged with Chan et al.'s formula. Each range gets this thread's
    :func:`scan_deadline`."""
    global _pool
    when = getattr(_deadline, "when", None)
    workers = _workers() if count >= PARALLEL_MIN else 1
    if workers == 1:
        return reduce_range(0, count, when)
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="initdoctor-scan")
    step = -(-count // workers // BLOCK) * BLOCK
    out = Scan(Moments())
    for part in _pool.map(lambda lo: reduce_range(lo, min(count, lo + step), when), range(0, count, step)):
        out.merge(part)
    return out


def scan(array: np.ndarray) -> Scan:
    """Reduce any array in one pass with float64 accumulation (:func:`_reduce_blocks`), split
    across threads for large arrays. Memory: two float64 buffers of :data:`BLOCK` elements per
    thread, whatever the array's size."""
    flat = np.asarray(array).reshape(-1)

    def blocks(lo: int, hi: int) -> Iterator[np.ndarray]:
        for start in range(lo, hi, BLOCK):
            yield flat[start : min(hi, start + BLOCK)]

    return _in_parallel(
        int(flat.size), lambda lo, hi, when: _reduce_blocks(blocks(lo, hi), min(hi - lo, BLOCK), when)
    )


def scan_file(
    path: str | Path, offset: int, count: int, dtype: np.dtype | str, *, bfloat16: bool = False
) -> Scan:
    """Reduce ``count`` values of ``dtype`` stored at byte ``offset`` of a file, block by block
    (:func:`~initdoctor.file_blocks.file_blocks`: views of a mapped window whose pages are
    populated first, or positioned reads into a small buffer) — no tensor-sized allocation:
    memory stays at a window per thread whatever the tensor's size. ``bfloat16=True``: the
    values are stored as ``<u2`` and widened to float32 exactly (``bits << 16``). Raises
    ``InputError`` if the file ends early."""
    from .file_blocks import file_blocks

    stored = np.dtype(dtype)

    def blocks(lo: int, hi: int) -> Iterator[np.ndarray]:
        if not bfloat16:
            yield from file_blocks(path, offset, count, stored, lo, hi)
            return
        wide = np.empty(min(hi - lo, BLOCK), np.uint32)
        for raw in file_blocks(path, offset, count, stored, lo, hi):
            n = raw.size
            np.left_shift(raw, 16, out=wide[:n], dtype=np.uint32)
            yield wide[:n].view(np.float32)

    return _in_parallel(count, lambda lo, hi, when: _reduce_blocks(blocks(lo, hi), min(hi - lo, BLOCK), when))


ROW = 8192  # OpenBLAS computes a dot product of ≤ 10000 elements on the calling thread alone


def _rows_dot(rows: np.ndarray) -> np.ndarray:
    if hasattr(np, "vecdot"):  # numpy ≥ 2.0
        return np.vecdot(rows, rows)
    return np.einsum("ij,ij->i", rows, rows)  # pragma: no cover - numpy 1.x


def sum_squares(x: np.ndarray) -> float:
    """Σx² of a contiguous float64 vector in one read-only pass (squares and sum fused in BLAS dot
    products), as dot products of :data:`ROW` elements: a longer dot starts OpenBLAS's own threads,
    which fight the scan's (two scan threads each calling ``np.dot`` on 128K elements took 20–40×
    longer on 2 CPUs). Against squaring into a buffer and summing it (two passes, one of them a
    write) this saves a third of a block's time; the result agrees to ~1e-15 relative (both sum
    positive float64 terms, in a different order)."""
    full = x.size - x.size % ROW
    total = float(np.add.reduce(_rows_dot(x[:full].reshape(-1, ROW)))) if full else 0.0
    if full < x.size:
        rest = x[full:]
        total += float(np.dot(rest, rest))
    return total


def _reduce_blocks(blocks: Iterable[np.ndarray], largest: int, deadline: float | None = None) -> Scan:
    """Reduce 1-d blocks of at most ``largest`` (≤ :data:`BLOCK`, cache-sized) elements; past
    ``deadline`` (``time.monotonic()``), raise :class:`DeadlineExceeded` before the next block.

    Per block: copied once into a float64 buffer; its sum (pairwise) and its sum of squares
    (:func:`sum_squares`: one read-only pass) — both float64; max|x| from the stored block's max
    and min (two passes over the narrow values, exact for any dtype); when ``r = n·mean²/Σx² ≤ 10⁻³``
    (zero-mean weights) ``m2 = Σx² − n·mean²``, whose relative error is that of Σx² times
    ``(1 + r)/(1 − r) ≤ 1.002`` (no digit lost), otherwise the buffer is centred
    and its squares summed again (two-pass variance, still in cache). A block whose sums are not
    finite takes the slow path that drops and counts NaN/Inf.
    """
    out = Scan(Moments())
    wide_buf = np.empty(largest, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a signalling NaN in a cast, a huge float64
        for chunk in blocks:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded()
            n = int(chunk.size)
            if n == 0:
                continue
            wide = wide_buf[:n]
            np.copyto(wide, chunk, casting="unsafe")
            total = float(np.add.reduce(wide))
            squares = sum_squares(wide)
            if math.isfinite(total) and math.isfinite(squares):
                # max|x| from the stored block's max and min: two passes over the narrow values
                # (half the bytes of the float64 squares for float32 data) and exact for any dtype
                hi, lo = float(np.maximum.reduce(chunk)), float(np.minimum.reduce(chunk))
                out.max_abs = max(out.max_abs, hi, -lo)
                mean = total / n
                if n * mean * mean <= 1e-3 * squares:
                    # mean small next to the spread (zero-mean weights): Σx² − n·mean² loses no
                    # digit, and the centring pass is saved. A bound of 10⁻⁶ (before 0.11) sent
                    # most blocks of zero-mean weights to the centring pass: their n·mean²/Σx²
                    # is ~1/n = 7.6·10⁻⁶ for a block of 128K values
                    m2 = squares - n * mean * mean
                else:
                    np.subtract(wide, mean, out=wide)
                    m2 = sum_squares(wide)
                out.moments.merge(n, mean, m2)
                continue
            _scan_slow(wide, out)
    return out


def _scan_slow(chunk: np.ndarray, out: Scan) -> None:
    """A float64 block with NaN/Inf: count them, reduce the finite values."""
    out.nan += int(np.isnan(chunk).sum())
    out.inf += int(np.isinf(chunk).sum())
    chunk = chunk[np.isfinite(chunk)]
    n = int(chunk.size)
    if n:
        c_mean = float(chunk.mean())
        out.moments.merge(n, c_mean, float(np.square(chunk - c_mean).sum()))
        out.max_abs = max(out.max_abs, float(np.abs(chunk).max()))


def summary(s: Scan, numel: int, dtype: str) -> WeightStats:
    m = s.moments
    if not m.count:
        return WeightStats(numel, dtype, math.nan, math.nan, s.nan, s.inf)
    return WeightStats(numel, dtype, m.mean, math.sqrt(m.var), s.nan, s.inf, s.max_abs)


def array_stats(array: np.ndarray, dtype: str | None = None) -> WeightStats:
    """Statistics of a numpy array (any shape); ``dtype`` overrides the reported dtype name."""
    flat = np.asarray(array).reshape(-1)
    return summary(scan(flat), int(flat.size), dtype or str(flat.dtype))


def file_stats(
    path: str | Path, offset: int, count: int, dtype: np.dtype | str, name: str, *, bfloat16: bool = False
) -> WeightStats:
    """Statistics of a tensor stored in a file (:func:`scan_file`); ``name`` is the reported dtype."""
    return summary(scan_file(path, offset, count, dtype, bfloat16=bfloat16), count, name)


def fast_moments(array: np.ndarray) -> tuple[Moments, int]:
    """Moments of an activation tensor and its count of NaN/Inf values, in as few passes as
    possible (the probe's hot path): per chunk, the sum in float64 (``np.add.reduce`` casts in
    buffers, no copy) and the sum of squares by BLAS ``dot``; ``m2 = Σx² − n·mean²``, recomputed
    two-pass in float64 when ``mean² > 10⁴·var`` would make that subtraction lose digits. A chunk
    holding NaN/Inf falls back to :func:`scan`, which drops them.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    out = Moments()
    bad = 0
    for start in range(0, int(flat.size), CHUNK):
        chunk = flat[start : start + CHUNK]
        n = int(chunk.size)
        total = float(np.add.reduce(chunk, dtype=np.float64))
        squares = float(np.dot(chunk, chunk))
        if not (math.isfinite(total) and math.isfinite(squares)):
            s = scan(chunk)
            out.merge_moments(s.moments)
            bad += s.nan + s.inf
            continue
        mean = total / n
        m2 = squares - n * mean * mean
        if m2 <= 0 or mean * mean > 1e4 * (m2 / n):
            c64 = chunk.astype(np.float64)
            m2 = float(np.square(c64 - mean).sum())
        out.merge(n, mean, m2)
    return out, bad
