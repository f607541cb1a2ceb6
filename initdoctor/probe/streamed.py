"""The probe of a streamed model (:mod:`initdoctor.formats.hf_stream`): its weights are read from
the files as each part of the model runs, by accelerate's machinery, and dropped after.

- an ``nn.Module``: accelerate's ``AlignDevicesHook`` on every module that holds parameters
  (``attach_align_device_hook`` with ``offload=True``): each module's weights are read from the
  files just before its forward and put back on the meta device after it;
- a ``torch.export`` program: its graph reads each parameter through a ``get_attr`` node; the
  interpreter reads it from the same loader instead, and frees it after its last user.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .types import ProbeError


@contextmanager
def offloaded(module: Any, weights: Mapping[str, Any]) -> Iterator[None]:
    """``module`` with accelerate's offload hooks for the time of the probe (removed after; the
    parameters stay on the meta device: a streamed model is probed once)."""
    from accelerate.hooks import attach_align_device_hook, remove_hook_from_submodules

    attach_align_device_hook(module, execution_device="cpu", offload=True, weights_map=weights)
    try:
        yield
    finally:
        remove_hook_from_submodules(module)


def check(settings: Any) -> None:
    if settings.backward:
        raise ProbeError("--backward needs every activation of the graph at once; not with a streamed probe")


def block_of(name: str) -> str:
    """The top-level block a tensor belongs to: ``model.layers.3`` for
    ``model.layers.3.mlp.up_proj.weight``, ``lm_head`` for ``lm_head.weight``."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1] or parts)


class Reporting(Mapping[str, Any]):
    """The streamed weights, telling ``progress(done, total)`` of each new block read (the CLI's
    bar on stderr, "streaming blocks"; nothing with --no-progress or off a terminal)."""

    def __init__(self, weights: Mapping[str, Any], progress: Any) -> None:
        self.weights = weights
        phase = getattr(progress, "phase", None)
        self.progress = phase("streaming blocks") if phase else None
        self.names = set(weights)  # the keys only: Mapping's `in` would read the tensor
        self.blocks = list(dict.fromkeys(block_of(k) for k in weights))
        self.seen: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return key in self.names

    def __getitem__(self, key: str) -> Any:
        block = block_of(key)
        if self.progress is not None and block not in self.seen:
            self.seen.add(block)
            self.progress(len(self.seen), len(self.blocks))
        return self.weights[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)
