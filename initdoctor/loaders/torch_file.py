"""PyTorch files: state_dict checkpoints (data) and the formats that execute code when loaded.

========================  =====================================  ====================================
format                    how it is recognised (by content)      loaded with
========================  =====================================  ====================================
state_dict (zip, legacy)  zip with ``data.pkl`` / pickle header  ``torch.load(weights_only=True)`` ¹
full pickled module       same, but needs globals beyond tensors ``torch.load`` — ``trust`` only
TorchScript               zip with a ``code/`` folder            ``torch.jit.load`` — ``trust`` only
torch.export (``.pt2``)   zip with ``archive_format``            ``torch.export.load`` — ``trust`` only
========================  =====================================  ====================================

¹ A zip state_dict is unpickled on the meta device and streamed from the file, both to inspect
it (:func:`describe_streamed_state_dict`) and to fix it (the twin in :mod:`.editable`); legacy
files are loaded whole.

``weights_only=True`` uses torch's restricted unpickler, which refuses any global outside a small
allow-list of tensor types, so a malicious pickle is rejected before it runs anything.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UntrustedFormatError, first_line
from ..model import ModelDescription
from .safetensors_file import _DTYPES, _NAMES
from .tensors import describe_tensors

#: Keys under which checkpoints commonly wrap their state_dict (Lightning uses ``state_dict``).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")

TRUST_HINT = "re-run with --trust only if you trust where the file comes from"


def zip_kind(path: Path) -> str:
    """Classify a torch zip archive: ``torchscript``, ``torch.export`` or ``torch-zip``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        # NotImplementedError: a garbled header claiming an unsupported zip version or compression
        raise InputError(f"{path}: truncated or corrupt zip archive ({exc})") from None
    if any("/code/" in n or n.startswith("code/") for n in names):
        return "torchscript"
    if any(n.endswith("archive_format") or "/models/" in n for n in names):
        return "torch.export"
    if any(n.endswith("data.pkl") for n in names):
        return "torch-zip"
    raise InputError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl)")


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def find_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside a checkpoint: the object itself, or one wrapped under a known key."""
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if _is_tensor_dict(inner):
                return inner
        candidates = [v for v in obj.values() if _is_tensor_dict(v)]
        if len(candidates) == 1:
            return candidates[0]
        tensors = {k: v for k, v in obj.items() if _tensor_like(v)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise InputError(f"{path}: no state_dict found in the checkpoint (top-level keys: {keys})")
    raise InputError(f"{path}: holds a {type(obj).__name__}, not a state_dict or module")


def _tensor_like(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def load_torch_object(path: Path, *, trust: bool, meta: bool = False) -> Any:
    """``torch.load`` a zip or legacy checkpoint: restricted unpickler unless ``trust``.
    ``meta=True`` (zip only): tensors land on the meta device, no data is read."""
    import torch

    if not trust:
        try:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 127" on a garbled file
                warnings.simplefilter("ignore")
                if meta:
                    return torch.load(path, map_location="meta", weights_only=True)
                return torch.load(path, map_location="cpu", weights_only=True, mmap=_use_mmap(path))
        except pickle.UnpicklingError as exc:
            damage = _pickle_damage(path)
            if damage:
                raise InputError(f"{path}: truncated or corrupt PyTorch checkpoint ({damage})") from None
            detail = str(exc).splitlines()
            culprit = next((line.strip() for line in detail if "Unsupported global" in line), "")
            culprit = f" ({culprit.rstrip('.')})" if culprit else ""
            raise UntrustedFormatError(
                f"{path}: the checkpoint holds pickled Python objects beyond tensors{culprit}, "
                f"e.g. a full nn.Module; loading it would run code from the file; {TRUST_HINT}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a garbled stream raises IndexError, struct.error...
            raise InputError(
                f"{path}: truncated or corrupt PyTorch checkpoint ({_first_line(exc)})"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - trusted unpickling can raise anything
        raise InputError(f"{path}: cannot unpickle the checkpoint ({_first_line(exc)})") from None


def _pickle_damage(path: Path) -> str | None:
    """Why the checkpoint's pickle is cut short or garbled (a corrupt file, not an untrusted one),
    or None. Read with ``pickletools.genops``, which only parses opcodes and builds nothing."""
    import pickletools

    try:
        if _is_zip(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                with archive.open(name) as fh:
                    for _ in pickletools.genops(fh):
                        pass
        else:
            with open(path, "rb") as fh:
                for _ in range(4):  # legacy: magic number, protocol, sys_info, the object
                    for _ in pickletools.genops(fh):
                        pass
    except Exception as exc:  # noqa: BLE001 - ValueError, BadZipFile, MemoryError on a garbled length...
        return _first_line(exc)
    return None


#: Zip checkpoints above this size are memory-mapped instead of read. torch 2.13's mmap path does
#: not check a tensor record's length against the tensor (a short record reads past its end), so
#: files that fit comfortably in memory are read normally, where torch does check.
MMAP_ABOVE_BYTES = 2 << 30


def _use_mmap(path: Path) -> bool:
    return _is_zip(path) and path.stat().st_size > MMAP_ABOVE_BYTES


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _first_line(exc: BaseException) -> str:
    """:func:`~initdoctor.errors.first_line` prefixed with the exception's type (torch's own
    messages often do not say what went wrong without it)."""
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: torch dtype name → (stored numpy dtype, bfloat16 widening) for the streamed state_dict path:
#: the same table the safetensors reader uses, keyed by torch's names instead of its codes
_STREAMABLE = {_NAMES[code]: stored for code, stored in _DTYPES.items()}


@dataclass(frozen=True)
class ZipTensor:
    """Where one tensor of a zip state_dict lives: its values are ``count`` elements of ``stored``
    (numpy dtype; ``bfloat16``: ``<u2`` bits) from byte ``offset``, laid out by ``stride`` (dense:
    a permutation of a contiguous layout), inside the record ``record`` (a
    :class:`zipfile.ZipInfo`) whose data starts at ``record_start``."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    count: int
    stored: str
    bfloat16: bool
    record: zipfile.ZipInfo
    record_start: int


