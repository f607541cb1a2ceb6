"""A tiny neutral graph used to read, from a real model graph, what follows each weighted layer.

Loaders for graph formats (ONNX, torch.fx, torch.export) translate their nodes into
:class:`OpNode` objects with a canonical ``op``:

* an activation name from :data:`ACTIVATIONS` (``relu``, ``leaky_relu`` with its slope, ...);
* ``"pass"`` for operations that do not change which nonlinearity the layer feeds — bias add
  (an add with a constant), reshape/flatten/view/transpose/permute, squeeze/unsqueeze, identity,
  dropout, cast, contiguous/clone, max and average pooling;
* ``"weighted"`` for another weighted layer, ``"output"`` for a model output;
* ``"norm"`` for a normalization (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm);
* ``"residual"`` for an add of two computed tensors (a skip connection joining a branch);
* ``"attention"`` for attention's own ops (softmax, scaled_dot_product_attention, bmm/matmul of
  two computed tensors): a projection feeding them is followed by no nonlinearity;
* ``"act"`` for an activation without a gain here (hardsigmoid, hardtanh, mish, ...);
* ``"other"`` for anything else (concat, elementwise products, ...).

``raw`` keeps the source op's own name (``mul``, ``hardsigmoid``…) for pattern searches such as
:func:`initdoctor.formats.graph_patterns.gate_layers`.

:func:`following_nonlinearity` walks forward from a layer through ``"pass"`` nodes;
:func:`residual_blocks` finds which weighted layers sit in the branch of each residual add.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "selu", "gelu", "silu", "hardswish", "relu6")


@dataclass
class OpNode:
    id: str
    op: str
    users: list[str] = field(default_factory=list)
    param: float | None = None
    inputs: list[str] = field(default_factory=list)  # computed inputs (not weights or constants)
    tensor: str | None = None  # the value the probe can measure (fx node / ONNX tensor name)
    raw: str = ""  # the source op's name (``mul``, ``sigmoid``, ``Hardsigmoid``…)


def _reaches_output(nodes: Mapping[str, OpNode], node: OpNode, max_steps: int = 16) -> bool:
    """Whether ``node``'s value reaches a model output through pass-through nodes only (a head
    such as BERT's pooler: Linear → tanh → output)."""
    frontier, steps = list(node.users), 0
    while frontier and steps < max_steps:
        steps += 1
        nxt = nodes.get(frontier.pop())
        if nxt is None:
            return False
        if nxt.op == "output":
            return True
        if nxt.op != "pass":
            return False
        frontier.extend(nxt.users)
    return False


@dataclass
class Block:
    """A residual block: ``out = skip + branch(…)``; ``layers`` are the weighted layers in the
    branch; ``skip_tensor``/``out_tensor`` are what the probe measures (growth = Var[out]/Var[skip]).

    ``after`` names the block whose output is this block's skip input (the same stream, one block
    after the other); None where the stream restarts (a downsampling projection on the skip, the
    first block). Blocks found from module structure (no graph) measure the block module's input
    and output: ``skip_tensor = "path:in"``, ``out_tensor = "path:out"``."""

    name: str
    skip_tensor: str
    out_tensor: str
    layers: list[str]
    after: str | None = None
    pre_norm: bool = False  # the branch starts with a normalization of the stream (pre-LN)
    post_norm: bool = False  # the add feeds a normalization (post-LN: BERT)


def unique_names(blocks: list[Block]) -> list[Block]:
    """Blocks are named by their branch layers' common prefix; a name taken by an earlier block
    gets ``#k`` (``"1"``, ``"1#2"``: two blocks under module ``1``), so ``after`` is unambiguous."""
    taken: dict[str, int] = {}
    for block in blocks:
        taken[block.name] = taken.get(block.name, 0) + 1
        if taken[block.name] > 1:
            block.name = f"{block.name}#{taken[block.name]}"
    return blocks


_NO_OPS = {"to", "_to_copy", "alias", "clone", "contiguous", "detach", "dropout", "identity", "Identity"}


