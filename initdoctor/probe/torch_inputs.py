"""The torch probe's inputs, positional and named, and how they are passed to a module, an fx graph
or a ``torch.export`` program.

Where they come from, first match wins:

1. example inputs given by the caller (``diagnose(..., example_inputs=…)``, ``inputs=…``,
   ``--inputs FILE``): a mapping is passed by name, a tensor or a sequence by position;
2. ``--input name=shape:dtype`` (named, seeded);
3. ``--input-shape`` (positional, seeded);
4. a ``torch.export`` program's own example inputs (their shapes, fresh seeded values);
5. the inputs the model's ``config`` describes (``ModelDescription.inputs``, batch ``--batch-size``);
6. inferred from the first weighted layer (:func:`initdoctor.model.infer_input_shape`).

Seeded values: N(0, 1) for float inputs, token ids uniform in ``[0, vocab)`` (``--vocab-size``, else
the config's vocabulary for that input, else the smallest embedding table), drawn in order from
``numpy.random.default_rng(seed)``.

Every input is then placed where the model is (:func:`on_model`): on its device (a CUDA model gets
CUDA inputs, token ids included), float inputs in its floating dtype (a bf16 model gets bf16
inputs), so that probing a model that runs does not fail on a dtype or device mismatch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..formats.torch_module import META_WEIGHTS
from ..model import InputSpec, ModelDescription, infer_input_shape
from ..settings import ProbeSettings
from .inputs import check_input_size, default_vocab, draw_inputs
from .types import ProbeError


@dataclass
class ProbeInputs:
    """Tensors for one forward: ``args`` by position, ``kwargs`` by name (tensors and constants such
    as ``use_cache=False``)."""

    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> list[Any]:
        import torch

        return [t for t in [*self.args, *self.kwargs.values()] if isinstance(t, torch.Tensor)]

    def shown(self) -> list[dict[str, Any]]:
        """The report's ``probe.inputs``: shape, dtype and, for a named input, its name."""
        import torch

        named = [(None, t) for t in self.args] + list(self.kwargs.items())
        return [
            InputSpec(name, tuple(t.shape), str(t.dtype).replace("torch.", "")).shown()
            for name, t in named
            if isinstance(t, torch.Tensor)
        ]


