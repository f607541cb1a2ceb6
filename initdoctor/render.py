"""Rendering: a :class:`~initdoctor.report.Report` as a rich table, Markdown or HTML; a fix
result and a comparison as tables; the progress bar.

The only module that imports rich. It formats what :mod:`initdoctor.report` holds and computes
(the comparison's deltas included: :func:`~initdoctor.report.compare_to_dict`), nothing but the
layout; the JSON forms are :mod:`initdoctor.report`'s too. Importing it registers the report's
display hooks (``rich.print(report)``, ``report.to_markdown()``, ``report._repr_html_()``; see
:mod:`initdoctor.report.display`).
"""

from __future__ import annotations

import math
from typing import Any

from .columns import (
    BLOCK_NOTE,
    DEPTH_NOTE,
    DROP_ORDER,
    counts_text,
    fit,
    markdown_table,
    shorten_middle,
    table_rows,
)
from .columns import ICON as _ICON
from .columns import number as _num
from .nextstep import inspect_next_step, next_command
from .report import FixResult, Report, compare_to_dict, register_display, standing

_STYLE = {"ok": "green", "unknown": "cyan", "warn": "yellow", "error": "bold red", "skip": "dim"}


_CAPTION = "* nonlinearity from --nonlinearity or the output-layer rule, not read from a graph"


def _probed(report: Report) -> bool:
    return report.probe is not None


_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One character per value on a log scale: the depth curve in a terminal line."""
    logs = [math.log10(v) for v in values if v and v > 0 and math.isfinite(v)]
    if not logs:
        return ""
    lo, hi = min(logs), max(logs)
    if hi - lo < 1.0:  # at least one decade, so a healthy (flat) curve looks flat
        mid = (hi + lo) / 2
        lo, hi = mid - 0.5, mid + 0.5
    span = hi - lo
    return "".join(_BLOCKS[min(7, int((x - lo) / span * 7.999))] for x in logs)


def report_parts(report: Report, max_findings: int = 10, width: int = 80, verbose: bool = False) -> list[Any]:
    """The rich renderables of a report, in order: the table (fitted to ``width``: see
    :mod:`initdoctor.columns`), the depth sparkline and probe notes, the findings (``verbose``:
    every layer's message), residual blocks, norm layers, notes, and the summary line (last: print
    it without wrapping)."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    m = report.model
    headers, rows = table_rows(report)
    fitted = fit(headers, [cells for cells, _ in rows], width, DROP_ORDER)
    notes = [_CAPTION] if any(f.nonlinearity_source != "graph" for f in report.layers) else []
    if any(b.status != "ok" for b in report.residual_blocks):
        notes.append(BLOCK_NOTE)
    shown = [headers[i] for i in fitted.columns]  # "depth" only with a probe
    if report.residual_blocks and "depth" in shown and all(f.depth_ratio is None for f in report.layers):
        notes.append(DEPTH_NOTE)
    table = Table(
        title=f"initdoctor · {m['path']} · {m['format']} · {m['parameters']:,} parameters",
        title_justify="left",
        caption=Text("\n".join(notes)) if notes else None,
        caption_justify="left",
    )
    if fitted.compact:  # narrower than the box allows: columns two spaces apart
        table.box, table.pad_edge, table.show_edge = None, False, False
    left = ("layer", "kind", "nonlin", "shape", "status", "rule")
    for i in fitted.columns:
        table.add_column(headers[i], justify="left" if headers[i] in left else "right", no_wrap=True)
    probed = _probed(report)
    for cells, status in rows:
        style = _STYLE[status]
        kept = [cells[i] for i in fitted.columns]
        if fitted.name_width is not None:
            kept[0] = shorten_middle(kept[0], fitted.name_width)
        kept = [escape(cell) for cell in kept]  # a name holding "[" is text, not markup
        kept[fitted.columns.index(headers.index("status"))] = f"[{style}]{cells[headers.index('status')]}[/]"
        table.add_row(*kept, style=None if status in ("ok", "skip") else style)
    parts: list[Any] = [table]
    if probed:
        variances = [
            f.activation_var for f in report.layers if f.activation_var is not None and f.role != "embedding"
        ]
        if variances:
            parts.append(
                Text(
                    f"Var[y] across depth (log): {sparkline(variances)}  {variances[0]:.3g} → "
                    f"{variances[-1]:.3g}"
                )
            )
        parts += [Text(f"probe: {note}", style="dim") for note in (report.probe or {}).get("notes", [])]
    flagged = [f for f in report.layers if verbose or f.status in ("warn", "error")]
    for f in flagged if verbose else flagged[:max_findings]:
        parts.append(Text.assemble((_ICON[f.status], _STYLE[f.status]), f" {f.name}: {f.message}"))
    if not verbose and len(flagged) > max_findings:
        parts.append(Text(f"… and {len(flagged) - max_findings} more (see --format json)"))
    if report.residual_blocks:
        growths = [f"{b.growth:.2f}" if b.growth is not None else "–" for b in report.residual_blocks]
        parts.append(
            Text(f"residual blocks ({len(report.residual_blocks)}), Var[out]/Var[in]: {' '.join(growths)}")
        )
    for n in report.norm_layers:
        if n.status != "ok":
            parts.append(
                Text.assemble((_ICON[n.status], _STYLE[n.status]), f" {n.name} ({n.kind}): {n.message}")
            )
    if report.norm_layers:
        parts.append(
            Text(f"{len(report.norm_layers)} normalization layers reported separately (see --format json)")
        )
    parts += [Text(f"note: {note}", style="dim") for note in report.notes]
    s = report.summary
    if init_loss_line(s) is not None:
        parts.append(Text(str(init_loss_line(s))))
    extra = ""
    if s.depth_ratio is not None:
        extra = f"; depth ratio {s.depth_ratio:.3g}"
    if s.grad_depth_ratio is not None:
        extra += f", gradient depth ratio {s.grad_depth_ratio:.3g}"
    parts.append(
        Text.assemble((s.status.upper(), _STYLE[s.status]), f": {s.message} ({counts_text(report)}{extra})")
    )
    return parts


