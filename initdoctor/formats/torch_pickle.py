"""Reading ``torch.save`` files: which torch archive a zip is, ``torch.load`` under the restricted
unpickler (or, with ``trust``, the full one), telling damage from untrusted content, and finding the
state_dict inside a checkpoint (Lightning and other wrappers).

========================  =====================================  ====================================
format                    how it is recognised (by content)      loaded with
========================  =====================================  ====================================
state_dict (zip, legacy)  zip with ``data.pkl`` / pickle header  ``torch.load(weights_only=True)`` ¹
full pickled module       same, but needs globals beyond tensors ``torch.load`` — ``trust`` only
TorchScript               zip with a ``code/`` folder            ``torch.jit.load`` — ``trust`` only
torch.export (``.pt2``)   zip with ``archive_format``            ``torch.export.load`` — ``trust`` only
========================  =====================================  ====================================

¹ A zip state_dict is unpickled on the meta device and streamed from the file, both to inspect
it and to fix it (:mod:`.torch_state_dict_stream`); legacy files are loaded whole
(:mod:`.torch_state_dict`). TorchScript and torch.export: :mod:`.torch_code`.

``weights_only=True`` uses torch's restricted unpickler, which refuses any global outside a small
allow-list of tensor types, so a malicious pickle is rejected before it runs anything.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import InputError, UntrustedFormatError, first_line
from .torch_limits import check_records

#: Keys under which checkpoints commonly wrap their state_dict (Lightning uses ``state_dict``).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")

TRUST_HINT = "re-run with --trust only if you trust where the file comes from"
PICKLE_HINT = "a full pickle runs code when loaded: give --trust if you trust it"


def cwd_on_path() -> None:
    """The working directory on ``sys.path`` (as ``python -m`` has it; the ``initdoctor`` script
    does not), so that a factory's module or a pickled class's module is found from there."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


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


def _is_tensor_dict(obj: Any) -> TypeGuard[Mapping[str, Any]]:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(_tensor_like(v) for v in obj.values())
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
            odd = next((k for k in tensors if not isinstance(k, str)), None)
            if odd is not None:
                raise InputError(
                    f"{path}: the state_dict has a tensor under the key {odd!r} "
                    f"({type(odd).__name__}, not a string): not a state_dict initdoctor can read"
                )
            return tensors
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise InputError(f"{path}: no state_dict found in the checkpoint (top-level keys: {keys})")
    raise InputError(f"{path}: holds a {type(obj).__name__}, not a state_dict or module")


def _tensor_like(value: Any) -> bool:
    """A torch tensor, or a tensor located without torch (:mod:`.torch_zip_plan`)."""
    from .torch_zip_plan import PlainTensor

    if isinstance(value, PlainTensor):
        return True
    if "torch" not in sys.modules:  # no torch tensor exists before torch is imported
        return False
    import torch

    return isinstance(value, torch.Tensor)


def load_torch_object(path: Path, *, trust: bool, meta: bool = False) -> Any:
    """``torch.load`` a zip or legacy checkpoint: restricted unpickler unless ``trust``.
    ``meta=True`` (zip only): tensors land on the meta device, no data is read."""
    import torch

    if _is_zip(path):
        if not meta:
            check_records(path)  # a deflated record may not unpack past the budget
    else:
        _check_legacy_header(path)
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
            # torch's message (~550 characters) advises add_safe_globals: only the global's name is kept
            culprit = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
            named = f"{culprit.group(1)}, " if culprit else ""
            raise UntrustedFormatError(
                f"{path}: the checkpoint holds pickled Python objects beyond tensors ({named}e.g. a "
                f"full nn.Module); {PICKLE_HINT}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a garbled stream raises IndexError, struct.error...
            if not _is_zip(path) and _legacy_float8(path):
                raise InputError(f"{path}: {LEGACY_FLOAT8}") from None
            raise InputError(f"{path}: truncated or corrupt PyTorch checkpoint ({error_line(exc)})") from None
    cwd_on_path()  # the pickle names its classes by module: found from here, as with python -m
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - trusted unpickling can raise anything
        if not _is_zip(path) and _legacy_float8(path):
            raise InputError(f"{path}: {LEGACY_FLOAT8}") from None
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            raise InputError(
                f"{path}: cannot unpickle the checkpoint: its classes live in module {exc.name!r}, "
                f"not importable from {os.getcwd()}; run from the folder holding it or put that "
                "folder on PYTHONPATH"
            ) from None
        raise InputError(f"{path}: cannot unpickle the checkpoint ({error_line(exc)})") from None


#: The first pickle of a legacy (non-zip) ``torch.save`` file is this number
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_FLOAT8 = (
    "a legacy-format (non-zip) checkpoint holding float8 tensors, which torch cannot load (its "
    "legacy format has no float8 storages); re-save it with torch.save's default zip format"
)


def _check_legacy_header(path: Path) -> None:
    """A file that is not a zip must start as torch's legacy format does (its magic number
    pickled); a tar archive is torch's oldest format, which only the full unpickler reads."""
    import itertools
    import pickletools

    with open(path, "rb") as fh:
        head = fh.read(512)
        if len(head) == 512 and head[257:262] == b"ustar":
            raise UntrustedFormatError(
                f"{path}: a tar archive: torch's oldest checkpoint format, which only the full "
                f"unpickler reads (it can run code from the file); {TRUST_HINT}, or re-save it "
                "with a current torch.save"
            )
        fh.seek(0)
        try:
            ops = list(itertools.islice(pickletools.genops(fh), 4))  # PROTO, (FRAME,) LONG1, STOP
            first = [arg for op, arg, _ in ops if op.name not in ("PROTO", "FRAME", "STOP")]
        except Exception:  # noqa: BLE001 - damage: torch.load reports it with its own words
            return
    if first != [_LEGACY_MAGIC]:
        raise InputError(
            f"{path}: a Python pickle, not a torch.save checkpoint (it does not start with torch's "
            "magic number); save the weights with torch.save or as safetensors"
        )


def _legacy_float8(path: Path) -> bool:
    """The legacy file's object pickle names a float8 dtype (torch cannot load those back)."""
    import pickletools

    try:
        with open(path, "rb") as fh:
            for _ in range(3):  # magic number, protocol, sys_info
                for _ in pickletools.genops(fh):
                    pass
            return any(isinstance(arg, str) and "float8" in arg for _, arg, _ in pickletools.genops(fh))
    except Exception:  # noqa: BLE001 - a garbled stream: not this case
        return False


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
        return error_line(exc)
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


def error_line(exc: BaseException) -> str:
    """:func:`~initdoctor.errors.first_line` prefixed with the exception's type (torch's own
    messages often do not say what went wrong without it)."""
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
