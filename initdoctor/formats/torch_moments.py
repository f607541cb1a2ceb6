"""Moments of torch tensors computed where the tensors are: on their device, with torch, only a few
scalars crossing to the host. One implementation for the static pass over an in-memory model
(weights, :func:`weight_stats`) and for the torch probe (activations and gradients,
:func:`reduce`, per-unit maxima :func:`unit_max`); numpy (:mod:`initdoctor.stats`) stays
for files read from disk and for ONNX.

Accumulation (:func:`accumulator`): float64 where the device has it (CUDA; CPU across blocks),
float32 elsewhere (MPS has no float64). Off the CPU the values are widened into the accumulator
dtype and reduced to ``Σx`` and ``Σx²``. On the CPU, widening to float64 costs more than the
reduction itself, so each block of an activation (weights keep float64) is summed by torch's
cascade float32 summation and its squares as squared float32 norms of short rows, in one read
without a temporary (~1e-7 relative, measured), and the block sums added in float64. The sums move to the
host once per tensor (one synchronisation). ``m2 = Σx² − n·mean²`` is kept while ``mean²`` is
small next to the variance (float64: ≤ 10⁴·var; CPU cascade: ≤ 10·var; float32: ≤ var); beyond
that a second pass sums ``(x − mean)²`` in the accumulator dtype (two-pass variance). On the
test zoo the ratios agree with the float64 numpy path (:func:`initdoctor.stats.scan`) to 1e-5
relative (tests/test_device_stats.py). A tensor holding NaN/Inf (its sums are not finite) is
reduced again over its finite values, which are counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..stats import Moments, Scan, WeightStats, summary

BLOCK = 1 << 20  # CPU: 1M elements per widened block (8 MiB of float64); few torch calls per tensor
ROW = 4096  # CPU activations: Σx² as the squared 2-norms of rows of this many elements (:func:`_squares`)
#: the float64 path's one-pass ``m2`` is kept while mean² ≤ this × var (float64: ~12 digits left)
ONE_PASS_LIMIT = {8: 1e4, 4: 1e0}
#: the CPU's float32 cascade sums (~1e-7 relative): one-pass ``m2`` kept while mean² ≤ 10·var
CPU_ONE_PASS_LIMIT = 10.0


def accumulator(device: Any) -> Any:
    """The accumulation dtype on ``device``: float64 on CPU and CUDA, float32 elsewhere (MPS)."""
    import torch

    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _sums(flat: Any, acc: Any, with_max: bool) -> list[float]:
    """``[Σx, Σx², (max|x|)]`` of a 1-d float tensor; one host transfer.

    Off the CPU, and for weights (``with_max``) on it: widened to ``acc`` (in blocks of
    :data:`BLOCK` on the CPU) and reduced there. Activations on the CPU (where a widening copy to
    float64 costs more than the reduction): per block of :data:`BLOCK` elements, widened to float32 (half
    types) into a reused buffer; ``Σx`` by torch's cascade (multi-level pairwise) float32
    summation, ``Σx²`` as squared row norms (:func:`_squares`) — relative error ~1e-7, measured
    against float64 — and the block sums added in float64 (:func:`_cpu_sums`)."""
    import torch

    if flat.device.type == "cpu" and flat.dtype != torch.float64 and not with_max:
        with one_thread():
            return _cpu_sums(flat, acc)
    if flat.device.type == "cpu" and flat.numel() > BLOCK:  # weights: float64 in blocks
        total = torch.zeros(2, dtype=acc)
        buf = torch.empty(BLOCK, dtype=acc)
        for start in range(0, flat.numel(), BLOCK):
            part = flat[start : start + BLOCK]
            wide = buf[: part.numel()]
            wide.copy_(part)
            total[0] += wide.sum()
            total[1] += torch.dot(wide, wide)
        parts = [total]
    else:
        wide = flat.to(acc)
        parts = [torch.stack([wide.sum(), torch.dot(wide, wide)])]
    if with_max:
        low, high = torch.aminmax(flat)
        parts.append(torch.stack([low.abs(), high.abs()]).max().to(acc).reshape(1))
    return [float(v) for v in torch.cat(parts).tolist()]


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block (put back after): a memory-bound
    reduction gains little from a second thread and, on a busy machine, loses a lot waiting for
    it at each op's barrier (measured: 0.38 ms on one thread vs 75 ms on two, 1M elements, load 9
    on 2 CPUs)."""
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _cpu_sums(flat: Any, acc: Any) -> list[float]:
    """The probe's CPU part of :func:`_sums` (float32/half activations), on one thread: per block
    of :data:`BLOCK` elements (half types widened to float32 into a reused buffer), ``Σx`` by torch's
    cascade float32 sum and ``Σx²`` by :func:`_squares`, the block sums added in float64."""
    import torch

    n = flat.numel()
    total = squares = 0.0
    buf = torch.empty(min(n, BLOCK), dtype=torch.float32) if flat.dtype != torch.float32 else None
    for start in range(0, n, BLOCK):
        part = flat[start : start + BLOCK]
        if buf is not None:
            buf[: part.numel()].copy_(part)
            part = buf[: part.numel()]
        total += float(part.sum())
        squares += _squares(part)
    return [total, squares]


def _squares(part: Any) -> float:
    """``Σx²`` of a contiguous 1-d float32 tensor in one read and no temporary: the 2-norm of each
    row of :data:`ROW` elements (float32, ~1e-9 relative: a row is short), squared and added in
    float64. Measured on a 512 × 2048 activation read cold: 0.59 ms for ``Σx`` and this against
    0.80 ms for ``Σx`` and a squared copy summed (benchmarks/README.md, issue 17)."""
    import torch

    rows = part.numel() // ROW
    squares = 0.0
    if rows:
        norms = torch.linalg.vector_norm(part[: rows * ROW].view(rows, ROW), dim=1).double()
        squares = float(torch.dot(norms, norms))
    if part.numel() > rows * ROW:
        squares += float(torch.linalg.vector_norm(part[rows * ROW :]).double()) ** 2
    return squares


