"""The example a model that only ``torch.export`` can read is exported on: the probe's own inputs
where they are known when the model loads, so that one export serves both the description and the
probe (each export of a transformers decoder costs seconds; issues 17 and 18).

First match wins, as in the probe (:mod:`initdoctor.probe.torch_inputs`):

1. the caller's example inputs (``diagnose(..., example_inputs=…)``, ``--inputs FILE``): a mapping
   replaces the example's inputs of those names, a tensor or a sequence fills its tensor inputs in
   order; float tensors in the model's floating dtype, on the device they were given on;
2. ``--input name=shape`` (:func:`~.model_inputs.with_probe_shape`: the config's spec, reshaped);
3. ``--input-shape``: seeded tensors of those shapes, in order, each of the dtype of the example's
   input it replaces (token ids below the largest the small example drew);
4. the small example: the inputs the model's ``config`` describes (batch 2), else one inferred
   from its first weighted module.

Seeded examples (2–4) are placed as the probe places its seeded inputs: on the model's device, float
tensors in its floating dtype (``--input-dtype`` when given), so that a bf16 or CUDA model's program
takes the inputs the probe feeds it.

Sources 1 and 3 apply only while the probe is asked for (:func:`probe_plan`); when the model refuses
that example the small one is exported instead (the probe then exports again on its inputs, as it
must, or reports the model's error).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from .model_inputs import (
    config_inputs,
    constant_kwargs,
    forward_parameters,
    probe_shapes,
    split_positional,
    with_probe_shape,
)

#: while a model loads for a probe: (``--input-shape`` shapes, the caller's example inputs, ``--input-dtype``)
_PLAN: ContextVar[tuple[tuple[Any, ...], Any, Any] | None] = ContextVar("initdoctor_probe_plan", default=None)


@contextmanager
def probe_plan(settings: Any, probe: bool, given: Any = None) -> Iterator[None]:
    """Around loading: the probe's inputs as far as they are known (``settings``: the
    :class:`~initdoctor.settings.ProbeSettings`; ``given``: the caller's example inputs)."""
    shapes = tuple(settings.input_shapes or ()) if probe and not settings.named_inputs else ()
    token = _PLAN.set((shapes, given, settings.input_dtype) if probe else None)
    try:
        with probe_shapes(settings.named_inputs):
            yield
    finally:
        _PLAN.reset(token)


def export_examples(
    module: Any, weighted: dict[str, tuple[Any, str]]
) -> list[tuple[list[Any], dict[str, Any]]]:
    """The ``(args, kwargs)`` examples to try in order: the probe's inputs when they are known,
    then the small example; empty when there is none. Seeded examples are placed as the probe
    places its inputs: on the model's device, floats in its floating dtype (or ``--input-dtype``)."""
    import torch

    args, kwargs = small_example(module, weighted)
    if not args and not kwargs:
        return []
    plan = _PLAN.get()
    device, dtype = _model_place(module)
    if plan is not None and plan[2] is not None and "float" in plan[2]:  # --input-dtype
        dtype = getattr(torch, plan[2])
    planned = None
    if plan is not None and plan[1] is not None:
        planned = _given(module, args, kwargs, plan[1])
    elif plan is not None and plan[0] and (shaped := _shaped(args, kwargs, plan[0])) is not None:
        planned = _placed(shaped[0], shaped[1], device, dtype)
    small = _placed(args, kwargs, device, dtype)
    return [planned, small] if planned is not None else [small]


def _model_place(module: Any) -> tuple[Any, Any]:
    """The device and floating dtype of the model's first floating parameter (else buffer)."""
    tensors = [*module.parameters(), *module.buffers()]
    first = next((t for t in tensors if t.is_floating_point()), None)
    return (first.device, first.dtype) if first is not None else (None, None)


