"""initdoctor inside a torch.distributed job: every rank calls :func:`~initdoctor.diagnose` on
its FSDP2 (``fully_shard``) / DTensor model, and every rank gets the same report — or the same error.

What runs where (:func:`job`, entered by :func:`initdoctor.api.run` when a process group of more
than one rank is initialized and the model has a DTensor parameter):

- weights: each DTensor's statistics come from the rank's local shard, merged across ranks
  (:mod:`initdoctor.formats.torch_sharded`; six numbers per rank and tensor all-gathered);
- activations: every rank runs the **same** seeded batch (the probe's seed, not the rank's),
  because FSDP's forward is collective anyway (each FSDP module all-gathers its weights on every
  rank) and the batch is one small probe: each rank measures exactly what the single-process
  probe measures, with no moment to merge and no statistic (dead units, logits) that does not merge;
- the report: judged on rank 0 only and broadcast (pickled) to the others: every rank returns an
  equal :class:`~initdoctor.report.Report`.

No deadlock when a rank raises: before every FSDP module's forward (a hook placed ahead of FSDP's
own all-gather) and at the end of the pass, the ranks all-reduce a "failed" flag. A rank that raises
goes straight to that all-reduce with the flag set; the others meet it at their next guard, so no
rank waits in an all-gather that a failed rank will never join; then the failed ranks' messages
are all-gathered and every rank raises (:class:`~initdoctor.errors.RankError` on the others).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import RankError
from ..formats.torch_sharded import collective_device, is_dtensor

T = TypeVar("T")


def sharded(model: Any) -> bool:
    """True when ``model`` is an ``nn.Module`` with a DTensor parameter inside an initialized
    process group of more than one rank."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return False
    params = getattr(model, "parameters", None)
    return params is not None and any(is_dtensor(p) for p in params())


