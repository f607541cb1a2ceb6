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
inputs until ``batch_size`` samples are seen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from ..model import ModelDescription
from ..settings import ProbeSettings
from ..stats import Moments, fast_moments
from . import (
    Collector,
    ProbeError,
    ProbeResult,
    Progress,
    Ticker,
    default_vocab,
    extra_tensors,
    random_inputs,
)

_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64"}


def _input_specs(
    graph: Any, init_names: set[str], settings: ProbeSettings
) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of each real graph input; dynamic dims from --batch-size / --input-shape."""
    real = [i for i in graph.input if i.name not in init_names]
    if settings.input_shapes and len(settings.input_shapes) != len(real):
        raise ProbeError(
            f"the graph has {len(real)} inputs ({', '.join(i.name for i in real)}) but "
            f"{len(settings.input_shapes)} --input-shape values were given"
        )
    specs = []
    for k, inp in enumerate(real):
        tensor_type = inp.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tensor_type.elem_type)
        if dtype is None:
            raise ProbeError(
                f"input {inp.name!r} has an element type initdoctor cannot generate ({tensor_type.elem_type})"
            )
        if settings.input_shapes:
            shape = tuple(settings.input_shapes[k])
            if len(shape) != len(tensor_type.shape.dim):
                raise ProbeError(
                    f"input {inp.name!r} has rank {len(tensor_type.shape.dim)}, --input-shape gave {shape}"
                )
        else:
            dims = []
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(int(dim.dim_value))
                elif axis == 0:
                    dims.append(settings.batch_size)
                else:
                    label = dim.dim_param or "?"
                    raise ProbeError(
                        f"input {inp.name!r} has a dynamic dimension {label!r} (axis {axis}); pass "
                        "--input-shape"
                    )
            shape = tuple(dims)
        specs.append((inp.name, shape, "float32" if dtype in ("float16", "bfloat16") else dtype))
    return specs


def _infer(
    model: Any, specs: list[tuple[str, tuple[int, ...], str]]
) -> dict[str, tuple[int, tuple[int, ...] | None]]:
    """``{value: (elem_type, shape or None)}`` for the given input shapes (ONNX shape inference on a
    weight-less copy of the graph); values inference cannot type are missing."""
    import onnx

    probe = onnx.ModelProto(ir_version=model.ir_version)
    probe.opset_import.extend(model.opset_import)
    for field in ("node", "input", "output", "value_info"):
        getattr(probe.graph, field).extend(getattr(model.graph, field))
    by_name = {name: shape for name, shape, _ in specs}
    for inp in probe.graph.input:
        if inp.name in by_name:
            for dim, value in zip(inp.type.tensor_type.shape.dim, by_name[inp.name], strict=False):
                dim.Clear()
                dim.dim_value = value
    for init in model.graph.initializer:  # initializers as typed inputs so inference sees their shapes
        probe.graph.input.append(
            onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - an estimate only
        return {}
    out: dict[str, tuple[int, tuple[int, ...] | None]] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = info.type.tensor_type
        shape = None
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shape = tuple(int(d.dim_value) for d in t.shape.dim)
        out[info.name] = (int(t.elem_type), shape)
    return out


def _tensor_bytes(info: dict[str, tuple[int, tuple[int, ...] | None]]) -> dict[str, int]:
    sizes = {}
    for name, (elem, shape) in info.items():
        if shape is not None:
            dtype = _ONNX_TO_NUMPY.get(elem, "float32").replace("bfloat16", "float16")
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


class _Weights:
    """The model's weights, handed to onnxruntime without a second copy.

    Initializers stored inside the protobuf are turned into numpy arrays (shared zero-copy with
    onnxruntime through ``add_external_initializers``) and stripped from the graph, which then
    serialises in a few kilobytes; initializers already in external data files are read by
    onnxruntime itself from the model's folder (``session.model_external_initializers_file_folder_path``).
    So the probe holds the weights once, as plain inference does.
    """

    _MARK = "initdoctor-in-memory"

    def __init__(self, model: Any, folder: Path | None) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        self.folder = folder
        self.names: list[str] = []
        self.values: list[Any] = []
        self.arrays: list[np.ndarray] = []  # keep alive while a session uses them
        for tensor in model.graph.initializer:
            # small tensors (shapes, scalars) stay inline: onnxruntime's shape inference reads them
            if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() < 1024:
                continue
            array = np.ascontiguousarray(numpy_helper.to_array(tensor))
            stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
            stub.data_location = onnx.TensorProto.EXTERNAL
            stub.external_data.add(key="location", value=self._MARK)
            tensor.CopyFrom(stub)
            self.names.append(tensor.name)
            self.arrays.append(array)
            self.values.append(ort.OrtValue.ortvalue_from_numpy(array))

    def session(self, model: Any) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # run nodes in the order given, so each tensor's reductions (placed right after its
        # producer) run at once and the tensor is freed: on a 21M-parameter MLP at batch 4096 the
        # default order kept every activation alive (peak +465 MiB vs +200 MiB)
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        options.log_severity_level = 3
        if self.folder is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self.folder.resolve())
            )
        if self.names:
            options.add_external_initializers(self.names, self.values)
        try:
            return ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001
            raise ProbeError(
                f"onnxruntime cannot load the model: {first_line(exc, type(exc).__name__)}"
            ) from None


def _run(session: Any, fetch: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
    try:
        return session.run(fetch, feed)
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(
            f"onnxruntime failed to run the model: {first_line(exc, type(exc).__name__)}"
        ) from None


class _Inputs:
    """Seeded feeds, drawn from one stream so that repeated runs see fresh samples."""

    def __init__(self, specs, desc, settings, fixed: list[np.ndarray] | None) -> None:
        self.specs = specs
        self.seed = settings.seed
        self.rng = np.random.default_rng(settings.seed)
        self.vocab = default_vocab(desc, settings)
        self.max_input_mib = settings.max_input_mib
        self.fixed = fixed
        self.used: list[dict[str, Any]] = []

    def restart(self) -> None:
        """Draw the same sequence of batches again (for another output group)."""
        self.rng = np.random.default_rng(self.seed)

    def next(self) -> dict[str, np.ndarray]:
        arrays = (
            self.fixed
            if self.fixed is not None
            else random_inputs([(s, d) for _, s, d in self.specs], self.rng, self.vocab, self.max_input_mib)
        )
        feed = {
            name: arr.astype(np.dtype(dtype), copy=False)
            for (name, _, dtype), arr in zip(self.specs, arrays, strict=False)
        }
        if not self.used:
            self.used = [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in feed.values()]
        return feed


def probe_onnx(
    source: Path | bytes,
    desc: ModelDescription,
    settings: ProbeSettings,
    inputs: list[np.ndarray] | None = None,
    progress: Progress | None = None,
) -> ProbeResult:
    import onnx

    from ..formats.onnx_data import load_onnx_proto
    from ..formats.onnx_graph import describe_onnx_model

    if isinstance(source, bytes):
        model, base = onnx.load_from_string(source), None
    else:
        model, base = load_onnx_proto(Path(source)), Path(source).parent
    graph_desc = describe_onnx_model(model, str(source)[:80], base or Path("."), with_stats=False)
    weights = _Weights(model, base)
    wanted = {layer.name: layer for layer in desc.layers}
    init_names = {t.name for t in model.graph.initializer}
    specs = _input_specs(model.graph, init_names, settings)
    triples = [
        (layer.name, *layer.tensors) for layer in graph_desc.layers if layer.name in wanted and layer.tensors
    ]
    info = _infer(model, specs)
    batch = specs[0][1][0] if specs and specs[0][1] else 1
    repeats = (
        1 if (inputs is not None or settings.input_shapes) else max(1, math.ceil(settings.batch_size / batch))
    )

    def collectors() -> dict[str, Collector]:
        ticker = Ticker(len(triples) * repeats, progress)
        return {
            name: Collector(
                name,
                wanted[name].kind,
                (wanted[name].nonlinearity or "relu") == "relu" and not wanted[name].is_output,
                ticker,
            )
            for name, _, _ in triples
        }

    notes = []
    extra = {t: Moments() for t in extra_tensors(desc)}
    strategy = settings.onnx_strategy
    if strategy == "reduce":
        feeds = _Inputs(specs, desc, settings, inputs)
        result = _probe_reduce(model, weights, triples, info, feeds, collectors(), repeats, extra)
        if result is None:
            notes.append("a reduced sum was not finite or lost precision: re-measured with exposed tensors")
            strategy = "expose"
    if strategy == "expose":
        feeds = _Inputs(specs, desc, settings, inputs)
        result = _probe_expose(
            model, weights, triples, info, feeds, collectors(), repeats, settings.group_bytes, notes
        )
        extra = {t: Moments() for t in extra_tensors(desc)}
        _expose_extra(model, weights, feeds, repeats, extra)
    cols, runs = result
    out = ProbeResult("onnx", {n: c.result() for n, c in cols.items() if c.calls}, feeds.used, runs=runs)
    out.tensor_vars = {t: m.var for t, m in extra.items() if m.count}
    if repeats > 1:
        out.notes.append(f"the graph's batch dimension is fixed at {batch}: ran {repeats} seeded batches")
    out.notes.extend(notes)
    return out


def _reduced_moments(n: Any, total: Any, squares: Any) -> Moments | None:
    """Moments from (count, Σx, Σx²), or None when they cannot be trusted."""
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


def _probe_reduce(model, weights, triples, info, feeds, collectors, repeats, extra):
    """Reduction nodes in the graph; returns None when a result cannot be trusted."""
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
    runs = 0
    unmeasured: set[str] = set()
    for _ in range(repeats):
        feed = feeds.next()
        values = dict(zip(fetch, _run(session, fetch, feed), strict=False))
        runs += 1
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


def _probe_expose(model, weights, triples, info, feeds, collectors, repeats, group_bytes, notes):
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
        session = _session_with_outputs(model, weights, fetch)
        feeds.restart()
        for _ in range(repeats):
            feed = feeds.next()
            values = dict(zip(fetch, _run(session, fetch, feed), strict=False))
            runs += 1
            values.update(feed)
            for name, x, y in group:
                collectors[name].forward(values.get(x), values.get(y))
            del values
        del session
    return collectors, runs


def _expose_extra(model, weights, feeds, repeats, extra: dict[str, Moments]) -> None:
    """Residual-block tensors, fetched as outputs in one more session (the ``expose`` fallback)."""
    feed_names = {name for name, _, _ in feeds.specs}
    fetch = [t for t in extra if t not in feed_names]
    if not fetch:
        return
    session = _session_with_outputs(model, weights, fetch)
    feeds.restart()
    for _ in range(repeats):
        for t, value in zip(fetch, _run(session, fetch, feeds.next()), strict=False):
            if np.asarray(value).dtype.kind == "f":
                extra[t].merge_moments(fast_moments(np.asarray(value))[0])


def _session_with_outputs(model, weights, names: list[str]) -> Any:
    """A session in which ``names`` are graph outputs; the caller's proto is left as it was."""
    import onnx

    base_outputs = len(model.graph.output)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in existing)
    try:
        return weights.session(model)
    finally:
        del model.graph.output[base_outputs:]
