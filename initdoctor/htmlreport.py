"""``--format html``: the report as one self-contained HTML file, to attach to a pull request or a
training run.

The page holds the layer table (:func:`initdoctor.columns.table_rows`: a row per layer with its
rule code, and a row per residual block with a finding), the findings with their rule codes and
messages, the summary, and the variance-over-depth figure of :mod:`initdoctor.plot` inline as a
base64 ``data:`` URI (without matplotlib the page says so instead). Nothing external: no script,
no stylesheet or font from elsewhere; every string that comes from the model (layer names, paths,
messages) is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from .columns import BLOCK_NOTE, counts_text, table_rows
from .errors import InitDoctorError
from .nextstep import next_command
from .render import init_loss_line
from .report import Report
from .version import __version__

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.summary { font-size: 1.05em; padding: .6em .8em; border-left: .4em solid #888; background: #f6f6f6; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; white-space: nowrap; }
th { background: #eee; } td.text { text-align: left; }
tr.block td { font-style: italic; }
.ok { color: #1b7a5a; } .unknown { color: #1d6fa5; } .warn { color: #9a6b00; }
.error { color: #c1121f; font-weight: bold; } .skip { color: #888; }
.summary.ok { border-color: #2a9d8f; } .summary.unknown { border-color: #1d6fa5; }
.summary.warn { border-color: #e9c46a; } .summary.error { border-color: #e63946; }
code { background: #f0f0f0; padding: 0 .2em; } .note { color: #666; }
img { max-width: 100%; }
"""
_TEXT_COLUMNS = ("layer", "kind", "shape", "nonlin", "status", "rule")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def plot_html(report: Report) -> str:
    """The figure as an inline ``<img>`` (a PNG data URI), or a note saying why there is none."""
    from .plot import png_bytes

    try:
        png = png_bytes(report)
    except InitDoctorError as exc:
        return f'<p class="note">No plot: {_e(exc)}.</p>'
    data = base64.b64encode(png).decode("ascii")
    alt = "activation variance across depth and each layer's weight std / Kaiming std"
    return f'<img src="data:image/png;base64,{data}" alt="{alt}">'


def _table(report: Report) -> list[str]:
    headers, rows = table_rows(report)
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    status_at = headers.index("status")
    for cells, status in rows:
        block = cells[headers.index("kind")] == "block"
        tds = []
        for i, cell in enumerate(cells):
            cls = "text" if headers[i] in _TEXT_COLUMNS else ""
            if i == status_at:
                cls += f" {status}"
            attr = f' class="{cls.strip()}"' if cls.strip() else ""
            tds.append(f"<td{attr}>{_e(cell)}</td>")
        out.append(f'<tr class="{"block " if block else ""}{_e(status)}">' + "".join(tds) + "</tr>")
    out.append("</table>")
    return out


def _findings(report: Report) -> list[str]:
    """Every finding that is not ok: layers, residual blocks, norm layers, the model-level rule."""
    items: list[tuple[str, str, str | None, str]] = []
    s = report.summary
    if s.rule:
        items.append(("model", s.status, s.rule, s.message))
    items += [(f.name, f.status, f.rule, f.message) for f in report.layers if f.status in ("warn", "error")]
    items += [
        (f"{b.name} (residual block)", b.status, b.rule, b.message)
        for b in report.residual_blocks
        if b.status != "ok"
    ]
    items += [
        (f"{n.name} ({n.kind})", n.status, n.rule, n.message) for n in report.norm_layers if n.status != "ok"
    ]
    if not items:
        return ["<p>No findings.</p>"]
    out = ["<ul>"]
    for name, status, rule, message in items:
        code = f" <code>{_e(rule)}</code>" if rule else ""
        out.append(
            f'<li><span class="{_e(status)}">{_e(str(status).upper())}</span>{code} '
            f"<b>{_e(name)}</b>: {_e(message)}</li>"
        )
    out.append("</ul>")
    return out


def _section(report: Report, plot: bool, anchor: str = "summary", level: int = 2) -> list[str]:
    """One model's part of the page: heading, summary (``id=anchor``), next step, findings, plot,
    layer table and notes; ``level`` is the heading level of its parts."""
    m, s = report.model, report.summary
    extra = f"; depth ratio {s.depth_ratio:.3g}" if s.depth_ratio is not None else ""
    summary = f"{str(s.status).upper()}: {s.message} ({counts_text(report)}{extra})"
    notes = [*(f"probe: {n}" for n in (report.probe or {}).get("notes", [])), *report.notes]
    if any(b.status != "ok" for b in report.residual_blocks):
        notes.append(BLOCK_NOTE)
    loss, step, h = init_loss_line(s), next_command(report), f"h{level}"
    return [
        f"<p>{_e(m['format'])}, {int(m['parameters']):,} parameters"
        + (", probed" if report.probe is not None else ", static (not probed)")
        + "</p>",
        f'<p class="summary {_e(s.status)}" id="{_e(anchor)}">{_e(summary)}</p>',
        *([f"<p>next: <code>{_e(step[0])}</code>{_e(step[1])}</p>"] if step else []),
        *([f"<p>{_e(loss)}</p>"] if loss else []),
        f"<{h}>Findings</{h}>",
        *_findings(report),
        f"<{h}>Variance across depth</{h}>",
        plot_html(report) if plot else '<p class="note">No plot: not asked for.</p>',
        f"<{h}>Layers</{h}>",
        *_table(report),
        *(
            [f'<{h}>Notes</{h}><ul class="note">', *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
            if notes
            else []
        ),
    ]


def _document(title: str, body: list[str]) -> str:
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
    ]
    return "\n".join([*head, *body, "</body></html>", ""])


def render_html(report: Report, plot: bool = True) -> str:
    """The whole report as one HTML document (``plot``: with the figure inline)."""
    m, s = report.model, report.summary
    title = f"initdoctor · {m['path']} · {s.status}"
    heading = f"<h1>initdoctor {_e(__version__)}: <code>{_e(m['path'])}</code></h1>"
    return _document(title, [heading, *_section(report, plot)])


def render_html_many(reports: Sequence[tuple[str, Report]], plot: bool = True) -> str:
    """Several models (``check -f html``: (name as given, report) pairs) as one self-contained
    page: a list of their verdicts, worst first in the title, then a section per model."""
    order = ("ok", "unknown", "warn", "error")
    worst = max((str(r.summary.status) for _, r in reports), key=order.index, default="ok")
    body = [
        f"<h1>initdoctor {_e(__version__)}: {len(reports)} models, worst {_e(worst)}</h1>",
        "<ul>",
        *(
            f'<li><a href="#model-{i}"><code>{_e(name)}</code></a>: '
            f'<span class="{_e(r.summary.status)}">{_e(str(r.summary.status).upper())}</span> '
            f"{_e(r.summary.message)}</li>"
            for i, (name, r) in enumerate(reports, 1)
        ),
        "</ul>",
    ]
    for i, (name, report) in enumerate(reports, 1):
        body += [f"<h2><code>{_e(name)}</code></h2>", *_section(report, plot, f"model-{i}", level=3)]
    return _document(f"initdoctor · {len(reports)} models · {worst}", body)
