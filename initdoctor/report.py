"""The report: per-layer findings, a summary and the exit code — data only, no rendering.

JSON schema ``initdoctor.report/1`` (a contract with users' CI; changed only with a version bump
and a CHANGELOG line)::

    {"schema": "initdoctor.report/1", "initdoctor_version": str,
     "model": {"path", "format", "parameters", "layer_order", "has_graph"},
     "settings": {"nonlinearity", "negative_slope", "mode", "warn_threshold", "error_threshold",
                  "compound_threshold"},
     "layers": [{"name", "kind", "role", "shape", "fan_in", "fan_out", "groups", "nonlinearity",
                 "nonlinearity_source", "gain", "dtype", "numel", "weight_mean", "weight_std",
                 "expected_std", "std_ratio", "weight_variance_ratio", "suggested_scale",
                 "nan_count", "inf_count", "status", "message", "rule",
                 # measured by the probe, null without one:
                 "input_second_moment", "activation_var", "variance_ratio", "measured_scale",
                 "depth_ratio", "dead_fraction", "grad_var", "grad_ratio"}],
     "norm_layers": [{"name", "kind", "shape", "weight_mean", "weight_std", "bias_mean",
                      "bias_std", "status", "message", "rule"}],
     "residual_blocks": [{"name", "layers", "growth", "status", "message", "rule"}],
     "summary": {"status", "ok", "warn", "error", "skip", "worst_layer",
                 "compound_variance_ratio", "message", "depth_ratio", "measured_chain_ratio",
                 "grad_depth_ratio", "residual_growth", "rule"},
     "probe": null | {"backend", "inputs": [{"shape", "dtype"}], "seed", "runs", "backward", "notes"},
     "notes": [str]}

Numbers that do not exist (a ratio of a skipped layer) are ``null``. ``status`` is one of
:class:`Status` (``skip``, ``ok``, ``warn``, ``error``), ``role`` one of :class:`Role`,
``nonlinearity_source`` one of :class:`Source`. ``rule`` is the code of the rule that set a
non-``ok`` status (``initdoctor rule CODE`` explains it; docs/rules.md lists them all), ``null`` for
a plain ``ok``; the summary's is the model-level rule that decided it, or ``null`` when the layers'
own statuses did.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA = "initdoctor.report/1"


class Status(StrEnum):
    """A finding's verdict, in increasing severity. ``skip`` = not judged (embedding, integer
    weights, empty, ignored by a layer-name glob)."""

    SKIP = "skip"
    OK = "ok"
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


class Source(StrEnum):
    """Where a layer's nonlinearity came from."""

    GRAPH = "graph"  # read from the model's graph
    FLAG = "flag"  # the ``nonlinearity`` setting (no graph shows one)
    RULE = "rule"  # a fixed rule (embeddings; the last layer of a graph-less file is linear)
    CONFIG = "config"  # an ``overrides`` entry of the configuration


#: Statuses in increasing severity.
STATUSES = tuple(Status)
_RANK: dict[str, int] = {Status.SKIP: 0, Status.OK: 1, Status.WARN: 2, Status.ERROR: 3}

#: ``fail_on`` values: the lowest status that makes the exit code 1 (``never``: always 0).
FAIL_ON = ("warn", "error", "never")


def rank(status: str) -> int:
    """0 (skip) … 3 (error)."""
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
        """True when no layer is ``error`` (the default ``fail_on``)."""
        return self.summary.status != "error"

    def exit_code(self, fail_on: str = "error") -> int:
        """0 when nothing reaches ``fail_on``, 1 when something does."""
        return 1 if at_least(self.summary.status, fail_on) else 0

    def failing(self, fail_on: str = "error") -> list[LayerFinding]:
        return [layer for layer in self.layers if at_least(layer.status, fail_on)]

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        layers = []
        for layer in self.layers:
            row = asdict(layer)
            row.pop("weight_key")
            row.pop("bias_key")
            layers.append(row)
        return _clean(
            {
                "schema": SCHEMA,
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
        from .render import render_markdown

        return render_markdown(self)

    def __rich__(self) -> object:
        """Rendered as the report table by rich (``rich.print(report)``, a terminal or notebook)."""
        from .render import report_renderable

        return report_renderable(self)

    def _repr_html_(self) -> str:
        from .render import report_html

        return report_html(self)


def _clean(value: Any) -> Any:
    """NaN/Inf → None (JSON has neither), tuples → lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
