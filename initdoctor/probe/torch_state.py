"""The torch probe leaves the model as it found it: eval mode for the forward (dropout off),
BatchNorm on batch statistics with its buffers put back, and parameters a forward changes in place
detected (and put back where a copy was kept)."""

from __future__ import annotations

from typing import Any

from .types import ProbeError


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit the same values, NaN where the other has NaN (``torch.equal`` says NaN ≠ NaN)."""
    import torch

    if torch.equal(a, b):
        return True
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all()) if a.is_floating_point() else False


#: Parameters up to this many bytes are copied before the probe, so that a forward that changes
#: its own weights is undone exactly; above it the change is still detected (version counters).
SNAPSHOT_BYTES = 256 * 2**20


class ModelState:
    """Eval mode for the probe (dropout off), BatchNorm on batch statistics, all put back after;
    parameters a forward changes in place are detected (and put back, see :data:`SNAPSHOT_BYTES`)."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.flags: list[tuple[Any, bool]] = []
        self.buffers: list[tuple[Any, Any]] = []
        self.versions: list[tuple[str, Any, int]] = []
        self.saved: list[tuple[str, Any, Any]] = []

    def prepare(self) -> None:
        import torch

        if self.module is None:
            return
        # shared (tied) parameters listed once; a streamed model's (meta device) have no values to keep
        params = [(n, p) for n, p in self.module.named_parameters() if not p.is_meta]
        self.versions = [(name, p, p._version) for name, p in params]
        if sum(p.numel() * p.element_size() for _, p in params) <= SNAPSHOT_BYTES:
            self.saved = [(name, p, p.detach().clone()) for name, p in params]
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        for m in self.module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                self.buffers += [(b, b.detach().clone()) for b in m.buffers()]
                m.train()

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        for m, flag in self.flags:
            m.training = flag

    def check_parameters(self) -> None:
        """Raise when the forward changed a parameter in place (after putting it back where a copy
        was kept): a probe of a self-modifying forward would measure, and fix would write, another
        model than the one given."""
        import torch

        changed = [name for name, p, version in self.versions if p._version != version]
        changed += [n for n, p, copy in self.saved if n not in changed and not _same(p.detach(), copy)]
        if not changed:
            return
        with torch.no_grad():
            for _, p, copy in self.saved:
                p.copy_(copy)
        undone = "put back as it was" if self.saved else "not put back: too large to keep a copy"
        raise ProbeError(
            f"the model's forward changed its own parameter {changed[0]} in place ({undone}); "
            "initdoctor cannot judge a model whose forward rewrites its weights"
        )
