"""Hugging Face model folders: ``config.json`` + ``model.safetensors`` (or its sharded
``model.safetensors.index.json``), or ``pytorch_model.bin`` (or its ``.index.json``), as
``save_pretrained`` writes them. Needs transformers (the ``initdoctor[hf]`` extra).

The architecture comes from ``config.json``: the class ``config.architectures[0]`` of transformers
(else the ``AutoModel`` of the config), built on the meta device, so no memory is spent on an
initialization the checkpoint replaces. The weights are data, read as strictly as every other
file of initdoctor: each safetensors header by :func:`.safetensors_header.read_header` (and a
sharded index by :func:`.safetensors_header.shard_files`/``check_shards``), ``.bin`` files only
through ``torch.load(weights_only=True)`` within :mod:`.torch_limits`. They are assigned to the
model (``load_state_dict(assign=True)``: the file's tensors and dtypes) under the names
``from_pretrained`` gives them (transformers' conversion mapping, :func:`match_names`), then
tied as transformers ties them (``save_pretrained`` drops the tied copy, e.g. GPT-2's
``lm_head.weight``). Weights the checkpoint lacks that are not tied copies are initialized by
the model (transformers' ``initialize_weights``, as ``from_pretrained`` does) and listed in
``new_layers`` and a note.
Code from the folder (``auto_map``: ``trust_remote_code``) runs only with ``trust``.

The built model is described like a factory's (:func:`.torch_module.describe_module_graph`), keeps
its ``.config``, and is probed as is. ``fix`` writes the same folder (:mod:`.hf_folder_save`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Editable, Format, LoadedModel
from .detect import hf_weights
from .hf_folder_save import HFFolder, WeightFile
from .safetensors_header import check_shards, read_header, shard_files, strict_json
from .torch_limits import check_loaded
from .torch_pickle import find_state_dict, load_torch_object

#: Largest config.json read, in bytes (real ones are a few KiB).
MAX_CONFIG_BYTES = 16 << 20
TRUST_HINT = "re-run with --trust only if you trust where the folder comes from"


@dataclass
class HFLoaded(LoadedModel):
    """A folder's :class:`LoadedModel`, plus what ``fix`` writes back through: the built
    ``nn.Module`` (``runnable`` may be its ``torch.export`` program), the weight files, and each
    file tensor name → the model's name for it (they differ when the checkpoint was saved from
    the base model: ``bert.`` prefix)."""

    folder: Path = Path()
    model: Any = None
    files: list[WeightFile] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    unused: dict[str, Any] = field(default_factory=dict)  # file tensors the model does not use


def folder_files(folder: Path) -> list[Path]:
    """Every file of the folder's model: config.json, the weights (index and shards), and the
    other top-level files ``fix`` copies beside them (tokenizer, generation config…)."""
    weights = hf_weights(folder)
    files = [folder / "config.json", weights]
    if weights.name.endswith(".index.json"):
        files += sorted(set(shard_files(weights).values()))
    files += sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".bak"))
    unique: dict[Path, Path] = {}
    for path in files:  # shard_files gives resolved paths: one entry per file
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


# --- config.json → an empty model ----------------------------------------------------------------
def _transformers(folder: Path) -> Any:
    try:
        import transformers
    except ImportError:
        raise InputError(
            f"{folder}: a Hugging Face folder is built with transformers, which is not installed: "
            "pip install 'initdoctor[hf]'"
        ) from None
    major = transformers.__version__.split(".")[0]
    if not major.isdigit() or int(major) < 5:  # initialize_weights skipping loaded tensors: 5.0
        raise InputError(
            f"{folder}: a Hugging Face folder needs transformers 5 or later (found "
            f"{transformers.__version__}): pip install 'initdoctor[hf]'"
        )
    return transformers


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as strict JSON (an object, at most :data:`MAX_CONFIG_BYTES`)."""
    path = folder / "config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"{path}: over {MAX_CONFIG_BYTES} bytes; not a model config")
        text = path.read_bytes().decode("utf-8")
        data = strict_json(text)
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a valid config.json ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a valid config.json (not a JSON object)")
    return data


