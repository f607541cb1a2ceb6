"""Subgraphs that ONNX exporters write for one torch operation, recognised so that
:mod:`.onnx_graph` can give each the neutral op of :mod:`initdoctor.graph` (torch is never
imported here).

=======================================================  ==========================================
pattern (the nodes an exporter writes)                   neutral op of every node in it
=======================================================  ==========================================
``x · ½(1 + erf(x/√2))`` (GELU, legacy exporters)        ``gelu``
``½x(1 + tanh(√(2/π)(x + 0.044715x³)))`` (GPT-2 GELU)    ``gelu``
``x · σ(1.702x)`` (CLIP's quick GELU)                    ``gelu``
``x · σ(x)`` (SiLU)                                      ``silu``
``x · hardsigmoid(x)`` (hardswish)                       ``hardswish``
``x / √(mean(x²) + ε) · γ`` (RMSNorm, as LLaMA exports)  ``norm`` (``rmsnorm``, γ a NormLayer)
``(x − mean x) / √(var + ε) · γ + β`` (decomposed LN)    ``norm`` (``layernorm``)
``x / √(Σ x²)`` or ``x / ReduceL2(x)`` (L2 normalisation)  ``norm`` (no γ: no NormLayer)
=======================================================  ==========================================

A composite activation is found from its core (``Erf``, ``Tanh``, ``Sigmoid``,
``HardSigmoid``): the core's input traces back, through elementwise ops only, to one tensor
``x``, and the product after the core traces back to the same ``x``. Other facts read here:
attention's products of two computed tensors (:func:`attention_products`), squeeze-excitation
gates (:func:`gate_nodes`) and the evidence that an exporter folded BatchNorm into the
convolutions (:func:`folded_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ELEMENTWISE = {"Mul", "Div", "Add", "Sub", "Pow", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "Cast"}
_CORES = {"Erf": "gelu", "Tanh": "gelu", "Sigmoid": "silu", "HardSigmoid": "hardswish"}
_POOLS = {"ReduceMean", "GlobalAveragePool", "GlobalMaxPool", "ReduceMax"}


class Index:
    """Who produces and who reads each tensor of a graph, and which tensors are constant (an
    initializer, a ``Constant``, a ``Shape``, or computed from constants only: the legacy
    exporter's ``Identity`` copies of shared weights are constants, not a second signal)."""

    def __init__(self, graph: Any) -> None:
        self.nodes = list(graph.node)
        # protobuf fields read once into Python lists: the walks below read them many times
        self.op = [node.op_type for node in self.nodes]
        self.ins = [list(node.input) for node in self.nodes]
        self.outs = [list(node.output) for node in self.nodes]
        self.inits = {t.name: t for t in graph.initializer}
        self.constants: set[str] = set(self.inits)
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        for i, (op, ins, outs) in enumerate(zip(self.op, self.ins, self.outs, strict=True)):
            if op in ("Constant", "Shape", "Size") or (
                ins and all(not x or x in self.constants for x in ins)
            ):
                self.constants.update(outs)
            for out in outs:
                self.producer[out] = i
            for inp in ins:
                self.readers.setdefault(inp, []).append(i)
        self.outputs = {o.name for o in graph.output}

    def flowing(self, i: int) -> list[str]:
        """The computed (not constant) inputs of node ``i``."""
        return [x for x in self.ins[i] if x and x not in self.constants]

    def users(self, tensor: str) -> list[int]:
        return self.readers.get(tensor, [])

    def only_user(self, tensor: str) -> int | None:
        users = self.users(tensor)
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def _root(ix: Index, tensor: str, memo: dict[str, str], depth: int = 0) -> str:
    """The one tensor that ``tensor`` is an elementwise function of (itself if there is none)."""
    if tensor in memo:
        return memo[tensor]
    i = ix.producer.get(tensor)
    root = tensor
    if i is not None and depth < 12 and ix.nodes[i].op_type in _ELEMENTWISE:
        roots = {_root(ix, x, memo, depth + 1) for x in ix.flowing(i)}
        if len(roots) == 1:
            root = roots.pop()
    memo[tensor] = root
    return root


def _between(ix: Index, end: int, root: str) -> set[int]:
    """The nodes on the paths from ``root`` to node ``end`` (``end`` included)."""
    found: set[int] = set()
    frontier = [end]
    while frontier:
        i = frontier.pop()
        if i in found or len(found) > 24:
            continue
        found.add(i)
        frontier.extend(ix.producer[x] for x in ix.flowing(i) if x != root and x in ix.producer)
    return found


def composite_activations(ix: Index) -> dict[int, str]:
    """Node index → neutral activation for every node of a composite activation (see the table)."""
    memo: dict[str, str] = {}
    found: dict[int, str] = {}
    for i, node in enumerate(ix.nodes):
        core = _CORES.get(node.op_type)
        if core is None or not node.input or i in found:
            continue
        x = _root(ix, node.input[0], memo)
        if x in ix.constants or x == node.output[0]:
            continue
        # forward from the core while the value is still an elementwise function of x alone
        end, nxt = None, ix.only_user(node.output[0])
        while nxt is not None and ix.nodes[nxt].op_type in _ELEMENTWISE:
            if _root(ix, ix.nodes[nxt].output[0], memo) != x:
                break
            if len(ix.flowing(nxt)) >= 2 or end is not None:
                end = nxt  # where the core's branch rejoins x (x · …): the activation's output so far
            nxt = ix.only_user(ix.nodes[nxt].output[0])
        if end is None:
            continue
        kind = core
        if node.op_type == "Sigmoid" and node.input[0] != x:
            kind = "gelu"  # x · σ(1.702 x): quick GELU
        for j in _between(ix, end, x):
            found[j] = kind
    return found


def norm_patterns(ix: Index) -> tuple[dict[int, str], list[tuple[str, str, str | None]]]:
    """Decomposed RMSNorm / LayerNorm: (node index → ``"norm"``, [(γ, kind, β)])."""
    ops: dict[int, str] = {}
    params: list[tuple[str, str, str | None]] = []
    for i, node in enumerate(ix.nodes):
        if node.op_type not in ("ReduceMean", "ReduceSum", "ReduceL2") or not node.input or i in ops:
            continue
        # ReduceSum / ReduceL2: an L2 normalisation x / ‖x‖ (CLIP's embeddings before the logits)
        sq = ix.producer.get(node.input[0])
        if node.op_type == "ReduceL2":
            y, nodes = node.input[0], {i}
        else:
            if sq is None:
                continue
            sq_node = ix.nodes[sq]
            flow = ix.flowing(sq)
            squares = (sq_node.op_type == "Pow" and len(flow) == 1) or (
                sq_node.op_type == "Mul" and len(sq_node.input) == 2 and sq_node.input[0] == sq_node.input[1]
            )
            if not squares or not flow:
                continue
            y, nodes = flow[0], {sq, i}
        # mean(y²) + ε → √ (or ^½) → 1/· (or rsqrt) → y · (or y / √·)
        cur, scaled = ix.only_user(node.output[0]), None
        for _ in range(5):
            if cur is None:
                break
            n = ix.nodes[cur]
            if n.op_type in ("Mul", "Div") and y in n.input:
                scaled = cur
                nodes.add(cur)
                break
            if (
                n.op_type not in ("Add", "Sqrt", "Reciprocal", "Rsqrt", "Div", "Cast", "Pow", "Max", "Clip")
                or len(ix.flowing(cur)) != 1
            ):
                break
            nodes.add(cur)
            cur = ix.only_user(n.output[0])
        if scaled is None:
            continue
        kind = "rmsnorm"
        centre = ix.producer.get(y)
        if centre is not None and ix.nodes[centre].op_type == "Sub":
            mean = ix.producer.get(ix.nodes[centre].input[1]) if len(ix.nodes[centre].input) > 1 else None
            if mean is not None and ix.nodes[mean].op_type == "ReduceMean":
                nodes.update((centre, mean))
                kind = "layernorm"
        gamma = beta = None
        after = ix.only_user(ix.nodes[scaled].output[0])
        while after is not None and ix.nodes[after].op_type == "Cast":
            nodes.add(after)
            after = ix.only_user(ix.nodes[after].output[0])
        if after is not None and ix.nodes[after].op_type == "Mul":
            weights = [x for x in ix.nodes[after].input if x in ix.inits]
            if len(weights) == 1 and len(ix.inits[weights[0]].dims) == 1:
                gamma = weights[0]
                nodes.add(after)
                bias_add = ix.only_user(ix.nodes[after].output[0])
                if bias_add is not None and ix.nodes[bias_add].op_type == "Add":
                    biases = [x for x in ix.nodes[bias_add].input if x in ix.inits]
                    if len(biases) == 1 and len(ix.flowing(bias_add)) == 1:
                        beta = biases[0]
                        nodes.add(bias_add)
        ops.update(dict.fromkeys(nodes, "norm"))
        if gamma is not None:
            params.append((gamma, kind, beta))
    return ops, params


def attention_products(ix: Index, weighted: set[int]) -> set[int]:
    """``MatMul`` nodes that multiply two computed tensors (attention's ``q·kᵀ`` and
    ``softmax·v``): bilinear, so what feeds them is followed by no nonlinearity."""
    return {
        i
        for i, node in enumerate(ix.nodes)
        if node.op_type == "MatMul" and i not in weighted and len(ix.flowing(i)) == 2
    }


def gate_nodes(ix: Index, op_of: Callable[[int], str]) -> dict[int, list[int]]:
    """Squeeze-excitation gates (Hu et al. 2018): ``x · σ(W₂ act(W₁ pool(x))))``. Returns the
    gate's sigmoid (or hardsigmoid) node → the weighted nodes between the pool and it."""
    gates: dict[int, list[int]] = {}
    for i, node in enumerate(ix.nodes):
        if op_of(i) != "sigmoid" or not node.input:
            continue
        users = ix.users(node.output[0])
        if not users or any(ix.nodes[u].op_type != "Mul" or len(ix.flowing(u)) != 2 for u in users):
            continue
        layers: list[int] = []
        cur: int | None = ix.producer.get(node.input[0])
        for _ in range(12):
            if cur is None:
                break
            op = op_of(cur)
            if ix.nodes[cur].op_type in _POOLS:
                if layers:
                    gates[i] = layers[::-1]
                break
            flow = ix.flowing(cur)
            if (
                op
                not in (
                    "weighted",
                    "pass",
                    "relu",
                    "silu",
                    "sigmoid",
                    "leaky_relu",
                    "gelu",
                    "hardswish",
                    "relu6",
                )
                or len(flow) != 1
            ):
                break
            if op == "weighted":
                layers.append(cur)
            cur = ix.producer.get(flow[0])
    return gates


FOLD_RULE = "FuseBatchNormIntoConv"


def folded_batchnorm(ix: Index) -> int:
    """How many convolutions carry a BatchNorm that the exporter folded into them.

    Evidence: the dynamo exporter's optimizer records the rewrite in the node's metadata
    (``pkg.onnxscript.rewriter.rule_name`` = ``FuseBatchNormIntoConv``, the ``namespace`` naming a
    ``BatchNorm`` module); the legacy exporter's constant folding replaces both the weight and
    the bias of the conv by tensors it computed (``onnx::Conv_N``): a conv exported as it was
    keeps its module's names (``conv1.weight``, ``conv1.bias``)."""
    count = 0
    for node in ix.nodes:
        if node.op_type != "Conv":
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        if FOLD_RULE in meta.get("pkg.onnxscript.rewriter.rule_name", "") or (
            "batch_norm" in meta.get("namespace", "") and "BatchNorm" in meta.get("namespace", "")
        ):
            count += 1
        elif (
            len(node.input) > 2
            and node.input[1] in ix.inits
            and all(x.startswith("onnx::") and x in ix.constants for x in node.input[1:3])
        ):
            count += 1  # weight and bias both computed at export (shared zero biases behind Identity)
    return count
