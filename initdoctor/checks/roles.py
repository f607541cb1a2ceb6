"""Role resolution: what each weighted layer is (:class:`~initdoctor.report.Role`), which
nonlinearity follows it and where that came from (:class:`~initdoctor.report.Source`), and the
layer's finding before any rule judges it.

Precedence: an embedding is an embedding; then a configured override (``overrides`` globs);
then the graph (a normalization after the layer, or after its activation, makes it
``normalized``); without a graph the last
weighted layer in order is the ``output`` (linear); anything else is ``hidden`` with the
``nonlinearity`` setting. A hidden layer inside a residual branch becomes ``residual``, one that
feeds the residual stream becomes ``stream``; a layer of a residual block, or a stream feeder, whose
follower no graph shows is ``linear`` with source ``structure`` (never the ``nonlinearity``
setting: Wav2Vec2's feature projection feeds an add and a GELU conv, no ReLU). The two layers
of a squeeze-excitation gate are ``gate``.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from ..gains import calculate_gain
from ..report import LayerFinding, Role, Source, Status

if TYPE_CHECKING:
    from ..model import Layer, ModelDescription
    from ..settings import Settings


def resolve_role(
    layer: Layer, desc: ModelDescription, s: Settings, last_name: str | None
) -> tuple[Role, str, float | None, Source]:
    """(role, nonlinearity, param, source) for one layer."""
    if layer.kind == "embedding":
        return Role.EMBEDDING, "linear", None, Source.RULE
    for pattern, nonlinearity, slope in s.overrides:
        if fnmatch.fnmatchcase(layer.name, pattern):
            role = (
                Role.OUTPUT
                if layer.is_output or (not desc.has_graph and layer.name == last_name)
                else Role.HIDDEN
            )
            param = (
                (slope if slope is not None else s.negative_slope) if nonlinearity == "leaky_relu" else None
            )
            return role, nonlinearity, param, Source.CONFIG
    if layer.nonlinearity == "normalized":
        return Role.NORMALIZED, "normalized", None, Source.GRAPH
    if layer.nonlinearity is not None and layer.normalized_after:  # Linear → GELU → LayerNorm
        return Role.NORMALIZED, layer.nonlinearity, layer.nonlinearity_param, Source.GRAPH
    if layer.nonlinearity is not None:
        role = Role.OUTPUT if layer.is_output else Role.HIDDEN
        return role, layer.nonlinearity, layer.nonlinearity_param, Source.GRAPH
    if not desc.has_graph and layer.name == last_name:
        return Role.OUTPUT, "linear", None, Source.RULE
    param = s.negative_slope if s.nonlinearity == "leaky_relu" else None
    return Role.HIDDEN, s.nonlinearity, param, Source.FLAG


def new_finding(
    layer: Layer,
    desc: ModelDescription,
    s: Settings,
    last_name: str | None,
    branch_of: dict[str, str],
    feeders: set[str],
) -> LayerFinding:
    """The layer's finding with its role, nonlinearity and gain resolved, status ``ok``, not yet
    judged (``gain`` is 1 for a ``normalized`` layer: no nonlinearity scale applies)."""
    role, nonlin, param, source = resolve_role(layer, desc, s, last_name)
    if layer.name in desc.gates and source != Source.CONFIG:
        role = Role.GATE  # squeeze-excitation: scales channels, not on the signal path
        if source == Source.FLAG:  # before the gate's (hard)sigmoid, which has no gain here
            nonlin, param, source = "linear", None, Source.STRUCTURE
    elif role == Role.HIDDEN and layer.name in branch_of:
        role = Role.RESIDUAL
        if source == Source.FLAG:  # a block's layer whose follower no graph shows: no assumed ReLU
            nonlin, param, source = "linear", None, Source.STRUCTURE
    elif role == Role.HIDDEN and layer.name in feeders:
        role = Role.STREAM
        if source == Source.FLAG:  # the stream is a sum, no activation the graph shows: no assumed ReLU
            nonlin, param, source = "linear", None, Source.STRUCTURE
    gain = 1.0 if nonlin == "normalized" else calculate_gain(nonlin, param)
    st = layer.stats
    return LayerFinding(
        name=layer.name,
        kind=layer.kind,
        role=role,
        shape=list(layer.shape),
        fan_in=layer.fan_in,
        fan_out=layer.fan_out,
        groups=layer.groups,
        nonlinearity=nonlin if param is None else f"{nonlin}({param:g})",
        nonlinearity_source=source,
        gain=gain,
        dtype=st.dtype,
        numel=st.numel,
        weight_mean=st.mean,
        weight_std=st.std,
        expected_std=None,
        std_ratio=None,
        weight_variance_ratio=None,
        suggested_scale=None,
        nan_count=st.nan_count,
        inf_count=st.inf_count,
        status=Status.OK,
        message="",
        weight_key=layer.weight_key,
        bias_key=layer.bias_key,
    )