def build_model(folder: Path, *, trust: bool) -> Any:
    """The model config.json describes, on the meta device (no memory, no initialization)."""
    import torch

    transformers = _transformers(folder)
    data = read_config(folder)
    path = folder / "config.json"
    auto_map = data.get("auto_map")
    if auto_map and not trust:
        raise InputError(f"{path}: auto_map names model code in the folder (trust_remote_code); {TRUST_HINT}")
    try:
        if auto_map:
            config = transformers.AutoConfig.from_pretrained(
                str(folder), trust_remote_code=True, local_files_only=True
            )
        else:
            model_type = data.get("model_type")
            if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
                raise InputError(
                    f"{path}: model_type {model_type!r} is not one this transformers "
                    f"({transformers.__version__}) knows"
                )
            config = transformers.CONFIG_MAPPING[model_type].from_dict(data)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a config class may raise anything on bad values
        raise InputError(f"{path}: cannot build the config ({_line(exc)})") from None
    build = _model_class(transformers, folder, config, data, trust=trust)
    try:
        with torch.device("meta"):
            return build(config)
    except Exception as exc:  # noqa: BLE001 - the model's __init__ may raise anything
        raise InputError(f"{path}: cannot build the model ({_line(exc)})") from None


def _model_class(
    transformers: Any, folder: Path, config: Any, data: dict[str, Any], *, trust: bool
) -> Callable[[Any], Any]:
    """``config.architectures[0]`` (the class the folder was saved from), else ``AutoModel``."""
    archs = data.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    auto_map = data.get("auto_map")
    if auto_map and trust and isinstance(auto_map, dict):
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        refs = [ref for ref in auto_map.values() if isinstance(ref, str)]
        ref = next((r for r in refs if arch and r.endswith(f".{arch}")), auto_map.get("AutoModel"))
        if isinstance(ref, str) and ref:
            remote: Callable[[Any], Any] = get_class_from_dynamic_module(
                ref, str(folder), local_files_only=True
            )
            return remote
    found = getattr(transformers, arch, None) if arch else None
    if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel):
        return found
    return lambda cfg: transformers.AutoModel.from_config(cfg)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --- the weights -----------------------------------------------------------------------------------
def read_weights(folder: Path) -> tuple[dict[str, Any], list[WeightFile]]:
    """Every tensor of the checkpoint (file name → tensor), and the files they came from."""
    weights = hf_weights(folder)
    state: dict[str, Any] = {}
    files: list[WeightFile] = []
    safetensors = weights.name.endswith(".safetensors") or weights.name.endswith(".safetensors.index.json")
    if weights.name.endswith(".index.json"):
        key_to_file = shard_files(weights)
        shards = sorted(set(key_to_file.values()))
    else:
        key_to_file, shards = None, [weights]
    held: dict[Path, dict[str, Any]] = {}
    for shard in shards:
        if safetensors:
            header, metadata, _ = read_header(shard)  # strict, before the library reads a byte
            tensors = _safetensors_tensors(shard)
            files.append(WeightFile(shard, "safetensors", list(header), dict(metadata)))
        else:
            tensors = dict(find_state_dict(load_torch_object(shard, trust=False), shard))
            check_loaded(shard, tensors)
            files.append(WeightFile(shard, "bin", list(tensors)))
        held[shard] = tensors
        state.update(tensors)
    if key_to_file is not None:
        check_shards(weights, key_to_file, held)
    return state, files


def _safetensors_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError...
        raise InputError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def match_names(model: Any, file_keys: list[str]) -> dict[str, str]:
    """File tensor name → model name, as ``from_pretrained`` renames them: transformers' own
    checkpoint conversion mapping for the model (``get_model_conversion_mapping``: legacy names
    such as ViT's ``attention.attention.key`` → ``attention.k_proj``, ``gamma``/``beta``) applied
    by its ``rename_source_key``, which also adds or removes the base model's prefix (a
    ``BertModel`` checkpoint in a ``BertForSequenceClassification``). A key that a
    ``WeightConverter`` would merge or split (fused QKV, stacked experts) keeps its name: it is
    reported unused rather than loaded wrongly."""
    own = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except Exception:  # noqa: BLE001 - a transformers without the mapping, or custom code
        return {k: _with_prefix(k, own, prefix) for k in file_keys}
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    names: dict[str, str] = {}
    for key in file_keys:
        renamed, converted = rename_source_key(key, renamings, converters, prefix or None, own)
        names[key] = key if converted is not None else renamed
    return names


