"""The PyTorch formats that execute code when loaded, so only with ``trust``: TorchScript
(``torch.jit.save``), ``torch.export`` programs (``.pt2``) and full pickled modules (a
``torch.save(module)`` file, recognised as a checkpoint by :mod:`.torch_state_dict`). Each is held
live and fixed through :class:`~initdoctor.formats.factory.TorchModule`, which saves it with the
same function that wrote it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import InputError, UntrustedFormatError
from .base import Editable, Format, LoadedModel
from .factory import TorchModule
from .torch_pickle import TRUST_HINT, error_line


def load_torchscript(path: Path, *, trust: bool) -> Any:
    if not trust:
        raise UntrustedFormatError(
            f"{path}: a TorchScript archive; loading it runs the code stored inside; {TRUST_HINT}"
        )
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot load the TorchScript archive ({error_line(exc)})") from None


def load_exported(path: Path, *, trust: bool) -> Any:
    if not trust:
        raise UntrustedFormatError(
            f"{path}: a torch.export archive; its loader unpickles Python objects, which can run "
            f"code; {TRUST_HINT}"
        )
    import logging

    import torch

    # torch.export.load logs a failed read with its traceback and then raises a vague error
    # ("check the warnings above"): keep those records off stderr and report their exception.
    logger, swallowed = logging.getLogger("torch.export"), _Swallow()
    logger.addFilter(swallowed)
    try:
        with warnings.catch_warnings():  # torch <= 2.12: "The given buffer is not writable" (frombuffer)
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        cause = swallowed.exception or exc
        raise InputError(f"{path}: cannot load the torch.export archive ({error_line(cause)})") from None
    finally:
        logger.removeFilter(swallowed)


class _Swallow:
    """A logging filter that drops every record, keeping the first exception attached to one."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def filter(self, record: Any) -> bool:
        if self.exception is None and record.exc_info and record.exc_info[1] is not None:
            self.exception = record.exc_info[1]
        return False


def load_pickled_module(module: Any, path: Path) -> LoadedModel:
    """A full ``nn.Module`` unpickled (trusted) from a checkpoint file, with its graph."""
    from .torch_module import describe_module_graph

    return LoadedModel(*describe_module_graph(module, path=str(path), fmt="torch-module"))


# --- registry entries ----------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    path = Path(source)
    if name == "torchscript":
        from .torch_module import describe_module

        module = load_torchscript(path, trust=trust)
        return LoadedModel(describe_module(module, path=str(path), fmt="torchscript"), module, "torchscript")
    from .torch_exported import describe_exported

    program = load_exported(path, trust=trust)
    return LoadedModel(describe_exported(program, path=str(path)), program, "torch.export")


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    return TorchModule(loaded.runnable, loaded.description.format)


FORMAT = Format(("torchscript", "torch.export"), load, open_editable)
