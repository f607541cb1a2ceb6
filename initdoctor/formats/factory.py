"""Build a model from a Python factory ``package.module:callable`` (the CI pre-flight case).

The module is imported (the current directory is on ``sys.path``, as with ``python -m``) and the
callable is called with no arguments; it must return an ``nn.Module``. ``weights`` optionally
loads a state_dict file into it (``torch.load(weights_only=True)`` or safetensors), strictly.

fix edits the live model through :class:`TorchModule` (also the twin of every other live torch
model: a trusted pickle, TorchScript, ``torch.export``) and saves a factory's weights as a
state_dict (a safetensors file when the output's name ends in ``.safetensors``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_write
from .base import Editable, Format, LoadedModel, TorchTensors, torch_region
from .torch_pickle import cwd_on_path

FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_spec(source: str) -> bool:
    return bool(FACTORY_SPEC.match(source)) and not Path(source).exists()


def build_from_factory(spec: str, weights: str | None = None, *, trust: bool = False) -> Any:
    import torch

    module_name, _, attr = spec.partition(":")
    cwd_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"{spec}: cannot import module {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{spec}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{spec}: {attr!r} is not callable")
    try:
        model = obj() if not isinstance(obj, torch.nn.Module) else obj
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
        raise InputError(f"{spec}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        _load_weights(model, Path(weights), trust=trust)
    return model


def _load_weights(model: Any, path: Path, *, trust: bool) -> None:
    from .detect import detect_format
    from .torch_pickle import find_state_dict, load_torch_object

    fmt = detect_format(path)
    state: Mapping[str, Any]
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    elif fmt == "torch-zip" or fmt == "torch-legacy":
        state = find_state_dict(load_torch_object(path, trust=trust), path)
    else:
        raise InputError(
            f"{path}: --weights takes a state_dict (.pt/.pth/.bin) or .safetensors file, not {fmt}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = _untied(model, result.missing_keys, state)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:3])}")
    if problems:
        raise InputError(f"{path}: weights do not match the model ({'; '.join(problems)})")


def _untied(model: Any, missing: list[str], state: Mapping[str, Any]) -> list[str]:
    """The missing names that are not tied to a loaded one: a file saved without the tied copies
    (``save_pretrained``, ``safetensors.torch.save_model``: safetensors refuses shared storage)
    fills them through the name it kept."""
    own = model.state_dict(keep_vars=True)
    loaded = {torch_region(own[k]) for k in state if k in own} - {None}
    return [k for k in missing if k not in own or torch_region(own[k]) not in loaded]


class TorchModule(TorchTensors):
    """A live model: ``nn.Module`` (factory or trusted pickle), TorchScript, or ``ExportedProgram``."""

    probe_backend = "torch"

    def __init__(self, model: Any, fmt: str) -> None:
        self.model = model
        self.fmt = fmt

    def _tensors(self) -> Any:
        import torch

        if isinstance(self.model, torch.export.ExportedProgram):
            return self.model.state_dict
        return self.model.state_dict(keep_vars=True)

    def runnable(self) -> Any:
        return self.model

    def save(self, dst: Path) -> Path:
        import torch

        if self.fmt == "factory":
            state = {k: v.detach() for k, v in self._tensors().items()}
            if Path(dst).suffix == ".safetensors":  # -o x.safetensors: a safetensors file, not a pickle
                from safetensors.torch import save_file

                flat = {k: v.contiguous().clone() for k, v in state.items()}
                return atomic_write(dst, lambda tmp: save_file(flat, str(tmp)))
            return atomic_write(dst, lambda tmp: torch.save(state, tmp))
        if self.fmt == "torchscript":
            return atomic_write(dst, lambda tmp: torch.jit.save(self.model, str(tmp)))
        if self.fmt == "torch.export":
            return atomic_write(dst, lambda tmp: torch.export.save(self.model, str(tmp)), suffix=".pt2")
        return atomic_write(dst, lambda tmp: torch.save(self.model, tmp))


# --- registry entry ------------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    from .torch_module import describe_module_graph

    model = build_from_factory(source, str(weights) if weights else None, trust=trust)
    return LoadedModel(*describe_module_graph(model, path=source, fmt="factory"))


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    return TorchModule(loaded.runnable, loaded.description.format)


FORMAT = Format(("factory",), load, open_editable)
