"""Probe backend for ONNX, on onnxruntime. torch is not imported.

Two strategies (``ProbeSettings.onnx_strategy``):

``reduce`` (default)
    For each weighted layer's input and pre-activation output, reduction nodes are added to the
    graph — ``Size``, ``ReduceSum``, ``ReduceSumSquare`` (and, for ReLU layers, ``ReduceMax`` over
    every axis but the unit axis) — and only their scalar/vector results are fetched. onnxruntime
    frees each intermediate tensor as usual, so memory stays that of plain inference, in one run.
    The sums are float32 inside onnxruntime; ``Var = Σx²/n − mean²`` in float64 on the host. When a
    sum is not finite (NaN/Inf in the tensor) or ``mean² > 10⁴·Var`` (the subtraction would lose
    digits) the probe falls back to ``expose``.
``expose``
    The tensors themselves become graph outputs and are reduced in numpy exactly like the torch
    backend. To bound memory the layers are split into groups whose exposed tensors total at most
    ``group_bytes`` (sizes from ONNX shape inference) and onnxruntime runs once per group — a smaller
    budget means less memory and more runs (each recomputes the graph up to the group's last layer).

Graph optimizations are off (``ORT_DISABLE_ALL``) so every tensor keeps its name and value. A
graph with a fixed batch dimension smaller than ``batch_size`` is run repeatedly on fresh seeded
inputs until ``batch_size`` samples are seen, at most :data:`MAX_RUNS` times.

:func:`~.dispatch.run_probe` runs this in a child process (:mod:`.onnx_child`), which passes its
``memory_budget``: a graph whose inferred shapes give one tensor larger than that is refused
before onnxruntime allocates it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..model import ModelDescription
from ..settings import ProbeSettings
from ..stats import Moments, fast_moments
from .collector import Collector, Ticker
from .inputs import extra_tensors
from .onnx_logits import LogitSums, logits_output, onnx_logits
from .onnx_reduce import probe_reduce
from .onnx_session import (
    ONNX_TO_NUMPY,
    Feeds,
    Weights,
    by_graph_order,
    graph_input_specs,
    infer_tensor_info,
    run_session,
    session_with_outputs,
)
from .types import ProbeError, ProbeResult, Progress

#: most seeded batches run through a graph whose batch dimension is fixed (``--batch-size`` / batch)
MAX_RUNS = 4096
#: the ONNX probe's memory budget (:func:`.onnx_child.memory_budget`): this many × --max-input-mib…
INPUT_MULTIPLE = 8
#: … plus the model's files this many times
FILES_MULTIPLE = 3
BUDGET_RULE = f"{INPUT_MULTIPLE} × --max-input-mib + {FILES_MULTIPLE} × the model's files"


def probe_onnx(
    source: Path | bytes,
    desc: ModelDescription,
    settings: ProbeSettings,
    inputs: dict[str, np.ndarray] | list[np.ndarray] | None = None,
    progress: Progress | None = None,
    *,
    memory_budget: int | None = None,
) -> ProbeResult:
    import onnx

    from ..formats.onnx_data import load_onnx_proto
    from ..formats.onnx_graph import describe_onnx_model

    if isinstance(source, bytes):
        model, base = onnx.load_from_string(source), None
    else:
        model, base = load_onnx_proto(Path(source)), Path(source).parent
    graph_desc = describe_onnx_model(model, str(source)[:80], base or Path("."), with_stats=False)
    weights = Weights(model, base)
    wanted = {layer.name: layer for layer in desc.layers}
    init_names = {t.name for t in model.graph.initializer}
    named = isinstance(inputs, dict) or bool(settings.named_inputs)
    inputs = by_graph_order(model.graph, init_names, inputs)
    given = [tuple(a.shape) for a in inputs] if inputs is not None else None
    specs = graph_input_specs(model.graph, init_names, settings, given)
    triples = [
        (layer.name, *layer.tensors) for layer in graph_desc.layers if layer.name in wanted and layer.tensors
    ]
    info = infer_tensor_info(model, specs)
    batch = specs[0][1][0] if specs and specs[0][1] else 1
    repeats = (
        1
        if (inputs is not None or settings.input_shapes or settings.named_inputs)
        else max(1, math.ceil(settings.batch_size / batch))
    )
    if repeats > MAX_RUNS:
        raise ProbeError(
            f"the graph's batch dimension is fixed at {batch}: --batch-size {settings.batch_size} would "
            f"take {repeats} runs (the cap is {MAX_RUNS}); lower --batch-size"
        )
    if memory_budget is not None:
        _check_sizes(info, memory_budget)

    def collectors() -> dict[str, Collector]:
        ticker = Ticker(len(triples) * repeats, progress)
        made = {
            name: Collector(
                name,
                wanted[name].kind,
                (wanted[name].nonlinearity or "relu") == "relu" and not wanted[name].is_output,
                ticker,
            )
            for name, _, _ in triples
        }
        for name, x, y in triples:  # a conv's spatial sizes from shape inference, as torch's hooks see them
            xs, ys = info.get(x, (0, None))[1], info.get(y, (0, None))[1]
            if made[name].kind.startswith("conv") and xs and ys and len(xs) == len(ys) > 2:
                made[name].spatial = (xs[2:], ys[2:])
        return made

    notes = []
    extra = {t: Moments() for t in extra_tensors(desc)}
    strategy = settings.onnx_strategy
    logit_sums = None
    if strategy == "reduce":
        feeds = Feeds(specs, desc, settings, inputs, named)
        logits_name = logits_output(model.graph)
        logit_sums = None if logits_name is None else (logits_name, LogitSums())
        result = probe_reduce(model, weights, triples, info, feeds, collectors(), repeats, extra, logit_sums)
        if result is None:
            notes.append("a reduced sum was not finite or lost precision: re-measured with exposed tensors")
            strategy = "expose"
            logit_sums = None
    if strategy == "expose":
        feeds = Feeds(specs, desc, settings, inputs, named)
        result = _probe_expose(
            model, weights, triples, info, feeds, collectors(), repeats, settings.group_bytes, notes
        )
        extra = {t: Moments() for t in extra_tensors(desc)}
        _expose_extra(model, weights, feeds, repeats, extra)
    assert result is not None  # the expose strategy always measures
    cols, runs = result
    out = ProbeResult("onnx", {n: c.result() for n, c in cols.items() if c.calls}, feeds.used, runs=runs)
    out.tensor_vars = {t: m.var for t, m in extra.items() if m.count}
    # fetched in the reduce runs, else in runs of their own
    out.logits = (
        logit_sums[1].result() if logit_sums is not None else onnx_logits(model, weights, feeds, repeats)
    )
    if repeats > 1:
        out.notes.append(f"the graph's batch dimension is fixed at {batch}: ran {repeats} seeded batches")
    out.notes.extend(notes)
    return out


def _check_sizes(info: dict[str, tuple[int, tuple[int, ...] | None]], budget: int) -> None:
    """Refuse a graph in which shape inference gives one tensor larger than ``budget`` bytes."""
    for name, size in _tensor_bytes(info).items():
        if size > budget:
            shape = list(info[name][1] or ())
            raise ProbeError(
                f"the graph's tensor {name!r} would take {size / 2**30:.3g} GiB (shape {shape}); the "
                f"ONNX probe's memory cap is {budget / 2**30:.3g} GiB ({BUDGET_RULE})"
            )


def _tensor_bytes(info: dict[str, tuple[int, tuple[int, ...] | None]]) -> dict[str, int]:
    sizes = {}
    for name, (elem, shape) in info.items():
        if shape is not None:
            dtype = ONNX_TO_NUMPY.get(elem, "float32").replace("bfloat16", "float16")
            sizes[name] = math.prod(shape) * np.dtype(dtype).itemsize
    return sizes


def _groups(
    layers: list[tuple[str, str, str]], sizes: dict[str, int], budget: int
) -> list[list[tuple[str, str, str]]]:
    """Split (name, x, y) triples, in execution order, into groups of at most ``budget`` bytes."""
    default = max(sizes.values()) if sizes else 0
    groups: list[list[tuple[str, str, str]]] = []
    current: list[tuple[str, str, str]] = []
    used = 0
    for item in layers:
        cost = sizes.get(item[1], default) + sizes.get(item[2], default)
        if current and used + cost > budget:
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += cost
    if current:
        groups.append(current)
    return groups


def _probe_expose(
    model: Any,
    weights: Any,
    triples: list[tuple[str, str, str]],
    info: dict[str, Any],
    feeds: Any,
    collectors: dict[str, Any],
    repeats: int,
    group_bytes: int,
    notes: list[str],
) -> tuple[dict[str, Any], int]:
    """Intermediate tensors fetched as outputs, in groups of at most ``group_bytes``: one session
    per group with only that group's tensors marked as outputs (onnxruntime keeps every graph
    output of a run alive, fetched or not), each fed the same seeded inputs."""
    feed_names = {name for name, _, _ in feeds.specs}
    groups = _groups(triples, _tensor_bytes(info), group_bytes)
    if len(groups) > 1:
        notes.append(f"{len(groups)} output groups of ≤ {group_bytes / 2**20:.3g} MiB each, one session each")
    runs = 0
    for group in groups:
        fetch = sorted({t for _, x, y in group for t in (x, y) if t and t not in feed_names})
        session = session_with_outputs(model, weights, fetch)
        feeds.restart()
        for _ in range(repeats):
            feed = feeds.next()
            values = dict(zip(fetch, run_session(session, fetch, feed), strict=False))
            runs += 1
            values.update(feed)
            for name, x, y in group:
                collectors[name].forward(values.get(x), values.get(y))
            del values
        del session
    return collectors, runs


def _expose_extra(model: Any, weights: Any, feeds: Any, repeats: int, extra: dict[str, Moments]) -> None:
    """Residual-block tensors, fetched as outputs in one more session (the ``expose`` fallback)."""
    feed_names = {name for name, _, _ in feeds.specs}
    fetch = [t for t in extra if t not in feed_names]
    if not fetch:
        return
    session = session_with_outputs(model, weights, fetch)
    feeds.restart()
    for _ in range(repeats):
        for t, value in zip(fetch, run_session(session, fetch, feeds.next()), strict=False):
            if np.asarray(value).dtype.kind == "f":
                extra[t].merge_moments(fast_moments(np.asarray(value))[0])
