"""Weight statistics of a DTensor parameter (FSDP2 ``fully_shard``, ``distribute_tensor``) from
its local shard, merged across the ranks that hold it: no rank gathers the full weight.

Each rank reduces its shard on its device (:func:`~initdoctor.formats.torch_moments.weight_scan`:
count, mean, M2 of the finite values, NaN/Inf counts, max |x|; float64 on CPU and CUDA), the six
numbers of every rank are all-gathered, and every rank merges them in rank order with Chan et
al.'s formula (:class:`~initdoctor.stats.Moments`), so all ranks hold the same, bit-identical
statistics (:func:`~initdoctor.formats.torch_moments.weight_stats`), equal to those of the
whole tensor up to float rounding. A rank whose coordinate on a ``Replicate`` mesh dimension is not
0 contributes nothing (its shard is another rank's copy); a ``Partial`` placement (a pending sum,
not a parameter's layout) is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InputError
from ..stats import Moments, Scan


def is_dtensor(tensor: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (without importing it when nobody has)."""
    import sys

    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def collective_device() -> Any:
    """Where the process group's backend takes a collective's tensors: the rank's GPU under NCCL,
    else the CPU (gloo)."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def every_rank(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (all-reduced); ``ok`` itself outside a job of more than one
    rank. Called by every rank of a sharded model's diagnosis where a step can fail on one rank
    only (reading its graph): ranks that read different graphs would issue different collectives
    and wait for each other for ever, so a step that failed anywhere counts as failed everywhere."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return ok
    import torch

    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class _Standin:
    """A module's stand-in for ``torch.fx``'s leaf test: the class ``fully_shard`` wrapped."""

    def __init__(self, cls: type) -> None:
        self.__module__ = cls.__module__
        self.cls = cls


def fsdp_original(module: Any) -> Any:
    """``module`` itself, or — for a module ``fully_shard`` re-classed (``FSDPLinear``, a
    subclass of ``FSDPModule`` and ``Linear`` made in torch.distributed) — an object that
    ``torch.fx.Tracer.is_leaf_module`` reads as the original class (its ``__module__``), so that an
    FSDP-wrapped ``nn.Linear`` stays one ``call_module`` node as it is unwrapped."""
    import sys

    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None or not isinstance(module, fsdp.FSDPModule):
        return module
    import torch

    original = type(module).__bases__[-1]
    if issubclass(original, torch.nn.Sequential):
        return module
    return _Standin(original)


def dtensor_scan(tensor: Any, local_scan: Callable[[Any], Scan]) -> Scan:
    """The merged :class:`Scan` of a DTensor: the local shard reduced by ``local_scan``
    (:func:`.torch_moments.weight_scan`, passed in by its caller so that the two modules do not
    import each other), six numbers per rank all-gathered."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard

    mesh = tensor.device_mesh
    placements = tensor.placements
    if not all(isinstance(p, (Shard, Replicate)) for p in placements):
        raise InputError(f"a DTensor parameter with placements {placements}: only Shard/Replicate are read")
    coordinate = mesh.get_coordinate() or []
    copy = any(isinstance(p, Replicate) and coordinate[d] != 0 for d, p in enumerate(placements))
    local = tensor.to_local().detach()
    part = Scan(Moments()) if copy or local.numel() == 0 else local_scan(local)
    mine = torch.tensor(
        [part.moments.count, part.moments.mean, part.moments.m2, part.nan, part.inf, part.max_abs],
        dtype=torch.float64,
        device=local.device,  # the collective's backend wants its device (NCCL: the rank's GPU)
    )
    group = mesh.get_group() if mesh.ndim == 1 else dist.group.WORLD
    size = dist.get_world_size(group)
    gathered = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(gathered, mine, group=group)
    total = Scan(Moments())
    for row in gathered:
        count, mean, m2, nan, inf, max_abs = row.tolist()
        total.merge(Scan(Moments(int(count), mean, m2), int(nan), int(inf), max_abs))
    return total


def class_name(module: Any) -> str:
    """The model's class name as the report shows it: ``LlamaForCausalLM`` for the
    ``FSDPLlamaForCausalLM`` that ``fully_shard`` re-classed it into, as in one process."""
    import sys

    cls = type(module)
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and isinstance(module, fsdp.FSDPModule):
        cls = cls.__bases__[-1]
    return cls.__name__
