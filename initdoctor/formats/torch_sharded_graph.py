"""The graph of an FSDP2 / DTensor-sharded model that torch.fx cannot trace (a transformers LLaMA),
read by ``torch.export`` as for the single-process model, so that both reports are the same.

``torch.export`` cannot trace DTensor parameters, and FSDP's forward hooks would all-gather while
it traces. :func:`unsharded_twin` therefore swaps, for the time of the export only, every DTensor
parameter for a plain tensor of its full shape that is never written (``torch.empty`` on the
parameter's device: address space, no resident pages on CPU; real memory on a GPU) and stashes
the forward hooks of the FSDP modules; afterwards the module holds exactly the same DTensor
objects and hooks again. The program's values are those empty tensors: the weight statistics are
read from the real DTensors (:func:`sharded_stats`, each rank's shard merged), and the probe runs
the program's graph with each parameter taken from the real model as FSDP unshards it
(:mod:`initdoctor.probe.distributed`), so the probe's figures are measured on the real weights by
the same graph as in one process.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .torch_sharded import every_rank, is_dtensor

#: exported program of a sharded model → that model (the probe takes its parameters from it)
_SHARDED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def has_dtensor(module: Any) -> bool:
    return any(is_dtensor(p) for p in module.parameters())


@contextmanager
def unsharded_twin(module: Any) -> Iterator[None]:
    """``module`` with each DTensor parameter swapped for an empty full-shape tensor and the FSDP
    modules' forward hooks stashed; everything put back (the same objects) on exit."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    swapped: list[tuple[Any, str, Any]] = []
    stashed: list[tuple[Any, str, Any]] = []
    twins: dict[int, Any] = {}  # one twin per parameter: tied weights stay tied
    try:
        for mod in module.modules():
            for name, param in list(mod._parameters.items()):
                if param is not None and is_dtensor(param):
                    if id(param) not in twins:
                        empty = torch.empty(param.shape, dtype=param.dtype, device=param.to_local().device)
                        twins[id(param)] = torch.nn.Parameter(empty, requires_grad=param.requires_grad)
                    mod._parameters[name] = twins[id(param)]
                    swapped.append((mod, name, param))
            if isinstance(mod, FSDPModule):
                for attr in _HOOKS:
                    stashed.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, type(getattr(mod, attr))())
        yield
    finally:
        for mod, name, param in swapped:
            mod._parameters[name] = param
        for mod, attr, hooks in stashed:
            setattr(mod, attr, hooks)


def twin_exporter(module: Any, export: Callable[[Any, list[Any], dict[str, Any]], Any]) -> Any:
    """``export(module, args, kwargs)`` run on the unsharded twin of ``module``; the program is
    remembered as that sharded model's (:func:`sharded_source`)."""

    def run(args: list[Any], kwargs: dict[str, Any]) -> Any:
        failure: Exception | None = None
        try:
            with unsharded_twin(module):
                program = export(module, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - raised below, on every rank
            failure = exc
        if not every_rank(failure is None):  # failed on some rank: every rank reads no export
            raise failure or RuntimeError("torch.export of the model failed on another rank")
        _SHARDED[program] = module
        return program

    return run


def sharded_source(program: Any) -> Any:
    """The sharded model ``program`` was exported from by :func:`twin_exporter`, else None."""
    try:
        return _SHARDED.get(program)
    except TypeError:  # not weak-referenceable: no program of ours
        return None


def sharded_stats(module: Any) -> Callable[[str], Any]:
    """``stats(name)`` of the real tensor ``name`` of ``module`` (a DTensor: its shards merged)."""
    from .torch_moments import weight_stats

    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(dict(module.named_buffers(remove_duplicate=False)))
    return lambda name: weight_stats(tensors[name])
