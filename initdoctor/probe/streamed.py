"""The probe of a streamed model (:mod:`initdoctor.formats.hf_stream`): its weights are read from
the files as each part of the model runs, by accelerate's machinery, and dropped after.

- an ``nn.Module``: accelerate's ``AlignDevicesHook`` on every module that holds parameters
  (``attach_align_device_hook`` with ``offload=True``): each module's weights are read from the
  files just before its forward and put back on the meta device after it;
- a ``torch.export`` program: its graph reads each parameter through a ``get_attr`` node; the
  interpreter reads it from the same loader instead, and frees it after its last user.
"""

from __future__ import annotations

import sys
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


class BlockProgress:
    """One stderr line per top-level block read (``model.layers.3``), when not quiet."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = ""

    def __call__(self, name: str) -> None:
        parts = name.split(".")
        block = ".".join(parts[:3]) if len(parts) > 3 and parts[2].isdigit() else ".".join(parts[:2])
        if self.enabled and block != self.last:
            self.last = block
            print(f"streaming {block}", file=sys.stderr, flush=True)
