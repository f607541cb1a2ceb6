"""The torch probe leaves the model as it found it: eval mode for the forward (dropout off),
BatchNorm on batch statistics with its buffers put back, and parameters (and other buffers) a
forward writes put back, the parameters with an error.

Why copy-on-write, not a copy of every weight: a full snapshot (``clone`` before, ``torch.equal``
after) cost 135 + 109 ms per probe of 100 MB of weights against a 1.1 s forward (a CPU cProfile,
benchmarks/README.md): a fifth of the probe, to guard against a forward that almost never writes
its weights. Instead, during the probe, a ``TorchDispatchMode`` (:class:`WriteGuard`) sees every
aten op below autograd; an op whose schema writes an argument (``add_``, ``copy_``, ``normal_``,
``out=``, ``index_put_``…) and whose target shares storage with a parameter or buffer copies that
tensor first, once. This sees what the version counter cannot: a write through ``p.data`` (a
tensor with the same storage and its own version counter) is the same aten op on the same
storage. Nothing is copied when nothing writes; the cost is one Python call per aten op of the
forward (a cached schema lookup). Two cheap checks stay behind it for writes no dispatch sees (a
C++ extension writing raw memory): the version counter and ``data_ptr`` of each parameter;
``p.data = other`` is undone from the reference kept to the original tensor (no copy needed).

The probe's own statistics (the hooks' reductions, ~20 aten ops per measured tensor against the
model's one or two) run with the guard popped (:func:`unguarded`): they only write tensors they
create, so the guard has nothing to see there, and its Python call per op was a fifth of the
probe's overhead on a 6 × 2048 MLP (benchmarks/README.md, issue 17).
"""

from __future__ import annotations

from typing import Any

from .types import ProbeError


def _written(func: Any, cache: dict[Any, tuple[tuple[int, str], ...]]) -> tuple[tuple[int, str], ...]:
    """(position, name) of the arguments ``func``'s schema writes (``Tensor(a!)``), cached."""
    found = cache.get(func)
    if found is None:
        schema = func._schema
        found = tuple(
            (i, a.name)
            for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        )
        cache[func] = found
    return found


def _storage(t: Any) -> int | None:
    try:
        return int(t.untyped_storage().data_ptr()) if not t.is_meta else None
    except (RuntimeError, NotImplementedError, AttributeError):  # tensor subclasses without storage
        return None


def _guard_class() -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class WriteGuard(TorchDispatchMode):
        """Copies a watched tensor before the first op that writes into its storage."""

        initdoctor_write_guard = True  # :func:`unguarded` knows it by this (the class is made per call)

        def __init__(self, watched: dict[int, list[tuple[str, Any]]]) -> None:
            super().__init__()
            self.watched = watched
            self.copies: dict[str, tuple[Any, Any]] = {}
            self.cache: dict[Any, tuple[tuple[int, str], ...]] = {}

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            for i, name in _written(func, self.cache):
                target = args[i] if i < len(args) else kwargs.get(name)
                for t in target if isinstance(target, (list, tuple)) else (target,):
                    key = _storage(t) if hasattr(t, "untyped_storage") else None
                    for tname, tensor in self.watched.pop(key, ()) if key is not None else ():
                        self.copies[tname] = (tensor, tensor.detach().clone())  # mode off in here
            return func(*args, **kwargs)

    return WriteGuard


def unguarded() -> Any:
    """A context for the probe's own statistics inside a hook: the write guard popped from the
    dispatch-mode stack while it runs, when it is the innermost mode (a mode the model's forward
    entered itself stays, and the guard with it). The statistics write only tensors they create."""
    import contextlib

    try:  # private torch helpers (torch ≥ 2.0); without them the statistics pass the guard, as before
        from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode_temporarily
    except ImportError:
        return contextlib.nullcontext()
    mode = _get_current_dispatch_mode()
    if getattr(mode, "initdoctor_write_guard", False):
        return _pop_mode_temporarily()
    return contextlib.nullcontext()


class ModelState:
    """Eval mode for the probe (dropout off), BatchNorm on batch statistics, all put back after;
    tensors a forward writes are copied before the write (:meth:`guard`) and put back."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.flags: list[tuple[Any, bool]] = []
        self.buffers: list[tuple[Any, Any]] = []
        self.params: list[tuple[str, Any, int, int, Any]] = []
        self.writes: Any = None
        self.changed: list[str] = []
        self.unseen: list[str] = []

    def prepare(self) -> None:
        import torch

        if self.module is None:
            return
        # shared (tied) parameters listed once; a streamed model's (meta device) have no values to keep
        params = [(n, p) for n, p in self.module.named_parameters() if not p.is_meta]
        self.params = [(n, p, p._version, p.data_ptr(), p.data) for n, p in params]
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        for m in self.module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                self.buffers += [(b, b.detach().clone()) for b in m.buffers()]
                m.train()
        kept = {id(b) for b, _ in self.buffers}
        watched: dict[int, list[tuple[str, Any]]] = {}
        tensors = params + [(n, b) for n, b in self.module.named_buffers() if id(b) not in kept]
        for name, t in tensors:
            key = _storage(t)
            if key is not None:
                watched.setdefault(key, []).append((name, t))
        self.writes = _guard_class()(watched)

    def guard(self) -> Any:
        """A context in which writes to the model's parameters and buffers are copied first."""
        import contextlib

        return self.writes if self.writes is not None else contextlib.nullcontext()

    def restore(self) -> None:
        import torch

        copied = self.writes.copies if self.writes is not None else {}
        for name, p, version, ptr, _ in self.params:
            moved = p.data_ptr() != ptr
            if name in copied or moved or p._version != version:
                self.changed.append(name)
                if not moved and name not in copied:
                    self.unseen.append(name)
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
            for tensor, saved in copied.values():
                tensor.detach().copy_(saved)
            for _, p, _, ptr, data in self.params:
                if p.data_ptr() != ptr:  # ``p.data = other``: the original tensor back
                    p.data = data
        for m, flag in self.flags:
            m.training = flag

    def check_parameters(self) -> None:
        """Raise when the forward wrote a parameter (after :meth:`restore` put it back): a probe of
        a self-modifying forward would measure, and fix would write, another model than the one
        given. Buffers the forward updates (running averages, counters) are put back silently."""
        if not self.changed:
            return
        undone = "not put back: written outside torch's dispatcher" if self.unseen else "put back as it was"
        raise ProbeError(
            f"the model's forward changed its own parameter {self.changed[0]} in place ({undone}); "
            "initdoctor cannot judge a model whose forward rewrites its weights"
        )
