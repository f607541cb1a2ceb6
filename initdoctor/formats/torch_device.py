"""``--device``: where a factory's or a loaded checkpoint's model is put before it is described
and probed (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``: CUDA when available, else MPS, else
the CPU). Not given: files stay on the CPU and a factory's model stays where its factory put it.
The request is set around loading (:func:`requested_device`) and applied by
:func:`~initdoctor.formats.torch_module.describe_module_graph` (:func:`place`)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InputError
from .export_example import probe_plan  # noqa: F401  (the API sets both around loading)

_requested: contextvars.ContextVar[Any] = contextvars.ContextVar("initdoctor_device", default=None)


def resolve(device: str) -> Any:
    """The ``torch.device`` named by ``device``; one that does not exist here is an
    :class:`~initdoctor.errors.InputError`."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device}: not a device (cpu, cuda, cuda:N, mps, auto)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: no CUDA device here (torch sees none); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"--device {device}: this machine has {count} CUDA device(s) (cuda:0…cuda:{count - 1})"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"--device {device}: not a device (cpu, cuda, cuda:N, mps, auto)")
    return dev


@contextmanager
def requested_device(device: str | None) -> Iterator[None]:
    """Within the block, models described by ``describe_module_graph`` are moved to ``device``
    (checked first: a device that does not exist is an error before anything is loaded)."""
    token = _requested.set(resolve(device) if device else None)
    try:
        yield
    finally:
        _requested.reset(token)


def place(module: Any) -> Any:
    """``module`` moved to the requested device (in place, as ``nn.Module.to`` does); as it is when
    none was requested."""
    device = _requested.get()
    if device is None or not hasattr(module, "to"):
        return module
    return module.to(device)
