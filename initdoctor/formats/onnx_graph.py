"""Describe an ONNX graph (a parsed ``ModelProto``): weighted layers in node (execution) order,
their layouts, names and the nonlinearity that follows each (see :mod:`.onnx`). torch is never
imported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..gains import fans
from ..graph import (
    ACTIVATIONS,
    OpNode,
    following_nonlinearity,
    head_layers,
    residual_blocks,
    stream_inputs,
)
from ..model import Layer, ModelDescription, NormLayer
from ..stats import WeightStats
from .graph_patterns import normalized_after_activation
from .onnx_data import external_extent, initializer_array, weight_stats
from .onnx_patterns import (
    Index,
    attention_products,
    composite_activations,
    folded_batchnorm,
    gate_nodes,
    norm_patterns,
)
from .renorm import renormalized

_ACTIVATIONS = {
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Selu": "selu",
    "Gelu": "gelu",
    # MobileNetV3's piecewise swish (Howard et al. 2019, §5.2), its own gain (initdoctor.gains)
    "HardSwish": "hardswish",
    "HardSigmoid": "sigmoid",  # its approximation of σ: a gate, gain 1 like sigmoid
}
_PASS = {
    "Reshape",
    "Flatten",
    "Transpose",
    "Identity",
    "Dropout",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "ReduceMean",  # the dynamo exporter's adaptive average pooling (a norm's ReduceMean is matched first)
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "Concat",  # DenseNet: each input's channels go on unchanged
    "Split",
    "Slice",
}
#: ops with two computed inputs that are linear in the value followed (RoPE's x·cos + rot(x)·sin, a
#: gated product up · silu(gate), masking): a walk for a layer's follower may go through them
_LINEAR = {"Mul", "Div", "Sub", "Neg", "Where", "Expand", "Gather", "Tile", "Pad"}
_META = {"Shape", "Size"}
_NORMS = {
    "BatchNormalization": "batchnorm",
    "LayerNormalization": "layernorm",
    "GroupNormalization": "groupnorm",
    "InstanceNormalization": "instancenorm",
    "RMSNormalization": "rmsnorm",
    "SimplifiedLayerNormalization": "rmsnorm",
}
#: what the note on a graph with BatchNorm folded into its convolutions says
BN_FOLDED = (
    "BatchNorm folded into the convolutions by the exporter ({n} convs): judged as unnormalized "
    "(at init an eval-mode BatchNorm is the identity); export with dynamo=False and "
    "training=torch.onnx.TrainingMode.TRAINING for a BN-faithful graph"
)


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def describe_onnx_model(
    model: Any, path: Path | str, base: Path, *, with_stats: bool = True, progress: Any = None
) -> ModelDescription:
    """Describe a parsed ONNX ``ModelProto``; ``base`` is the folder external data is relative to.
    ``with_stats=False`` skips reading the weights (the probe only needs the tensor names)."""
    import onnx

    graph = model.graph
    for tensor in graph.initializer:  # all external data, not only the weights read below
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external_extent(tensor, base)
    ix = Index(graph)
    inits, constants = ix.inits, ix.constants

    def weight_of(name: str) -> tuple[str, bool] | None:
        """(initializer, transposed) for an input that is an initializer or Transpose(initializer)."""
        if name in inits:
            return name, False
        prod = ix.producer.get(name)
        node = ix.nodes[prod] if prod is not None else None
        if node is not None and node.op_type == "Transpose" and node.input and node.input[0] in inits:
            return node.input[0], True
        return None

    composite = composite_activations(ix)
    norm_ops, norm_found = norm_patterns(ix)
    # node ids are indices; a tensor's users are the nodes reading it
    found: list[tuple[str, str, str, tuple[int, ...], int]] = []  # (id, init, kind, torch shape, groups)
    node_names: dict[str, str] = {}
    tensor_io: dict[str, tuple[str, str]] = {}
    ops: list[tuple[str, float | None]] = []
    for i, node in enumerate(ix.nodes):
        nid = str(i)
        op, param = "other", None
        t, inputs, outputs = ix.op[i], ix.ins[i], ix.outs[i]
        data_input = inputs[1] if t == "Gather" and len(inputs) > 1 else (inputs[0] if inputs else "")
        if t in ("Conv", "ConvTranspose") and len(inputs) > 1 and inputs[1] in inits:
            dims = tuple(int(d) for d in inits[inputs[1]].dims)
            rank = len(dims) - 2
            kind = f"conv{rank}d" if t == "Conv" else f"conv_transpose{rank}d"
            found.append((nid, inputs[1], kind, dims, int(_attr(node, "group", 1))))
            op = "weighted"
        elif t == "Gemm" and len(inputs) > 1 and inputs[1] in inits and inputs[0] not in constants:
            dims = tuple(int(d) for d in inits[inputs[1]].dims)
            torch_shape = dims if _attr(node, "transB", 0) else dims[::-1]
            found.append((nid, inputs[1], "linear", torch_shape, 1))
            op = "weighted"
        elif t == "MatMul" and len(inputs) > 1 and inputs[0] not in constants:
            hit = weight_of(inputs[1])
            if hit is not None and len(inits[hit[0]].dims) == 2:
                dims = tuple(int(d) for d in inits[hit[0]].dims)
                torch_shape = dims if hit[1] else dims[::-1]
                found.append((nid, hit[0], "matmul", torch_shape, 1))
                op = "weighted"
        elif t == "Gather" and inputs and inputs[0] in inits and len(inits[inputs[0]].dims) == 2:
            found.append((nid, inputs[0], "embedding", tuple(int(d) for d in inits[inputs[0]].dims), 1))
            op = "weighted"
        elif t in _NORMS:
            op = "norm"
            if len(inputs) > 1 and inputs[1] in inits:
                bias = inputs[2] if len(inputs) > 2 and inputs[2] in inits else None
                norm_found.append((inputs[1], _NORMS[t], bias))
        elif i in norm_ops:
            op = "norm"  # a decomposed RMSNorm / LayerNorm (onnx_patterns)
        elif i in composite:
            op = composite[i]  # a composite activation (onnx_patterns)
        elif t in _ACTIVATIONS:
            op = _ACTIVATIONS[t]
            if op == "leaky_relu":
                param = float(_attr(node, "alpha", 0.01))
        elif t in _PASS:
            op = "pass"
        elif t in ("Add", "Sub", "Mul", "Div"):
            flowing = ix.flowing(i)
            # with a constant (a bias, a scale): pass; two computed tensors added: a skip connection
            op = "pass" if len(flowing) <= 1 else ("residual" if t == "Add" else "other")
        ops.append((op, param))
        if op == "weighted":
            node_names[nid] = _scope_name(node)
            tensor_io[nid] = (data_input, _after_bias(outputs[0], ix))
    nodes: dict[str, OpNode] = {"output": OpNode("output", "output")}
    for i, outputs in enumerate(ix.outs):
        # reading a tensor's shape (Shape, Size) is no use of its values
        users = [str(u) for out in outputs for u in ix.users(out) if ix.op[u] not in _META]
        users += ["output" for out in outputs if out in ix.outputs]
        produced = [str(ix.producer[x]) for x in ix.ins[i] if x in ix.producer and x not in constants]
        op, param = ops[i]
        nodes[str(i)] = OpNode(str(i), op, users, param, produced, outputs[0] if outputs else None)

    weighted = {int(f[0]) for f in found}
    attention = {str(i) for i in attention_products(ix, weighted)}
    linear = {str(i) for i, op in enumerate(ix.op) if op in _LINEAR}
    gates = gate_nodes(ix, lambda i: ops[i][0])
    layers: list[Layer] = []
    seen: set[str] = set()
    total = max(1, len({f[1] for f in found}))
    for nid, init_name, kind, torch_shape, groups in found:
        if init_name in seen:
            continue
        seen.add(init_name)
        tensor = inits[init_name]
        fan_in, fan_out = fans(kind, torch_shape, groups)
        name = layer_name(init_name, node_names[nid])
        stored = tuple(int(d) for d in tensor.dims)
        stats = weight_stats(tensor, base) if with_stats else _NO_STATS
        if progress is not None and with_stats:
            progress(len(seen), total)
        width = torch_shape[1] * groups if kind.startswith("conv_transpose") else torch_shape[0]
        bias = bias_of(ix, int(nid), width)
        layer = Layer(
            name, kind, init_name, stored, fan_in, fan_out, stats, groups, bias, tensors=tensor_io[nid]
        )
        follows = following_nonlinearity(nodes, nid) or structural_follower(nodes, nid, linear, attention)
        if follows is not None:
            layer.nonlinearity, layer.nonlinearity_param, layer.is_output = follows
        layer.normalized_after = normalized_after_activation(nodes, nid)  # BERT's MLM transform
        layers.append(layer)
    if with_stats:
        notes_tied = tied_copies(layers, inits, base)
    norms = (
        [
            NormLayer(
                w[: -len(".weight")] if w.endswith(".weight") else w,
                kind,
                w,
                tuple(int(d) for d in inits[w].dims),
                weight_stats(inits[w], base),
                weight_stats(inits[b], base) if b else None,
            )
            for w, kind, b in norm_found
        ]
        if with_stats
        else []
    )
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in graph.initializer)
    notes = [] if model.opset_import else ["the model declares no opset"]
    notes += notes_tied if with_stats else []
    folded = folded_batchnorm(ix)
    if folded:
        notes.append(BN_FOLDED.format(n=folded))
    layer_of = {nid: layer_name(init_name, node_names[nid]) for nid, init_name, _, _, _ in found}
    lookups = frozenset(layer.name for layer in layers if layer.kind == "embedding")
    blocks = residual_blocks(nodes, layer_of, lookups)
    feeders = stream_inputs(nodes, layer_of, blocks)
    gate_layers = [layer_of[str(n)] for members in gates.values() for n in members if str(n) in layer_of]
    desc = ModelDescription(
        str(path), "onnx", params, layers, norms, True, "execution", notes, blocks, feeders
    )
    desc.gates = list(dict.fromkeys(gate_layers))
    desc.head_layers = head_layers(nodes, layer_of)
    desc.renormalized = renormalized(nodes, layer_of, feeders, blocks)
    desc.bn_folded = folded > 0
    desc.concat_fed = [layer_of[nid] for nid in layer_of if _joins_concat(ix, nodes, nid)]
    return desc


def _joins_concat(ix: Index, nodes: dict[str, OpNode], start: str, max_steps: int = 32) -> bool:
    """Whether the output of node ``start`` reaches, through pass-through ops, a Concat of several
    computed tensors (DenseNet's feature maps): not a plain chain, as torch's ``cat`` (``"other"``)
    makes it for the torch readers."""
    frontier, seen = list(nodes[start].users), set[str]()
    while frontier and len(seen) < max_steps:
        node_id = frontier.pop()
        if node_id in seen or node_id not in nodes or node_id == "output":
            continue
        seen.add(node_id)
        if ix.op[int(node_id)] == "Concat" and len(ix.flowing(int(node_id))) > 1:
            return True
        if nodes[node_id].op == "pass":
            frontier.extend(nodes[node_id].users)
    return False


def structural_follower(
    nodes: dict[str, OpNode], start: str, linear: set[str], attention: set[str], max_steps: int = 48
) -> tuple[str, float | None, bool] | None:
    """What :func:`~initdoctor.graph.following_nonlinearity` cannot tell but the graph shows: a
    layer whose value reaches, through shape ops and linear ops (``linear``: RoPE's rotations, a
    gated product, masking), only attention's bilinear products (q, k, v), other weighted
    layers, norms, or a residual add (an attention output projection, an MLP's last layer) is
    followed by no nonlinearity: ``("linear", None, False)``; a graph output beside such uses is
    an end too (CLIP's projections). An activation right after the residual add (a ResNet
    block's post-add ReLU) is the layer's follower."""
    frontier = list(nodes[start].users)
    seen: set[str] = set()
    while frontier:
        node_id = frontier.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = nodes.get(node_id)
        if node is None or len(seen) > max_steps:
            return None
        if node_id in attention or node.op in ("norm", "weighted", "output"):
            continue  # an output beside other uses (CLIP's embeddings): an end, as in torch's graphs
        if node.op == "residual":
            after = following_nonlinearity(nodes, node_id)
            if after is not None and after[0] in ACTIVATIONS:
                return after[0], after[1], False
        elif node.op == "pass" or (node.op == "other" and node_id in linear):
            frontier.extend(node.users)
        else:
            return None  # an activation, an output or an unknown op on one path: not simple
    return ("linear", None, False) if seen else None


_NO_STATS = WeightStats(0, "float", math.nan, math.nan)


def tied_copies(layers: list[Layer], inits: dict[str, Any], base: Path) -> list[str]:
    """A projection whose weight is an embedding table's values, transposed, under another name:
    a tied head (T5's ``lm_head`` = ``shared``) whose tie the exporter broke (the legacy exporter
    folds ``shared.weight.T`` into a new constant). It is the embedding, as torch reports it
    (kind ``embedding``: not judged against a fan-in); each is named in a note."""
    tables = [x for x in layers if x.kind == "embedding" and len(x.shape) == 2]
    notes = []
    for layer in layers:
        if layer.kind not in ("matmul", "linear") or len(layer.shape) != 2:
            continue
        for table in tables:
            same = (layer.fan_out, layer.fan_in) == tuple(
                table.shape
            ) and layer.stats.numel == table.stats.numel
            if not same or not math.isclose(layer.stats.std, table.stats.std, rel_tol=1e-9):
                continue
            weight = initializer_array(inits[layer.weight_key], base)
            values = initializer_array(inits[table.weight_key], base)
            if np.array_equal(weight if layer.shape == table.shape else weight.T, values):
                layer.kind, layer.nonlinearity_param = "embedding", None
                layer.fan_in, layer.fan_out = fans("embedding", tuple(table.shape))
                notes.append(f"{layer.name}: its weight is {table.name}'s (a tied copy the exporter made)")
                break
    return notes


def bias_of(ix: Index, i: int, width: int) -> str | None:
    """The bias initializer of weighted node ``i``: Conv's ``B`` / Gemm's ``C`` (its third input),
    or the constant of an ``Add`` right after a MatMul (how exporters write a Linear); only a 1-D
    tensor of ``width`` values read by that node alone (a shared one is no layer's own bias)."""
    node = ix.nodes[i]
    found = None
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2:
        found = node.input[2]
    elif node.op_type == "MatMul":  # MatMul + Add: a Linear
        user = ix.only_user(node.output[0])
        if user is not None and ix.nodes[user].op_type == "Add" and len(ix.flowing(user)) == 1:
            found = next((x for x in ix.nodes[user].input if x in ix.inits), None)
    tensor = ix.inits.get(found or "")
    if tensor is None or [int(d) for d in tensor.dims] != [width] or len(ix.users(found or "")) != 1:
        return None
    return found


def _after_bias(tensor: str, ix: Index) -> str:
    """The tensor after a following bias ``Add`` (MatMul + Add is how exporters write Linear)."""
    user = ix.only_user(tensor)
    if user is not None:
        node = ix.nodes[user]
        if node.op_type == "Add" and len(ix.flowing(user)) == 1:
            return node.output[0]
    return tensor


def _scope_name(node: Any) -> str:
    """The module path of the torch module a node was exported from, or ``""``."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            path = ""
            for part in (str(p) for p in scopes[:-1] if p):
                # the dynamo exporter lists either each level's name or each level's full path
                path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
            return path
    if node.name.startswith("/") and node.name.count("/") >= 2:
        # the legacy exporter names a Sequential's child after it: /layer1/layer1.0/conv1/Conv
        path = prev = ""
        for part in (p for p in node.name.strip("/").split("/")[:-1] if p):
            path = path + part[len(prev) :] if prev and part.startswith(prev + ".") else f"{path}.{part}"
            prev = part
        return path.lstrip(".")
    return ""


def layer_name(initializer: str, scope: str) -> str:
    """``fc1.weight`` → ``fc1``; an exporter-made initializer (``onnx::MatMul_14``, ``val_0``, a
    folded ``W.T`` named ``permute_2``: FalconLinear) takes the module path of the node that reads it."""
    if initializer.endswith(".weight"):
        return initializer[: -len(".weight")]
    if scope and (initializer.startswith(("onnx::", "val_")) or "." not in initializer):
        return scope
    return initializer
