"""The probe's seeded inputs (the same for every backend), the cap on their size, and the graph
tensors besides layer inputs/outputs that a description asks to be measured."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from ..model import InputSpec
from ..settings import ProbeSettings
from .types import ProbeError


def random_inputs(
    specs: list[tuple[tuple[int, ...], str]],
    rng: np.random.Generator,
    vocab: int | None,
    max_input_mib: float = 1024.0,
) -> list[np.ndarray]:
    """Seeded inputs as numpy arrays (the same for every backend): N(0, 1) for float dtypes,
    token ids uniform in ``[0, vocab)`` for integer ones; refused beyond ``max_input_mib``."""
    return draw_inputs([InputSpec(None, shape, dtype) for shape, dtype in specs], rng, vocab, max_input_mib)


def draw_inputs(
    specs: list[InputSpec], rng: np.random.Generator, vocab: int | None, max_input_mib: float = 1024.0
) -> list[np.ndarray]:
    """:func:`random_inputs` for :class:`~initdoctor.model.InputSpec` s, drawn in order from ``rng``:
    an integer input's ids in ``[0, vocab)`` when ``vocab`` is given (``--vocab-size``), else in
    ``[0, spec.high)`` (its config's vocabulary)."""
    check_input_size([(s.shape, s.dtype) for s in specs], ProbeSettings(max_input_mib=max_input_mib))
    arrays = []
    for spec in specs:
        if spec.dtype.startswith("int"):
            high = vocab or spec.high
            if not high:
                raise ProbeError("integer inputs need --vocab-size (no embedding layer to read it from)")
            arrays.append(rng.integers(0, high, size=spec.shape, dtype=np.dtype(spec.dtype)))
        else:
            arrays.append(rng.standard_normal(size=spec.shape, dtype=np.float32))
    return arrays


def load_inputs_file(path: str, max_input_mib: float) -> dict[str, np.ndarray] | list[np.ndarray]:
    """Real example tensors from ``--inputs FILE``: a name → array mapping (.npz, .safetensors, a
    .pt dict) or a list of positional arrays (a .pt tensor, list or tuple; an .npz of one unnamed
    ``arr_0``). A .pt file is read with ``torch.load(weights_only=True)``: tensors only, no code.
    Refused beyond ``max_input_mib`` (the file's size first, then the arrays')."""
    file = Path(path)
    cap = max_input_mib * 2**20
    if file.stat().st_size > cap:
        raise ProbeError(
            f"--inputs {file}: {file.stat().st_size / 2**20:.0f} MiB; the cap is {max_input_mib:g} MiB"
        )
    try:
        data = _read_tensors(file)
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line naming it
        raise ProbeError(f"--inputs {file}: cannot read it: {first_line(exc, type(exc).__name__)}") from None
    arrays = list(data.values()) if isinstance(data, dict) else data
    if not arrays:
        raise ProbeError(f"--inputs {file}: holds no tensors")
    check_input_size([(a.shape, str(a.dtype)) for a in arrays], ProbeSettings(max_input_mib=max_input_mib))
    return data


def _read_tensors(file: Path) -> dict[str, np.ndarray] | list[np.ndarray]:
    suffix = file.suffix.lower()
    if suffix == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            named = {k: archive[k] for k in archive.files}
        return list(named.values()) if list(named) == ["arr_0"] else named
    if suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file

        return {k: _numpy(v, torch) for k, v in load_file(str(file)).items()}
    import torch

    obj = torch.load(str(file), weights_only=True, map_location="cpu")
    if isinstance(obj, torch.Tensor):
        return [_numpy(obj, torch)]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): _numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in obj):
        return [_numpy(v, torch) for v in obj]
    raise ProbeError(
        f"--inputs {file}: expected a tensor, a list of tensors or a name → tensor dict, "
        f"got {type(obj).__name__}"
    )


def _numpy(tensor: Any, torch: Any) -> np.ndarray:
    """A CPU numpy array (half types as float32: numpy has no bfloat16)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.numpy())


def default_vocab(desc: Any, settings: ProbeSettings) -> int | None:
    """``--vocab-size``, else the smallest embedding table (ids valid for every table)."""
    if settings.vocab_size:
        return settings.vocab_size
    tables = [layer.shape[0] for layer in desc.layers if layer.kind == "embedding"]
    return min(tables) if tables else None


def check_input_size(specs: list[tuple[tuple[int, ...], str]], settings: ProbeSettings) -> None:
    """Refuse a probe batch larger than ``max_input_mib`` before allocating it."""
    total = sum(
        math.prod(shape) * np.dtype(dtype.replace("bfloat16", "float16")).itemsize for shape, dtype in specs
    )
    if total > settings.max_input_mib * 2**20:
        raise ProbeError(
            f"the probe batch would take {total / 2**20:.0f} MiB (inputs "
            f"{[list(s) for s, _ in specs]}); the cap is "
            f"{settings.max_input_mib:g} MiB — lower --batch-size or --input-shape"
        )


def extra_tensors(desc: Any) -> list[str]:
    """Graph tensors besides layer inputs/outputs that the probe measures: each residual block's
    skip input and output (growth = Var[out] / Var[skip])."""
    names: list[str] = []
    for block in getattr(desc, "blocks", []):
        for t in (block.skip_tensor, block.out_tensor):
            if t not in names:
                names.append(t)
    return names
