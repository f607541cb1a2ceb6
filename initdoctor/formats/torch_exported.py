"""Describe a ``torch.export.ExportedProgram`` from its ATen graph (a ``.pt2`` file, or the program
:mod:`.torch_module` exports when torch.fx cannot trace a module)."""

from __future__ import annotations

from typing import Any

from ..gains import fans
from ..graph import (
    OpNode,
    following_nonlinearity,
    graph_follower,
    head_layers,
    residual_blocks,
    stream_inputs,
)
from ..model import Layer, ModelDescription, NormLayer
from .graph_patterns import gate_layers, normalized_after_activation
from .renorm import renormalized
from .torch_ops import class_activation, class_name_is_norm, count_parameters, function_op, stats_reader

_EXPORT_WEIGHTED = {
    # aten op name: (weight arg index, groups arg index or None, transposed)
    "linear": (1, None, False),
    "conv1d": (1, 6, False),
    "conv2d": (1, 6, False),
    "conv3d": (1, 6, False),
    "conv_transpose1d": (1, 6, True),
    "conv_transpose2d": (1, 6, True),
    "conv_transpose3d": (1, 6, True),
    "convolution": (1, 8, None),
    "embedding": (0, None, False),
    # x @ W with W stored [in, out] (Hugging Face's Conv1D: addmm(bias, x, W))
    "addmm": (2, None, False),
    "mm": (1, None, False),
    "matmul": (1, None, False),
}


def _aten_name(target: Any) -> str:
    name = getattr(target, "__name__", str(target))  # "relu.default"
    return name.split(".")[0]


def _transposed_param(arg: Any, params: dict[str, str]) -> Any:
    """The parameter node that ``arg`` transposes (``W.T``, ``W.t()``: ``x @ W.T`` is
    ``nn.Linear``'s op), else None."""
    inner: Any = getattr(arg, "args", None) or (None,)
    found = _aten_name(getattr(arg, "target", "")) in ("t", "numpy_T", "transpose")
    return inner[0] if found and getattr(inner[0], "name", None) in params else None


def _users(node: Any) -> list[str]:
    """A node's users, without ``sym_size`` reads (a dynamic-batch export asks tensors their size:
    that is no use of the value)."""
    return [u.name for u in node.users if _aten_name(u.target) != "sym_size"]


