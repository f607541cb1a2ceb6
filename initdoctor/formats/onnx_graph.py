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
from ..graph import OpNode, following_nonlinearity, residual_blocks, stream_inputs
from ..model import Layer, ModelDescription, NormLayer
from ..stats import WeightStats
from .onnx_data import external_extent, weight_stats

_ACTIVATIONS = {
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Selu": "selu",
    "Gelu": "gelu",
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
    "Squeeze",
    "Unsqueeze",
    "Cast",
}
_NORMS = {
    "BatchNormalization": "batchnorm",
    "LayerNormalization": "layernorm",
    "GroupNormalization": "groupnorm",
    "InstanceNormalization": "instancenorm",
    "RMSNormalization": "rmsnorm",
    "SimplifiedLayerNormalization": "rmsnorm",
}


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
    inits = {t.name: t for t in graph.initializer}
    for tensor in graph.initializer:  # all external data, not only the weights read below
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external_extent(tensor, base)
    constants = set(inits)
    producers: dict[str, Any] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
        for out in node.output:
            producers[out] = node

    def weight_of(name: str) -> tuple[str, bool] | None:
        """(initializer, transposed) for an input that is an initializer or Transpose(initializer)."""
        if name in inits:
            return name, False
        prod = producers.get(name)
        if prod is not None and prod.op_type == "Transpose" and prod.input and prod.input[0] in inits:
            return prod.input[0], True
        return None

    # Build the op graph: node ids are indices; a tensor's users are the nodes reading it.
    index_of = {id(node): i for i, node in enumerate(graph.node)}
    readers: dict[str, list[str]] = {}
    for i, node in enumerate(graph.node):
        for inp in node.input:
            readers.setdefault(inp, []).append(str(i))
    for out in graph.output:
        readers.setdefault(out.name, []).append("output")
    gelu_outputs: set[int] = set()
    for node in graph.node:
        if node.op_type == "Erf" and _is_gelu(node, producers, readers, graph.node, constants):
            add = graph.node[int(readers[node.output[0]][0])]
            after = readers.get(add.output[0], [])
            if len(after) == 1 and after[0] != "output" and graph.node[int(after[0])].op_type == "Mul":
                gelu_outputs.add(int(after[0]))
    silu_nodes: set[int] = set()  # x · sigmoid(x): the Sigmoid and the Mul
    for i, node in enumerate(graph.node):
        if node.op_type == "Sigmoid" and node.input:
            after = readers.get(node.output[0], [])
            if len(after) == 1 and after[0] != "output":
                mul = graph.node[int(after[0])]
                if mul.op_type == "Mul" and set(mul.input) == {node.input[0], node.output[0]}:
                    silu_nodes.update((i, int(after[0])))
    nodes: dict[str, OpNode] = {"output": OpNode("output", "output")}
    found: list[tuple[str, str, str, tuple[int, ...], int]] = []  # (id, init, kind, torch shape, groups)
    node_names: dict[str, str] = {}
    tensor_io: dict[str, tuple[str, str]] = {}
    norm_found: list[tuple[str, str, str | None]] = []
    for i, node in enumerate(graph.node):
        nid = str(i)
        users = [u for out in node.output for u in readers.get(out, [])]
        op, param = "other", None
        t = node.op_type
        data_input = (
            node.input[1] if t == "Gather" and len(node.input) > 1 else (node.input[0] if node.input else "")
        )
        if t in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            dims = tuple(int(d) for d in inits[node.input[1]].dims)
            rank = len(dims) - 2
            kind = f"conv{rank}d" if t == "Conv" else f"conv_transpose{rank}d"
            found.append((nid, node.input[1], kind, dims, int(_attr(node, "group", 1))))
            op = "weighted"
        elif (
            t == "Gemm" and len(node.input) > 1 and node.input[1] in inits and node.input[0] not in constants
        ):
            dims = tuple(int(d) for d in inits[node.input[1]].dims)
            torch_shape = dims if _attr(node, "transB", 0) else dims[::-1]
            found.append((nid, node.input[1], "linear", torch_shape, 1))
            op = "weighted"
        elif t == "MatMul" and len(node.input) > 1 and node.input[0] not in constants:
            hit = weight_of(node.input[1])
            if hit is not None and len(inits[hit[0]].dims) == 2:
                dims = tuple(int(d) for d in inits[hit[0]].dims)
                torch_shape = dims if hit[1] else dims[::-1]
                found.append((nid, hit[0], "matmul", torch_shape, 1))
                op = "weighted"
        elif t == "Gather" and node.input and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
            found.append(
                (nid, node.input[0], "embedding", tuple(int(d) for d in inits[node.input[0]].dims), 1)
            )
            op = "weighted"
        elif t in _NORMS:
            op = "norm"
            if len(node.input) > 1 and node.input[1] in inits:
                bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
                norm_found.append((node.input[1], _NORMS[t], bias))
        elif i in silu_nodes:
            op = "silu"
        elif t in _ACTIVATIONS:
            op = _ACTIVATIONS[t]
            if op == "leaky_relu":
                param = float(_attr(node, "alpha", 0.01))
        elif t in _PASS:
            op = "pass"
        elif t in ("Add", "Sub"):
            flowing = [x for x in node.input if x not in constants]
            op = "pass" if len(flowing) <= 1 else ("residual" if t == "Add" else "other")
        elif t == "Erf" and _is_gelu(node, producers, readers, graph.node, constants):
            op = "gelu"
        elif i in gelu_outputs:
            op = "gelu"  # the x · (1 + erf(…)) product: GELU's output
        elif t in ("Div", "Mul") and _feeds_erf(node, readers, graph.node, constants):
            op = "pass"  # x / √2 on the way into GELU's Erf
        produced = [
            str(index_of[id(producers[x])]) for x in node.input if x in producers and x not in constants
        ]
        nodes[nid] = OpNode(nid, op, users, param, produced, node.output[0] if node.output else None)
        node_names[nid] = _scope_name(node)
        if op == "weighted":
            tensor_io[nid] = (data_input, _after_bias(node.output[0], readers, graph.node, constants))

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
        layer = Layer(name, kind, init_name, stored, fan_in, fan_out, stats, groups, tensors=tensor_io[nid])
        follows = following_nonlinearity(nodes, nid)
        if follows is not None:
            layer.nonlinearity, layer.nonlinearity_param, layer.is_output = follows
        layers.append(layer)
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
    layer_of = {nid: layer_name(init_name, node_names[nid]) for nid, init_name, _, _, _ in found}
    blocks = residual_blocks(nodes, layer_of)
    feeders = stream_inputs(nodes, layer_of, blocks)
    return ModelDescription(
        str(path), "onnx", params, layers, norms, True, "execution", notes, blocks, feeders
    )