def zip_tensor_plan(path: Path) -> dict[str, ZipTensor] | None:
    """Locate every tensor of a zip state_dict without reading one.

    ``torch.load(map_location="meta", weights_only=True)`` unpickles the structure only (same
    restricted unpickler; each meta tensor's storage carries ``_checkpoint_offset``, the byte
    offset of its record in the file); every record a tensor uses is checked against the zip's
    own directory (long enough, inside the file) — the check torch's mmap path skips.

    Returns None when the meta load fails or gives no offsets, or a tensor is not plain (a strided
    view that is not dense, a quantized, sparse or exotic tensor, a compressed record, a big-endian
    file): the caller then loads normally, and reports damage or untrusted content from there.
    """
    import struct

    import numpy as np
    import torch

    try:
        state = find_state_dict(load_torch_object(path, trust=False, meta=True), path)
    except InputError:
        # untrusted content, damage, or a tensor the meta device cannot hold (quantized...):
        # the normal load says which, or reads it
        return None
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
            order = next(
                (n for n in archive.namelist() if n.endswith("/byteorder") or n == "byteorder"), None
            )
            if order is not None and archive.read(order).strip() not in (b"little", b""):
                return None
            records: dict[int, zipfile.ZipInfo] = {}
            for info in archive.infolist():
                fh.seek(info.header_offset)
                head = fh.read(30)
                if len(head) < 30 or head[:4] != b"PK\x03\x04":
                    raise ValueError(f"bad local header for {info.filename!r}")
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                records[info.header_offset + 30 + name_len + extra_len] = info
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, KeyError) as exc:
        raise InputError(f"{path}: truncated or corrupt zip archive ({exc})") from None
    plan: dict[str, ZipTensor] = {}
    for key, t in state.items():
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in _STREAMABLE or t.layout is not torch.strided or t.is_quantized:
            return None
        storage = t.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        if offset is None or not _dense(tuple(t.shape), tuple(t.stride())):
            return None
        stored, bf16 = _STREAMABLE[dtype]
        item = np.dtype(stored).itemsize
        info = records.get(int(offset))
        need = storage.nbytes()
        if info is not None and info.compress_type != zipfile.ZIP_STORED:
            return None  # torch never writes compressed records; whoever did, torch.load decides
        if info is None or info.file_size < need or offset + need > size:
            have = "no record" if info is None else f"a record of {info.file_size} bytes"
            raise InputError(
                f"{path}: truncated or corrupt PyTorch checkpoint (tensor {key!r} needs {need} bytes at "
                f"offset {offset}, the archive has {have} there)"
            )
        if (t.storage_offset() + t.numel()) * item > need:
            raise InputError(
                f"{path}: truncated or corrupt PyTorch checkpoint (tensor {key!r} runs past its storage)"
            )
        plan[key] = ZipTensor(
            dtype,
            tuple(int(d) for d in t.shape),
            tuple(int(d) for d in t.stride()),
            int(offset) + t.storage_offset() * item,
            t.numel(),
            stored,
            bf16,
            info,
            int(offset),
        )
    return plan


