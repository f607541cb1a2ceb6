"""initdoctor: diagnose and repair the weight initialization of neural networks.

He et al. (2015): a layer followed by a ReLU keeps the forward signal's variance when
``std(W) = sqrt(2) / sqrt(fan_in)``; other nonlinearities have other gains. initdoctor reads a model
(PyTorch checkpoint, TorchScript, torch.export, safetensors, ONNX or a Python factory) and reports,
per weighted layer, how far its weights are from that.

>>> import initdoctor
>>> report = initdoctor.diagnose("model.safetensors")        # doctest: +SKIP
>>> report.summary.status                                     # doctest: +SKIP
'ok'

This module only re-exports the public names, each on first use (:mod:`initdoctor.api` holds the
pipeline): importing it does not import torch, onnxruntime, onnx or numpy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import InitDoctorError, InitializationError, InputError, SettingsError, UntrustedFormatError
from .version import __version__

if TYPE_CHECKING:
    from .api import assert_healthy_init, describe, diagnose, fix_model, load
    from .report import Report
    from .settings import Settings

#: public name → the module that defines it (imported on first use)
_LAZY = {
    "diagnose": "api",
    "assert_healthy_init": "api",
    "fix_model": "api",
    "describe": "api",
    "load": "api",
    "Settings": "settings",
    "Report": "report",
}

__all__ = [
    "__version__",
    "diagnose",
    "assert_healthy_init",
    "InitializationError",
    "fix_model",
    "describe",
    "load",
    "Settings",
    "Report",
    "InitDoctorError",
    "InputError",
    "UntrustedFormatError",
    "SettingsError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'initdoctor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