def _centred(flat: Any, mean: float, acc: Any) -> float:
    """``Σ(x − mean)²`` accumulated in ``acc`` (the second pass of a two-pass variance)."""
    import torch

    if flat.device.type == "cpu" and flat.numel() > BLOCK:
        total = torch.zeros((), dtype=acc)
        buf = torch.empty(BLOCK, dtype=acc)
        for start in range(0, flat.numel(), BLOCK):
            part = flat[start : start + BLOCK]
            wide = buf[: part.numel()]
            wide.copy_(part)
            wide.sub_(mean)
            total += torch.dot(wide, wide)
        return float(total)
    wide = flat.to(acc) - mean
    return float(torch.dot(wide, wide))


def reduce(tensor: Any, *, with_max: bool = False) -> tuple[Moments, int, int, float]:
    """Moments of the finite values of a floating tensor (any device, any shape), its NaN and Inf
    counts and, with ``with_max``, its largest finite ``|x|`` (NaN otherwise)."""
    import torch

    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return Moments(), 0, 0, math.nan
    acc = accumulator(flat.device)
    sums = _sums(flat, acc, with_max)
    total, squares = sums[0], sums[1]
    peak = sums[2] if with_max else math.nan
    if not (math.isfinite(total) and math.isfinite(squares) and math.isfinite(peak if with_max else 0.0)):
        nan = int(torch.isnan(flat).sum())
        inf = int(torch.isinf(flat).sum())
        if nan == 0 and inf == 0:  # finite values whose float32 sums overflowed (|x| ≳ 1.8e19)
            scale = float(flat.abs().max())  # reduce x / scale (|x / scale| ≤ 1), scale back in float64
            unit, _, _, _ = reduce(flat / scale)
            moments = Moments(unit.count, unit.mean * scale, unit.m2 * scale * scale)
            return moments, 0, 0, (scale if with_max else math.nan)
        finite = flat[torch.isfinite(flat)]
        if finite.numel() == 0:
            return Moments(), nan, inf, math.nan
        moments, _, _, peak = reduce(finite, with_max=with_max)
        return moments, nan, inf, peak
    mean = total / n
    m2 = squares - n * mean * mean
    limit = ONE_PASS_LIMIT.get(torch.empty((), dtype=acc).element_size(), 1.0)
    if flat.device.type == "cpu" and flat.dtype != torch.float64:
        limit = CPU_ONE_PASS_LIMIT
    if m2 <= 0 or mean * mean > limit * (m2 / n):
        m2 = _centred(flat, mean, acc)
    return Moments(n, mean, m2), 0, 0, peak


def unit_max(tensor: Any, axis: int) -> Any:
    """The per-unit maximum of ``tensor`` along every axis but ``axis``, kept on its device."""
    dims = tuple(d for d in range(tensor.dim()) if d != axis % tensor.dim())
    if tensor.device.type != "cpu":
        return tensor.detach().amax(dim=dims)
    with one_thread():
        return tensor.detach().amax(dim=dims)


def weight_stats(tensor: Any) -> WeightStats:
    """:class:`~initdoctor.stats.WeightStats` of any torch tensor, on its device — the one
    implementation for torch tensors: in-memory modules, state_dicts, safetensors dtypes numpy
    lacks (float8), Editable, the streamed model's file pass. A DTensor (FSDP2) is reduced from
    its local shard, merged across ranks (:func:`.torch_sharded.dtensor_scan`); any other tensor by
    :func:`weight_scan`. The reported dtype is the stored one (a quantized tensor's integer
    representation: ``int8``/``uint8``)."""
    from .torch_sharded import dtensor_scan, is_dtensor

    if is_dtensor(tensor):  # FSDP2 / DTensor: the local shard, merged across ranks
        part = dtensor_scan(tensor, weight_scan)
        dtype = tensor.dtype
    else:
        plain = tensor.detach()
        plain = plain.int_repr() if plain.is_quantized else plain
        part, dtype = weight_scan(plain), plain.dtype
    return summary(part, int(tensor.numel()), str(dtype).replace("torch.", ""))


def weight_scan(tensor: Any) -> Scan:
    """Count, mean and M2 of the finite values, NaN/Inf counts and max ``|x|`` of a plain torch
    tensor (not a DTensor), reduced on its device by :func:`reduce` with float64 accumulation
    (CPU, CUDA): quantized tensors by their integer representation, bool as 0/1, integers
    widened to the accumulator dtype, float8 to float32 (exact). On the CPU on one thread
    (:func:`one_thread`): a weight is a memory-bound reduction, and on a busy machine, two threads
    waiting at each op's barrier took 79 ms for a 262K-element weight against 0.39 ms on one
    (``benchmarks/weight_stats_cpu.py``, load ≈ 7 on 2 CPUs)."""
    import torch

    t = tensor.detach()
    if t.is_quantized:
        t = t.int_repr()
    if not t.is_floating_point():
        t = t.to(accumulator(t.device))
    elif t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = t.float()  # float8: widened exactly
    if t.device.type == "cpu":
        with one_thread():
            moments, nan, inf, peak = reduce(t, with_max=True)
    else:
        moments, nan, inf, peak = reduce(t, with_max=True)
    return Scan(moments, nan, inf, peak if moments.count else 0.0)
