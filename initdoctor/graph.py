"""A tiny neutral graph used to read, from a real model graph, what follows each weighted layer.

Loaders for graph formats (ONNX, torch.fx, torch.export) translate their nodes into
:class:`OpNode` objects with a canonical ``op``:

* an activation name from :data:`ACTIVATIONS` (``relu``, ``leaky_relu`` with its slope, ...);
* ``"pass"`` for operations that do not change which nonlinearity the layer feeds — bias add
  (an add with a constant), reshape/flatten/view/transpose/permute, squeeze/unsqueeze, identity,
  dropout, cast, contiguous/clone, max and average pooling;
* ``"weighted"`` for another weighted layer, ``"output"`` for a model output;
* ``"other"`` for anything else (a residual add, a normalization, concat...).

:func:`following_nonlinearity` walks forward from a layer through ``"pass"`` nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "selu", "gelu", "silu")


@dataclass
class OpNode:
    id: str
    op: str
    users: list[str] = field(default_factory=list)
    param: float | None = None


def following_nonlinearity(
    nodes: Mapping[str, OpNode], start: str, max_steps: int = 64
) -> tuple[str, float | None, bool] | None:
    """What the output of node ``start`` goes through first.

    Returns ``(nonlinearity, param, is_output)``: an activation found through pass-through nodes;
    ``("linear", None, True)`` when the path reaches a model output (the logit layer);
    ``("linear", None, False)`` when it reaches another weighted layer directly. Returns ``None``
    when it is not simple to tell (an ``"other"`` node, branches that disagree, a long chain).
    """
    found: set[tuple[str, float | None, bool]] = set()
    frontier = list(nodes[start].users)
    seen: set[str] = set()
    steps = 0
    while frontier:
        node_id = frontier.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        steps += 1
        node = nodes.get(node_id)
        if node is None or steps > max_steps or node.op == "other":
            return None
        if node.op in ACTIVATIONS:
            found.add((node.op, node.param, False))
        elif node.op == "output":
            found.add(("linear", None, True))
        elif node.op == "weighted":
            found.add(("linear", None, False))
        elif node.op == "pass":
            frontier.extend(node.users)
        else:
            return None
    if len(found) == 1:
        return found.pop()
    return None