def init_loss_line(s: Any) -> str | None:
    """The loss at init (``summary.init_loss``, rule P207) in one line, None without one."""
    i = s.init_loss
    if not i:
        return None
    return (
        f"initial loss (uniform labels): {i['expected']:.3f} nats expected against "
        f"ln {i['classes']} = {i['baseline']:.3f} (logit std {i['logit_std']:.3g}; "
        f"ln C + σ²/2 = {i['approx']:.3f})"
    )


def render_table(
    report: Report,
    console: Any | None = None,
    max_findings: int = 10,
    verbose: bool = False,
    quiet: bool = False,
) -> None:
    """Print the report as a rich table, the findings of drifting layers (``verbose``: every
    layer's message), and a summary line (``quiet``: that line only)."""
    from rich.console import Console

    console = console or Console()
    *parts, summary = report_parts(report, max_findings, console.width, verbose)
    for part in [] if quiet else parts:
        console.print(part)
    console.print(summary, soft_wrap=True)  # one line, whatever the width: `grep '^ERROR:'` gets it all
    step = None if quiet else inspect_next_step(report)
    if step is not None:  # its own line, after the summary (never wrapped into it)
        console.print(step, soft_wrap=True, highlight=False, markup=False)


def render_markdown(report: Report) -> str:
    """A Markdown report suited to a CI step summary (GitHub's ``$GITHUB_STEP_SUMMARY``)."""
    m = report.model
    s = report.summary
    icon = {"ok": "✅", "unknown": "❔", "warn": "⚠️", "error": "❌", "skip": "➖"}
    lines = [
        f"## initdoctor: {icon[s.status]} {s.status}",
        "",
        f"`{m['path']}` ({m['format']}, {m['parameters']:,} parameters): {s.message}.",
        f"ok {s.ok} · warn {s.warn} · error {s.error} · skip {s.skip}",
        *(["", f"Next: `{step[0]}`{step[1]}"] if (step := next_command(report)) else []),
        *(["", init_loss_line(s) or ""] if s.init_loss else []),
        "",
        *markdown_table(report, icon),
    ]
    lines += ["", "\\* nonlinearity from the flag or the output-layer rule, not read from a graph", ""]
    return "\n".join(lines)


class ProgressBar:
    """A transient rich progress bar on stderr for the probe, drawn only on a terminal.

    Use as a context manager; the instance is the ``progress(done, total)`` callback.
    """

    def __init__(self, label: str = "probing", quiet: bool = False) -> None:
        import sys

        self.label = label
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}
        self.enabled = sys.stderr.isatty() and not quiet

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
        return self

    def __call__(self, done: int, total: int, label: str | None = None) -> None:
        if self.bar is None:
            return
        label = label or self.label
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done, total=total)

    def phase(self, label: str) -> Any:
        """A ``progress(done, total)`` callback drawing its own line (e.g. "reading weights")."""
        return lambda done, total: self(done, total, label)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


