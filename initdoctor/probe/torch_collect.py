"""The torch probe's statistics, computed on the tensors' device (:mod:`initdoctor.formats.torch_moments`):
a layer's input and output moments, NaN/Inf counts, per-unit maxima (kept on the device until the
dead fraction is taken, one scalar) and gradients; only scalars cross to the host.

The statistics run with the probe's write guard popped (:func:`~.torch_state.unguarded`), and a
tensor met twice in one forward — a layer's output that is the next layer's input (conv → norm),
the input q, k and v projections share — is reduced once (:class:`Measured`)."""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from typing import Any

from ..formats.torch_moments import one_thread, reduce, unit_max
from ..stats import Moments
from .collector import Collector, Ticker
from .torch_state import unguarded
from .types import LogitStats

Reduced = tuple[Moments, int, int, float]


class Measured:
    """One probe's :func:`~initdoctor.formats.torch_moments.reduce` results of its last few tensors,
    by identity: the same tensor object (a weak reference, so a freed tensor whose ``id`` is reused
    is not mistaken for it) at the same version counter (not written in place since)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.entries: OrderedDict[int, tuple[Any, int, Reduced]] = OrderedDict()
        self.hits = 0

    def reduce(self, t: Any) -> Reduced:
        key = id(t)
        hit = self.entries.get(key)
        try:
            version = int(t._version)
        except RuntimeError:  # an inference-mode tensor keeps no version counter: not remembered
            return reduce(t)
        if hit is not None and hit[0]() is t and hit[1] == version:
            self.hits += 1
            return hit[2]
        result = reduce(t)
        self.entries[key] = (weakref.ref(t), version, result)
        self.entries.move_to_end(key)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return result


def _is_float(t: Any) -> bool:
    import torch

    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0


class TorchCollector(Collector):
    """A :class:`Collector` fed torch tensors, reduced where they are; ``measured``: the probe's
    shared :class:`Measured` (a fresh one when not given)."""

    def __init__(
        self, name: str, kind: str, relu: bool, ticker: Ticker | None = None, measured: Measured | None = None
    ) -> None:
        super().__init__(name, kind, relu, ticker)
        self.measured = measured if measured is not None else Measured()

    def observe(self, x: Any, y: Any) -> None:
        """One call: ``x`` the layer's input, ``y`` its output (anything: non-float is skipped).
        On the CPU on one intra-op thread throughout (set once here, not by each reduction)."""
        import torch

        cpu = isinstance(y, torch.Tensor) and y.device.type == "cpu"
        with unguarded(), one_thread() if cpu else contextlib.nullcontext():
            self._observe(x, y)

    def _observe(self, x: Any, y: Any) -> None:
        x_moments, x_bad = None, 0
        if _is_float(x):
            x_moments, nan, inf, _ = self.measured.reduce(x)
            x_bad = nan + inf
        if not _is_float(y):
            self.add(x_moments, x_bad, None)
            return
        if self.kind.startswith("conv") and _is_float(x) and x.dim() == y.dim() > 2:
            self.spatial = (tuple(int(d) for d in x.shape[2:]), tuple(int(d) for d in y.shape[2:]))
        y_moments, nan, inf, _ = self.measured.reduce(y)
        peak = unit_max(y, self.unit_axis) if self.relu and y.dim() >= 2 else None
        self.add(x_moments, x_bad, y_moments, nan, inf, peak)

    def maximum(self, a: Any, b: Any) -> Any:
        import torch

        return torch.maximum(a, b)

    def dead_fraction(self) -> float | None:
        if self.unit_max is None:
            return None
        return float((self.unit_max <= 0).sum()) / max(int(self.unit_max.numel()), 1)

    def grad_output_tensor(self, g: Any) -> None:
        """Tensor hook on the layer's output: its gradient's moments."""
        merge_into(self.grad_y, g)

    def grad_input_tensor(self, g: Any) -> None:
        """Tensor hook on the layer's input: its gradient's moments."""
        merge_into(self.grad_x, g)


def merge_into(target: Moments, t: Any, measured: Measured | None = None) -> None:
    """Add a tensor's moments (on its device) to ``target``; non-float tensors are skipped."""
    if _is_float(t):
        with unguarded():
            moments = measured.reduce(t)[0] if measured is not None else reduce(t)[0]
        target.merge_moments(moments)


#: rows of logits widened to the accumulator dtype at a time: 4M elements (32 MiB of float64), so
#: batch 8 × 512 × 32000 vocabulary (1 GiB as float64) is never copied whole
LOGIT_CHUNK = 1 << 22


def torch_logit_stats(z: Any, source: str, chunk: int = LOGIT_CHUNK) -> LogitStats | None:
    """:func:`~initdoctor.probe.collector.logit_stats` of a torch tensor, reduced on its device in
    the accumulator dtype (float64 on CPU and CUDA); only the five numbers come to the host.

    The rows (positions) go through in groups of at most ``chunk`` elements (at least one row):
    each group widened to the accumulator dtype, its per-row ``lse − mean`` and variance summed
    and its column sums added, all on the device in that dtype; the largest temporary is one
    group, not a float64 copy of every logit."""
    import torch

    from ..formats.torch_moments import accumulator

    if not z.is_floating_point() or z.dim() < 2 or z.shape[-1] < 2 or not z.numel():
        return None
    flat = z.detach().reshape(-1, z.shape[-1])
    positions, classes = int(flat.shape[0]), int(flat.shape[1])
    acc = accumulator(flat.device)
    step = max(1, chunk // classes)
    with one_thread() if z.device.type == "cpu" else contextlib.nullcontext():
        finite = torch.ones((), dtype=torch.bool, device=flat.device)
        sums = torch.zeros(2, dtype=acc, device=flat.device)  # Σ_rows (lse − mean), Σ_rows var
        columns = torch.zeros(classes, dtype=acc, device=flat.device)
        for start in range(0, positions, step):
            part = flat[start : start + step].to(acc)
            finite &= torch.isfinite(part).all()
            row_mean = part.mean(dim=1)
            sums[0] += (torch.logsumexp(part, dim=1) - row_mean).sum()
            sums[1] += part.var(dim=1, correction=0).sum()
            columns += part.sum(dim=0)
        values = torch.cat(
            [finite.to(acc).reshape(1), sums / positions, (columns / positions).var(correction=0).reshape(1)]
        ).tolist()
    if not values[0]:
        return None
    return LogitStats(
        classes=classes,
        positions=positions,
        lse_minus_mean=float(values[1]),
        logit_var=float(values[2]),
        offset_var=float(values[3]),
        source=source,
    )
