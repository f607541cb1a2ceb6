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
                 "nan_count", "inf_count", "status", "message",
                 # measured by the probe, null without one:
                 "input_second_moment", "activation_var", "variance_ratio", "measured_scale",
                 "depth_ratio", "dead_fraction", "grad_var", "grad_ratio"}],
     "norm_layers": [{"name", "kind", "shape", "weight_mean", "weight_std", "bias_mean",
                      "bias_std", "status", "message"}],
     "residual_blocks": [{"name", "layers", "growth", "status", "message"}],
     "summary": {"status", "ok", "warn", "error", "skip", "worst_layer",
                 "compound_variance_ratio", "message", "depth_ratio", "measured_chain_ratio",
                 "grad_depth_ratio", "residual_growth"},
     "probe": null | {"backend", "inputs": [{"shape", "dtype"}], "seed", "runs", "backward", "notes"},
     "notes": [str]}

Numbers that do not exist (a ratio of a skipped layer) are ``null``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "initdoctor.report/1"

#: Statuses in increasing severity. ``skip`` = not judged (embedding, integer weights, empty).
STATUSES = ("skip", "ok", "warn", "error")
_RANK = {"skip": 0, "ok": 1, "warn": 2, "error": 3}

#: ``fail_on`` values: the lowest status that makes the exit code 1 (``never``: always 0).
FAIL_ON = ("warn", "error", "never")


def worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def at_least(status: str, threshold: str) -> bool:
    return threshold != "never" and _RANK[status] >= _RANK[threshold]


@dataclass
class LayerFinding:
    name: str
    kind: str
    role: str  # "hidden" | "output" | "embedding"
    shape: list[int]
    fan_in: int
    fan_out: int
    groups: int
    nonlinearity: str
    nonlinearity_source: str  # "graph" | "flag" | "rule"
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
    status: str
    message: str
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
    status: str
    message: str


@dataclass
class BlockFinding:
    """A residual block: ``growth = Var[out] / Var[skip]`` measured by the probe (None without)."""

    name: str
    layers: list[str]
    growth: float | None
    status: str
    message: str


@dataclass
class Summary:
    status: str
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
