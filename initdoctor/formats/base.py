"""What every format module shares: :class:`LoadedModel` (the read side's result), the
:class:`Editable` interface (the write side, used by :mod:`initdoctor.fix`), the :class:`Format`
registry entry, the dtype tables, and :class:`TorchTensors` (edits held torch tensors in place).

Nothing here imports numpy or torch at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError
from ..model import ModelDescription

if TYPE_CHECKING:
    import numpy as np


@dataclass
class LoadedModel:
    """A description plus, where the format has one, something that can run the model.

    ``runnable`` is an ``nn.Module`` (factory, trusted pickle), a TorchScript module, a
    ``torch.export.ExportedProgram``, or the path of an ONNX file; ``None`` for a bare state_dict
    or safetensors file, which holds weights but no graph. ``format_name`` is the registry name
    the file was read as (:func:`~initdoctor.formats.detect_format`'s answer, or ``factory``):
    :func:`~initdoctor.formats.open_editable` reopens the file through the same entry.
    """

    description: ModelDescription
    runnable: Any = None
    backend: str | None = None  # "torch" | "torchscript" | "torch.export" | "onnx" | None
    format_name: str | None = None
    #: a streamed model's weights (name → tensor, read from the files on access), else None
    streamed: Any = None


class Editable(Protocol):
    """A model held in its own format: named tensors changed (scale, replace), then saved —
    atomically — in that same format; tensors that are not edited are written back unchanged,
    bit for bit. Each format module defines its twins; they subclass this protocol to share the
    defaults below."""

    probe_backend: str | None = None  # "torch" / "onnx" when the held model can be probed

    def array(self, key: str) -> np.ndarray:
        """The tensor's values as float64 numpy (a copy)."""
        ...

    def scale(self, key: str, factor: float) -> None: ...

    def assign(self, key: str, values: np.ndarray) -> None: ...

    def std(self, key: str) -> float:
        """Population std of the tensor as it now is (in its own dtype)."""
        return float(self.array(key).std())

    def save(self, dst: Path) -> Path: ...

    def runnable(self) -> Any:
        """What :func:`initdoctor.probe.run_probe` runs (the held model, or ONNX bytes)."""
        return None


@dataclass(frozen=True)
class Format:
    """One format's registry entry.

    ``names``: the names :func:`~initdoctor.formats.detect_format` gives files of this format
    (``factory`` for a ``package.module:function`` spec). ``load(source, name, *, trust, weights,
    progress)`` → :class:`LoadedModel` (``source`` the path or spec as given, ``name`` the one
    detected); ``open_editable(loaded, source, *, trust)`` → :class:`Editable` (the twin fix writes
    through).
    """

    names: tuple[str, ...]
    load: Callable[..., LoadedModel]
    open_editable: Callable[..., Editable]


# --- dtype tables -------------------------------------------------------------------------------
#: safetensors dtype → (numpy dtype of the stored bits, is bfloat16)
SAFETENSORS_DTYPES = {
    "F64": ("<f8", False),
    "F32": ("<f4", False),
    "F16": ("<f2", False),
    "BF16": ("<u2", True),
    "I64": ("<i8", False),
    "I32": ("<i4", False),
    "I16": ("<i2", False),
    "I8": ("i1", False),
    "U8": ("u1", False),
    "BOOL": ("u1", False),
}
#: safetensors dtype → the torch-style name reported in ``dtype``
DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
#: torch dtype name → (stored numpy dtype, bfloat16 widening) for the streamed state_dict path:
#: the same table the safetensors reader uses, keyed by torch's names instead of its codes
STREAMABLE = {DTYPE_NAMES[code]: stored for code, stored in SAFETENSORS_DTYPES.items()}
#: safetensors float codes → stored numpy dtype (bfloat16 as its ``<u2`` bits): what fix rescales
FLOAT_CODES = {code: SAFETENSORS_DTYPES[code][0] for code in ("F64", "F32", "F16", "BF16")}
#: torch dtype name → dtype code of :data:`FLOAT_CODES`
TORCH_CODES = {DTYPE_NAMES[code]: code for code in FLOAT_CODES}


# --- tensors that share storage (tied weights) -------------------------------------------------
#: Where a tensor's values live: (the storage, first byte, end byte). Two names with the same region
#: are one tensor under two names (tied weights): judged once, fixed once, written once.
Region = tuple[object, int, int]


def aliases(regions: Mapping[str, Region | None]) -> dict[str, str]:
    """Each name whose region equals an earlier name's → that earlier name (in mapping order);
    names with no region (empty, or a storage that cannot be told apart) alias nothing."""
    first: dict[Region, str] = {}
    out: dict[str, str] = {}
    for key, region in regions.items():
        if region is None or region[1] >= region[2]:
            continue
        if region in first:
            out[key] = first[region]
        else:
            first[region] = key
    return out


class SharedStorage:
    """Guards the edits of tensors that may share storage: a tensor changed through one name
    may not be changed again through another name whose values overlap it (that would scale a
    tied weight once per name, or write one record twice); the same name may be changed again
    (lsuv does). ``regions`` gives each name's :data:`Region` (None: shares nothing)."""

    def __init__(self, region_of: Callable[[str], Region | None]) -> None:
        self.region_of = region_of
        self.edited: dict[str, Region] = {}

    def edit(self, key: str) -> None:
        region = self.region_of(key)
        if region is None:
            return
        for other, (storage, start, end) in self.edited.items():
            if other != key and storage == region[0] and start < region[2] and region[1] < end:
                raise InputError(
                    f"tensor {key!r} shares its storage with {other!r}, which was already changed: "
                    "a shared (tied) tensor is fixed once, through one name"
                )
        self.edited[key] = region


def torch_region(tensor: Any) -> Region | None:
    """The bytes a torch tensor's values span in its storage, or None (no data: empty, meta,
    sparse, quantized...)."""
    import torch

    try:
        if tensor.layout is not torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            return None
        if tensor.numel() == 0:
            return None
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if not ptr:
        return None
    item = tensor.element_size()
    span = 1 + sum((int(n) - 1) * abs(int(s)) for n, s in zip(tensor.shape, tensor.stride(), strict=True))
    start = int(tensor.storage_offset()) * item
    return (ptr, start, start + span * item)


# --- torch tensors held in memory ---------------------------------------------------------------
class TorchTensors(Editable):
    """Edits a mapping of torch tensors in place, in each tensor's own dtype. A tensor shared by
    several names (tied weights) is one tensor: changing it through a second name after the first
    is refused (:class:`SharedStorage`)."""

    def _tensors(self) -> Any:
        raise NotImplementedError

    def _get(self, key: str) -> Any:
        tensors = self._tensors()
        if key not in tensors:
            raise InputError(f"tensor {key!r} not found in the model")
        return tensors[key]

    def _edit(self, key: str) -> Any:
        tensor = self._get(key)
        guard = self.__dict__.get("_shared")
        if guard is None:
            guard = self.__dict__["_shared"] = SharedStorage(lambda k: torch_region(self._get(k)))
        guard.edit(key)
        return tensor

    def array(self, key: str) -> np.ndarray:
        return self._get(key).detach().double().cpu().numpy().copy()

    def std(self, key: str) -> float:
        """Reduced in blocks (:func:`~initdoctor.formats.torch_moments.weight_stats`), not through a
        float64 copy of the tensor."""
        from .torch_moments import weight_stats

        return weight_stats(self._get(key)).std

    def scale(self, key: str, factor: float) -> None:
        """In place, :data:`SCALE_BLOCK` values at a time (a float64 copy of one block, not of the
        tensor); a broadcast (stride 0) holds one stored value for many positions: each is scaled
        once."""
        import torch

        t = self._edit(key)
        with torch.no_grad(), _in_place(key):
            strides = zip(t.shape, t.stride(), strict=True)
            distinct = t[tuple(0 if st == 0 and n > 1 else slice(None) for n, st in strides)]
            if not distinct.is_contiguous():
                distinct.copy_((distinct.double() * factor).to(t.dtype))
                return
            flat = distinct.view(-1)
            for start in range(0, flat.numel(), SCALE_BLOCK):
                part = flat[start : start + SCALE_BLOCK]
                part.copy_((part.double() * factor).to(t.dtype))

    def assign(self, key: str, values: np.ndarray) -> None:
        import numpy as np
        import torch

        t = self._edit(key)
        with torch.no_grad(), _in_place(key):
            t.copy_(torch.from_numpy(np.asarray(values, dtype=np.float64)).to(t.dtype).reshape(t.shape))


#: Values :meth:`TorchTensors.scale` widens to float64 at a time (8 MiB of float64)
SCALE_BLOCK = 1 << 20


@contextmanager
def _in_place(key: str) -> Iterator[None]:
    """torch refuses to write a view whose positions share stored values (a broadcast, overlapping
    strides): one line instead."""
    try:
        yield
    except RuntimeError as exc:
        if "single memory location" not in str(exc):
            raise
        raise InputError(
            f"tensor {key!r} is a view whose positions share stored values (a broadcast or "
            "overlapping strides): it cannot be given values one by one"
        ) from None
