"""PyTorch state_dict checkpoints (zip or legacy ``torch.save`` files, wrapped or not): read and
written.

A zip state_dict is streamed when it can be (:mod:`.torch_state_dict_stream`: located on the meta
device, described and fixed in the file); otherwise — a legacy file, a tensor that is not a dense
view, ``--trust`` — it is loaded whole (:mod:`.torch_pickle`) and fixed through
:class:`TorchCheckpoint`, which saves the same object (wrappers kept) with ``torch.save``. A file
that holds a full pickled module (``--trust``) is handed to :mod:`.torch_code`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..model import ModelDescription
from .base import Editable, Format, LoadedModel, TorchTensors, aliases, torch_region
from .factory import TorchModule
from .tensors import counted, describe_tensors, weight_count
from .torch_code import load_pickled_module
from .torch_limits import check_loaded
from .torch_pickle import find_state_dict, load_torch_object
from .torch_state_dict_stream import StreamedCheckpoint, describe_streamed_state_dict, zip_tensor_plan


def describe_torch_object(obj: Any, path: Path, fmt: str, progress: Any = None) -> ModelDescription:
    """A loaded checkpoint object → description (an nn.Module keeps its graph)."""
    import torch

    from .torch_module import describe_module
    from .torch_moments import weight_stats
    from .torch_ops import count_parameters, unreadable

    if isinstance(obj, torch.nn.Module):
        return describe_module(obj, path=str(path), fmt="torch-module")
    state = find_state_dict(obj, path)
    check_loaded(path, state)
    skipped = {k: why for k, v in state.items() if (why := unreadable(v))}
    state = {k: v for k, v in state.items() if k not in skipped}
    keys_shapes = [(k, tuple(int(s) for s in v.shape)) for k, v in state.items()]

    desc = describe_tensors(
        keys_shapes,
        counted(lambda key: weight_stats(state[key]), weight_count(list(state)), progress),
        path=str(path),
        fmt=fmt,
        order="checkpoint",
        parameters=count_parameters(list(state.values())),
        aliases=aliases({k: torch_region(v) for k, v in state.items()}),
    )
    desc.notes.extend(f"{key}: a {why}, not read" for key, why in skipped.items())
    return desc


class TorchCheckpoint(TorchTensors):
    """A state_dict checkpoint file (wrapped or not); saved as the same object."""

    def __init__(self, obj: Any, path: Path) -> None:
        self.obj = obj
        self.state = find_state_dict(obj, path)
        check_loaded(path, self.state)

    def _tensors(self) -> Any:
        return self.state

    def save(self, dst: Path) -> Path:
        import torch

        return atomic_write(dst, lambda tmp: torch.save(self.obj, tmp))


# --- registry entry ------------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    path = Path(source)
    if name == "torch-zip" and not trust:
        streamed = describe_streamed_state_dict(path, progress)
        if streamed is not None:
            return LoadedModel(streamed)

    obj = load_torch_object(path, trust=trust)
    import torch

    if isinstance(obj, torch.nn.Module):
        return load_pickled_module(obj, path)
    return LoadedModel(describe_torch_object(obj, path, "state_dict", progress))


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    if loaded.runnable is not None:  # a trusted pickle of a whole module
        return TorchModule(loaded.runnable, loaded.description.format)
    path = Path(source)
    if loaded.format_name == "torch-zip" and not trust:
        plan = zip_tensor_plan(path)
        if plan is not None:
            return StreamedCheckpoint(path, plan)
    return TorchCheckpoint(load_torch_object(path, trust=trust), path)


FORMAT = Format(("torch-zip", "torch-legacy"), load, open_editable)
