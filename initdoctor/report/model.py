"""The report's data: per-layer findings, a summary and the exit code (no rendering, no I/O).

The JSON form (:meth:`Report.to_dict`, schema ``initdoctor.report/2``) is described in
:mod:`initdoctor.report.schema`; how a report displays itself in :mod:`initdoctor.report.display`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from ..version import __version__
from .display import display
from .schema import REPORT_SCHEMA, clean


class Status(StrEnum):
    """A finding's verdict, in increasing severity. ``skip`` = not judged (embedding, integer
    weights, empty, ignored by a layer-name glob). ``unknown`` is a model-level status only
    (``summary.status``): no verdict could be formed on depth behaviour (no graph and not evidently
    a plain chain, or residual/normalized structure not probed; see ``summary.unknown_reason``)."""

    SKIP = "skip"
    OK = "ok"
    UNKNOWN = "unknown"
    WARN = "warn"
    ERROR = "error"


class Role(StrEnum):
    """What a weighted layer is in the model, which decides the rule that judges it."""

    HIDDEN = "hidden"  # followed by a nonlinearity in the chain: judged against Kaiming
    OUTPUT = "output"  # feeds a model output (logits): judged against gain 1, only too large flagged
    EMBEDDING = "embedding"  # a lookup table: no fan-in, not judged
    RESIDUAL = "residual"  # inside a residual branch: judged by the block's growth
    STREAM = "stream"  # feeds the residual stream (its starting scale): at most a warning
    NORMALIZED = "normalized"  # followed by a normalization: its scale does not set the signal
    GATE = "gate"  # a squeeze-excitation gate (x·σ(W₂ act(W₁ pool x))): off the signal path


class Source(StrEnum):
    """Where a layer's nonlinearity came from."""

    GRAPH = "graph"  # read from the model's graph
    FLAG = "flag"  # the ``nonlinearity`` setting (no graph shows one)
    RULE = "rule"  # a fixed rule (embeddings; the last layer of a graph-less file is linear)
    CONFIG = "config"  # an ``overrides`` entry of the configuration
    STRUCTURE = "structure"  # a layer of a repeated block the graph does not show: linear, unjudged


#: Statuses in increasing severity.
STATUSES = tuple(Status)
_RANK: dict[str, int] = {Status.SKIP: 0, Status.OK: 1, Status.UNKNOWN: 2, Status.WARN: 3, Status.ERROR: 4}

#: ``fail_on`` values: the lowest status that makes the exit code 1 (``never``: always 0);
#: ok < unknown < warn < error, so ``unknown`` fails on unknown, warn and error.
FAIL_ON = ("unknown", "warn", "error", "never")
#: why a summary is ``unknown`` (``summary.unknown_reason``): no graph and the layers are not
#: evidently a plain chain; a graph with residual blocks or normalization that was not probed
UNKNOWN_REASONS = ("no-graph", "not-probed")


def rank(status: str) -> int:
    """0 (skip) … 4 (error)."""
    return _RANK[status]


def worse(a: Status, b: Status) -> Status:
    return a if _RANK[a] >= _RANK[b] else b


def at_least(status: str, threshold: str) -> bool:
    return threshold != "never" and _RANK[status] >= _RANK[threshold]


@dataclass
class LayerFinding:
    name: str
    kind: str
    role: Role
    shape: list[int]
    fan_in: int
    fan_out: int
    groups: int
    nonlinearity: str
    nonlinearity_source: Source
    gain: float
    dtype: str
    numel: int
    weight_mean: float | None
    weight_std: float | None
    expected_std: float | None
    std_ratio: float | None
    weight_variance_ratio: float | None
    suggested_scale: float | None
    nan_count: int
    inf_count: int
    status: Status
    message: str
    rule: str | None = None  # code of the rule that set a non-ok status (see initdoctor.checks)
    weight_key: str = ""
    bias_key: str | None = None
    # measured by the probe (None without one); see initdoctor.probe
    input_second_moment: float | None = None
    activation_var: float | None = None
    variance_ratio: float | None = None
    measured_scale: float | None = None
    depth_ratio: float | None = None
    dead_fraction: float | None = None
    grad_var: float | None = None
    grad_ratio: float | None = None


@dataclass
class NormFinding:
    name: str
    kind: str
    shape: list[int]
    weight_mean: float | None
    weight_std: float | None
    bias_mean: float | None
    bias_std: float | None
    status: Status
    message: str
    rule: str | None = None


@dataclass
class BlockFinding:
    """A residual block: ``growth = Var[out] / Var[skip]`` measured by the probe (None without)."""

    name: str
    layers: list[str]
    growth: float | None
    status: Status
    message: str
    rule: str | None = None


@dataclass
class Summary:
    status: Status
    ok: int
    warn: int
    error: int
    skip: int
    worst_layer: str | None
    compound_variance_ratio: float | None
    message: str
    depth_ratio: float | None = None
    measured_chain_ratio: float | None = None
    grad_depth_ratio: float | None = None
    residual_growth: float | None = None  # geometric mean of the blocks' growth
    rule: str | None = None  # the model-level rule that decided the summary (None: the layers did)
    kaiming_mode: str | None = None  # the He condition judged: "fan_in" or "fan_out" (detected or forced)
    unknown_reason: str | None = None  # one of UNKNOWN_REASONS when status is unknown, else None
    weights: str | None = None  # "init", "trained" (not an initialization) or "mixed" (new layers)
    #: the loss at init of a classifier / language model (checks/initloss.py, rule P207), else None
    init_loss: dict[str, Any] | None = None
    #: the residual blocks' statuses counted (``{"ok", "warn", "error"}``; ok/warn/error above
    #: count layers only); zeros without blocks
    blocks: dict[str, int] = field(default_factory=lambda: {"ok": 0, "warn": 0, "error": 0})
    #: the ``initdoctor fix`` command that repairs an error/warn model (initdoctor.nextstep), else None
    next_step: str | None = None


@dataclass
class Report:
    model: dict[str, Any]
    settings: dict[str, Any]
    layers: list[LayerFinding]
    norm_layers: list[NormFinding]
    summary: Summary
    notes: list[str] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    residual_blocks: list[BlockFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the summary is not ``error`` (the default ``fail_on``; ``unknown`` is ok)."""
        return self.summary.status != "error"

    def exit_code(self, fail_on: str = "error") -> int:
        """0 when nothing reaches ``fail_on``, 1 when something does."""
        return 1 if at_least(self.summary.status, fail_on) else 0

    def failing(self, fail_on: str = "error") -> list[LayerFinding]:
        return [layer for layer in self.layers if at_least(layer.status, fail_on)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema ``initdoctor.report/2``): NaN/Inf are ``null``."""
        layers = []
        for layer in self.layers:
            row = asdict(layer)
            row.pop("weight_key")
            row.pop("bias_key")
            layers.append(row)
        return clean(
            {
                "schema": REPORT_SCHEMA,
                "initdoctor_version": __version__,
                "model": self.model,
                "settings": self.settings,
                "layers": layers,
                "norm_layers": [asdict(n) for n in self.norm_layers],
                "residual_blocks": [asdict(b) for b in self.residual_blocks],
                "summary": asdict(self.summary),
                "probe": self.probe,
                "notes": list(self.notes),
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """A Markdown report (a CI step summary), by :mod:`initdoctor.render`."""
        return str(display("markdown", self))

    def __rich__(self) -> object:
        """Rendered as the report table by rich (``rich.print(report)``, a terminal or notebook)."""
        return display("rich", self)

    def _repr_html_(self) -> str:
        """HTML for notebooks: the rich table exported as HTML."""
        return str(display("html", self))