def link_blocks(blocks: list[Block], nodes: Mapping[str, OpNode] | None = None) -> list[Block]:
    """Fill each block's ``after``: the block whose output tensor is its skip input, looking back
    through value-preserving ops (a dtype cast to the same dtype, an alias, dropout)."""
    by_tensor = {n.tensor: n for n in nodes.values() if n.tensor is not None} if nodes else {}
    by_out: dict[str, str] = {}
    for block in blocks:
        tensor: str | None = block.skip_tensor
        for _ in range(8):
            if tensor is None or tensor in by_out:
                break
            node = by_tensor.get(tensor)
            if node is None or node.raw not in _NO_OPS or len(node.inputs) != 1:
                break
            source = nodes.get(node.inputs[0]) if nodes else None
            tensor = source.tensor if source is not None else None
        block.after = by_out.get(tensor) if tensor is not None else None
        by_out[block.out_tensor] = block.name
    return blocks


def residual_blocks(
    nodes: dict[str, OpNode], layer_of: dict[str, str], lookups: frozenset[str] = frozenset()
) -> list[Block]:
    """Residual adds and the weighted layers of their branches.

    ``nodes`` must be in topological order (an input listed at or after its reader is not followed);
    ``layer_of`` maps weighted node ids to layer names. For an add with inputs ``a`` and ``b``, the
    nodes that are ancestors of one input but not of the other form the two sides; the side holding
    more weighted layers is the branch, the other (identity, or a 1×1 downsampling projection) the
    skip. The sides come from :func:`_sides`, a walk back from both inputs that stops where the two
    ancestries meet: each add costs the size of its two sides, not of the whole graph.

    An add whose branch holds only embedding lookups (``lookups``: GPT-2's ``wte + wpe``, BERT's
    token-type and position embeddings) sums the stream's inputs: it is no residual block.
    """
    ids = list(nodes)
    index = {node_id: i for i, node_id in enumerate(ids)}
    order = {n: k for k, n in enumerate(layer_of)}  # the sides list layers in layer_of's order
    blocks: list[Block] = []
    for node in nodes.values():
        if node.op != "residual" or len(node.inputs) != 2 or node.tensor is None:
            continue
        a, b = node.inputs
        only_a, only_b = _sides(nodes, ids, index, a, b)
        side_a = [layer_of[n] for n in sorted((n for n in only_a if n in order), key=order.__getitem__)]
        side_b = [layer_of[n] for n in sorted((n for n in only_b if n in order), key=order.__getitem__)]
        if side_a and side_b and _joins_before_skip(nodes, ids, index, node):
            continue  # parallel branches of one stream (GPT-NeoX, Phi-2): the skip add is the block
        if node.users and all(_next_op(nodes, u) == "attention" for u in node.users):
            continue  # a mask added to attention scores before the softmax (GPT-Neo's local attention)
        branch, skip_id = (side_b, a) if len(side_b) >= len(side_a) else (side_a, b)
        skip_tensor = nodes[skip_id].tensor
        if not branch or skip_tensor is None or all(name in lookups for name in branch):
            continue
        in_branch = set(only_b if branch is side_b else only_a)
        # the block's output: the add, or the activation right after it (a basic block's post-add ReLU)
        end: str = node.tensor
        if len(node.users) == 1 and node.users[0] in nodes:
            nxt = nodes[node.users[0]]
            if nxt.op in ACTIVATIONS and nxt.tensor is not None:
                end = nxt.tensor
        block = Block(_common_prefix(branch) or f"block{len(blocks)}", skip_tensor, end, branch)
        block.pre_norm = any(_next_op(nodes, u) == "norm" for u in nodes[skip_id].users if u in in_branch)
        block.post_norm = end == node.tensor and any(_next_op(nodes, u) == "norm" for u in node.users)
        blocks.append(block)
    return link_blocks(unique_names(blocks), nodes)


def _joins_before_skip(
    nodes: Mapping[str, OpNode], ids: list[str], index: dict[str, int], node: OpNode
) -> bool:
    """Whether the add ``node`` sums two branches of one stream (``attn(ln1(x)) + mlp(ln2(x))``) and
    feeds, through pass-through ops, a residual add whose other input ``x`` both branches read."""
    cur = node
    for _ in range(4):
        nxt = nodes.get(cur.users[0]) if len(cur.users) == 1 else None
        if nxt is None or nxt.op not in ("pass", "residual"):
            return False
        if nxt.op == "residual":  # x is an ancestor of an input: not among x's own ancestors
            x = [i for i in nxt.inputs if i != cur.id]
            return len(x) == 1 and all(x[0] not in _sides(nodes, ids, index, x[0], i)[0] for i in node.inputs)
        cur = nxt
    return False


