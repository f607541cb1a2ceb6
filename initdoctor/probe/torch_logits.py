"""The model's output logits for the loss at init (:class:`~initdoctor.probe.LogitStats`, rule
P207 in :mod:`initdoctor.checks.initloss`), read from what a torch model's forward returned."""

from __future__ import annotations

from typing import Any

from .torch_collect import torch_logit_stats
from .types import LogitStats


def output_logits(output: Any, program: Any = None) -> LogitStats | None:
    """The logits' statistics: a ``logits`` entry (transformers' heads return a ``ModelOutput``)
    or the output tensor itself; None for anything else (a backbone's hidden states, a tuple).
    ``program``: the ``torch.export`` program whose flat outputs ``output`` are (rebuilt with its
    output spec first)."""
    import torch

    if program is not None:
        from torch.utils import _pytree

        try:
            output = _pytree.tree_unflatten(list(output), program.call_spec.out_spec)
        except Exception:  # noqa: BLE001 - an output spec this cannot rebuild: no logits
            return None
    source = "output"
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        output, source = output["logits"], "output.logits"
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    return torch_logit_stats(output, source)  # reduced on the output's device
