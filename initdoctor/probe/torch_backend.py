"""Probe backend for torch models: forward hooks (``nn.Module``), an fx interpreter
(``torch.export`` programs) or, for TorchScript (which takes no hooks), an in-memory ONNX export.

Each hooked tensor is reduced to its statistics on the spot (a few floats and, for ReLU layers, a
per-unit max) and dropped, so peak memory stays close to a plain forward pass. The model is left
exactly as it was: hooks removed and ``training`` flags restored in ``finally``; BatchNorm layers
run on batch statistics (as in training) with their running buffers put back afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Any

import numpy as np

from ..errors import first_line
from ..formats.model_inputs import constant_kwargs
from ..formats.torch_module import reexport
from ..formats.torch_sharded_graph import sharded_source
from ..model import ModelDescription
from ..settings import ProbeSettings
from ..stats import Moments
from .collector import Ticker
from .distributed import unsharded
from .inputs import extra_tensors
from .torch_collect import Measured, TorchCollector, merge_into
from .torch_inputs import (
    ProbeInputs,
    check_names,
    flat_arguments,
    given_inputs,
    on_model,
    placeholder_defaults,
    program_defaults,
    program_example,
    seeded_inputs,
)
from .torch_logits import output_logits
from .torch_state import ModelState
from .types import ProbeError, ProbeResult, Progress

# ATen op → (input arg index, weight arg index)
_WEIGHTED_ATEN = {
    "linear": (0, 1),
    "conv1d": (0, 1),
    "conv2d": (0, 1),
    "conv3d": (0, 1),
    "convolution": (0, 1),
    "conv_transpose1d": (0, 1),
    "conv_transpose2d": (0, 1),
    "conv_transpose3d": (0, 1),
    "embedding": (1, 0),
    "addmm": (1, 2),
    "mm": (0, 1),
    "matmul": (0, 1),
}


def probe_torch(
    runnable: Any,
    desc: ModelDescription,
    settings: ProbeSettings,
    progress: Progress | None = None,
    example_inputs: Any = None,
    weights: Any = None,
) -> ProbeResult:
    """``weights``: a streamed model's tensors by name, read on access (:mod:`.streamed`)."""
    import torch

    from .streamed import Reporting, check, offloaded

    if weights is not None:
        check(settings)
        weights = Reporting(weights, progress)
    if isinstance(runnable, torch.jit.ScriptModule):
        return _probe_torchscript(runnable, desc, settings, progress)
    exported = isinstance(runnable, torch.export.ExportedProgram)
    example = None
    if exported:
        module = runnable.module()
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        defaults = program_defaults(runnable)
        example = program_example(placeholders, defaults, desc)
    else:
        module = runnable
    if example_inputs is not None:
        inputs = given_inputs(example_inputs, settings)
    else:
        inputs = seeded_inputs(desc, settings, example)
    # the model's device (the caller's example inputs keep theirs) and floating dtype
    given_dtype = example_inputs is None and settings.input_dtype is not None  # --input-dtype
    inputs = on_model(inputs, module, keep_device=example_inputs is not None, keep_dtype=given_dtype)
    if settings.backward:
        for t in inputs.tensors():
            if t.is_floating_point():
                t.requires_grad_()
    ticker = Ticker(len(desc.layers), progress)
    measured = Measured()  # a tensor two layers see (output → next input, shared q/k/v input): once
    collectors = {
        layer.name: TorchCollector(
            layer.name,
            layer.kind,
            (layer.nonlinearity or "relu") == "relu" and not layer.is_output,
            ticker,
            measured,
        )
        for layer in desc.layers
    }
    # an exported program runs as it was exported (its module refuses .eval()/.train())
    stack = contextlib.ExitStack()
    if weights is not None and not exported:  # parameters on the meta device from here (no snapshot)
        stack.enter_context(offloaded(module, weights))
    state = ModelState(module if not exported else None)
    handles: list[Any] = []
    try:
        state.prepare()
        extra = {name: Moments() for name in extra_tensors(desc)}
        if exported:
            by_weight = {layer.weight_key: collectors[layer.name] for layer in desc.layers}
            flat = flat_arguments(placeholders, defaults, inputs)
            if _other_shapes(flat, defaults):  # exported here on other inputs (they did not fit): again
                module, flat = _for_shapes(runnable, flat, module)
            if (model := sharded_source(runnable)) is not None:  # FSDP2: the weights as FSDP unshards them
                weights = stack.enter_context(unsharded(model, module, settings.backward))
            runner = _interpreter(module, by_weight, settings.backward, extra, weights)
            call = lambda: runner.run(*flat, enable_io_processing=False)  # noqa: E731
        else:
            handles = [
                _hook(module, layer.name, collectors[layer.name], settings.backward) for layer in desc.layers
            ]
            check_names(module, inputs)
            given = ProbeInputs(inputs.args, {**constant_kwargs(module), **inputs.kwargs})
            call = lambda: module(*given.args, **given.kwargs)  # noqa: E731
            # blocks from module structure: hooks on the block module ("path:in", "path:out")
            hooked = {name.rsplit(":", 1)[0] for name in extra if name.endswith((":in", ":out"))}
            handles += [_block_hook(module, path, extra, measured) for path in hooked]
            in_graph = {name: m for name, m in extra.items() if not name.endswith((":in", ":out"))}
            if in_graph:  # residual blocks: run the fx graph so that functional adds can be measured
                from ..formats.torch_module import fx_trace

                traced = fx_trace(module)
                nodes = [n for n in traced.graph.nodes if n.op == "placeholder"]
                flat = flat_arguments(nodes, placeholder_defaults(nodes), given)
                runner = _interpreter(traced, {}, settings.backward, in_graph)
                call = lambda: runner.run(*flat)  # noqa: E731
        with state.guard(), torch.set_grad_enabled(settings.backward):
            try:
                output = call()
            except Exception as exc:  # noqa: BLE001 - the user's forward can raise anything
                raise ProbeError(
                    f"the model's forward raised {type(exc).__name__}: {first_line(exc)}"
                ) from None
            if settings.backward:
                _backward(output, getattr(weights, "fetched", None) or module.parameters(), settings.seed)
    finally:
        for handle in handles:
            handle.remove()
        state.restore()
        stack.close()
    state.check_parameters()
    result = ProbeResult(
        backend="torch.export" if exported else "torch",
        layers={name: c.result() for name, c in collectors.items() if c.calls},
        inputs=inputs.shown(),
        tensor_vars={name: m.var for name, m in extra.items() if m.count},
    )
    result.logits = output_logits(output, runnable if exported else None)
    missed = [name for name, c in collectors.items() if not c.calls]
    if missed:
        result.notes.append(f"{len(missed)} layers not called by forward: {', '.join(missed[:5])}")
    return result