def _next_op(nodes: Mapping[str, OpNode], node_id: str, max_steps: int = 4) -> str | None:
    """The first op at or after ``node_id`` that is not a pass-through (a cast, a dropout)."""
    node = nodes.get(node_id)
    for _ in range(max_steps):
        if node is None or node.op != "pass" or len(node.users) != 1:
            break
        node = nodes.get(node.users[0])
    return node.op if node is not None else None


def _sides(
    nodes: Mapping[str, OpNode], ids: list[str], index: dict[str, int], a: str, b: str
) -> tuple[list[str], list[str]]:
    """(ancestors of ``a`` that are not ancestors of ``b``, and the other way round); a node is its
    own ancestor, and an input is followed only when it comes earlier in ``nodes``' order.

    Nodes are visited from the latest back, so a node's marks (reached from ``a``, from ``b``) are
    final when it is taken; the walk ends when every node still waiting is reached from both,
    as all their ancestors are then too.
    """
    marks: dict[str, int] = {}
    heap: list[int] = []  # -index of the nodes waiting: the latest first
    partial = 0  # nodes waiting in the heap with one mark only

    def reach(node_id: str, mark: int) -> None:
        nonlocal partial
        old = marks.get(node_id)
        if old is None:
            marks[node_id] = mark
            heapq.heappush(heap, -index[node_id])
            partial += mark != BOTH
        elif old | mark != old:
            marks[node_id] = old | mark
            partial -= 1  # it was waiting with one mark and now has both

    for node_id, mark in ((a, 1), (b, 2)):
        if node_id in index:
            reach(node_id, mark)
    only: tuple[list[str], list[str]] = ([], [])
    while partial:
        i = -heapq.heappop(heap)
        node_id = ids[i]
        mark = marks[node_id]
        if mark != BOTH:
            partial -= 1
            only[mark - 1].append(node_id)
        for inp in nodes[node_id].inputs:
            j = index.get(inp)
            if j is not None and j < i:
                reach(inp, mark)
    return only


BOTH = 3


def stream_inputs(nodes: dict[str, OpNode], layer_of: dict[str, str], blocks: list[Block]) -> list[str]:
    """Weighted layers that feed the residual stream itself: ancestors of a block's skip input that
    sit in no branch (a ViT's patch projection, a ResNet's stem). Their scale is the stream's
    starting scale, which the blocks' normalization or relative growth makes secondary.

    One walk for all blocks (a node seen for an earlier block adds nothing for a later one)."""
    if not blocks:
        return []
    in_branch = {name for b in blocks for name in b.layers}
    by_tensor = {node.tensor: node_id for node_id, node in nodes.items() if node.tensor is not None}
    found: dict[str, None] = {}  # ordered set
    seen: set[str] = set()
    for block in blocks:
        start = by_tensor.get(block.skip_tensor)
        frontier = [start] if start else []
        while frontier:
            node_id = frontier.pop()
            if node_id in seen or node_id not in nodes:
                continue
            seen.add(node_id)
            name = layer_of.get(node_id)
            if name is not None:
                if name not in in_branch:
                    found.setdefault(name)
                continue  # stop at the first weighted layer on each path
            frontier.extend(nodes[node_id].inputs)
    return list(found)


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common)


