"""Weight statistics, computed in one streaming pass with float64 accumulation.

Arrays are reduced in cache-sized blocks (:data:`BLOCK` elements): each block's mean and sum of
squared deviations are computed in float64 and merged with Chan et al.'s parallel formula, so the
result does not suffer the cancellation of ``E[x²] − E[x]²`` and memory stays at two blocks per
thread; large arrays are split across threads (:func:`scan`). NaN and Inf values are counted and
left out of mean and std. The probe's activations use :func:`fast_moments` (``CHUNK`` elements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHUNK = 1 << 22  # 4M elements: 32 MB of float64 per chunk


@dataclass(frozen=True)
class WeightStats:
    """Summary of one tensor: ``std`` is the population std (ddof=0) of its finite values."""

    numel: int
    dtype: str
    mean: float
    std: float
    min: float
    max: float
    nan_count: int = 0
    inf_count: int = 0

    @property
    def finite_count(self) -> int:
        return self.numel - self.nan_count - self.inf_count

    @property
    def all_zero(self) -> bool:
        """Every finite value is zero (true when there is none): min = max = 0."""
        return self.finite_count == 0 or (self.min == 0.0 and self.max == 0.0)


def is_float_dtype(dtype: str) -> bool:
    """True for the floating dtypes initdoctor judges (float16/32/64, bfloat16)."""
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

    def merge_moments(self, other: "Moments") -> None:
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
    """One pass over an array: moments of the finite values, counts of the rest, min and max."""

    moments: Moments
    nan: int = 0
    inf: int = 0
    min: float = math.inf
    max: float = -math.inf

    def merge(self, other: "Scan") -> None:
        self.moments.merge_moments(other.moments)
        self.nan += other.nan
        self.inf += other.inf
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)


BLOCK = 1 << 17  # 128K elements: 512 KiB of float32 and two 1 MiB float64 buffers stay in a 2 MiB L2
PARALLEL_MIN = 1 << 21  # arrays from 2M elements (8 MiB of float32) are split across threads
_pool = None


def _workers() -> int:
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def scan(array: np.ndarray) -> Scan:
    """Reduce any array in one pass with float64 accumulation, in parallel for large arrays.

    The array is cut into one contiguous range per CPU (up to 8), each reduced by
    :func:`_scan_range` in a thread (numpy releases the GIL inside its loops), and the partial
    results merged with Chan et al.'s formula. Memory: two float64 buffers of :data:`BLOCK`
    elements per thread, whatever the array's size.
    """
    global _pool
    flat = np.asarray(array).reshape(-1)
    workers = _workers() if flat.size >= PARALLEL_MIN else 1
    if workers == 1:
        return _scan_range(flat)
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="initdoctor-scan")
    step = -(-int(flat.size) // workers // BLOCK) * BLOCK
    out = Scan(Moments())
    for part in _pool.map(_scan_range, [flat[i : i + step] for i in range(0, int(flat.size), step)]):
        out.merge(part)
    return out


def _scan_range(flat: np.ndarray) -> Scan:
    """Reduce a 1-d array block by block (:data:`BLOCK` elements, cache-sized).

    Per block: copied once into a float64 buffer; its sum and its sum of squares (squared into a
    second buffer, pairwise-summed) — both float64, no BLAS (whose own threads would fight the
    scan's); when ``n·mean² ≤ 10⁻⁶·Σx²`` (zero-mean weights) ``m2 = Σx² − n·mean²`` loses no
    digits, otherwise the buffer is centred and squared again (two-pass variance, still in
    cache). Min and max are read from the original dtype. A block whose sums are not finite
    takes the slow path that drops and counts NaN/Inf.
    """
    out = Scan(Moments())
    size = int(flat.size)
    wide_buf = np.empty(min(size, BLOCK), np.float64)
    sq_buf = np.empty_like(wide_buf)
    for start in range(0, size, BLOCK):
        chunk = flat[start : start + BLOCK]
        n = int(chunk.size)
        wide, sq = wide_buf[:n], sq_buf[:n]
        np.copyto(wide, chunk, casting="unsafe")
        total = float(np.add.reduce(wide))
        squares = float(np.add.reduce(np.multiply(wide, wide, out=sq)))
        if math.isfinite(total) and math.isfinite(squares):
            mean = total / n
            if n * mean * mean <= 1e-6 * squares:
                # mean negligible next to the spread (zero-mean weights): Σx² − n·mean² loses
                # no digits, and the centring pass is saved
                m2 = squares - n * mean * mean
            else:
                np.subtract(wide, mean, out=wide)
                m2 = float(np.add.reduce(np.multiply(wide, wide, out=sq)))
            out.moments.merge(n, mean, m2)
            low, high = np.minimum.reduce(chunk), np.maximum.reduce(chunk)
            out.min = min(out.min, float(low))
            out.max = max(out.max, float(high))
            continue
        _scan_slow(chunk.astype(np.float64), out)
    return out


def _scan_slow(chunk: np.ndarray, out: Scan) -> None:
    """A chunk with NaN/Inf: count them, reduce the finite values."""
    finite = np.isfinite(chunk)
    out.nan += int(np.isnan(chunk).sum())
    out.inf += int(np.isinf(chunk).sum())
    chunk = chunk[finite]
    n = int(chunk.size)
    if n == 0:
        return
    c_mean = float(chunk.mean())
    out.moments.merge(n, c_mean, float(np.square(chunk - c_mean).sum()))
    out.min = min(out.min, float(chunk.min()))
    out.max = max(out.max, float(chunk.max()))


def array_stats(array: np.ndarray, dtype: str | None = None) -> WeightStats:
    """Statistics of a numpy array (any shape); ``dtype`` overrides the reported dtype name."""
    flat = np.asarray(array).reshape(-1)
    s = scan(flat)
    m = s.moments
    if not m.count:
        return WeightStats(int(flat.size), dtype or str(flat.dtype), math.nan, math.nan, math.nan, math.nan, s.nan, s.inf)
    return WeightStats(int(flat.size), dtype or str(flat.dtype), m.mean, math.sqrt(m.var), s.min, s.max, s.nan, s.inf)


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
