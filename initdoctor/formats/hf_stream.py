"""A Hugging Face folder probed without holding its weights: the streamed strategy of
:mod:`.hf_folder` (issue 18, part 1), chosen when the checkpoint is larger than half the available
memory, or by ``--stream``.

The model is built on the meta device (:func:`.hf_folder.build_model`); its parameters then get
CPU storage that is never written (``torch.empty``: the pages stay unmapped, so they cost address
space, not memory), so that torch.fx / torch.export read its graph as usual. The weights stay in
the safetensors files: their statistics are streamed from the files
(:func:`~initdoctor.stats.file_stats`, as for a bare safetensors file; :class:`StatsAhead`: in a
background thread while torch.export traces), and the probe reads each
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
from ..stats import WeightStats, current_deadline, file_stats, scan_deadline
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
            raise InputError(
                f"{folder}: --stream reads safetensors weights; this folder's .bin weights are "
                "only read whole (drop --stream, or save the model with safetensors)"
            )
        return True
    if files is None:
        return False
    available = available_bytes()
    size = sum(f.stat().st_size for f in files if f.is_file())
    return available is not None and size > available / 2


def load_if_streamed(name: str, text: str, weights: Any, *, stream: bool, trust: bool) -> LoadedModel | None:
    """The ``hf-folder`` or ``factory`` source ``text`` loaded with its weights left in their files
    when :func:`should_stream` / :func:`should_stream_file` say so (``stream``: forced), else None."""
    if name == "hf-folder" and should_stream(Path(text), stream):
        return load_streamed(Path(text), trust=trust)
    if name == "factory" and weights and should_stream_file(Path(weights), stream):
        return load_factory_streamed(text, Path(weights), trust=trust)
    return None


def should_stream_file(weights: Path, force: bool) -> bool:
    """A factory's ``--weights``: stream a safetensors file when forced or over half the memory."""
    from .detect import detect_format

    if not weights.is_file() or detect_format(weights) != "safetensors":
        if force:
            raise InputError(f"{weights}: --stream reads a .safetensors --weights file")
        return False
    available = available_bytes()
    return force or (available is not None and weights.stat().st_size > available / 2)


def _accelerate() -> Any:
    try:
        from accelerate.utils import OffloadedWeightsLoader
    except ImportError:
        raise InputError(
            "a streamed probe reads the weights with accelerate, which is not installed: "
            "pip install 'initdoctor[stream]'"
        ) from None
    return OffloadedWeightsLoader


class Files:
    """The safetensors files' headers (checked by :func:`.safetensors_header.read_header`): each
    tensor's file, entry and data start; a tensor's statistics streamed from its file."""

    def __init__(self, files: list[Path]) -> None:
        self.headers: dict[Path, dict[str, Any]] = {}
        self.starts: dict[Path, int] = {}
        self.owner: dict[str, Path] = {}
        self.weight_files: list[WeightFile] = []
        for path in files:
            self.headers[path], metadata, self.starts[path] = read_header(path)
            self.weight_files.append(
                WeightFile(path, "safetensors", list(self.headers[path]), dict(metadata))
            )
            self.owner.update(dict.fromkeys(self.headers[path], path))

    def entry(self, key: str) -> dict[str, Any]:
        return self.headers[self.owner[key]][key]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.entry(key)["shape"])

    def stats(self, key: str, read: Any) -> WeightStats:
        entry, path = self.entry(key), self.owner[key]
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            from .torch_moments import weight_stats

            return weight_stats(read())
        stored, bf16 = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // np.dtype(stored).itemsize
        start = self.starts[path] + begin
        return file_stats(path, start, count, stored, DTYPE_NAMES[entry["dtype"]], bfloat16=bf16)


class StatsAhead:
    """The weights' statistics (:meth:`Files.stats`) computed in one background thread while the
    caller describes the model (torch.export's trace holds the GIL in Python; the file pass spends
    its time in reads and numpy loops, which release it: on 2 CPUs the pass costs no wall time).
    Every ``.weight`` is scanned, smallest first (the norms' are asked for before the trace), each
    under the caller's :func:`~initdoctor.stats.scan_deadline`; ``get(name)`` waits for that one
    (another name is scanned on the caller's thread). Leaving the block cancels what is left."""

    def __init__(self, files: Files, loaded: dict[str, str], loader: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.files, self.loaded, self.loader = files, loaded, loader
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="initdoctor-stats")
        when = current_deadline()
        names = sorted(
            (n for n in loaded if n.endswith("weight")), key=lambda n: int(np.prod(files.shape(loaded[n])))
        )
        self.ahead = {n: self.pool.submit(self._scan, n, when) for n in names}

    def _scan(self, name: str, when: float | None) -> WeightStats:
        with scan_deadline(when):
            return self.files.stats(self.loaded[name], lambda: self.loader[name])

    def get(self, name: str) -> WeightStats:
        if name in self.ahead:
            return self.ahead[name].result()
        return self.files.stats(self.loaded[name], lambda: self.loader[name])

    def __enter__(self) -> StatsAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_shapes(label: Path, model: Any, files: Files, loaded: dict[str, str], what: str) -> None:
    own = model.state_dict(keep_vars=True)
    for name, key in loaded.items():
        if tuple(own[name].shape) != files.shape(key):
            raise InputError(
                f"{label}: the weights do not fit the model {what} "
                f"({key}: {files.shape(key)} in the file, {tuple(own[name].shape)} in the model)"
            )


