"""The JSON forms of a repair (``initdoctor.fix/2``) and of a comparison (``initdoctor.compare/2``),
every number in them computed here (the renderer only lays them out). The report's own JSON is
:meth:`~initdoctor.report.Report.to_dict`; the schemas and their versioning rule are in
:mod:`initdoctor.report.schema` and ``docs/schemas/``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .fixresult import FixResult
from .model import LayerFinding, Report
from .schema import COMPARE_SCHEMA, FIX_SCHEMA, clean

#: a change's fields that stay out of the JSON (internal to applying it)
_CHANGE_INTERNAL = ("bias_key", "shape")


def fix_to_dict(result: FixResult, dry: bool) -> dict[str, Any]:
    """JSON form of a :class:`FixResult` (schema ``initdoctor.fix/2``)::

        {"schema", "written", "output", "backup", "backups",
         "changes": [{"name", "weight_key", "method", "old_std", "new_std", "factor",
                      "status_before", "bias_zeroed", "iterations", "expected_std"}],
         "skipped": [{"name", "reason"}], "before": summary, "after": summary | null,
         "unrepaired": [{"name", "rule", "reason"}], "standing": [{"name", "status", "rule", "message"}]}

    ``unrepaired``: findings at ``error`` no planned change addresses; ``standing``: the findings
    at ``warn`` or above the re-inspection still shows (empty without one). A change's ``block``
    names the residual block of a fixup/skipinit change (0.10.0 additions: fix/2 kept).

    ``written`` is true when a file (or the in-memory model) was changed: not ``dry`` and
    something to change.
    """
    return clean(
        {
            "schema": FIX_SCHEMA,
            "written": not dry and bool(result.changes),
            "output": str(result.output) if result.output else None,
            "backup": str(result.backup) if result.backup else None,
            "backups": [str(path) for path in result.backups],
            "changes": [
                {k: v for k, v in asdict(c).items() if k not in _CHANGE_INTERNAL} for c in result.changes
            ],
            "skipped": [{"name": n, "reason": r} for n, r in result.skipped],
            "before": asdict(result.before.summary),
            "after": asdict(result.after.summary) if result.after else None,
            "unrepaired": [{"name": n, "rule": r, "reason": why} for n, r, why in result.unrepaired],
            "standing": standing(result.after) if result.after else [],
        }
    )


def standing(report: Report) -> list[dict[str, Any]]:
    """The findings at ``warn`` or above of a report: residual blocks, norms, layers."""
    found: list[Any] = [*report.residual_blocks, *report.norm_layers, *report.layers]
    return [
        {"name": f.name, "status": str(f.status), "rule": f.rule, "message": f.message}
        for f in found
        if f.status in ("warn", "error")
    ]


def compare_rows(a: Report, b: Report) -> list[dict[str, Any]]:
    """Per-layer pairs by name (a's order, then b-only layers): std ratio, measured variance ratio,
    weight std and status on each side (``null`` where a side lacks the layer), and the deltas
    ``x_delta = x_b − x_a`` of the std ratio and the variance ratio (``null`` unless both exist)."""
    left = {f.name: f for f in a.layers}
    right = {f.name: f for f in b.layers}
    names = [f.name for f in a.layers] + [f.name for f in b.layers if f.name not in left]
    rows = []
    for name in names:
        fa, fb = left.get(name), right.get(name)
        row: dict[str, Any] = {"name": name}
        for attr in ("std_ratio", "variance_ratio", "weight_std", "status"):
            row[f"{attr}_a"], row[f"{attr}_b"] = _get(fa, attr), _get(fb, attr)
        for attr in ("std_ratio", "variance_ratio"):
            x, y = row[f"{attr}_a"], row[f"{attr}_b"]
            row[f"{attr}_delta"] = y - x if x is not None and y is not None else None
        rows.append(row)
    return clean(rows)


def _get(finding: LayerFinding | None, attr: str) -> Any:
    return getattr(finding, attr) if finding is not None else None


def compare_to_dict(a: Report, b: Report) -> dict[str, Any]:
    """JSON form of ``initdoctor compare A B`` (schema ``initdoctor.compare/2``)::

        {"schema", "a": model, "b": model, "layers": [compare_rows], "summary": {"a", "b"}}

    ``a``/``b`` are the reports' ``model`` objects, ``summary`` their statuses.
    """
    return {
        "schema": COMPARE_SCHEMA,
        "a": a.model,
        "b": b.model,
        "layers": compare_rows(a, b),
        "summary": {"a": a.summary.status, "b": b.summary.status},
    }
