"""initdoctor: diagnose and repair the weight initialization of neural networks.

He et al. (2015): a layer followed by a ReLU keeps the forward signal's variance when
``std(W) = sqrt(2) / sqrt(fan_in)``; other nonlinearities have other gains. initdoctor reads a model
(PyTorch checkpoint, TorchScript, torch.export, safetensors, ONNX or a Python factory) and reports,
per weighted layer, how far its weights are from that.

>>> import initdoctor
>>> report = initdoctor.diagnose("model.safetensors")        # doctest: +SKIP
>>> report.summary.status                                     # doctest: +SKIP
'ok'

Importing this package does not import torch or onnxruntime; loaders import them when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "diagnose",
    "describe",
    "Settings",
    "Report",
    "InitDoctorError",
    "InputError",
    "UntrustedFormatError",
    "SettingsError",
]

from .errors import InitDoctorError, InputError, SettingsError, UntrustedFormatError
from .inspector import Settings
from .report import Report


def describe(source: Any, *, trust: bool = False, weights: Any = None):
    """Read a model into a :class:`~initdoctor.model.ModelDescription`.

    ``source`` is a path, a ``package.module:callable`` factory spec, or an in-memory
    ``torch.nn.Module``.
    """
    if _is_torch_module(source):
        from .loaders.torch_module import describe_module

        return describe_module(source, path=type(source).__name__, fmt="torch-module")
    from .loaders import describe as _describe

    return _describe(source, trust=trust, weights=weights)


def diagnose(source: Any, *, trust: bool = False, weights: Any = None, **settings: Any) -> Report:
    """Statically inspect ``source`` and return a :class:`Report`.

    ``settings`` are :class:`Settings` fields: ``nonlinearity``, ``negative_slope``, ``mode``,
    ``warn_threshold``, ``error_threshold``, ``compound_threshold``.
    """
    import dataclasses

    from .inspector import inspect_description

    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    return inspect_description(describe(source, trust=trust, weights=weights), Settings(**settings))


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)