def _index(model: Any, files: Files, loaded: dict[str, str], cast: bool) -> dict[str, dict[str, str]]:
    """accelerate's offload index: model name → its safetensors file and name there (and the
    model's dtype when ``cast``: a factory's ``load_state_dict`` copies into it); tied names → the
    kept one's entry."""
    import torch

    own = model.state_dict(keep_vars=True)
    index: dict[str, dict[str, str]] = {}
    for name, key in loaded.items():
        index[name] = {"safetensors_file": str(files.owner[key]), "weight_name": key}
        if cast and isinstance(own[name], torch.Tensor) and own[name].is_floating_point():
            index[name]["dtype"] = str(own[name].dtype).replace("torch.", "")
    kept = {id(p): n for n, p in model.named_parameters() if n in index}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name not in index and id(param) in kept:
            index[name] = index[kept[id(param)]]
    return index


def _finish(
    model: Any, files: Files, loaded: dict[str, str], index: dict[str, Any], path: str, fmt: str
) -> LoadedModel:
    from .torch_module import describe_module_graph

    loader = _accelerate()(index=index, device="cpu")
    with StatsAhead(files, loaded, loader) as ahead:  # the file pass runs while torch.export traces
        desc, runnable, backend = describe_module_graph(model, path=path, fmt=fmt, stats=ahead.get)
    size = sum(f.stat().st_size for f in files.headers) / 2**20
    desc.notes.append(f"streamed probe: {size:.0f} MiB of weights read from the files as each block runs")
    result = LoadedModel(desc, runnable, backend)
    if fmt == "hf-folder":
        result = HFLoaded(desc, runnable, backend, folder=Path(path), model=model, files=files.weight_files)
    result.streamed = loader
    return result


def load_streamed(folder: Path, *, trust: bool) -> LoadedModel:
    """The folder as :func:`.hf_folder.load` reads it, with the weights left in their files."""
    import torch

    _accelerate()
    weights = hf_weights(folder)
    model = build_model(folder, trust=trust)
    files = Files(shards(folder) or [])
    if weights.name.endswith(".index.json"):
        check_shards(weights, shard_files(weights), files.headers)
    names = match_names(model, list(files.owner))
    own = model.state_dict(keep_vars=True)
    loaded = {names[k]: k for k in files.owner if names[k] in own}
    if not loaded:
        raise InputError(f"{folder}: no tensor of the checkpoint belongs to the model config.json describes")
    _check_shapes(folder, model, files, loaded, "config.json describes")
    codes = {files.entry(k)["dtype"] for k in loaded.values()} & {"F64", "F32", "F16", "BF16"}
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
    return _finish(model, files, loaded, _index(model, files, loaded, False), str(folder), "hf-folder")


def load_factory_streamed(spec: str, weights: Path, *, trust: bool) -> LoadedModel:
    """``--model pkg.mod:fn --weights FILE.safetensors`` with the weights left in the file: the
    factory runs under accelerate's ``init_empty_weights`` (parameters on the meta device)."""
    from accelerate import init_empty_weights

    from .factory import build_from_factory

    _accelerate()
    with init_empty_weights():
        model = build_from_factory(spec, trust=trust)
    files = Files([weights])
    own = model.state_dict(keep_vars=True)
    loaded = {k: k for k in files.owner if k in own}
    unexpected = [k for k in files.owner if k not in own]
    index = _index(model, files, loaded, True)
    missing = [k for k, _ in model.named_parameters(remove_duplicate=False) if k not in index]
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise InputError(f"{weights}: weights do not match the model ({detail})")
    _check_shapes(weights, model, files, loaded, "the factory builds")
    materialize(model, None)
    model.eval()
    return _finish(model, files, loaded, index, spec, "factory")
