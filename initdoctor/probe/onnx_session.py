"""onnxruntime sessions for the ONNX probe: the graph's inputs and inferred tensor shapes, the
weights handed over without a second copy, seeded feeds, and sessions with chosen tensors as outputs.
torch is not imported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from ..settings import ProbeSettings
from .inputs import default_vocab, random_inputs
from .types import ProbeError

ONNX_TO_NUMPY = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64"}


def graph_input_specs(
    graph: Any, init_names: set[str], settings: ProbeSettings, given: list[tuple[int, ...]] | None = None
) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of each real graph input: the shapes of ``given`` example arrays, else
    ``--input name=…`` by name, ``--input-shape`` by position, else the declared shape with a dynamic
    batch dimension from --batch-size."""
    real = [i for i in graph.input if i.name not in init_names]
    listing = ", ".join(i.name for i in real)
    if settings.input_shapes and len(settings.input_shapes) != len(real):
        raise ProbeError(
            f"the graph has {len(real)} inputs ({listing}) but "
            f"{len(settings.input_shapes)} --input-shape values were given"
        )
    if given is not None and len(given) != len(real):
        raise ProbeError(
            f"the graph has {len(real)} inputs ({listing}); {len(given)} example inputs were given"
        )
    named = {name: shape for name, shape, _ in settings.named_inputs}
    unknown = sorted(set(named) - {i.name for i in real})
    if unknown:
        raise ProbeError(f"the graph has no input named {unknown[0]!r}; its inputs: {listing}")
    specs = []
    for k, inp in enumerate(real):
        tensor_type = inp.type.tensor_type
        dtype = ONNX_TO_NUMPY.get(tensor_type.elem_type)
        if dtype is None:
            raise ProbeError(
                f"input {inp.name!r} has an element type initdoctor cannot generate ({tensor_type.elem_type})"
            )
        chosen = given[k] if given is not None else named.get(inp.name)
        if chosen is None and settings.input_shapes:
            chosen = tuple(settings.input_shapes[k])
        if chosen is not None:
            shape = tuple(chosen)
            if len(shape) != len(tensor_type.shape.dim):
                raise ProbeError(f"input {inp.name!r} has rank {len(tensor_type.shape.dim)}, given {shape}")
        else:
            shape = _declared_shape(inp.name, tensor_type, settings.batch_size)
        specs.append((inp.name, shape, "float32" if dtype in ("float16", "bfloat16") else dtype))
    return specs


def _declared_shape(name: str, tensor_type: Any, batch: int) -> tuple[int, ...]:
    """The graph's declared input shape: static dims as declared (an image's size, a token input's
    length), a dynamic batch from --batch-size; any other dynamic dim needs a shape from the user."""
    dims = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif axis == 0:
            dims.append(batch)
        else:
            label = dim.dim_param or "?"
            raise ProbeError(
                f"input {name!r} has a dynamic dimension {label!r} (axis {axis}); pass "
                f"--input {name}=SHAPE or --input-shape"
            )
    return tuple(dims)


def by_graph_order(
    graph: Any, init_names: set[str], inputs: dict[str, np.ndarray] | list[np.ndarray] | None
) -> list[np.ndarray] | None:
    """Example arrays in the graph's input order: a mapping matched by name (every graph input
    needed, no unknown name), a list as given."""
    if not isinstance(inputs, dict):
        return inputs
    names = [i.name for i in graph.input if i.name not in init_names]
    unknown = sorted(set(inputs) - set(names))
    missing = [n for n in names if n not in inputs]
    if unknown or missing:
        problem = f"no input named {unknown[0]!r}" if unknown else f"no example for input {missing[0]!r}"
        raise ProbeError(f"the graph has {problem}; its inputs: {', '.join(names)}")
    return [inputs[n] for n in names]


def infer_tensor_info(
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


class Weights:
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


def run_session(session: Any, fetch: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
    try:
        return session.run(fetch, feed)
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(
            f"onnxruntime failed to run the model: {first_line(exc, type(exc).__name__)}"
        ) from None


class Feeds:
    """Seeded feeds, drawn from one stream so that repeated runs see fresh samples."""

    def __init__(
        self,
        specs: list[tuple[str, tuple[int, ...], str]],
        desc: Any,
        settings: Any,
        fixed: list[np.ndarray] | None,
        named: bool = False,
    ) -> None:
        self.specs = specs
        self.named = named  # the report names the inputs (given by name: --input, a mapping)
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
            self.used = [
                {"shape": list(a.shape), "dtype": str(a.dtype), **({"name": name} if self.named else {})}
                for name, a in feed.items()
            ]
        return feed


def session_with_outputs(model: Any, weights: Weights, names: list[str]) -> Any:
    """A session in which ``names`` are graph outputs; the caller's proto is left as it was."""
    import onnx

    base_outputs = len(model.graph.output)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in existing)
    try:
        return weights.session(model)
    finally:
        del model.graph.output[base_outputs:]
