"""A Hugging Face folder probed without holding its weights: the streamed strategy of
:mod:`.hf_folder` (issue 18, part 1), chosen when the checkpoint is larger than half the available
memory, or by ``--stream``.

The model is built on the meta device (:func:`.hf_folder.build_model`); its parameters then get
CPU storage that is never written (``torch.empty``: the pages stay unmapped, so they cost address
space, not memory), so that torch.fx / torch.export read its graph as usual. The weights stay in
the safetensors files: their statistics are streamed from the files
(:func:`~initdoctor.stats.file_stats`, as for a bare safetensors file), and the probe reads each
tensor through accelerate's ``OffloadedWeightsLoader`` (one ``safe_open`` per tensor, closed
after) just before the op or module that uses it, and drops it after its last use (accelerate's
``AlignDevicesHook`` per module for an ``nn.Module``; torch.fx's interpreter frees each value after
its last user for a ``torch.export`` program). Needs accelerate (``initdoctor[stream]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..stats import WeightStats, file_stats
from .base import DTYPE_NAMES, SAFETENSORS_DTYPES, LoadedModel
from .detect import hf_weights
from .hf_folder import HFLoaded, build_model, match_names, materialize
from .hf_folder_save import WeightFile
from .safetensors_header import check_shards, read_header, shard_files


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, else free pages × page size (os.sysconf), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def shards(folder: Path) -> list[Path] | None:
    """The folder's safetensors files (None for ``.bin`` weights, which are not streamed)."""
    weights = hf_weights(folder)
    if weights.name.endswith(".safetensors.index.json"):
        return sorted(set(shard_files(weights).values()))
    return [weights] if weights.name.endswith(".safetensors") else None


def should_stream(folder: Path, force: bool) -> bool:
    """Stream when forced, or when the safetensors checkpoint is over half the available memory."""
    files = shards(folder)
    if force:
        if files is None:
            raise InputError(f"{folder}: --stream reads safetensors weights; this folder has .bin files")
        return True
    if files is None:
        return False
    available = available_bytes()
    size = sum(f.stat().st_size for f in files if f.is_file())
    return available is not None and size > available / 2


def _accelerate() -> Any:
    try:
        from accelerate.utils import OffloadedWeightsLoader
    except ImportError:
        raise InputError(
            "a streamed probe reads the weights with accelerate, which is not installed: "
            "pip install 'initdoctor[stream]'"
        ) from None
    return OffloadedWeightsLoader


def load_streamed(folder: Path, *, trust: bool) -> LoadedModel:
    """The folder as :func:`.hf_folder.load` reads it, with the weights left in their files."""
    import torch

    from .torch_module import describe_module_graph

    loader_class = _accelerate()
    weights = hf_weights(folder)
    model = build_model(folder, trust=trust)
    files = shards(folder) or []
    headers: dict[Path, dict[str, Any]] = {}
    starts: dict[Path, int] = {}
    owner: dict[str, Path] = {}
    weight_files: list[WeightFile] = []
    for shard in files:
        headers[shard], metadata, starts[shard] = read_header(shard)
        weight_files.append(WeightFile(shard, "safetensors", list(headers[shard]), dict(metadata)))
        owner.update(dict.fromkeys(headers[shard], shard))
    if weights.name.endswith(".index.json"):
        check_shards(weights, shard_files(weights), headers)
    names = match_names(model, list(owner))
    own = model.state_dict(keep_vars=True)
    loaded = {names[k]: k for k in owner if names[k] in own}
    if not loaded:
        raise InputError(f"{folder}: no tensor of the checkpoint belongs to the model config.json describes")
    for name, key in loaded.items():
        shape = tuple(int(d) for d in headers[owner[key]][key]["shape"])
        if tuple(own[name].shape) != shape:
            raise InputError(
                f"{folder}: the weights do not fit the model config.json describes "
                f"({key}: {shape} in the file, {tuple(own[name].shape)} in the model)"
            )
    codes = {headers[owner[k]][k]["dtype"] for k in loaded.values()} & {"F64", "F32", "F16", "BF16"}
    dtype = getattr(torch, DTYPE_NAMES[codes.pop()]) if len(codes) == 1 else None
    materialize(model, dtype)  # storage never written: address space only
    own = model.state_dict(keep_vars=True)
    for name in loaded:
        own[name]._is_hf_initialized = True
    missing = {k for k in own if k not in loaded}
    try:
        model.tie_weights(missing_keys=missing, recompute_mapping=False)
    except TypeError:  # an older signature
        model.tie_weights()
    params = dict(model.named_parameters())
    new = sorted(k for k in params if k not in loaded and not getattr(params[k], "_is_hf_initialized", False))
    if new:
        raise InputError(
            f"{folder}: a streamed probe needs every weight in the checkpoint; missing {', '.join(new[:3])}"
        )
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.initialize_weights()  # buffers only (rotary frequencies…): every parameter is marked
    model.eval()
    index = {name: {"safetensors_file": str(owner[key]), "weight_name": key} for name, key in loaded.items()}
    for name, param in model.named_parameters(remove_duplicate=False):  # tied names read the kept one
        if name not in index:
            first = next((n for n, p in model.named_parameters() if p is param), None)
            if first in index:
                index[name] = index[first]

    def stats(name: str) -> WeightStats:
        key = loaded[name]
        entry = headers[owner[key]][key]
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            from .torch_ops import tensor_stats

            return tensor_stats(loader_class(index=index)[name])
        stored, bf16 = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // np.dtype(stored).itemsize
        start = starts[owner[key]] + begin
        return file_stats(owner[key], start, count, stored, DTYPE_NAMES[entry["dtype"]], bfloat16=bf16)

    desc, runnable, backend = describe_module_graph(model, path=str(folder), fmt="hf-folder", stats=stats)
    size = sum(f.stat().st_size for f in files) / 2**20
    desc.notes.append(f"streamed probe: {size:.0f} MiB of weights read from the files as each block runs")
    result = HFLoaded(desc, runnable, backend, folder=folder, model=model, files=weight_files, names=names)
    result.streamed = loader_class(index=index, device="cpu")
    return result
