"""Probe backend for ONNX: onnxruntime with each weighted layer's input and pre-activation
output exposed as extra graph outputs. torch is not imported.

Graph optimizations are off (``ORT_DISABLE_ALL``) so the exposed tensors keep their names and
values. Memory stays bounded: the layers are split into groups whose exposed tensors total at most
``ProbeSettings.group_bytes`` (sizes from ONNX shape inference), and onnxruntime is run once per
group, fetching only that group — a smaller budget means less memory and more runs (each run
recomputes the graph up to the group's last layer). A graph with a fixed batch dimension smaller
than ``batch_size`` is run repeatedly on fresh seeded inputs until ``batch_size`` samples are seen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..model import ModelDescription
from . import Collector, ProbeError, ProbeResult, ProbeSettings, default_vocab, random_inputs

_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64"}


def _input_specs(graph: Any, init_names: set[str], settings: ProbeSettings) -> list[tuple[str, tuple[int, ...], str]]:
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
            raise ProbeError(f"input {inp.name!r} has an element type initdoctor cannot generate ({tensor_type.elem_type})")
        if settings.input_shapes:
            shape = tuple(settings.input_shapes[k])
            if len(shape) != len(tensor_type.shape.dim):
                raise ProbeError(f"input {inp.name!r} has rank {len(tensor_type.shape.dim)}, --input-shape gave {shape}")
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
                        f"input {inp.name!r} has a dynamic dimension {label!r} (axis {axis}); pass --input-shape"
                    )
            shape = tuple(dims)
        specs.append((inp.name, shape, "float32" if dtype in ("float16", "bfloat16") else dtype))
    return specs


def _tensor_bytes(model: Any, specs: list[tuple[str, tuple[int, ...], str]]) -> dict[str, int]:
    """Bytes of each value in the graph for the given input shapes (ONNX shape inference);
    values whose shape cannot be inferred are missing."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.initializer[:]  # shapes only; keep the copy small
    by_name = {name: shape for name, shape, _ in specs}
    for inp in probe.graph.input:
        if inp.name in by_name:
            dims = inp.type.tensor_type.shape.dim
            for dim, value in zip(dims, by_name[inp.name]):
                dim.Clear()
                dim.dim_value = value
    for init in model.graph.initializer:  # initializers as typed inputs so inference sees their shapes
        probe.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - inference is an estimate only
        return {}
    sizes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = info.type.tensor_type
        if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
            continue
        n = math.prod(d.dim_value for d in t.shape.dim)
        itemsize = np.dtype(_ONNX_TO_NUMPY.get(t.elem_type, "float32").replace("bfloat16", "float16")).itemsize
        sizes[info.name] = n * itemsize
    return sizes


def _groups(layers: list[tuple[str, str, str]], sizes: dict[str, int], budget: int) -> list[list[tuple[str, str, str]]]:
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


def probe_onnx(
    source: Path | bytes,
    desc: ModelDescription,
    settings: ProbeSettings,
    inputs: list[np.ndarray] | None = None,
) -> ProbeResult:
    import onnx
    import onnxruntime as ort

    from ..loaders.onnx_file import describe_onnx_model

    if isinstance(source, bytes):
        model, base = onnx.load_from_string(source), Path(".")
    else:
        model, base = onnx.load(str(source)), Path(source).parent  # external data loaded here
    graph_desc = describe_onnx_model(model, str(source)[:80], base, with_stats=False)
    wanted = {layer.name: layer for layer in desc.layers}
    init_names = {t.name for t in model.graph.initializer}
    specs = _input_specs(model.graph, init_names, settings)
    feed_names = {name for name, _, _ in specs}
    triples = [(layer.name, *layer.tensors) for layer in graph_desc.layers if layer.name in wanted and layer.tensors]
    collectors = {
        name: Collector(name, wanted[name].kind, (wanted[name].nonlinearity or "relu") == "relu" and not wanted[name].is_output)
        for name, _, _ in triples
    }
    existing = {o.name for o in model.graph.output}
    for _, x, y in triples:
        for t in (x, y):
            if t and t not in existing and t not in feed_names:
                model.graph.output.append(onnx.ValueInfoProto(name=t))
                existing.add(t)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}") from None
    groups = _groups(triples, _tensor_bytes(model, specs), settings.group_bytes)

    rng = np.random.default_rng(settings.seed)
    vocab = default_vocab(desc, settings)
    batch = specs[0][1][0] if specs and specs[0][1] else 1
    repeats = 1 if (inputs is not None or settings.input_shapes) else max(1, math.ceil(settings.batch_size / batch))
    used_inputs: list[dict[str, Any]] = []
    runs = 0
    for r in range(repeats):
        arrays = inputs if inputs is not None else random_inputs([(s, d) for _, s, d in specs], rng, vocab)
        feed = {name: arr.astype(np.dtype(dtype)) if arr.dtype != np.dtype(dtype) else arr
                for (name, _, dtype), arr in zip(specs, arrays)}  # fmt: skip
        if r == 0:
            used_inputs = [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in feed.values()]
        for group in groups:
            fetch = sorted({t for _, x, y in group for t in (x, y) if t and t not in feed})
            try:
                values = dict(zip(fetch, session.run(fetch, feed)))
            except Exception as exc:  # noqa: BLE001
                raise ProbeError(f"onnxruntime failed to run the model: {str(exc).strip().splitlines()[0]}") from None
            runs += 1
            values.update(feed)
            for name, x, y in group:
                collectors[name].forward(values.get(x), values.get(y))
            del values
    result = ProbeResult("onnx", {n: c.result() for n, c in collectors.items() if c.calls}, used_inputs, runs=runs)
    if repeats > 1:
        result.notes.append(f"the graph's batch dimension is fixed at {batch}: ran {repeats} seeded batches")
    if len(groups) > 1:
        result.notes.append(f"{len(groups)} output groups of ≤ {settings.group_bytes >> 20} MiB each")
    return result
