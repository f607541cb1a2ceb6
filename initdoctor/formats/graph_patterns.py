"""Patterns in the neutral op graph (:mod:`initdoctor.graph`) that decide a layer's role beyond
its follower: squeeze-excitation gates, and an activation followed by a normalization."""

from __future__ import annotations

from collections.abc import Mapping

from ..graph import ACTIVATIONS, OpNode

_GATES = ("sigmoid", "hardsigmoid")
_POOLS = ("mean", "adaptive_avg_pool", "avg_pool", "AdaptiveAvgPool")


def gate_layers(nodes: Mapping[str, OpNode], layer_of: Mapping[str, str]) -> list[str]:
    """The two layers of each squeeze-excitation gate: ``x * σ(W₂ act(W₁ pool(x)))`` (Hu et al.
    2018; MobileNetV3 and EfficientNet use hardsigmoid/sigmoid). ``W₂`` feeds a sigmoid or
    hardsigmoid, through pass-through nodes, whose value multiplies another computed tensor;
    ``W₁`` is the weighted layer before ``W₂`` (through an activation) whose input is a pool."""
    found: list[str] = []
    for node_id, node in nodes.items():
        if not node.raw.lower().startswith(_GATES) or not any(
            nodes[u].raw.startswith("mul") and len(nodes[u].inputs) == 2 for u in node.users if u in nodes
        ):
            continue
        second = _back(nodes, node_id, layer_of, ("pass",))
        if second is None:
            continue
        first = _back(nodes, second, layer_of, ("pass", "act", *ACTIVATIONS))
        if first is not None and _back_to_pool(nodes, first):
            found.append(layer_of[first])
        found.append(layer_of[second])
    return found


def _back(
    nodes: Mapping[str, OpNode], node_id: str, layer_of: Mapping[str, str], through: tuple
) -> str | None:
    """The weighted node that feeds ``node_id`` through a single chain of ``through`` ops."""
    current = nodes[node_id]
    for _ in range(8):
        if len(current.inputs) != 1 or current.inputs[0] not in nodes:
            return None
        prev_id = current.inputs[0]
        if prev_id in layer_of:
            return prev_id
        current = nodes[prev_id]
        if current.op not in through:
            return None
    return None


def _back_to_pool(nodes: Mapping[str, OpNode], node_id: str) -> bool:
    current = nodes[node_id]
    for _ in range(6):
        if len(current.inputs) != 1 or current.inputs[0] not in nodes:
            return False
        current = nodes[current.inputs[0]]
        if any(p.lower() in current.raw.lower() for p in _POOLS):
            return True
        if current.op != "pass":
            return False
    return False


def normalized_after_activation(nodes: Mapping[str, OpNode], start: str, max_steps: int = 16) -> bool:
    """Whether ``start`` → activation → normalization, through pass-through nodes only (BERT's
    MLM head transform: Linear → GELU → LayerNorm): the activation's gain applies to the layer,
    and the norm then sets the scale of what follows."""
    frontier, acts = list(nodes[start].users), []
    seen: set[str] = set()
    while frontier and len(seen) < max_steps:
        node = nodes.get(frontier.pop())
        if node is None or node.id in seen:
            continue
        seen.add(node.id)
        if node.op in ACTIVATIONS:
            acts.append(node)
        elif node.op == "pass":
            frontier.extend(node.users)
        else:
            return False
    if len({a.op for a in acts}) != 1:
        return False
    frontier, ends = [u for a in acts for u in a.users], 0
    while frontier and len(seen) < 2 * max_steps:
        node = nodes.get(frontier.pop())
        if node is None or node.id in seen:
            continue
        seen.add(node.id)
        if node.op == "norm":
            ends += 1
        elif node.op in ("pass", acts[0].op):  # an activation written as several ops
            frontier.extend(node.users)
        else:
            return False
    return ends > 0
