"""The report layer: the data every command produces and its JSON, computed here and nowhere else.

- :mod:`.model` — :class:`Report` and its findings, :class:`Status`, :class:`Role`, :class:`Source`;
- :mod:`.fixresult` — :class:`FixResult` and :class:`Change` (what a repair did);
- :mod:`.schema` — the schema names, their versioning rule, :func:`clean` (NaN → null);
- :mod:`.json` — :func:`fix_to_dict`, :func:`compare_to_dict` (with the per-layer deltas);
- :mod:`.display` — how a report displays itself (rich, Markdown, HTML) through the functions
  :mod:`initdoctor.render` registers, so that this layer never imports the renderer.

This package imports no other initdoctor module but :mod:`initdoctor.version`.
"""

from __future__ import annotations

from .display import KINDS as DISPLAY_KINDS
from .display import display, register_display
from .fixresult import Change, FixResult
from .json import compare_rows, compare_to_dict, fix_to_dict, standing
from .model import (
    FAIL_ON,
    STATUSES,
    UNKNOWN_REASONS,
    BlockFinding,
    LayerFinding,
    NormFinding,
    Report,
    Role,
    Source,
    Status,
    Summary,
    at_least,
    rank,
    worse,
)
from .schema import COMPARE_SCHEMA, FIX_SCHEMA, REPORT_SCHEMA, SCHEMA, clean

__all__ = [
    "BlockFinding",
    "COMPARE_SCHEMA",
    "Change",
    "DISPLAY_KINDS",
    "FAIL_ON",
    "FIX_SCHEMA",
    "FixResult",
    "LayerFinding",
    "NormFinding",
    "REPORT_SCHEMA",
    "Report",
    "Role",
    "SCHEMA",
    "STATUSES",
    "Source",
    "Status",
    "Summary",
    "UNKNOWN_REASONS",
    "at_least",
    "clean",
    "compare_rows",
    "compare_to_dict",
    "display",
    "fix_to_dict",
    "standing",
    "rank",
    "register_display",
    "worse",
]
