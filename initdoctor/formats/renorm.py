"""Stream feeders whose output is renormalized before it reaches the model's output.

A layer that starts the residual stream (:func:`initdoctor.graph.stream_inputs`) sets only the
stream's scale. When every path from its output meets a normalization (LayerNorm, RMSNorm,
BatchNorm) before the model output, that scale is divided out there: a ConvNeXt downsampling conv
(its stage's blocks read it through a depthwise conv and a LayerNorm, the next downsampling
LayerNorm or the final one renormalizes the stream), an ALBERT / ELECTRA embedding projection or
the Wav2Vec2 feature projection (each block's add feeds a LayerNorm: post-LN). On the way the
branches may read the small stream through attention or an activation; at init, with zero biases,
attention is linear in its values and GELU/ReLU keep a small signal (ReLU is homogeneous, GELU
≈ x/2 near 0), so the normalization gets the signal back (docs/rules-evidence.md "Sweep
warnings": the library default trains as well as the Kaiming rescale).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..graph import OpNode

#: ops a path may cross on its way to a normalization (anything else — the model output, a
#: concatenation or an unknown op, ``"other"`` — ends the search: not renormalized)
_CROSS = ("pass", "weighted", "residual", "attention", "act", "relu", "gelu", "silu", "tanh", "leaky_relu")
#: ``"other"`` ops that are linear in their input: functional products with a computed weight
#: (Wav2Vec2's weight-normed positional conv), crops (its padding layer's ``[..., :-1]``) and the
#: dtype assertion a ``.to()`` leaves
_LINEAR_CALLS = (
    "conv1d",
    "conv2d",
    "conv3d",
    "linear",
    "slice",
    "getitem",
    "narrow",
    "pad",
    "_assert_tensor_metadata",
)


def renormalized(
    nodes: Mapping[str, OpNode], layer_of: Mapping[str, str], names: list[str], max_steps: int = 4096
) -> list[str]:
    """The layers of ``names`` (stream feeders) each of whose output paths meets a ``norm`` node
    before an ``output`` node, a node of another kind or the step limit."""
    node_of = {name: node_id for node_id, name in layer_of.items()}
    found = []
    for name in names:
        start = node_of.get(name)
        if start is not None and start in nodes and _all_paths_normalized(nodes, start, max_steps):
            found.append(name)
    return found


def _all_paths_normalized(nodes: Mapping[str, OpNode], start: str, max_steps: int) -> bool:
    frontier, seen = list(nodes[start].users), {start}
    while frontier:
        node_id = frontier.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = nodes.get(node_id)
        if node is None or len(seen) > max_steps:
            return False
        if node.op == "norm":
            continue  # this path is renormalized: its users see a unit scale
        if node.op not in _CROSS and not (node.op == "other" and node.raw in _LINEAR_CALLS):
            return False
        frontier.extend(node.users)
    return True
