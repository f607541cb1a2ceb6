"""Stream feeders whose output is renormalized before it reaches the model's output.

A layer that starts the residual stream (:func:`initdoctor.graph.stream_inputs`) sets only the
stream's scale. When every path from its output meets a normalization (LayerNorm, RMSNorm,
BatchNorm) through linear ops only, or enters a post-LN block (its add feeds a LayerNorm, whatever
the branch does), that scale is divided out before anything nonlinear reads it: a ConvNeXt
downsampling conv (a depthwise conv then a LayerNorm), an ALBERT / ELECTRA embedding projection
(post-LN encoder). Not Wav2Vec2's feature projection: its positional conv reads it through a GELU
outside any block, and there the Kaiming rescale trains better (docs/rules-evidence.md "Sweep
warnings").
"""

from __future__ import annotations

from collections.abc import Mapping

from ..graph import Block, OpNode

#: ops a path may cross on its way to a normalization: linear in their input (anything else — an
#: activation, attention, the model output, a concatenation, an unknown op — ends the search)
_CROSS = ("pass", "weighted", "residual")
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
    nodes: Mapping[str, OpNode], layer_of: Mapping[str, str], names: list[str], blocks: list[Block]
) -> list[str]:
    """The layers of ``names`` (stream feeders) each of whose output paths meets, through linear
    ops only, a ``norm`` node or the skip input of a post-norm block (whose add is renormalized
    whatever its branch does)."""
    node_of = {name: node_id for node_id, name in layer_of.items()}
    post_skips = {b.skip_tensor for b in blocks if b.post_norm}
    return [
        name
        for name in names
        if node_of.get(name) in nodes and _all_paths_normalized(nodes, node_of[name], post_skips)
    ]


def _all_paths_normalized(nodes: Mapping[str, OpNode], start: str, post_skips: set[str]) -> bool:
    frontier, seen = [start], set()
    while frontier:
        node_id = frontier.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = nodes.get(node_id)
        if node is None or len(seen) > 4096:
            return False
        if node.op == "norm" or node.tensor in post_skips:
            continue  # this path is renormalized: its users see a unit scale
        linear = node.op in _CROSS or (node.op == "other" and node.raw in _LINEAR_CALLS)
        if node_id != start and not linear:
            return False
        frontier.extend(node.users)
    return True
