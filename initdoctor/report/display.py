"""How a :class:`~initdoctor.report.Report` shows itself, without the report importing the renderer.

A report renders as a rich table (``rich.print(report)``), as Markdown (``report.to_markdown()``)
and as HTML in a notebook (``report._repr_html_()``). Those formats live in
:mod:`initdoctor.render`, which depends on the report; so the dependency is turned around here: the
report asks this registry, and :mod:`initdoctor.render` registers its functions when it is imported.
:mod:`initdoctor.api` (``diagnose``, ``fix_model``, ``assert_healthy_init``) and the CLI import
:mod:`initdoctor.render`, so every report they return can be displayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: the display kinds a report asks for: rich renderable, Markdown text, HTML text
KINDS = ("rich", "markdown", "html")

_hooks: dict[str, Callable[[Any], Any]] = {}


def register_display(kind: str, function: Callable[[Any], Any]) -> None:
    """Make ``function(report)`` the way reports display as ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown display kind {kind!r}; valid: {', '.join(KINDS)}")
    _hooks[kind] = function


def display(kind: str, report: Any) -> Any:
    """``report`` displayed as ``kind`` by the registered function."""
    hook = _hooks.get(kind)
    if hook is None:
        raise RuntimeError(
            f"no {kind} display registered for reports: import initdoctor.render (initdoctor.diagnose does)"
        )
    return hook(report)
