"""Describe a live torch model: an ``nn.Module`` (factory, trusted pickle), a TorchScript module,
or a ``torch.export`` program (:mod:`.torch_exported`; op tables in :mod:`.torch_ops`).

Execution order and the nonlinearity after each layer come from a graph where one is available:
``torch.fx.symbolic_trace`` for an ``nn.Module``, the ATen graph of an ``ExportedProgram``. When
tracing fails (data-dependent control flow) and for TorchScript, the fallback is the module
registration order and the next leaf module (``nn.Sequential``-style models read exactly).
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

from ..errors import InputError
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
from .base import torch_region
from .export_example import export_examples
from .graph_patterns import gate_layers, normalized_after_activation
from .model_inputs import config_inputs
from .renorm import renormalized
from .torch_device import place
from .torch_exported import describe_exported
from .torch_ops import (
    WEIGHTED_CLASSES,
    activation_module,
    count_parameters,
    function_op,
    is_norm_module,
    lookup,
    module_op,
    norm_kind_of,
    stats_reader,
)
from .torch_sharded import class_name as class_name  # re-exported for api.load
from .torch_sharded import every_rank, fsdp_original
from .torch_sharded_graph import has_dtensor, sharded_source, sharded_stats, twin_exporter
from .torch_structure import module_blocks


def fx_trace(root: Any) -> Any:
    """``torch.fx`` trace of ``root`` with normalization modules kept whole (a ``LlamaRMSNorm``,
    timm's ``BatchNormAct2d``: one ``call_module`` node, not their inner ops and shape checks).
    Activation modules known by name (``NewGELUActivation``…) are kept whole too. The probe runs
    this same graph, so node names agree. Raises what tracing raises."""
    import torch.fx

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            named = activation_module(m) is not None or is_norm_module(m)
            return named or super().is_leaf_module(fsdp_original(m), qualname)

    tracer = Tracer()
    graph = tracer.trace(root)
    return torch.fx.GraphModule(tracer.root, graph, type(root).__name__)


def _fx_graph(root: Any) -> tuple[list[str], dict[str, OpNode], dict[str, str]] | None:
    """Trace ``root`` with torch.fx; return (weighted module paths in call order, nodes, path→node id).

    ``nn.MultiheadAttention`` is one node whose output projection it applies without calling
    ``out_proj`` (``F.multi_head_attention_forward`` uses the weight directly): that node stands
    for ``out_proj``."""
    import torch

    try:
        traced = fx_trace(root)
    except Exception:  # noqa: BLE001 - any tracing failure means "no simple graph"
        traced = None
    if has_dtensor(root) and not every_rank(traced is not None):
        return None  # a sharded model's ranks must read the same graph (or all fall back)
    if traced is None:
        return None
    modules = dict(traced.named_modules())
    nodes: dict[str, OpNode] = {}
    call_order: list[str] = []
    node_of: dict[str, str] = {}
    for node in traced.graph.nodes:
        op, param, raw = "other", None, ""
        if node.op == "call_module":
            mod = modules[node.target]
            raw = type(mod).__name__
            op, param = module_op(mod)
            target = node.target
            if raw == "MultiheadAttention" and isinstance(getattr(mod, "out_proj", None), torch.nn.Module):
                op, target = "weighted", f"{node.target}.out_proj"
            if op == "weighted" and target not in node_of:
                call_order.append(target)
                node_of[target] = node.name
        elif node.op in ("call_function", "call_method"):
            name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
            raw = name
            if node.target in (operator.add, operator.iadd) or name in ("add", "add_"):
                op = _add_op(node)
            else:
                op = function_op(name)
                if op == "leaky_relu":
                    slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
                    param = float(slope)
                elif op == "attention" and name in ("matmul", "bmm") and len(_flowing(node)) < 2:
                    op = "other"  # a product with a constant or parameter: not attention
        elif node.op == "output":
            op = "output"
        inputs = [a.name for a in node.all_input_nodes if a.op != "get_attr"]
        nodes[node.name] = OpNode(node.name, op, [u.name for u in node.users], param, inputs, node.name, raw)
    return call_order, nodes, node_of


def _flowing(node: Any) -> list[Any]:
    import torch.fx

    return [a for a in node.args if isinstance(a, torch.fx.Node) and a.op != "get_attr"]


def _add_op(node: Any) -> str:
    """A bias add (one operand a constant or an attribute) passes through; a residual add does not."""
    return "pass" if len(_flowing(node)) <= 1 else "residual"


def describe_module(module: Any, *, path: str, fmt: str) -> ModelDescription:
    """Describe an ``nn.Module`` or TorchScript module."""
    return describe_module_graph(module, path=path, fmt=fmt)[0]


#: the error for a model whose weights have shapes and no values
META_WEIGHTS = (
    "the model's weights are on the 'meta' device (shapes, no values): nothing to judge; "
    "materialize them first (model.to_empty(device='cpu') and its init, or load its weights)"
)


def describe_module_graph(
    module: Any, *, path: str, fmt: str, stats: Any = None
) -> tuple[ModelDescription, Any, str]:
    """Describe a module and say what runs it for the probe: the module itself (backend
    ``torch``/``torchscript``) or, when only ``torch.export`` could read its graph, that program
    (``torch.export``; its parameters are the module's own). ``stats(name)``: a tensor's
    statistics read elsewhere (a streamed model's files), instead of from its values."""
    import torch

    tensor_stats = stats_reader(stats)

    if isinstance(module, torch.export.ExportedProgram):  # fix's re-check of a factory torch.export read
        desc = describe_exported(module, path=path)
        desc.format = fmt
        return desc, module, "torch.export"
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise InputError(META_WEIGHTS)
    module = place(module)  # --device (a no-op unless one was asked for)
    weighted: dict[str, tuple[Any, str]] = {}
    norms: list[NormLayer] = []
    leaves: list[tuple[str, Any]] = []
    seen_weights: dict[object, str] = {}  # a weight's identity (its bytes, else the object) → layer
    notes: list[str] = []
    for name, mod in module.named_modules():
        if not list(mod.children()):
            leaves.append((name, mod))
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        hit, kind = lookup(mod, WEIGHTED_CLASSES)
        if hit and kind:
            ident = torch_region(weight) or id(weight)
            if ident in seen_weights:
                first = seen_weights[ident]
                notes.append(f"{name}: weight shared with {first} (tied): judged and fixed once, as that")
                continue
            seen_weights[ident] = name
            weighted[name] = (mod, kind)
            continue
        if is_norm_module(mod) and weight.dim() >= 1:
            norm_kind = norm_kind_of(mod)
            bias = getattr(mod, "bias", None)
            norms.append(
                NormLayer(
                    name,
                    norm_kind,
                    f"{name}.weight",
                    tuple(weight.shape),
                    tensor_stats(weight, f"{name}.weight"),
                    tensor_stats(bias, f"{name}.bias") if isinstance(bias, torch.Tensor) else None,
                )
            )

    traced = None if isinstance(module, torch.jit.ScriptModule) else _fx_graph(module)
    if traced is None and not isinstance(module, torch.jit.ScriptModule):
        program = export_for_graph(module, weighted)
        if program is not None:
            if stats is None and sharded_source(program) is not None:  # FSDP2: the real shards' stats
                stats = sharded_stats(module)
            desc = describe_exported(program, path=path, stats=stats)
            desc.format = fmt
            desc.inputs = config_inputs(module, 2)
            desc.notes.append("graph read from torch.export (torch.fx could not trace the model)")
            return desc, program, "torch.export"
    if traced is not None:
        call_order, nodes, node_of = traced
        order = [n for n in call_order if n in weighted] + [n for n in weighted if n not in node_of]
        follow = {
            n: following_nonlinearity(nodes, node_of[n]) or graph_follower(nodes, node_of[n])
            for n in order
            if n in node_of
        }
        order_kind = "execution"
        layer_nodes = {node: path for path, node in node_of.items() if path in weighted}
        lookups = frozenset(p for p, (_, kind) in weighted.items() if kind == "embedding")
        blocks = residual_blocks(nodes, layer_nodes, lookups)
        feeders = stream_inputs(nodes, layer_nodes, blocks)
        gates = gate_layers(nodes, layer_nodes)
        heads = head_layers(nodes, layer_nodes)
        renormed = renormalized(nodes, layer_nodes, feeders, blocks)
        then_norm = {n for n in order if n in node_of and normalized_after_activation(nodes, node_of[n])}
    else:
        order = list(weighted)
        follow = _follow_by_module_order(leaves, weighted)
        order_kind = "module"
        blocks, gates, then_norm, heads, renormed = module_blocks(module, weighted), [], set(), [], []
        feeders = _stream_feeder(order, blocks)
        for block in blocks:  # inside a block the next module registered is no follower (q → k)
            for name in block.layers:
                follow[name] = None
        if not isinstance(module, torch.jit.ScriptModule):
            notes.append("torch.fx could not trace the model: module order and neighbours used")
        if blocks:
            notes.append(
                f"{len(blocks)} repeated blocks found from the module structure "
                f"({blocks[0].name} …): Var[out]/Var[in] of each block module"
            )

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
            tensor_stats(weight, f"{name}.weight"),
            groups,
            bias_key=f"{name}.bias" if isinstance(bias, torch.Tensor) else None,
        )
        follows = follow.get(name)
        if follows is not None:
            layer.nonlinearity, layer.nonlinearity_param, layer.is_output = follows
            layer.normalized_after = name in then_norm
        layers.append(layer)
    params = count_parameters(list(module.state_dict(keep_vars=True).values()))
    desc = ModelDescription(
        path, fmt, params, layers, norms, True, order_kind, notes, blocks, feeders, gates=gates
    )
    desc.head_layers = heads
    desc.renormalized = renormed
    if not isinstance(module, torch.jit.ScriptModule):
        desc.inputs = config_inputs(module, 2)
    return desc, module, "torchscript" if isinstance(module, torch.jit.ScriptModule) else "torch"


def export_for_graph(module: Any, weighted: dict[str, tuple[Any, str]]) -> Any:
    """``torch.export`` the model (non-strict) on the probe's inputs where they are known, else on
    a small example (:mod:`.export_example`), or None when that fails. Parameters stay shared with
    ``module``, which is remembered so that the probe can export it again for other input shapes
    (:func:`reexport`; a dynamic-shape export costs 2–4× a static one on every load)."""
    exporter = _exporter(module)
    for args, kwargs in export_examples(module, weighted):
        try:
            program = exporter(args, kwargs)
        except Exception:  # noqa: BLE001 - any export failure means "no graph"
            continue
        _SOURCES[program] = exporter
        return program
    return None


#: exported program → how to export its module again (kept while the program lives)
_SOURCES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _exporter(module: Any) -> Any:
    """``export(args, kwargs)`` of ``module``; of its unsharded twin for an FSDP2/DTensor model
    (torch.export cannot trace DTensor parameters: :mod:`.torch_sharded_graph`)."""
    if has_dtensor(module):
        return twin_exporter(module, _export)
    return lambda args, kwargs: _export(module, args, kwargs)


def _export(module: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Non-strict ``torch.export`` in eval mode, without the Python stack trace torch.fx records on
    every node (``torch.fx.config.do_not_emit_stack_traces`` where torch has it; nothing here reads it,
    and it was ~10 % of a LLaMA export's CPU time: benchmarks/README.md, probe_streamed.py)."""
    import importlib

    import torch

    try:  # a torch without torch.fx.config (or its flag) exports with its traces, as before
        fx_config: Any = importlib.import_module("torch.fx.config")
    except ImportError:
        fx_config = None
    was_training = module.training
    had_traces = getattr(fx_config, "do_not_emit_stack_traces", None)
    try:
        module.eval()
        if had_traces is not None:
            fx_config.do_not_emit_stack_traces = True
        return torch.export.export(module, tuple(args), kwargs or None, strict=False)
    finally:
        module.train(was_training)
        if had_traces is not None:
            fx_config.do_not_emit_stack_traces = had_traces


def reexport(program: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``program`` exported again from its module on inputs of other shapes (the same graph for
    them, the same parameters), or None when it did not come from :func:`export_for_graph`.
    Raises what the export raises (the model refuses these inputs)."""
    exporter = _SOURCES.get(program)
    if exporter is None:
        return None
    again = exporter(args, kwargs)
    _SOURCES[again] = exporter
    return again


def _stream_feeder(order: list[str], blocks: list[Any]) -> list[str]:
    """Without a graph: the weighted layer registered last before the first repeated block (a
    ViT's patch projection, a ResNet's stem conv) starts the residual stream."""
    if not blocks:
        return []
    first = order.index(blocks[0].layers[0])
    return order[first - 1 : first] if first > 0 else []


def _follow_by_module_order(
    leaves: list[tuple[str, Any]], weighted: dict[str, Any]
) -> dict[str, tuple[str, float | None, bool] | None]:
    """Nonlinearity after each weighted leaf: the next non-pass leaf module in registration order."""
    out: dict[str, tuple[str, float | None, bool] | None] = {}
    for i, (name, _) in enumerate(leaves):
        if name not in weighted:
            continue
        result: tuple[str, float | None, bool] | None = ("linear", None, True)
        for j, (_, nxt) in enumerate(leaves[i + 1 :], start=i + 1):
            op, param = module_op(nxt)
            if op == "pass":
                continue
            if op == "weighted":
                result = ("linear", None, False)
            elif op in ("other", "act"):
                result = None
            elif op == "norm":
                result = ("normalized", None, False)
            else:  # an activation; the last one before the output (a pooler's tanh) ends a head
                last = all(module_op(m)[0] == "pass" for _, m in leaves[j + 1 :])
                result = (op, param, last)
            break
        out[name] = result
    return out
