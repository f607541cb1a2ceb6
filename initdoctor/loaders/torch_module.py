"""Describe a live torch model: an ``nn.Module`` (factory, trusted pickle), a TorchScript module,
or a ``torch.export`` program.

Execution order and the nonlinearity after each layer come from a graph where one is available:
``torch.fx.symbolic_trace`` for an ``nn.Module``, the ATen graph of an ``ExportedProgram``. When
tracing fails (data-dependent control flow) and for TorchScript, the fallback is the module
registration order and the next leaf module (``nn.Sequential``-style models read exactly).
"""

from __future__ import annotations

import operator
from typing import Any

from ..gains import fans
from ..graph import OpNode, following_nonlinearity, residual_blocks, stream_inputs
from ..model import Layer, ModelDescription, NormLayer

# Module class name → layer kind (matched along the MRO, so subclasses count; TorchScript
# modules expose the original class name as ``original_name``).
_WEIGHTED_CLASSES = {
    "Linear": "linear",
    "Bilinear": None,
    "Conv1d": "conv1d",
    "Conv2d": "conv2d",
    "Conv3d": "conv3d",
    "ConvTranspose1d": "conv_transpose1d",
    "ConvTranspose2d": "conv_transpose2d",
    "ConvTranspose3d": "conv_transpose3d",
    "Embedding": "embedding",
    "EmbeddingBag": "embedding",
    "Conv1D": "linear",  # Hugging Face transformers' Conv1D: a Linear storing W as [in, out]
}
_NORM_CLASSES = {
    "BatchNorm1d": "batchnorm",
    "BatchNorm2d": "batchnorm",
    "BatchNorm3d": "batchnorm",
    "SyncBatchNorm": "batchnorm",
    "LayerNorm": "layernorm",
    "GroupNorm": "groupnorm",
    "InstanceNorm1d": "instancenorm",
    "InstanceNorm2d": "instancenorm",
    "InstanceNorm3d": "instancenorm",
    "RMSNorm": "rmsnorm",
}
_ACTIVATION_CLASSES = {
    "ReLU": "relu",
    "ReLU6": None,
    "LeakyReLU": "leaky_relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "SELU": "selu",
    "GELU": "gelu",
    "SiLU": "silu",
}
_PASS_CLASSES = {
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "Flatten",
    "Unflatten",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
}

# Function / method / ATen op names (``aten.relu.default`` → ``relu``).
_ACTIVATION_NAMES = {
    "relu": "relu",
    "relu_": "relu",
    "leaky_relu": "leaky_relu",
    "leaky_relu_": "leaky_relu",
    "tanh": "tanh",
    "tanh_": "tanh",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "selu": "selu",
    "selu_": "selu",
    "gelu": "gelu",
    "silu": "silu",
    "silu_": "silu",
}
_PASS_NAMES = {
    "view",
    "reshape",
    "flatten",
    "t",
    "permute",
    "transpose",
    "dropout",
    "dropout_",
    "clone",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "_to_copy",
    "to",
    "alias",
    "detach",
    "getitem",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "max_pool2d_with_indices",
    "_adaptive_avg_pool2d",
    "mean",
}


def _class_names(module: Any) -> list[str]:
    original = getattr(module, "original_name", None)  # TorchScript
    names = [original] if isinstance(original, str) else []
    return names + [cls.__name__ for cls in type(module).__mro__]


def _lookup(module: Any, table: dict[str, Any]) -> tuple[bool, Any]:
    for name in _class_names(module):
        if name in table:
            return True, table[name]
    return False, None


def tensor_stats(tensor: Any):
    """:class:`~initdoctor.stats.WeightStats` of a torch tensor (float64 accumulation)."""
    import torch

    from ..stats import array_stats

    t = tensor.detach()
    if t.is_quantized:
        t = t.int_repr()
    dtype = str(t.dtype).replace("torch.", "")
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return array_stats(t.reshape(-1).numpy(), dtype=dtype)


