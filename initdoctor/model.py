"""The neutral model description every loader produces and every analysis consumes.

A loader turns a file (or a Python factory) into a :class:`ModelDescription`: the weighted
layers in execution order where a graph gives one, each with its fans, weight statistics and —
where the graph shows it — the nonlinearity that follows. No tensor data is kept here, so a
description of a multi-GB checkpoint is small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import Block
from .stats import WeightStats


@dataclass
class Layer:
    """One weighted layer.

    ``shape`` is the weight's shape as stored in the file (ONNX ``MatMul`` stores ``[in, out]``);
    ``fan_in``/``fan_out`` follow :func:`initdoctor.gains.fans` on the torch layout.
    ``nonlinearity`` is what the graph shows after this layer (``None`` when there is no graph or
    it is not simple to tell); ``is_output`` is True when the layer feeds a model output with no
    nonlinearity in between (the logit layer).
    """

    name: str
    kind: str
    weight_key: str
    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    stats: WeightStats
    groups: int = 1
    bias_key: str | None = None
    nonlinearity: str | None = None
    nonlinearity_param: float | None = None
    is_output: bool | None = None
    #: the activation after this layer is followed by a normalization (Linear → GELU → LayerNorm)
    normalized_after: bool = False
    #: For graph formats that name their tensors (ONNX): (input tensor, pre-activation output
    #: tensor, after the bias add) — what the probe exposes.
    tensors: tuple[str, str] | None = None


@dataclass
class NormLayer:
    """A normalization layer's affine parameters (reported separately, not judged against Kaiming)."""

    name: str
    kind: str
    weight_key: str
    shape: tuple[int, ...]
    stats: WeightStats
    bias_stats: WeightStats | None = None


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``name`` (a keyword of ``forward`` or an ONNX graph input; None: positional),
    its shape and dtype, and for integer (token id) inputs ``high``: ids are drawn in ``[0, high)``."""

    name: str | None
    shape: tuple[int, ...]
    dtype: str
    high: int | None = None

    def shown(self) -> dict[str, object]:
        """The report's form: ``{"shape", "dtype"}`` plus ``"name"`` when the input is named."""
        out: dict[str, object] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.name:
            out["name"] = self.name
        return out


@dataclass
class ModelDescription:
    """What a loader found: the model's weighted layers, its norm layers and some provenance.

    ``order`` says where the layer order comes from: ``"execution"`` (a graph), ``"checkpoint"``
    (the file's own key order, which is torch's module registration order) or ``"natural"``
    (sorted module paths, ``blocks.2`` before ``blocks.10``: safetensors keeps no order).
    """

    path: str
    format: str
    parameters: int
    layers: list[Layer] = field(default_factory=list)
    norms: list[NormLayer] = field(default_factory=list)
    has_graph: bool = False
    order: str = "checkpoint"
    notes: list[str] = field(default_factory=list)
    #: residual blocks found in the graph (empty without one)
    blocks: list[Block] = field(default_factory=list)
    #: weighted layers that feed the residual stream (see :func:`initdoctor.graph.stream_inputs`)
    stream_inputs: list[str] = field(default_factory=list)
    #: stream feeders whose output every path renormalizes before the model output (see
    #: :func:`initdoctor.formats.renorm.renormalized`): a small start is harmless (K103)
    renormalized: list[str] = field(default_factory=list)
    #: weights the checkpoint lacks that the model initialized itself (a Hugging Face folder's new
    #: head): tensor names, tied copies excluded
    new_layers: list[str] = field(default_factory=list)
    #: the layers of squeeze-excitation gates (see :func:`initdoctor.graph.gate_layers`)
    gates: list[str] = field(default_factory=list)
    #: the exporter folded BatchNorm into the convolutions (ONNX): at init an eval-mode BatchNorm
    #: is the identity, so the graph is the unnormalized net (see docs/onnx-export.md)
    bn_folded: bool = False
    #: hidden layers that reach the model only through the output layer (a classifier head's
    #: penultimate linear; see :func:`initdoctor.graph.head_layers`)
    head_layers: list[str] = field(default_factory=list)
    #: the inputs the model says it takes (a transformers ``config``: token ids, images, decoder ids)
    inputs: list[InputSpec] = field(default_factory=list)
    #: layers whose output joins a concatenation of several computed tensors (DenseNet): off the
    #: plain chain (the ONNX reader; torch's readers leave their follower to the flag instead)
    concat_fed: list[str] = field(default_factory=list)


def infer_input_shape(
    first_kind: str, first_shape: tuple[int, ...], groups: int, batch: int
) -> tuple[int, ...]:
    """An input shape for a model whose first weighted layer is ``first_kind``.

    Linear ``[out, in]`` and MatMul ``[in, out]`` (as stored) → ``[B, in]``; ConvNd ``[out, in/g, *k]`` →
    ``[B, in, S…]`` with ``S`` = 64 (1d), 32 (2d), 16 (3d); ConvTransposeNd ``[in, out/g, *k]`` →
    ``[B, in, S…]``; Embedding → token ids ``[B, 16]``.
    """
    if first_kind in ("linear", "matmul"):
        return (
            batch,
            first_shape[-1] if first_kind == "linear" else first_shape[0],
        )  # matmul stores [in, out]
    if first_kind == "embedding":
        return (batch, 16)
    rank = len(first_shape) - 2
    side = {1: 64, 2: 32, 3: 16}.get(rank, 16)
    channels = (
        first_shape[1] * groups
        if first_kind.startswith("conv") and "transpose" not in first_kind
        else first_shape[0]
    )
    return (batch, channels) + (side,) * rank