def to_tensor(value: Any) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def given_inputs(example: Any, settings: ProbeSettings) -> ProbeInputs:
    """Caller's example inputs (a mapping: by name; a tensor or sequence: by position), size-capped."""
    if isinstance(example, Mapping):
        inputs = ProbeInputs(kwargs={str(k): to_tensor(v) for k, v in example.items()})
    elif isinstance(example, (list, tuple)):
        inputs = ProbeInputs(args=[to_tensor(v) for v in example])
    else:
        inputs = ProbeInputs(args=[to_tensor(example)])
    check_input_size(
        [(tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in inputs.tensors()], settings
    )
    return inputs


def seeded_specs(
    desc: ModelDescription, settings: ProbeSettings, example: ProbeInputs | None = None
) -> list[InputSpec]:
    """Specs of the seeded inputs (sources 2–6 of the module docstring)."""
    highs: dict[str | None, int | None] = {s.name: s.high for s in desc.inputs if s.name}
    if settings.named_inputs:
        return [InputSpec(n, shape, dtype, highs.get(n)) for n, shape, dtype in settings.named_inputs]
    if settings.input_shapes:
        embedding_first = bool(desc.layers) and desc.layers[0].kind == "embedding"
        dtype = (
            "int64"
            if embedding_first and _float_dtype(settings).startswith("float")
            else _float_dtype(settings)
        )
        return [InputSpec(None, shape, dtype) for shape in settings.input_shapes]
    if example is not None and example.tensors():
        named = [(None, t) for t in example.args] + list(example.kwargs.items())
        return [
            InputSpec(n, tuple(t.shape), str(t.dtype).replace("torch.", ""), highs.get(n))
            for n, t in named
            if hasattr(t, "shape")
        ]
    if desc.inputs:
        return [replace(s, shape=(settings.batch_size, *s.shape[1:])) for s in desc.inputs]
    if not desc.layers:
        raise ProbeError("no weighted layer to infer an input shape from; pass --input-shape")
    first = desc.layers[0]
    shape = infer_input_shape(first.kind, first.shape, first.groups, settings.batch_size)
    return [InputSpec(None, shape, "int64" if first.kind == "embedding" else _float_dtype(settings))]


def _float_dtype(settings: ProbeSettings) -> str:
    """The seeded float inputs' dtype before :func:`on_model` (``--input-dtype``, else float32)."""
    return settings.input_dtype or "float32"


def seeded_inputs(
    desc: ModelDescription, settings: ProbeSettings, example: ProbeInputs | None = None
) -> ProbeInputs:
    """Seeded tensors for :func:`seeded_specs`: named ones by name, the others by position."""
    import torch

    specs = seeded_specs(desc, settings, example)
    if any(s.dtype.startswith("int") and not s.high for s in specs) or settings.vocab_size:
        fallback = default_vocab(desc, settings)  # --vocab-size, else the smallest embedding table
        specs = [replace(s, high=settings.vocab_size or s.high or fallback) for s in specs]
    arrays = draw_inputs(specs, np.random.default_rng(settings.seed), None, settings.max_input_mib)
    inputs = ProbeInputs()
    for spec, array in zip(specs, arrays, strict=True):
        tensor = torch.from_numpy(array).to(getattr(torch, spec.dtype))
        if spec.name:
            inputs.kwargs[spec.name] = tensor
        else:
            inputs.args.append(tensor)
    return inputs


def model_place(module: Any) -> tuple[Any, Any]:
    """The device and floating dtype of ``module``'s first floating parameter (else buffer), or
    (None, None) for a module without one."""

    tensors = [*module.parameters(), *module.buffers()]
    first = next((t for t in tensors if t.is_floating_point()), tensors[0] if tensors else None)
    if first is None:
        return None, None
    return first.device, first.dtype if first.is_floating_point() else None


def on_model(
    inputs: ProbeInputs, module: Any, *, keep_device: bool = False, keep_dtype: bool = False
) -> ProbeInputs:
    """``inputs`` on ``module``'s device, float tensors in its floating dtype (integer ids keep
    theirs); a model on ``meta`` (no values) is a :class:`ProbeError`. ``keep_device``: the
    caller's own example inputs stay on the device they were given on (a model spread over
    several devices takes its inputs where its first layer is, which the caller knows best).
    ``keep_dtype``: float inputs keep their dtype (``--input-dtype`` was given)."""
    import torch

    device, dtype = model_place(module)
    if keep_dtype:
        dtype = None
    if device is not None and device.type == "meta":
        raise ProbeError(META_WEIGHTS)

    def place(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or device is None:
            return t
        where = t.device if keep_device else device
        return t.to(device=where, dtype=dtype if dtype is not None and t.is_floating_point() else None)

    return ProbeInputs([place(t) for t in inputs.args], {k: place(v) for k, v in inputs.kwargs.items()})


def flat_arguments(placeholders: list[Any], defaults: list[Any], inputs: ProbeInputs) -> list[Any]:
    """Values for a graph's placeholders (fx or an exported program's module): positional inputs fill
    the tensor placeholders in order, named ones the placeholder of that name; the rest keep
    ``defaults`` (the export's example values, or the parameter defaults)."""
    import torch

    names = [str(p.target) for p in placeholders]
    values = list(defaults)
    free = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor) or v is _MISSING]
    free = [i for i in free if names[i] not in inputs.kwargs]
    if len(inputs.args) > len(free):
        raise ProbeError(
            f"the model takes {len(free)} inputs ({', '.join(names)}), {len(inputs.args)} were given"
        )
    for i, value in zip(free, inputs.args, strict=False):
        values[i] = value
    for name, value in inputs.kwargs.items():
        if name not in names:
            raise ProbeError(f"the model has no input named {name!r}; its inputs: {', '.join(names)}")
        values[names.index(name)] = value
    missing = [names[i] for i, v in enumerate(values) if v is _MISSING]
    if missing:
        raise ProbeError(
            f"no value for the model's input {missing[0]!r}; give it with --input {missing[0]}=…"
        )
    return values


def check_names(module: Any, inputs: ProbeInputs) -> None:
    """Named inputs must be parameters of ``module.forward`` (unless it takes ``**kwargs``)."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name in inputs.kwargs:
        if name not in params:
            raise ProbeError(f"the model has no input named {name!r}; its inputs: {', '.join(params)}")


#: a placeholder without a default value
_MISSING = object()


def placeholder_defaults(placeholders: list[Any]) -> list[Any]:
    """An fx graph's placeholder defaults (``_MISSING`` where a parameter has none)."""
    return [p.args[0] if p.args else _MISSING for p in placeholders]


def program_defaults(program: Any) -> list[Any]:
    """A ``torch.export`` program's example inputs, flattened in its placeholders' order."""
    import torch.fx._pytree as fx_pytree

    if not program.example_inputs:  # a saved program without its example: every input needed
        return [_MISSING for _ in program.graph_signature.user_inputs]
    args, kwargs = program.example_inputs
    return list(fx_pytree.tree_flatten_spec((args, kwargs), program.call_spec.in_spec))


def program_example(placeholders: list[Any], defaults: list[Any], desc: ModelDescription) -> ProbeInputs:
    """A program's example tensors: by name where the model's config names that input, else by
    position (their shapes and dtypes are what the seeded batch copies)."""
    import torch

    known = {s.name for s in desc.inputs}
    example = ProbeInputs()
    for p, value in zip(placeholders, defaults, strict=True):
        if isinstance(value, torch.Tensor):
            if str(p.target) in known:
                example.kwargs[str(p.target)] = value
            else:
                example.args.append(value)
    return example