def following_nonlinearity(
    nodes: Mapping[str, OpNode], start: str, max_steps: int = 64
) -> tuple[str, float | None, bool] | None:
    """What the output of node ``start`` goes through first.

    Returns ``(nonlinearity, param, is_output)``: an activation found through pass-through nodes;
    ``("linear", None, True)`` when the path reaches a model output (the logit layer);
    ``("linear", None, False)`` when it reaches another weighted layer, attention (q/k/v feed
    softmax(q·kᵀ)·v, no nonlinearity) or the residual stream (an add joining a skip) directly.
    Returns ``None`` when it is not simple to tell (an ``"other"`` node, branches that disagree, a
    long chain): :func:`graph_follower` then looks further.
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
        if node is None or steps > max_steps or node.op in ("other", "act"):
            return None
        if node.op in ACTIVATIONS:
            found.add((node.op, node.param, _reaches_output(nodes, node)))
        elif node.op == "norm":
            found.add(("normalized", None, False))
        elif node.op == "output":
            found.add(("linear", None, True))
        elif node.op == "residual":  # the stream; a post-add activation (a basic block's ReLU) applies
            after = _only_activation(nodes, node)
            found.add((after.op, after.param, False) if after is not None else ("linear", None, False))
        elif node.op in ("weighted", "attention"):
            found.add(("linear", None, False))
        elif node.op == "pass":
            frontier.extend(node.users)
        else:
            return None
    if len(found) == 1:
        return found.pop()
    return None


def _only_activation(nodes: Mapping[str, OpNode], node: OpNode) -> OpNode | None:
    """The activation that every path from ``node`` meets first through pass-through nodes, if
    that is a single activation node."""
    frontier, acts = list(node.users), set()
    seen: set[str] = set()
    while frontier and len(seen) < 16:
        nxt = nodes.get(frontier.pop())
        if nxt is None or nxt.id in seen:
            continue
        seen.add(nxt.id)
        if nxt.op in ACTIVATIONS:
            acts.add(nxt.id)
        elif nxt.op == "pass":
            frontier.extend(nxt.users)
        else:
            return None
    return nodes[acts.pop()] if len(acts) == 1 else None


def graph_follower(
    nodes: Mapping[str, OpNode], start: str, max_steps: int = 48
) -> tuple[str, float | None, bool] | None:
    """What follows ``start`` when :func:`following_nonlinearity` cannot tell, read further: the
    walk goes on through ``"other"`` ops (rotary embeddings' products and concatenations, a class
    token's concat, a position embedding's add) and returns ``("linear", None, False)`` when every
    path ends at attention, a norm, the residual stream, another weighted layer or an output
    without meeting an activation (a patch embedding, q/k/v under rotary embeddings), and
    ``("normalized", None, False)`` when every path ends at a norm (a DenseNet layer whose output is
    concatenated, then batch-normalized per channel: its scale does not reach the signal). None
    when an activation (or a gate) is met, or the walk is too long: then nothing is claimed.
    """
    frontier = list(nodes[start].users)
    seen: set[str] = set()
    ends = norms = 0
    while frontier:
        node_id = frontier.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = nodes.get(node_id)
        if node is None or len(seen) > max_steps or node.op in ACTIVATIONS or node.op == "act":
            return None
        if node.op in ("weighted", "attention", "norm", "output", "residual"):
            ends += 1
            norms += node.op == "norm"
        else:  # pass, other
            frontier.extend(node.users)
    if ends and norms == ends:
        return ("normalized", None, False)
    return ("linear", None, False) if ends else None


def head_layers(nodes: Mapping[str, OpNode], layer_of: Mapping[str, str], max_steps: int = 32) -> list[str]:
    """Weighted layers whose output reaches the model only through the output (logit) layer:
    every path goes through activations and pass-through nodes (dropout, flatten, pooling) to
    weighted layers that themselves feed a model output directly — a classifier head's
    penultimate linear (torchvision's VGG ``classifier.3``, MobileNetV3's ``classifier.0``).
    A norm, a residual add, attention or any other op on the way: not a head layer."""
    found: list[str] = []
    for node_id, name in layer_of.items():
        frontier, reached, ok = list(nodes[node_id].users), False, True
        seen: set[str] = set()
        while frontier and ok:
            nxt = nodes.get(frontier.pop())
            if nxt is None or len(seen) > max_steps:
                ok = False
            elif nxt.id in seen:
                continue
            elif nxt.op == "weighted" and nxt.id in layer_of:
                seen.add(nxt.id)
                reached = True
                ok = following_nonlinearity(nodes, nxt.id) == ("linear", None, True)
            elif nxt.op in ACTIVATIONS or nxt.op == "pass":
                seen.add(nxt.id)
                frontier.extend(nxt.users)
            else:
                ok = False
        if ok and reached:
            found.append(name)
    return found
