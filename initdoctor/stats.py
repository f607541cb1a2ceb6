"""Weight statistics, computed in one streaming pass with float64 accumulation.

Large tensors are reduced in chunks (``CHUNK`` elements at a time): each chunk's mean and sum of
squared deviations are computed in float64 and merged with Chan et al.'s parallel formula, so the
result does not suffer the cancellation of ``E[x²] − E[x]²`` and memory stays at one chunk.
NaN and Inf values are counted and left out of mean and std.
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
    zero_count: int = 0

    @property
    def finite_count(self) -> int:
        return self.numel - self.nan_count - self.inf_count


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
    zeros: int = 0
    min: float = math.inf
    max: float = -math.inf


def scan(array: np.ndarray) -> Scan:
    """Reduce any array in chunks of :data:`CHUNK` elements with float64 accumulation.

    Per chunk: the float64 sum (``np.add.reduce`` casts in buffers, no copy); when it is finite the
    chunk holds no NaN/Inf, so it is copied to float64 once and dotted with itself; when
    ``n·mean² ≤ 10⁻⁶·Σx²`` (zero-mean weights) ``m2 = Σx² − n·mean²`` loses no digits, otherwise
    the copy is centred in place and dotted again (two-pass variance). Min, max and zeros are read
    from the original dtype. A chunk
    whose sum is not finite takes the slow path that drops and counts NaN/Inf.
    """
    flat = np.asarray(array).reshape(-1)
    out = Scan(Moments())
    for start in range(0, int(flat.size), CHUNK):
        chunk = flat[start : start + CHUNK]
        if chunk.dtype.kind not in "f":
            chunk = chunk.astype(np.float64)
        n = int(chunk.size)
        total = float(np.add.reduce(chunk, dtype=np.float64))
        if math.isfinite(total):
            mean = total / n
            wide = chunk.astype(np.float64)
            squares = float(np.dot(wide, wide))
            if n * mean * mean <= 1e-6 * squares:
                # mean negligible next to the spread (zero-mean weights): Σx² − n·mean² loses
                # no digits, and the centring pass is saved
                m2 = squares - n * mean * mean
            else:
                wide -= mean
                m2 = float(np.dot(wide, wide))
            if math.isfinite(m2):
                out.moments.merge(n, mean, m2)
                out.zeros += n - int(np.count_nonzero(chunk))
                out.min = min(out.min, float(chunk.min()))
                out.max = max(out.max, float(chunk.max()))
                continue
        _scan_slow(chunk.astype(np.float64, copy=False), out)
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
    out.zeros += int(n - np.count_nonzero(chunk))
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
        return WeightStats(int(flat.size), dtype or str(flat.dtype), math.nan, math.nan, math.nan, math.nan, s.nan, s.inf, 0)
    return WeightStats(
        int(flat.size), dtype or str(flat.dtype), m.mean, math.sqrt(m.var), s.min, s.max, s.nan, s.inf, s.zeros
    )


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
