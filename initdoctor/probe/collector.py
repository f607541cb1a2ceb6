"""Running statistics of a layer's input and output, shared by every backend (numpy only) so the
definitions cannot drift apart; see :mod:`initdoctor.probe` for what is measured."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..stats import Moments, fast_moments, scan
from .types import ActivationStats, LogitStats, Progress


class Ticker:
    """Counts measured layer calls against an expected total and reports them to ``progress``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.progress = progress

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


class Collector:
    """Running statistics of one layer's input and output over every call and run (numpy only,
    shared by both backends so the definitions cannot drift apart)."""

    def __init__(self, name: str, kind: str, relu: bool, ticker: Ticker | None = None) -> None:
        self.name = name
        self.kind = kind
        self.ticker = ticker
        self.unit_axis = 1 if kind.startswith("conv") else -1
        self.relu = relu
        self.x = Moments()
        self.y = Moments()
        self.nan = 0
        self.inf = 0
        self.input_bad = 0
        self.calls = 0
        self.unit_max: Any = None
        self.grad_y = Moments()
        self.grad_x = Moments()
        self.spatial: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def forward(self, x: np.ndarray | None, y: np.ndarray | None) -> None:
        """One call: ``x`` the layer's input (None when not a float tensor), ``y`` its output."""
        x_moments, x_bad = fast_moments(x) if x is not None and x.size and x.dtype.kind == "f" else (None, 0)
        if y is None or not y.size or y.dtype.kind != "f":
            self.add(x_moments, x_bad, None)
            return
        if self.kind.startswith("conv") and x is not None and x.ndim == y.ndim > 2:
            self.spatial = (tuple(int(d) for d in x.shape[2:]), tuple(int(d) for d in y.shape[2:]))
        y_moments, bad = fast_moments(y)
        nan = inf = 0
        if bad:
            s = scan(y)
            nan, inf = s.nan, s.inf
        peak = None
        if self.relu and y.ndim >= 2:
            axis = self.unit_axis % y.ndim
            peak = np.max(y, axis=tuple(d for d in range(y.ndim) if d != axis))
        self.add(x_moments, x_bad, y_moments, nan, inf, peak)

    def add(
        self,
        x: Moments | None,
        x_bad: int,
        y: Moments | None,
        nan: int = 0,
        inf: int = 0,
        unit_max: Any = None,
    ) -> None:
        """One call, already reduced: input and output moments, NaN/Inf counts, per-unit max."""
        self.calls += 1
        if self.ticker is not None:
            self.ticker.tick()
        if x is not None:
            self.x.merge_moments(x)
        self.input_bad += x_bad
        if y is not None:
            self.y.merge_moments(y)
        self.nan += nan
        self.inf += inf
        if unit_max is not None:
            self.unit_max = unit_max if self.unit_max is None else self.maximum(self.unit_max, unit_max)

    def maximum(self, a: Any, b: Any) -> Any:
        """The elementwise maximum of two per-unit maxima (numpy here; the torch collector keeps
        them on the device)."""
        return np.maximum(a, b)

    def dead_fraction(self) -> float | None:
        """The fraction of units whose maximum over the batch is ≤ 0 (None: not a ReLU layer)."""
        return float((self.unit_max <= 0).mean()) if self.unit_max is not None else None

    def grad_output(self, g: np.ndarray) -> None:
        self.grad_y.merge_moments(fast_moments(g)[0])

    def grad_input(self, g: np.ndarray) -> None:
        self.grad_x.merge_moments(fast_moments(g)[0])

    def result(self) -> ActivationStats:
        dead = self.dead_fraction()
        return ActivationStats(
            name=self.name,
            input_second_moment=self.x.second_moment,
            activation_var=self.y.var,
            activation_mean=self.y.mean if self.y.count else math.nan,
            dead_fraction=dead,
            nan_count=self.nan,
            inf_count=self.inf,
            input_nonfinite=self.input_bad,
            calls=self.calls,
            grad_var=self.grad_y.var if self.grad_y.count else None,
            input_grad_second_moment=self.grad_x.second_moment if self.grad_x.count else None,
            output_grad_second_moment=self.grad_y.second_moment if self.grad_y.count else None,
            input_spatial=self.spatial[0] if self.spatial else None,
            output_spatial=self.spatial[1] if self.spatial else None,
        )


def logit_stats(z: np.ndarray, source: str) -> LogitStats | None:
    """:class:`LogitStats` of ``z`` (classes on the last axis), None when it is not a finite float
    tensor of at least two classes."""
    if z.dtype.kind != "f" or z.ndim < 2 or z.shape[-1] < 2 or not z.size:
        return None
    flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
    if not np.isfinite(flat).all():
        return None
    peak = flat.max(axis=1, keepdims=True)
    lse = peak[:, 0] + np.log(np.exp(flat - peak).sum(axis=1))  # logsumexp_j z_j, stable
    mean = flat.mean(axis=1)
    return LogitStats(
        classes=int(flat.shape[1]),
        positions=int(flat.shape[0]),
        lse_minus_mean=float((lse - mean).mean()),
        logit_var=float(flat.var(axis=1).mean()),
        offset_var=float(flat.mean(axis=0).var()),
        source=source,
    )