def _feeds_erf(node: Any, readers: dict[str, list[str]], nodes: Any, constants: set[str]) -> bool:
    """``x / √2`` (or ``x · 1/√2``) whose only reader is an ``Erf``: part of an exported GELU."""
    if sum(1 for x in node.input if x not in constants) != 1:
        return False
    users = readers.get(node.output[0], [])
    return len(users) == 1 and users[0] != "output" and nodes[int(users[0])].op_type == "Erf"


def _is_gelu(
    erf: Any, producers: dict[str, Any], readers: dict[str, list[str]], nodes: Any, constants: set[str]
) -> bool:
    """``0.5 · x · (1 + erf(x / √2))``: the Erf's input is ``x/√2`` and its output, plus one, is
    multiplied back into ``x`` — the legacy exporter's GELU."""
    scaled = producers.get(erf.input[0]) if erf.input else None
    if scaled is None or scaled.op_type not in ("Div", "Mul"):
        return False
    users = readers.get(erf.output[0], [])
    return len(users) == 1 and users[0] != "output" and nodes[int(users[0])].op_type == "Add"


_NO_STATS = WeightStats(0, "float", math.nan, math.nan)


def _after_bias(tensor: str, readers: dict[str, list[str]], nodes: Any, constants: set[str]) -> str:
    """The tensor after a following bias ``Add`` (MatMul + Add is how exporters write Linear)."""
    users = readers.get(tensor, [])
    if len(users) == 1 and users[0] != "output":
        node = nodes[int(users[0])]
        if node.op_type == "Add" and sum(1 for x in node.input if x not in constants) == 1:
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
        return ".".join(part for part in node.name.strip("/").split("/")[:-1] if part)
    return ""


def layer_name(initializer: str, scope: str) -> str:
    """``fc1.weight`` → ``fc1``; an exporter-made initializer (``onnx::MatMul_14``, ``val_0``) takes
    the module path of the node that reads it."""
    if initializer.endswith(".weight"):
        return initializer[: -len(".weight")]
    if scope and (initializer.startswith("onnx::") or initializer.startswith("val_")):
        return scope
    return initializer