def _other_shapes(flat: list[Any], defaults: list[Any]) -> bool:
    """True when an input tensor's shape differs from the program's example."""
    return any(
        hasattr(a, "shape") and hasattr(b, "shape") and tuple(a.shape) != tuple(b.shape)
        for a, b in zip(flat, defaults, strict=True)
    )


def _for_shapes(program: Any, flat: list[Any], module: Any) -> tuple[Any, list[Any]]:
    """The graph module and flat inputs to run ``flat``: a program exported here from a module is
    exported again on these inputs; any other program runs as it is (its own guards decide)."""
    import torch.utils._pytree as pytree

    args, kwargs = pytree.tree_unflatten(flat, program.call_spec.in_spec)
    try:
        again = reexport(program, list(args), dict(kwargs))
    except Exception as exc:  # noqa: BLE001 - the model's own code refused these inputs
        raise ProbeError(f"the model's forward raised {type(exc).__name__}: {first_line(exc)}") from None
    if again is None:
        return module, flat
    return again.module(), program_defaults(again)


def _observe(collector: TorchCollector, x: Any, y: Any, backward: bool) -> None:
    import torch

    collector.observe(x, y)  # reduced on the tensors' device: only scalars reach the host
    if backward and isinstance(y, torch.Tensor) and y.requires_grad:
        y.register_hook(collector.grad_output_tensor)
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x.register_hook(collector.grad_input_tensor)


def _hook(module: Any, name: str, collector: TorchCollector, backward: bool) -> Any:
    target = module.get_submodule(name) if name != "(root)" else module
    parent_name, _, leaf = name.rpartition(".")
    parent = module.get_submodule(parent_name) if name != "(root)" else None
    if parent is not None and leaf == "out_proj" and type(parent).__name__ == "MultiheadAttention":
        # F.multi_head_attention_forward applies out_proj's weight without calling out_proj:
        # its output is the attention module's first output (its input is not exposed)

        def mha_hook(_mod: Any, _args: tuple, output: Any) -> None:
            outs = _tensors(output)
            _observe(collector, None, outs[0] if outs else None, backward)

        return parent.register_forward_hook(mha_hook)

    def hook(_mod: Any, args: tuple, output: Any) -> None:
        _observe(collector, args[0] if args else None, output, backward)

    return target.register_forward_hook(hook)