def _with_prefix(key: str, own: dict[str, Any], prefix: str) -> str:
    """``key`` with the base model's prefix removed or added if that names a model tensor."""
    if prefix and key.startswith(f"{prefix}.") and key.removeprefix(f"{prefix}.") in own:
        return key.removeprefix(f"{prefix}.")
    if prefix and f"{prefix}.{key}" in own:
        return f"{prefix}.{key}"
    return key


def load_into(
    model: Any, state: dict[str, Any], names: dict[str, str], folder: Path
) -> tuple[list[str], list[str]]:
    """Assign ``state`` to ``model``, tie, and initialize what the checkpoint lacks (as
    ``from_pretrained`` does); returns (the new weights' names, the checkpoint's unused names)."""
    import torch

    own = model.state_dict(keep_vars=True)
    renamed = {names[k]: v for k, v in state.items() if names[k] in own}
    unused = sorted(k for k in state if names[k] not in own)
    if not renamed:
        raise InputError(f"{folder}: no tensor of the checkpoint belongs to the model config.json describes")
    try:
        result = model.load_state_dict(renamed, strict=False, assign=True)
    except RuntimeError as exc:  # a shape mismatch
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), _line(exc))
        raise InputError(
            f"{folder}: the weights do not fit the model config.json describes ({detail})"
        ) from None
    own = model.state_dict(keep_vars=True)
    for key in renamed:
        own[key]._is_hf_initialized = True  # transformers' initialize_weights leaves these alone
    missing = set(result.missing_keys)
    try:
        model.tie_weights(missing_keys=missing, recompute_mapping=False)
    except TypeError:  # an older signature
        model.tie_weights()
    params = dict(model.named_parameters())  # new weights; missing buffers are initialized too
    new = sorted(k for k, v in params.items() if v.device.type == "meta")
    floats = {v.dtype for v in renamed.values() if v.is_floating_point()}
    materialize(model, floats.pop() if len(floats) == 1 else None)
    # only tensors without _is_hf_initialized (new ones, buffers); seeded, so that two runs judge
    # the same new layers, and in a forked RNG, so that the caller's random state is left alone
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.initialize_weights()
    left = [k for k, v in model.state_dict(keep_vars=True).items() if v.device.type == "meta"]
    if left:
        raise InputError(f"{folder}: could not build {', '.join(left[:3])} from the checkpoint")
    model.eval()
    return new, unused


def materialize(model: Any, dtype: Any) -> None:
    """Give every parameter and buffer still on the meta device CPU storage (values follow); a
    new float parameter takes the checkpoint's float ``dtype`` (a bfloat16 folder: bfloat16)."""
    import torch

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.device.type == "meta":
                like = dtype if dtype is not None and param.is_floating_point() else param.dtype
                module._parameters[name] = torch.nn.Parameter(
                    torch.empty_like(param, device="cpu", dtype=like), requires_grad=param.requires_grad
                )
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device.type == "meta":
                module._buffers[name] = torch.empty_like(buf, device="cpu")


# --- registry entry ------------------------------------------------------------------------------
def load(source: str, name: str, *, trust: bool, weights: str | None, progress: Any) -> LoadedModel:
    from .torch_module import describe_module_graph

    folder = Path(source)
    model = build_model(folder, trust=trust)
    state, files = read_weights(folder)
    names = match_names(model, list(state))
    new, unused = load_into(model, state, names, folder)
    kept = {k: state[k] for k in unused}  # written back as they were when their file is rewritten
    del state
    desc, runnable, backend = describe_module_graph(model, path=str(folder), fmt="hf-folder")
    desc.new_layers = new
    if new:
        shown = ", ".join(new[:8]) + (f" and {len(new) - 8} more" if len(new) > 8 else "")
        desc.notes.append(f"not in the checkpoint, initialized by the model (new layers): {shown}")
    if unused:
        desc.notes.append(f"in the checkpoint but not used by the model: {', '.join(unused[:8])}")
    return HFLoaded(
        desc, runnable, backend, folder=folder, model=model, files=files, names=names, unused=kept
    )


def open_editable(loaded: LoadedModel, source: str, *, trust: bool) -> Editable:
    if not isinstance(loaded, HFLoaded):  # pragma: no cover - load() gives an HFLoaded
        loaded = load(source, "hf-folder", trust=trust, weights=None, progress=None)
        assert isinstance(loaded, HFLoaded)
    return HFFolder(loaded.folder, loaded.model, loaded.files, loaded.names, loaded.unused)


FORMAT = Format(("hf-folder",), load, open_editable)
