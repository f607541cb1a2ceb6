"""ONNX graphs, with weights inline or in external data files: read and written. torch is never
imported here.

Weighted layers are read from the graph, in node (execution) order:

=============  ===============================  ======================================
op             weight                           stored layout → torch layout
=============  ===============================  ======================================
Conv           input 1 (initializer)            ``[out, in/groups, *k]`` (same)
ConvTranspose  input 1                          ``[in, out/groups, *k]`` (same as torch)
Gemm           input 1                          ``[out, in]`` if ``transB=1`` else ``[in, out]``
MatMul         input 1, or Transpose(input 1)   ``[in, out]`` (or ``[out, in]`` behind Transpose)
Gather         input 0 (the table)              embedding ``[num, dim]``
=============  ===============================  ======================================

A layer's name is its weight initializer's name without a ``.weight`` suffix; when the exporter
made the initializer itself (a pre-transposed copy of ``fc1.weight`` named ``onnx::MatMul_14`` or
``val_0``), the module path comes from the node: the dynamo exporter's ``pkg.torch.onnx.name_scopes``
metadata (``['', 'fc1', 'linear']`` → ``fc1``) or the legacy exporter's node name (``/fc1/MatMul``).
External data is streamed per initializer by offset and length (:mod:`.onnx_data`), and a location
that resolves outside the model's folder (``..``, an absolute path, a symlink) is refused. The
graph is read by :mod:`.onnx_graph`; fix writes through the twins of :mod:`.onnx_edit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model import ModelDescription
from .base import Editable, Format, LoadedModel
from .onnx_data import external_location, load_onnx_proto
from .onnx_edit import Onnx, StreamedOnnx
from .onnx_graph import describe_onnx_model


def describe_onnx(path: Path, progress: Any = None) -> ModelDescription:
    """Describe an ONNX file. The graph is untrusted input: anything that breaks while reading
    it (a name that is not valid UTF-8 after a flipped byte, an attribute of the wrong type...)
    is reported as a malformed model, not a crash."""
    from ..errors import InitDoctorError

    model = load_onnx_proto(path)
    try:
        return describe_onnx_model(model, path, path.parent, progress=progress)
    except InitDoctorError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed graph structure of any kind
        raise InputError(f"{path}: malformed ONNX model ({type(exc).__name__}: {exc})") from None


# --- registry entry ------------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    path = Path(source)
    return LoadedModel(describe_onnx(path, progress), path, "onnx")


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    path = Path(source)
    streamed = StreamedOnnx(path)
    return streamed if streamed.has_data_files else Onnx(path)


FORMAT = Format(("onnx",), load, open_editable)


def external_files(path: Path) -> list[Path]:
    """The external data files the graph at ``path`` points into (its weights), without reading
    them: what a backup must hold besides the graph."""
    import onnx

    from .onnx_lean import load_lean

    proto = load_lean(path)
    found: dict[Path, None] = {}
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location")
        if location and location != path.name:  # load_lean points inline weights into the file itself
            found[external_location(tensor, path.parent)[0]] = None
    return list(found)