def _block_hook(module: Any, path: str, extra: dict[str, Moments], measured: Measured) -> Any:
    """Var of a block module's input hidden state (first tensor argument, else the
    ``hidden_states`` keyword) and of its output (the first tensor it returns)."""

    def hook(_mod: Any, args: tuple, kwargs: dict, output: Any) -> None:
        inputs = _tensors(list(args)) or _tensors(kwargs.get("hidden_states"))
        outs = _tensors(output)
        for name, t in (
            (f"{path}:in", inputs[0] if inputs else None),
            (f"{path}:out", outs[0] if outs else None),
        ):
            if name in extra:
                merge_into(extra[name], t, measured)

    return module.get_submodule(path).register_forward_hook(hook, with_kwargs=True)


def _interpreter(
    module: Any,
    by_weight: dict[str, TorchCollector],
    backward: bool,
    extra: dict[str, Moments],
    weights: Any = None,
) -> Any:
    import torch.fx

    release = getattr(weights, "release", None)  # a sharded model's weights: resharded after last use

    class StatsInterpreter(torch.fx.Interpreter):
        def fetch_attr(self, target: str) -> Any:
            if weights is not None and target in weights:  # streamed: read now, freed after last use
                return weights[target]
            return super().fetch_attr(target)

        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if n.name in extra:
                merge_into(extra[n.name], result)
            if release is not None:
                release(n)
            if n.op == "call_function":
                aten = getattr(n.target, "__name__", "").split(".")[0]
                spec = _WEIGHTED_ATEN.get(aten)
                if spec and len(n.args) > max(spec):
                    w, x = n.args[spec[1]], n.args[spec[0]]
                    if (
                        isinstance(w, torch.fx.Node)
                        and w.op == "get_attr"
                        and w.target in by_weight
                        and (aten == "embedding") == (by_weight[w.target].kind == "embedding")  # tied weights
                    ):
                        x_val = self.env.get(x) if isinstance(x, torch.fx.Node) else None
                        _observe(by_weight[w.target], x_val, result, backward)
            return result

    return StatsInterpreter(module)


def _backward(output: Any, parameters: Any, seed: int) -> None:
    """One backward pass of a seeded N(0, 1) gradient. ``torch.autograd.grad`` returns the weight
    gradients instead of accumulating them, so parameters' ``.grad`` stay untouched."""
    import torch

    outs = [t for t in _tensors(output) if t.is_floating_point() and t.requires_grad]
    if not outs:
        raise ProbeError("--backward: the model's output does not depend on its weights")
    rng = np.random.default_rng(seed + 1)
    grads = [
        torch.from_numpy(rng.standard_normal(size=tuple(t.shape), dtype=np.float32)).to(t.device, t.dtype)
        for t in outs
    ]
    weights = [p for p in parameters if p.requires_grad]
    torch.autograd.grad(outs, weights, grads, allow_unused=True)


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _probe_torchscript(
    module: Any, desc: ModelDescription, settings: ProbeSettings, progress: Progress | None
) -> ProbeResult:
    """TorchScript takes no hooks: export it to ONNX in memory and probe that on the same inputs."""
    import torch

    from .onnx_backend import probe_onnx

    if settings.backward:
        raise ProbeError(
            "--backward is not available for TorchScript (no hooks); use a factory or torch.export"
        )
    given = seeded_inputs(desc, settings)
    inputs = [*given.args, *given.kwargs.values()]  # TorchScript: by position, in the order given
    hooked = [b for b in desc.blocks if b.skip_tensor.endswith(":in")]
    if hooked:  # blocks from module structure are measured by hooks, which TorchScript takes none of
        desc = dataclasses.replace(desc, blocks=[b for b in desc.blocks if b not in hooked])
    buffer = io.BytesIO()
    try:
        # torch.onnx.export documents a file object as ``f``; its annotation says path only
        torch.onnx.export(module, tuple(inputs), buffer, dynamo=False)  # type: ignore[arg-type]  # f: a file object
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(
            f"cannot run the TorchScript model through ONNX for the probe: {first_line(exc)}"
        ) from None
    result = probe_onnx(
        buffer.getvalue(), desc, settings, inputs=[t.numpy() for t in inputs], progress=progress
    )
    result.backend = "torchscript→onnx"
    if hooked:
        result.notes.append(f"{len(hooked)} blocks not measured: TorchScript takes no hooks")
    return result
