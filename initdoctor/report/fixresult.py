"""What a repair did (:func:`initdoctor.fix_model`): the changed layers, the skipped ones and the
reports before and after. Data only: :mod:`initdoctor.fix` plans and applies the changes,
:func:`~initdoctor.report.fix_to_dict` writes the JSON, :mod:`initdoctor.render` the table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .model import Report, Status


@dataclass
class Change:
    """One layer's repair: ``factor`` for rescales (None for a redraw)."""

    name: str
    weight_key: str
    method: str
    old_std: float | None
    new_std: float | None
    factor: float | None
    status_before: str
    bias_zeroed: bool = False
    iterations: int = 0
    bias_key: str | None = None
    expected_std: float | None = None
    shape: tuple[int, ...] = ()
    #: the residual block a fixup/skipinit change belongs to
    block: str | None = None


@dataclass
class FixResult:
    changes: list[Change]
    skipped: list[tuple[str, str]]
    before: Report
    after: Report | None = None
    output: Path | None = None
    backup: Path | None = None
    #: every backup ``--in-place`` made: the model file first, then its other files (ONNX external data)
    backups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: findings no planned change addresses: (name, rule, reason) — ``fix --check`` lists them
    unrepaired: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        report = self.after or self.before
        return report.summary.status != Status.ERROR