def describe_streamed_state_dict(path: Path, progress: Any = None) -> ModelDescription | None:
    """A zip state_dict described without reading its tensors into memory: located by
    :func:`zip_tensor_plan`, each weight streamed from the file by
    :func:`~initdoctor.stats.file_stats`. Memory stays flat whatever the checkpoint's size.
    None when there is no plan (the caller loads normally)."""
    from ..stats import file_stats
    from .tensors import counted, weight_count

    plan = zip_tensor_plan(path)
    if plan is None:
        return None

    def stats_of(key: str):
        t = plan[key]
        return file_stats(path, t.offset, t.count, t.stored, t.dtype, bfloat16=t.bfloat16)

    shared: set[tuple[int, tuple[int, ...]]] = set()
    parameters = 0
    for t in plan.values():
        if (t.offset, t.shape) not in shared:
            shared.add((t.offset, t.shape))
            parameters += t.count
    return describe_tensors(
        [(k, t.shape) for k, t in plan.items()],
        counted(stats_of, weight_count(list(plan)), progress),
        path=str(path),
        fmt="state_dict",
        order="checkpoint",
        parameters=parameters,
    )


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """The view covers ``numel`` consecutive elements (contiguous, or a permutation of a contiguous
    layout such as a transposed weight): then its statistics are those of that flat range."""
    expected = 1
    for dim, step in sorted(zip(shape, stride, strict=False), key=lambda p: p[1]):
        if dim == 1:
            continue
        if step != expected:
            return False
        expected *= dim
    return True


def describe_torch_object(obj: Any, path: Path, fmt: str, progress: Any = None) -> ModelDescription:
    """A loaded checkpoint object → description (an nn.Module keeps its graph)."""
    import torch

    from .torch_module import count_parameters, describe_module, tensor_stats

    if isinstance(obj, torch.nn.Module):
        return describe_module(obj, path=str(path), fmt="torch-module")
    state = find_state_dict(obj, path)
    keys_shapes = [(k, tuple(int(s) for s in v.shape)) for k, v in state.items()]
    from .tensors import counted, weight_count

    return describe_tensors(
        keys_shapes,
        counted(lambda key: tensor_stats(state[key]), weight_count(list(state)), progress),
        path=str(path),
        fmt=fmt,
        order="checkpoint",
        parameters=count_parameters(list(state.values())),
    )


def load_torchscript(path: Path, *, trust: bool) -> Any:
    if not trust:
        raise UntrustedFormatError(
            f"{path}: a TorchScript archive; loading it runs the code stored inside; {TRUST_HINT}"
        )
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot load the TorchScript archive ({_first_line(exc)})") from None


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
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        cause = swallowed.exception or exc
        raise InputError(f"{path}: cannot load the torch.export archive ({_first_line(cause)})") from None
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