def describe_exported(program: Any, *, path: str, stats: Any = None) -> ModelDescription:
    """Describe a ``torch.export.ExportedProgram`` from its ATen graph (``stats(name)``: a
    tensor's statistics read elsewhere, see :func:`.torch_ops.stats_reader`)."""
    import torch

    tensor_stats = stats_reader(stats)

    params = dict(program.graph_signature.inputs_to_parameters)
    signature = program.graph_signature
    constant = (
        set(params)
        | set(signature.inputs_to_buffers)
        | set(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
    )
    state = program.state_dict
    nodes: dict[str, OpNode] = {}
    found: list[tuple[str, str, str, int]] = []  # (node, fqn, kind, groups)
    for node in program.graph.nodes:
        op, param = "other", None
        if node.op == "call_function":
            name = _aten_name(node.target)
            spec = _EXPORT_WEIGHTED.get(name)
            weight_arg = node.args[spec[0]] if spec and len(node.args) > spec[0] else None
            if name in ("mm", "matmul") and (param_t := _transposed_param(weight_arg, params)) is not None:
                name, spec, weight_arg = (
                    "linear",
                    _EXPORT_WEIGHTED["linear"],
                    param_t,
                )  # x @ W.T: FalconLinear
            if spec and isinstance(weight_arg, torch.fx.Node) and weight_arg.name in params:
                fqn = params[weight_arg.name]
                widx, gidx, transposed = spec
                if name == "convolution":
                    transposed = bool(node.args[6])
                rank = state[fqn].dim()
                if name in ("addmm", "mm", "matmul"):
                    kind = "matmul"
                    if rank != 2:
                        nodes[node.name] = OpNode(
                            node.name,
                            "other",
                            _users(node),
                            None,
                            [a.name for a in node.all_input_nodes if a.name not in constant],
                            node.name,
                            name,
                        )
                        continue
                elif name in ("linear", "embedding"):
                    kind = name
                else:
                    kind = f"conv_transpose{rank - 2}d" if transposed else f"conv{rank - 2}d"
                groups = int(node.args[gidx]) if gidx is not None and len(node.args) > gidx else 1
                found.append((node.name, fqn, kind, groups))
                op = "weighted"
            elif (scope := _scope(node)) is not None:
                op = scope  # an op inside a norm (LlamaRMSNorm: pow, mean, rsqrt, mul) or a GELU module
            elif name in ("add", "add_"):
                flowing = [a for a in node.args if isinstance(a, torch.fx.Node) and a.name not in constant]
                op = "pass" if len(flowing) <= 1 else "residual"
            else:
                op = function_op(name)
                if op == "leaky_relu":
                    param = float(node.args[1]) if len(node.args) > 1 else 0.01
                elif op == "attention" and name in ("matmul", "bmm", "mm"):
                    computed = [
                        a for a in node.args if isinstance(a, torch.fx.Node) and a.name not in constant
                    ]
                    op = "attention" if len(computed) == 2 else "other"
        elif node.op == "output":
            op = "output"
        raw = _aten_name(node.target) if node.op == "call_function" else ""
        inputs = [a.name for a in node.all_input_nodes if a.name not in constant]
        nodes[node.name] = OpNode(node.name, op, _users(node), param, inputs, node.name, raw)

    layers: list[Layer] = []
    seen: set[str] = set()
    for node_name, fqn, kind, groups in found:
        if fqn in seen:
            continue
        seen.add(fqn)
        weight = state[fqn]
        shape = tuple(int(s) for s in weight.shape)
        fan_in, fan_out = fans(kind, shape[::-1] if kind == "matmul" else shape, groups)  # matmul: [in, out]
        name = fqn[: -len(".weight")] if fqn.endswith(".weight") else fqn
        bias_key = f"{name}.bias" if f"{name}.bias" in state else None
        layer = Layer(name, kind, fqn, shape, fan_in, fan_out, tensor_stats(weight, fqn), groups, bias_key)
        hit = following_nonlinearity(nodes, node_name) or graph_follower(nodes, node_name)
        if hit is not None:
            layer.nonlinearity, layer.nonlinearity_param, layer.is_output = hit
            layer.normalized_after = normalized_after_activation(nodes, node_name)
        layers.append(layer)
    norms = [
        NormLayer(
            fqn[: -len(".weight")],
            "norm",
            fqn,
            tuple(t.shape),
            tensor_stats(t, fqn),
            tensor_stats(state[fqn[:-6] + "bias"], fqn[:-6] + "bias") if fqn[:-6] + "bias" in state else None,
        )
        for fqn, t in state.items()
        if fqn.endswith(".weight") and t.dim() == 1 and fqn not in seen
    ]
    layer_of = {
        node_name: (fqn[: -len(".weight")] if fqn.endswith(".weight") else fqn)
        for node_name, fqn, _, _ in found
    }
    desc = ModelDescription(
        path,
        "torch.export",
        count_parameters(list(state.values())),
        layers,
        norms,
        True,
        "execution",
        blocks=(blocks := residual_blocks(nodes, layer_of, _lookups(layers))),
        stream_inputs=stream_inputs(nodes, layer_of, blocks),
        gates=gate_layers(nodes, layer_of),
        head_layers=head_layers(nodes, layer_of),
    )
    desc.renormalized = renormalized(nodes, layer_of, desc.stream_inputs, desc.blocks)
    return desc


def _scope(node: Any) -> str | None:
    """``"norm"`` or an activation when ``node`` runs inside such a module (its innermost
    ``nn_module_stack`` entry): ``LlamaRMSNorm``, ``T5LayerNorm``… written as ops rather than one
    norm op; ``NewGELUActivation`` written as tanh and products."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    _path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    if class_name_is_norm(name):
        return "norm"
    return class_activation(name)


def _lookups(layers: list[Layer]) -> frozenset[str]:
    """Names of the embedding lookups (an add of two is no residual block)."""
    return frozenset(layer.name for layer in layers if layer.kind == "embedding")