def _placed(
    args: list[Any], kwargs: dict[str, Any], device: Any, dtype: Any
) -> tuple[list[Any], dict[str, Any]]:
    import torch

    def place(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        return t.to(
            device=device or t.device, dtype=dtype if dtype is not None and t.is_floating_point() else None
        )

    return [place(a) for a in args], {k: place(v) for k, v in kwargs.items()}


def small_example(module: Any, weighted: dict[str, tuple[Any, str]]) -> tuple[list[Any], dict[str, Any]]:
    """The small example ``(args, kwargs)``: seeded, from the config or the first weighted module."""
    import torch

    from ..model import infer_input_shape

    generator = torch.Generator().manual_seed(0)
    specs = [with_probe_shape(s) for s in config_inputs(module, 2)]  # --input's shapes
    if specs:
        named = {
            s.name or "": torch.randint(0, s.high, s.shape, generator=generator)
            if s.high
            else torch.randn(s.shape, generator=generator)
            for s in specs
        }
        args, kwargs = split_positional(module, named)
        return args, {**kwargs, **constant_kwargs(module)}
    if not weighted:
        return [], {}
    first, kind = next(iter(weighted.values()))
    shape = tuple(int(d) for d in first.weight.shape)
    if kind == "linear" and type(first).__name__ == "Conv1D":
        shape = shape[::-1]
    example_shape = infer_input_shape(kind, shape, int(getattr(first, "groups", 1) or 1), 2)
    if kind == "embedding":
        return [torch.randint(0, shape[0], example_shape, generator=generator)], {}
    return [torch.randn(example_shape, generator=generator)], {}


def _slots(args: list[Any], kwargs: dict[str, Any]) -> list[tuple[str | int, Any]]:
    """The example's tensor inputs in the program's placeholder order: (position or name, tensor)."""
    import torch

    named: list[tuple[str | int, Any]] = [*enumerate(args), *kwargs.items()]
    return [(key, t) for key, t in named if isinstance(t, torch.Tensor)]


def _filled(
    args: list[Any], kwargs: dict[str, Any], values: dict[str | int, Any]
) -> tuple[list[Any], dict[str, Any]]:
    new_args = [values.get(i, a) for i, a in enumerate(args)]
    return new_args, {k: values.get(k, v) for k, v in kwargs.items()}


def _given(module: Any, args: list[Any], kwargs: dict[str, Any], given: Any) -> Any:
    """The example with the caller's inputs in place (None when they do not fit it: the probe says
    why), float tensors in the model's floating dtype."""
    import torch

    dtype = _model_place(module)[1]

    def cast(value: Any) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if not isinstance(t, torch.Tensor):
            return None
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    slots = _slots(args, kwargs)
    values: dict[str | int, Any] = {}
    if isinstance(given, Mapping):
        params = forward_parameters(module)[: len(args)]
        for name, value in given.items():
            key: str | int | None = params.index(name) if name in params else name if name in kwargs else None
            if key is None or key not in dict(slots):
                return None
            values[key] = cast(value)
    else:
        positional = list(given) if isinstance(given, (list, tuple)) else [given]
        if len(positional) > len(slots):
            return None
        values = {key: cast(v) for (key, _), v in zip(slots, positional, strict=False)}
    if any(v is None for v in values.values()):
        return None
    return _filled(args, kwargs, values)


def _shaped(args: list[Any], kwargs: dict[str, Any], shapes: tuple[Any, ...]) -> Any:
    """The example with seeded tensors of the ``--input-shape`` shapes in place of its inputs, in
    order (None when there are more shapes than inputs or they are its own)."""
    import torch

    slots = _slots(args, kwargs)
    if len(shapes) > len(slots):
        return None
    generator = torch.Generator().manual_seed(0)
    values: dict[str | int, Any] = {}
    for (key, old), shape in zip(slots, shapes, strict=False):
        shape = tuple(int(d) for d in shape)
        if old.is_floating_point():
            values[key] = torch.randn(shape, generator=generator).to(old.dtype)
        else:
            high = max(1, int(old.max()) + 1) if old.numel() else 1
            values[key] = torch.randint(0, high, shape, generator=generator).to(old.dtype)
    if all(tuple(values[k].shape) == tuple(t.shape) for k, t in slots if k in values):
        return None
    return _filled(args, kwargs, values)
