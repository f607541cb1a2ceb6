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


def array_stats(array: np.ndarray, dtype: str | None = None) -> WeightStats:
    """Statistics of a numpy array (any shape); ``dtype`` overrides the reported dtype name."""
    flat = np.asarray(array).reshape(-1)
    name = dtype or str(flat.dtype)
    n_total = int(flat.size)
    count = 0
    mean = 0.0
    m2 = 0.0
    lo, hi = math.inf, -math.inf
    nans = infs = zeros = 0
    for start in range(0, n_total, CHUNK):
        chunk = flat[start : start + CHUNK].astype(np.float64, copy=False)
        finite = np.isfinite(chunk)
        if not finite.all():
            nans += int(np.isnan(chunk).sum())
            infs += int(np.isinf(chunk).sum())
            chunk = chunk[finite]
        n = int(chunk.size)
        if n == 0:
            continue
        zeros += int(n - np.count_nonzero(chunk))
        c_mean = float(chunk.mean())
        c_m2 = float(np.square(chunk - c_mean).sum())
        lo = min(lo, float(chunk.min()))
        hi = max(hi, float(chunk.max()))
        # Chan et al. (1979): merge (count, mean, m2) of two partitions.
        delta = c_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += c_m2 + delta * delta * count * n / total
        count = total
    std = math.sqrt(m2 / count) if count else math.nan
    if not count:
        mean = math.nan
        lo = hi = math.nan
    return WeightStats(n_total, name, mean, std, lo, hi, nans, infs, zeros)