class Job:
    """One diagnosis across the ranks: guards around the pass, then :meth:`share`."""

    def __init__(self, model: Any) -> None:
        import torch.distributed as dist

        self.model = model
        self.rank = dist.get_rank()
        self.handles: list[Any] = []
        self.settled: BaseException | None = None  # the error every rank raises once a guard found one

    def guard(self, failure: BaseException | None = None) -> None:
        """All-reduce the "failed" flag; when a rank failed, every rank raises."""
        import torch
        import torch.distributed as dist

        # the backend's device (NCCL: the rank's GPU); the object collectives place theirs themselves
        flag = torch.tensor([0 if failure is None else 1], dtype=torch.int64, device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not int(flag.item()):
            return
        messages: list[Any] = [None] * dist.get_world_size()
        mine = None if failure is None else f"{type(failure).__name__}: {failure}"
        dist.all_gather_object(messages, mine)
        if failure is None:
            rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
            failure = RankError(f"rank {rank} failed: {message}")
        self.settled = failure
        raise failure

    def arm(self) -> None:
        """FSDP's lazy init (which a traced forward would leave half done), and a guard ahead of
        every FSDP module's forward."""
        import torch
        from torch.distributed.fsdp import FSDPModule

        if isinstance(self.model, FSDPModule):
            self.model._get_fsdp_state()._lazy_init()
        for module in self.model.modules():
            if isinstance(module, FSDPModule) and isinstance(module, torch.nn.Module):
                hook = module.register_forward_pre_hook(lambda *_: self.guard(), prepend=True)
                self.handles.append(hook)

    def disarm(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def share(self, build: Callable[[], T]) -> T:
        """``build()`` on rank 0 (the report), broadcast to every rank."""
        import torch.distributed as dist

        value: list[Any] = [None]
        failure = None
        if self.rank == 0:
            try:
                value[0] = build()
            except Exception as exc:  # noqa: BLE001 - passed to every rank by the guard
                failure = exc
        self.guard(failure)
        dist.broadcast_object_list(value, src=0)
        return value[0]  # type: ignore[no-any-return,unused-ignore]  # what build() returned on rank 0


class Single:
    """Outside a distributed job: no guards, the report built here."""

    def share(self, build: Callable[[], T]) -> T:
        return build()


@contextmanager
def job(model: Any) -> Iterator[Job | Single]:
    """The distributed :class:`Job` for a sharded model (:func:`sharded`), else a :class:`Single`.
    An exception inside the block reaches every rank (:meth:`Job.guard`)."""
    if not sharded(model):
        yield Single()
        return
    run = Job(model)
    _ACTIVE.append(run)
    try:
        run.arm()
        yield run
    except BaseException as exc:
        run.disarm()
        if run.settled is None:
            run.guard(exc)
        raise (run.settled or exc) from None  # the forward's wrapping of a guard's error (ProbeError) undone
    finally:
        _ACTIVE.remove(run)
    run.disarm()
    run.guard()


#: the job of the diagnosis under way on this rank (its guard runs before each unshard)
_ACTIVE: list[Job] = []

#: ops whose output is a view of their input: a weight's storage lives on through them
_VIEWS = frozenset(
    (
        "t", "transpose", "permute", "view", "reshape", "_unsafe_view", "expand", "alias", "detach",
        "to", "_to_copy", "unsqueeze", "squeeze", "slice", "select", "contiguous", "numpy_T",
    )
)  # fmt: skip


class Unsharded(Mapping[str, Any]):
    """The parameters of an FSDP2 model as its exported graph (:mod:`..formats.torch_sharded_graph`)
    reads them in the probe's interpreter: the first read of a parameter unshards the FSDP module
    that owns it (FSDP's own all-gather, after a guard, as FSDP's forward would), and the module is
    resharded after the graph's last use of its weights — unless ``keep`` (a backward pass needs
    them): then every module is resharded on :meth:`close`. ``graph`` (the interpreter's graph
    module) has each parameter read moved to just before its first use."""

    def __init__(self, model: Any, graph: Any, keep: bool) -> None:
        from torch.distributed.fsdp import FSDPModule

        units = [(name, m) for name, m in model.named_modules() if isinstance(m, FSDPModule)]
        self.model, self.keep = model, keep
        self.owner: dict[str, Any] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if is_dtensor(param):
                prefixes = [(n, m) for n, m in units if not n or name.startswith(n + ".")]
                self.owner[name] = max(prefixes, key=lambda u: len(u[0]))[1]
        self.open: list[Any] = []
        self.fetched: list[Any] = []  # the unsharded parameters read (the backward's inputs)
        self.release_after: dict[str, list[Any]] = {}
        self._plan(graph)

    def _plan(self, graph: Any) -> None:
        position = {n: i for i, n in enumerate(graph.graph.nodes)}  # before any read is moved
        for node in list(position):
            if node.op == "get_attr" and node.target in self.owner and node.users:
                first = min(node.users, key=position.__getitem__)
                first.prepend(node)
        order = {n: i for i, n in enumerate(graph.graph.nodes)}
        last: dict[Any, Any] = {}
        for node in graph.graph.nodes:
            if node.op != "get_attr" or node.target not in self.owner:
                continue
            unit, todo, end = self.owner[node.target], [node], node
            while todo:  # the weight and its views
                current = todo.pop()
                for user in current.users:
                    end = max(end, user, key=order.__getitem__)
                    if getattr(user.target, "__name__", "").split(".")[0] in _VIEWS:
                        todo.append(user)
            if unit not in last or order[end] > order[last[unit]]:
                last[unit] = end
        for unit, end in last.items():
            self.release_after.setdefault(end.name, []).append(unit)

    def __contains__(self, key: object) -> bool:
        return key in self.owner

    def __getitem__(self, key: str) -> Any:
        unit = self.owner[key]
        if unit not in self.open:
            if _ACTIVE:
                _ACTIVE[-1].guard()
            unit.unshard()
            self.open.append(unit)
        param = self.model.get_parameter(key)
        self.fetched.append(param)
        return param

    def __iter__(self) -> Iterator[str]:
        return iter(self.owner)

    def __len__(self) -> int:
        return len(self.owner)

    def release(self, node: Any) -> None:
        """Called after each node ran: reshard the modules whose weights it used last."""
        if self.keep:
            return
        for unit in self.release_after.get(node.name, ()):
            if unit in self.open:
                unit.reshard()
                self.open.remove(unit)

    def close(self) -> None:
        for unit in self.open:
            unit.reshard()
        self.open.clear()
        self.fetched.clear()


@contextmanager
def unsharded(model: Any, graph: Any, keep: bool) -> Iterator[Unsharded]:
    weights = Unsharded(model, graph, keep)
    try:
        yield weights
    finally:
        weights.close()
