"""Turn a flat mapping of named tensors (a state_dict, a safetensors file) into layers.

Without a graph the layer kind comes from the weight's rank and the module path:

* ``<path>.weight`` of rank 2 → ``linear``, or ``embedding`` when the last path component names
  an embedding (contains ``emb``, or is ``wte``/``wpe``);
* rank 3/4/5 → ``conv1d``/``conv2d``/``conv3d`` (a transposed convolution cannot be told apart
  from a convolution without a graph);
* rank 1 → a normalization layer (``batchnorm`` when ``running_mean`` sits beside it).

Tensors that share storage (tied weights) are counted once in ``parameters``, and judged once:
the first name in the file's order stands for the others (``aliases``; a note names them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from ..gains import fans
from ..model import Layer, ModelDescription, NormLayer
from ..stats import WeightStats

_EMBEDDING_NAME = re.compile(r"(emb|^wte$|^wpe$)", re.IGNORECASE)


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def split_weight_key(key: str) -> str | None:
    """``features.3.weight`` → ``features.3``; a bare ``weight`` → ``""``; otherwise None."""
    if key == "weight":
        return ""
    if key.endswith(".weight"):
        return key[: -len(".weight")]
    return None


def kind_from_shape(name: str, shape: Sequence[int]) -> str | None:
    rank = len(shape)
    if rank == 2:
        last = name.rsplit(".", 1)[-1]
        return "embedding" if _EMBEDDING_NAME.search(last) else "linear"
    if rank in (3, 4, 5):
        return f"conv{rank - 2}d"
    return None


def describe_tensors(
    keys_shapes: Sequence[tuple[str, tuple[int, ...]]],
    stats_of: Callable[[str], WeightStats],
    *,
    path: str,
    fmt: str,
    order: str,
    parameters: int,
    aliases: Mapping[str, str] | None = None,
) -> ModelDescription:
    """Build a :class:`ModelDescription` from ``(key, shape)`` pairs in the wanted order.

    ``stats_of(key)`` is called once per weight (and norm bias) that is reported, so a streaming
    loader only ever materialises one tensor at a time. ``aliases`` maps a name to the earlier
    name whose values it shares (:func:`~initdoctor.formats.base.aliases`): such a weight is not
    a layer of its own (one tensor is judged, and fixed, once).
    """
    present = {key for key, _ in keys_shapes}
    desc = ModelDescription(path=path, format=fmt, parameters=parameters, order=order)
    tied = aliases or {}
    for key, shape in keys_shapes:
        name = split_weight_key(key)
        if name is None:
            continue
        if key in tied:
            note = f"{key} shares its storage with {tied[key]} (tied): judged and fixed once, as that"
            desc.notes.append(note)
            continue
        prefix = f"{name}." if name else ""
        bias_key = f"{prefix}bias" if f"{prefix}bias" in present else None
        display = name or "(root)"
        if len(shape) == 1:
            norm_kind = "batchnorm" if f"{prefix}running_mean" in present else "norm"
            bias_stats = stats_of(bias_key) if bias_key else None
            desc.norms.append(NormLayer(display, norm_kind, key, tuple(shape), stats_of(key), bias_stats))
            continue
        kind = kind_from_shape(name, shape)
        if kind is None:
            continue
        fan_in, fan_out = fans(kind, shape)
        desc.layers.append(
            Layer(display, kind, key, tuple(shape), fan_in, fan_out, stats_of(key), bias_key=bias_key)
        )
    return desc


def counted(
    stats_of: Callable[[str], WeightStats], total: int, progress: Callable[[int, int], None] | None
) -> Callable[[str], WeightStats]:
    """``stats_of`` that also reports ``progress(done, total)`` after each tensor it reduces."""
    if progress is None:
        return stats_of
    done = [0]

    def wrapped(key: str) -> WeightStats:
        result = stats_of(key)
        done[0] += 1
        progress(min(done[0], total), total)
        return result

    return wrapped


def weight_count(keys: Sequence[str]) -> int:
    """How many tensors a description will reduce (weights; an estimate for the progress bar)."""
    return max(1, sum(1 for k in keys if split_weight_key(k) is not None))
