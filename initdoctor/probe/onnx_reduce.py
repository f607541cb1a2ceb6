"""The ONNX probe's ``reduce`` strategy: reduction nodes added to the graph after each measured
tensor, so only their scalar/vector results leave onnxruntime (see :mod:`.onnx_backend`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..stats import Moments, fast_moments
from .onnx_session import run_session


def _reduced_moments(n: Any, total: Any, squares: Any) -> Moments | None:
    """Moments from (count, Σx, Σx²) in float64: ``mean = Σx/n``, ``M2 = Σx² − n·mean²``
    (``Var = Σx²/n − mean²``); None when they cannot be trusted — a sum not finite, or
    ``mean² > 10⁴·Var`` (the subtraction lost digits)."""
    n = int(np.asarray(n))
    total, squares = float(np.asarray(total)), float(np.asarray(squares))
    if n == 0:
        return Moments()
    if not (math.isfinite(total) and math.isfinite(squares)):
        return None
    mean = total / n
    m2 = squares - n * mean * mean
    if m2 <= 0 or mean * mean > 1e4 * (m2 / n):
        return None
    return Moments(n, mean, m2)


def probe_reduce(
    model: Any,
    weights: Any,
    triples: list[tuple[str, str, str]],
    info: dict[str, Any],
    feeds: Any,
    collectors: dict[str, Any],
    repeats: int,
    extra: dict[str, Moments],
    logits: tuple[str, Any] | None = None,
) -> tuple[dict[str, Any], int] | None:
    """Reduction nodes in the graph; returns None when a result cannot be trusted. ``logits``:
    (a graph output, a :class:`~.onnx_logits.LogitSums`) fetched in the same runs — a graph
    output costs nothing more to fetch, where a session of its own would run the graph again."""
    import onnx
    from onnx import TensorProto, helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    feed_names = {name for name, _, _ in feeds.specs}
    added_outputs = len(model.graph.output)
    fetch_of: dict[str, dict[str, str]] = {}
    reductions: dict[str, list[Any]] = {}  # tensor → its reduction nodes

    def reduce(tensor: str, unit_axis: int | None) -> None:
        if tensor in fetch_of or tensor in feed_names or not tensor:
            return
        elem, shape = info.get(tensor, (TensorProto.FLOAT, None))
        key = f"initdoctor::{len(fetch_of)}"
        src = tensor
        nodes = []
        if elem != TensorProto.FLOAT:
            src = f"{key}::f32"
            nodes.append(helper.make_node("Cast", [tensor], [src], to=TensorProto.FLOAT, name=f"{key}::cast"))
        outs = {"n": f"{key}::n", "sum": f"{key}::sum", "sq": f"{key}::sq"}
        nodes += [
            helper.make_node("Size", [src], [outs["n"]], name=f"{key}::size"),
            helper.make_node("ReduceSum", [src], [outs["sum"]], keepdims=0, name=f"{key}::rsum"),
            helper.make_node("ReduceSumSquare", [src], [outs["sq"]], keepdims=0, name=f"{key}::rsq"),
        ]
        if unit_axis is not None and shape is not None and len(shape) >= 2:
            axes = [d for d in range(len(shape)) if d != unit_axis % len(shape)]
            outs["max"] = f"{key}::max"
            if opset >= 18:
                const = f"{key}::axes"
                nodes.append(
                    helper.make_node(
                        "Constant",
                        [],
                        [const],
                        name=f"{key}::axes_c",
                        value=helper.make_tensor(const, TensorProto.INT64, [len(axes)], axes),
                    )
                )
                nodes.append(
                    helper.make_node(
                        "ReduceMax", [src, const], [outs["max"]], keepdims=0, name=f"{key}::rmax"
                    )
                )
            else:
                nodes.append(
                    helper.make_node(
                        "ReduceMax", [src], [outs["max"]], axes=axes, keepdims=0, name=f"{key}::rmax"
                    )
                )
        reductions[tensor] = nodes
        model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outs.values())
        fetch_of[tensor] = outs

    for name, x, y in triples:
        c = collectors[name]
        reduce(x, None)
        reduce(y, c.unit_axis if c.relu else None)
    for t in extra:
        reduce(t, None)
    # Each tensor's reductions go right after the node that makes it: onnxruntime runs nodes in
    # this order, so the tensor is reduced and freed at once instead of living to the end of the graph.
    original = [onnx.NodeProto.FromString(n.SerializeToString()) for n in model.graph.node]
    produced = {out for node in original for out in node.output}
    # tensors no node makes (initializers folded by the exporter): reduced up front
    interleaved = [n for t, nodes in reductions.items() if t not in produced for n in nodes]
    for node in original:
        interleaved.append(node)
        for out in node.output:
            interleaved.extend(reductions.get(out, ()))
    try:
        del model.graph.node[:]
        model.graph.node.extend(interleaved)
        session = weights.session(model)
    finally:  # leave the caller's proto as it was
        del model.graph.node[:]
        model.graph.node.extend(original)
        del model.graph.output[added_outputs:]
    fetch = [o for outs in fetch_of.values() for o in outs.values()]
    if logits is not None:
        fetch.append(logits[0])
    runs = 0
    unmeasured: set[str] = set()
    for _ in range(repeats):
        feed = feeds.next()
        values = dict(zip(fetch, run_session(session, fetch, feed), strict=False))
        runs += 1
        if logits is not None:
            logits[1].add(values.pop(logits[0]))
        for name, x, y in triples:
            c = collectors[name]
            x_m: Moments | None = None
            if x in feed and feed[x].dtype.kind == "f":
                x_m = fast_moments(feed[x])[0]
            elif x in fetch_of:
                x_m = _reduced_moments(*(values[fetch_of[x][k]] for k in ("n", "sum", "sq")))
                if x_m is None:
                    return None
            y_m = (
                _reduced_moments(*(values[fetch_of[y][k]] for k in ("n", "sum", "sq")))
                if y in fetch_of
                else None
            )
            if y in fetch_of and y_m is None:
                return None
            peak = values.get(fetch_of[y]["max"]) if y in fetch_of and "max" in fetch_of[y] else None
            c.add(x_m, 0, y_m, 0, 0, np.asarray(peak) if peak is not None else None)
        for t in extra:  # block tensors: an untrustworthy sum leaves that block unmeasured, no fallback
            m = (
                _reduced_moments(*(values[fetch_of[t][k]] for k in ("n", "sum", "sq")))
                if t in fetch_of
                else None
            )
            if m is not None:
                extra[t].merge_moments(m)
            else:
                unmeasured.add(t)
    for t in unmeasured:
        extra[t] = Moments()
    return collectors, runs
