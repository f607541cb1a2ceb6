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
External data is streamed per initializer by offset and length (:mod:`.onnx_data`, which also
holds the rules every tensor is checked against: possible shapes, data inside the model's folder,
no hard links). The graph is read by :mod:`.onnx_graph`; fix writes through the twins of
:mod:`.onnx_edit`, committed by :mod:`.onnx_save` (the graph and its data file as a pair).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..model import ModelDescription
from .base import Editable, Format, LoadedModel
from .onnx_data import data_files, load_onnx_proto, model_path
from .onnx_edit import Onnx, StreamedOnnx
from .onnx_graph import describe_onnx_model


def describe_onnx(path: Path, progress: Any = None) -> ModelDescription:
    """Describe an ONNX file. The graph is untrusted input: anything that breaks while reading
    it (a name that is not valid UTF-8 after a flipped byte, an attribute of the wrong type...)
    is reported as a malformed model, not a crash."""
    from ..errors import InitDoctorError

    real = model_path(path)  # a self-contained graph behind a symlink: its real file
    model = load_onnx_proto(real)
    try:
        return describe_onnx_model(model, path, real.parent, progress=progress)
    except InitDoctorError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed graph structure of any kind
        raise InputError(f"{path}: malformed ONNX model ({type(exc).__name__}: {exc})") from None


# --- registry entry ------------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    path = Path(source)
    return LoadedModel(describe_onnx(path, progress), model_path(path), "onnx")


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    path = model_path(Path(source))
    streamed = StreamedOnnx(path)
    return streamed if streamed.has_data_files else Onnx(path)


FORMAT = Format(("onnx",), load, open_editable)


def external_files(path: Path) -> list[Path]:
    """The external data files the graph at ``path`` points into (its weights and any other
    tensor's data, ``Constant`` values included), checked but not read: what a backup must hold
    besides the graph."""
    real = model_path(path)
    return data_files(load_onnx_proto(real), real)