def count_parameters(tensors: Any) -> int:
    """Number of elements over tensors, counting storage shared by several names (tied) once."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for t in tensors:
        try:
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):
            ident = (id(t), 0, tuple(t.shape))
        if ident in seen and ident[0] != 0:
            continue
        seen.add(ident)
        total += int(t.numel())
    return total


def _module_op(module: Any) -> tuple[str, float | None]:
    hit, kind = _lookup(module, _WEIGHTED_CLASSES)
    if hit and kind:
        return "weighted", None
    hit, act = _lookup(module, _ACTIVATION_CLASSES)
    if hit and act:
        param = float(getattr(module, "negative_slope", 0.01)) if act == "leaky_relu" else None
        return act, param
    if any(name in _PASS_CLASSES for name in _class_names(module)):
        return "pass", None
    if _lookup(module, _NORM_CLASSES)[0]:
        return "norm", None
    return "other", None


_NORM_NAMES = {
    "layer_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "native_layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "native_group_norm",
}


def _fx_graph(root: Any) -> tuple[list[str], dict[str, OpNode], dict[str, str]] | None:
    """Trace ``root`` with torch.fx; return (weighted module paths in call order, nodes, path→node id)."""
    import torch.fx

    try:
        traced = torch.fx.symbolic_trace(root)
    except Exception:  # noqa: BLE001 - any tracing failure means "no simple graph"
        return None
    modules = dict(traced.named_modules())
    nodes: dict[str, OpNode] = {}
    call_order: list[str] = []
    node_of: dict[str, str] = {}
    for node in traced.graph.nodes:
        op, param = "other", None
        if node.op == "call_module":
            op, param = _module_op(modules[node.target])
            if op == "weighted" and node.target not in node_of:
                call_order.append(node.target)
                node_of[node.target] = node.name
        elif node.op in ("call_function", "call_method"):
            name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
            if node.target in (operator.add, operator.iadd) or name in ("add", "add_"):
                op = _add_op(node)
            elif name in _ACTIVATION_NAMES:
                op = _ACTIVATION_NAMES[name]
                if op == "leaky_relu":
                    slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
                    param = float(slope)
            elif name in _PASS_NAMES:
                op = "pass"
            elif name in _NORM_NAMES:
                op = "norm"
        elif node.op == "output":
            op = "output"
        inputs = [a.name for a in node.all_input_nodes if a.op != "get_attr"]
        nodes[node.name] = OpNode(node.name, op, [u.name for u in node.users], param, inputs, node.name)
    return call_order, nodes, node_of


def _add_op(node: Any) -> str:
    """A bias add (one operand a constant or an attribute) passes through; a residual add does not."""
    import torch.fx

    flowing = [a for a in node.args if isinstance(a, torch.fx.Node) and a.op not in ("get_attr",)]
    return "pass" if len(flowing) <= 1 else "residual"


def describe_module(module: Any, *, path: str, fmt: str) -> ModelDescription:
    """Describe an ``nn.Module`` or TorchScript module."""
    return describe_module_graph(module, path=path, fmt=fmt)[0]


def describe_module_graph(module: Any, *, path: str, fmt: str) -> tuple[ModelDescription, Any, str]:
    """Describe a module and say what runs it for the probe: the module itself (backend
    ``torch``/``torchscript``) or, when only ``torch.export`` could read its graph, that program
    (``torch.export``; its parameters are the module's own)."""
    import torch

    weighted: dict[str, tuple[Any, str]] = {}
    norms: list[NormLayer] = []
    leaves: list[tuple[str, Any]] = []
    seen_weights: set[int] = set()
    notes: list[str] = []
    for name, mod in module.named_modules():
        if not list(mod.children()):
            leaves.append((name, mod))
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        hit, kind = _lookup(mod, _WEIGHTED_CLASSES)
        if hit and kind:
            if id(weight) in seen_weights:
                notes.append(f"{name}: weight shared with an earlier layer, counted once")
                continue
            seen_weights.add(id(weight))
            weighted[name] = (mod, kind)
            continue
        hit, norm_kind = _lookup(mod, _NORM_CLASSES)
        if hit and weight.dim() >= 1:
            bias = getattr(mod, "bias", None)
            norms.append(
                NormLayer(
                    name,
                    norm_kind,
                    f"{name}.weight",
                    tuple(weight.shape),
                    tensor_stats(weight),
                    tensor_stats(bias) if isinstance(bias, torch.Tensor) else None,
                )
            )

    traced = None if isinstance(module, torch.jit.ScriptModule) else _fx_graph(module)
    if traced is None and not isinstance(module, torch.jit.ScriptModule):
        program = export_for_graph(module, weighted)
        if program is not None:
            desc = describe_exported(program, path=path)
            desc.format = fmt
            desc.notes.append("graph read from torch.export (torch.fx could not trace the model)")
            return desc, program, "torch.export"
    if traced is not None:
        call_order, nodes, node_of = traced
        order = [n for n in call_order if n in weighted] + [n for n in weighted if n not in node_of]
        follow = {n: following_nonlinearity(nodes, node_of[n]) for n in order if n in node_of}
        order_kind = "execution"
        layer_nodes = {node: path for path, node in node_of.items() if path in weighted}
        blocks = residual_blocks(nodes, layer_nodes)
        feeders = stream_inputs(nodes, layer_nodes, blocks)
    else:
        order = list(weighted)
        follow = _follow_by_module_order(leaves, weighted)
        order_kind = "module"
        blocks, feeders = [], []
        if not isinstance(module, torch.jit.ScriptModule):
            notes.append("torch.fx could not trace the model: module order and neighbours used")

    layers = []
    for name in order:
        mod, kind = weighted[name]
        weight = mod.weight
        groups = int(getattr(mod, "groups", 1) or 1)
        shape = tuple(int(s) for s in weight.shape)
        fan_in, fan_out = fans(kind, shape, groups)
        bias = getattr(mod, "bias", None)
        layer = Layer(
            name,
            kind,
            f"{name}.weight",
            shape,
            fan_in,
            fan_out,
            tensor_stats(weight),
            groups,
            bias_key=f"{name}.bias" if isinstance(bias, torch.Tensor) else None,
        )
        hit = follow.get(name)
        if hit is not None:
            layer.nonlinearity, layer.nonlinearity_param, layer.is_output = hit
        layers.append(layer)
    params = count_parameters(list(module.state_dict(keep_vars=True).values()))
    desc = ModelDescription(path, fmt, params, layers, norms, True, order_kind, notes, blocks, feeders)
    return desc, module, "torchscript" if isinstance(module, torch.jit.ScriptModule) else "torch"


def export_for_graph(module: Any, weighted: dict[str, tuple[Any, str]]) -> Any:
    """``torch.export`` the model on a small example input inferred from its first weighted module
    (token ids for an embedding), or None when that fails. Parameters stay shared with ``module``."""
    import torch

    from ..model import infer_input_shape

    if not weighted:
        return None
    first, kind = next(iter(weighted.values()))
    shape = tuple(int(d) for d in first.weight.shape)
    if kind == "linear" and type(first).__name__ == "Conv1D":
        shape = shape[::-1]
    example_shape = infer_input_shape(kind, shape, int(getattr(first, "groups", 1) or 1), 2)
    if kind == "embedding":
        example = torch.randint(0, shape[0], example_shape, generator=torch.Generator().manual_seed(0))
    else:
        example = torch.randn(example_shape, generator=torch.Generator().manual_seed(0))
    was_training = module.training
    try:
        module.eval()
        return torch.export.export(module, (example,), strict=False)
    except Exception:  # noqa: BLE001 - any export failure means "no graph"
        return None
    finally:
        module.train(was_training)


def _follow_by_module_order(
    leaves: list[tuple[str, Any]], weighted: dict[str, Any]
) -> dict[str, tuple[str, float | None, bool] | None]:
    """Nonlinearity after each weighted leaf: the next non-pass leaf module in registration order."""
    out: dict[str, tuple[str, float | None, bool] | None] = {}
    for i, (name, _) in enumerate(leaves):
        if name not in weighted:
            continue
        result: tuple[str, float | None, bool] | None = ("linear", None, True)
        for _, nxt in leaves[i + 1 :]:
            op, param = _module_op(nxt)
            if op == "pass":
                continue
            if op == "weighted":
                result = ("linear", None, False)
            elif op == "other":
                result = None
            else:
                result = (op, param, False)
            break
        out[name] = result
    return out


# --- torch.export -------------------------------------------------------------------------------
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


def describe_exported(program: Any, *, path: str) -> ModelDescription:
    """Describe a ``torch.export.ExportedProgram`` from its ATen graph."""
    import torch

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
                            [u.name for u in node.users],
                            None,
                            [a.name for a in node.all_input_nodes if a.name not in constant],
                            node.name,
                        )
                        continue
                elif name in ("linear", "embedding"):
                    kind = name
                else:
                    kind = f"conv_transpose{rank - 2}d" if transposed else f"conv{rank - 2}d"
                groups = int(node.args[gidx]) if gidx is not None and len(node.args) > gidx else 1
                found.append((node.name, fqn, kind, groups))
                op = "weighted"
            elif name in ("add", "add_"):
                flowing = [a for a in node.args if isinstance(a, torch.fx.Node) and a.name not in constant]
                op = "pass" if len(flowing) <= 1 else "residual"
            elif name in _NORM_NAMES:
                op = "norm"
            elif name in _ACTIVATION_NAMES:
                op = _ACTIVATION_NAMES[name]
                if op == "leaky_relu":
                    param = float(node.args[1]) if len(node.args) > 1 else 0.01
            elif name in _PASS_NAMES:
                op = "pass"
        elif node.op == "output":
            op = "output"
        inputs = [a.name for a in node.all_input_nodes if a.name not in constant]
        nodes[node.name] = OpNode(node.name, op, [u.name for u in node.users], param, inputs, node.name)

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
        layer = Layer(name, kind, fqn, shape, fan_in, fan_out, tensor_stats(weight), groups, bias_key)
        hit = following_nonlinearity(nodes, node_name)
        if hit is not None:
            layer.nonlinearity, layer.nonlinearity_param, layer.is_output = hit
        layers.append(layer)
    norms = [
        NormLayer(
            fqn[: -len(".weight")],
            "norm",
            fqn,
            tuple(t.shape),
            tensor_stats(t),
            tensor_stats(state[fqn[:-6] + "bias"]) if fqn[:-6] + "bias" in state else None,
        )
        for fqn, t in state.items()
        if fqn.endswith(".weight") and t.dim() == 1 and fqn not in seen
    ]
    layer_of = {
        node_name: (fqn[: -len(".weight")] if fqn.endswith(".weight") else fqn)
        for node_name, fqn, _, _ in found
    }
    return ModelDescription(
        path,
        "torch.export",
        count_parameters(list(state.values())),
        layers,
        norms,
        True,
        "execution",
        blocks=(blocks := residual_blocks(nodes, layer_of)),
        stream_inputs=stream_inputs(nodes, layer_of, blocks),
    )