def render_fix(
    result: FixResult, dry: bool, console: Any | None = None, verbose: bool = False, then: str | None = None
) -> None:
    """Before → after per changed layer, then where the result went and how healthy it is (the
    findings still standing: the first 20, ``verbose`` every one); ``then``: the command that writes
    the changes (after a dry run)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()  # the terminal's width; piped: COLUMNS, else 80
    after = {f.name: f for f in result.after.layers} if result.after else {}
    if result.changes:
        table = Table(title="would change" if dry else "changed", title_justify="left")
        for h in ("layer", "method", "status before", "old std", "new std", "factor", "status after"):
            table.add_column(h, justify="right" if "std" in h or h == "factor" else "left")
        for c in result.changes:
            a = after.get(c.name)
            table.add_row(
                c.name,
                c.method + (" +zero bias" if c.bias_zeroed else ""),
                c.status_before,
                _num(c.old_std),
                _num(c.new_std),
                _num(c.factor, ".4g"),
                "" if a is None else f"[{_STYLE[a.status]}]{a.status}[/]",
            )
        console.print(table)
    for name, reason in result.skipped:
        console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False)
    for name, rule, reason in result.unrepaired:
        console.print(f"[red]not repaired[/] {name} ({rule}): {escape(reason)}", highlight=False)
    if not result.changes:
        if not result.unrepaired:
            console.print(fix_summary(result, dry), highlight=False)
        return
    if dry:
        console.print(fix_summary(result, dry), highlight=False)
        if then is not None:
            console.print(then, soft_wrap=True, highlight=False, markup=False)
        return
    if result.backups:
        console.print(f"backup: {', '.join(map(str, result.backups))}", highlight=False)
    console.print(fix_summary(result, dry), soft_wrap=True, highlight=False)
    for f in (standing(result.after)[: None if verbose else 20]) if result.after else []:
        line = f"{f['name']} ({f['status']} {f['rule']}): {f['message']}"
        console.print(f"[red]still standing[/] {escape(line)}", highlight=False)


def fix_summary(result: FixResult, dry: bool) -> str:
    """``fix``'s summary line (rich markup): what was written and the verdict after it."""
    if not result.changes:
        if result.unrepaired:
            return f"nothing fixed: {len(result.unrepaired)} findings have no planned repair"
        return "nothing to fix: no layer reaches the threshold"
    if dry:
        return f"{len(result.changes)} layers would change (nothing written)"
    where = f" → {result.output}" if result.output else " (in memory)"
    s = result.after.summary if result.after else result.before.summary
    depth = f"; depth ratio {s.depth_ratio:.3g}" if s.depth_ratio is not None else ""
    after = f"[{_STYLE[s.status]}]{s.status.upper()}[/] {s.message}{depth}"
    return f"fixed {len(result.changes)} layers{where}; after: {after}"


def render_fix_markdown(result: FixResult, dry: bool) -> str:
    """``fix --format markdown``: the changed layers as a Markdown table and the verdict after."""
    rows = [
        f"| {c.name} | {c.method} | {c.status_before} | {_num(c.old_std)} | {_num(c.new_std)} | "
        f"{_num(c.factor, '.4g')} |"
        for c in result.changes
    ]
    s = (result.after or result.before).summary
    lines = [f"## initdoctor fix: {len(result.changes)} layers {'would change' if dry else 'changed'}", ""]
    if rows:
        lines += [
            "| layer | method | status before | old std | new std | factor |",
            "|---|---|---|---|---|---|",
        ]
        lines += [*rows, ""]
    lines += [f"- not repaired: {name} ({rule}): {reason}" for name, rule, reason in result.unrepaired]
    lines += [
        f"after: **{s.status}** {s.message}" if result.after else f"before: **{s.status}** {s.message}",
        "",
    ]
    return "\n".join(lines)


def report_renderable(report: Report) -> Any:
    """The whole report as one rich renderable (for ``__rich__``), sized by the caller's console."""
    return _ReportView(report)


class _ReportView:
    """A report as a rich renderable: the table fitted to the width the console offers."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield from report_parts(self.report, width=options.max_width)


def report_html(report: Report) -> str:
    """HTML for notebooks (``_repr_html_``): the rich table exported as HTML."""
    from rich.console import Console

    console = Console(record=True, width=160, file=__import__("io").StringIO())
    render_table(report, console)
    return console.export_html(inline_styles=True)


def render_compare(a: Report, b: Report, console: Any | None = None) -> None:
    """The two reports' layers side by side (:func:`~initdoctor.report.compare_to_dict`'s rows)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"A: {a.model['path']} ({a.model['format']})  ·  B: {b.model['path']} ({b.model['format']})",
        title_justify="left",
    )
    for h in (
        "layer",
        "std ratio A",
        "std ratio B",
        "Δ",
        "var ratio A",
        "var ratio B",
        "Δ",
        "status A",
        "status B",
    ):
        table.add_column(h, justify="left" if h in ("layer", "status A", "status B") else "right")
    for r in compare_to_dict(a, b)["layers"]:
        changed = r["status_a"] != r["status_b"]
        table.add_row(
            r["name"],
            _num(r["std_ratio_a"], ".3f"),
            _num(r["std_ratio_b"], ".3f"),
            _num(r["std_ratio_delta"], "+.3f"),
            _num(r["variance_ratio_a"], ".3f"),
            _num(r["variance_ratio_b"], ".3f"),
            _num(r["variance_ratio_delta"], "+.3f"),
            r["status_a"] or "–",
            r["status_b"] or "–",
            style="bold" if changed else None,
        )
    console.print(table)
    console.print(f"A: {a.summary.status.upper()} {a.summary.message}", highlight=False)
    console.print(f"B: {b.summary.status.upper()} {b.summary.message}", highlight=False)


register_display("rich", report_renderable)
register_display("markdown", render_markdown)
register_display("html", report_html)
