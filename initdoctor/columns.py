"""The report table's cells, and fitting them to a width: which columns stay and how long a name
may be (plain text, no rich).

:mod:`initdoctor.render` draws the report's table with rich; this module makes its rows (a row per
layer, and a row per residual block with a finding) and decides, before it draws, what fits in the
console's width (80 columns when unknown, ``COLUMNS`` when piped): the columns in
``drop`` order go first, then the names are shortened in the middle (``model.layers.0…q_proj``).
A kept cell is never cut: a status or a number is whole, or its column is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .report import BlockFinding, LayerFinding, Report

ICON = {"ok": "ok", "unknown": "UNKNOWN", "warn": "WARN", "error": "ERROR", "skip": "skip"}

#: what one column costs beyond its text in a rich box table with padding 1: a space on each
#: side and the vertical rule on its right; the table's left border is one more character
COLUMN_OVERHEAD = 3
#: a name is never shortened below this many characters (``ab…xyz`` still tells layers apart)
MIN_NAME = 12


def cell_width(text: str) -> int:
    """Terminal cells of ``text``: every character initdoctor prints (``×``, ``–``, ``…``, the
    sparkline blocks) takes one."""
    return len(text)


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, its middle replaced by ``…``: the start and the last
    dotted parts stay (``model.layers.0.self_attn.q_proj`` → ``model.layers.0…q_proj``)."""
    if cell_width(text) <= width:
        return text
    keep = max(width - 1, 2)
    tail_room = keep // 2
    tail = ""
    for i, char in enumerate(text):  # the longest dotted suffix within half the room
        if char == "." and len(text) - i - 1 <= tail_room:
            tail = text[i + 1 :]
            break
    if not tail:
        tail = text[len(text) - tail_room :]
    return text[: keep - len(tail)] + "…" + tail


@dataclass
class Fit:
    """The columns kept (indices into the headers, in order), the names' width (None: whole), the
    table's width, and whether it is drawn ``compact`` (no box: columns two spaces apart)."""

    columns: list[int]
    name_width: int | None
    width: int
    compact: bool = False


def table_width(widths: Sequence[int], compact: bool = False) -> int:
    """The width of a box table whose columns' text is ``widths`` cells wide (``compact``: no box,
    no edges, one space of padding on each side of an inner column)."""
    if compact:
        return sum(widths) + 2 * (len(widths) - 1)
    return sum(widths) + COLUMN_OVERHEAD * len(widths) + 1


def fit(
    headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, drop: Sequence[str], name: int = 0
) -> Fit:
    """Which columns of ``headers``/``rows`` fit in ``width`` cells: the headers in ``drop`` are
    removed in that order until the table fits, then column ``name`` is shortened (not below
    :data:`MIN_NAME`); a table that still does not fit is drawn compact (no box), its names down
    to 8 cells. One that does not fit even then keeps what is left, whole (wider than ``width``)."""
    natural = [max([cell_width(h)] + [cell_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    kept = list(range(len(headers)))
    for header in drop:
        if table_width([natural[i] for i in kept]) <= width:
            break
        if header in headers:
            kept.remove(list(headers).index(header))
    result = Fit(kept, None, table_width([natural[i] for i in kept]))
    for compact, floor in ((False, MIN_NAME), (True, 8)):
        total = table_width([natural[i] for i in kept], compact)
        result = Fit(kept, None, total, compact)
        if total > width:
            name_width = max(min(floor, natural[name]), natural[name] - (total - width))
            result = Fit(kept, name_width, total - (natural[name] - name_width), compact)
        if result.width <= width:
            break
    return result


# --- the report's rows -------------------------------------------------------------------------
def number(x: float | None, spec: str = ".4g") -> str:
    """A number as the table shows it; ``–`` for none."""
    return "–" if x is None else format(x, spec)


def layer_cells(f: LayerFinding, probed: bool) -> list[str]:
    """A layer's cells under :func:`headers` (``probed``: with the probe's columns)."""
    cells = [
        f.name,
        f.kind,
        "×".join(str(d) for d in f.shape),
        str(f.fan_in),
        f.nonlinearity + ("" if f.nonlinearity_source == "graph" else "*"),
        number(f.weight_std),
        number(f.expected_std),
        number(f.std_ratio, ".3f"),
    ]
    if probed:
        cells += [
            number(f.variance_ratio, ".3f"),
            number(f.depth_ratio, ".3g"),
            "" if f.dead_fraction is None else f"{f.dead_fraction:.0%}",
        ]
    cells.append(
        number(f.suggested_scale, ".3f") if f.status in ("warn", "error") and f.suggested_scale else ""
    )
    return cells


STATIC_HEADERS = ["layer", "kind", "shape", "fan_in", "nonlin", "std", "kaiming std", "std ratio"]
PROBE_HEADERS = ["var ratio (meas.)", "depth", "dead"]


def headers(probed: bool) -> list[str]:
    """The layer columns' headers, static, measured (``probed``) and the rescale."""
    return STATIC_HEADERS + (PROBE_HEADERS if probed else []) + ["rescale"]


#: the table's columns that go first as the width shrinks, in this order (issue 16); the layer's
#: name, its std ratio, the rescale, the status and the rule code stay at every width
DROP_ORDER = (
    "var ratio (meas.)", "shape", "fan_in", "std", "kaiming std", "kind", "dead", "nonlin", "depth",
)  # fmt: skip
DEPTH_NOTE = (
    "depth –: Var[y]/Var[y_first] is measured along a plain chain of hidden layers; "
    "a residual model has none (its blocks' growth is judged instead)"
)
BLOCK_NOTE = "block rows: ×g = Var[out]/Var[in] of the residual block, measured by the probe"


def table_rows(report: Report) -> tuple[list[str], list[tuple[list[str], str]]]:
    """The table's headers and rows (cells, status): one per layer, and after the last layer of a
    residual block whose status is not ok, a row of the block itself (its growth, its rule)."""
    probed = report.probe is not None
    names = headers(probed) + ["status", "rule"]
    flagged = {b.layers[-1]: b for b in report.residual_blocks if b.status != "ok" and b.layers}
    rows: list[tuple[list[str], str]] = []
    for f in report.layers:
        rows.append((layer_cells(f, probed) + [ICON[f.status], f.rule or ""], f.status))
        block = flagged.pop(f.name, None)
        if block is not None:
            rows.append((_block_cells(block, names), block.status))
    for block in flagged.values():  # a block whose last layer is not a row of its own
        rows.append((_block_cells(block, names), block.status))
    return names, rows


def _block_cells(block: BlockFinding, names: list[str]) -> list[str]:
    cells = dict.fromkeys(names, "")
    cells.update(
        {"layer": f"{block.name} (block)", "kind": "block", "std ratio": "×" + number(block.growth, ".3g")}
    )
    cells.update({"status": ICON[block.status], "rule": block.rule or ""})
    return [cells[h] for h in names]


def markdown_table(report: Report, icon: dict[str, str]) -> list[str]:
    """The Markdown report's tables and findings: the rows of :func:`table_rows` (a layer's rule
    code, a row per flagged residual block; the status as ``icon[status] status``, ``|`` in a cell
    escaped), every residual block's growth, and the findings with their rule codes."""
    names, rows = table_rows(report)
    status_at = names.index("status")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for cells, status in rows:
        cells = [c.replace("|", "\\|") for c in cells]
        cells[status_at] = f"{icon[status]} {status}"
        lines.append("| " + " | ".join(cells) + " |")
    if report.residual_blocks:
        lines += ["", "| residual block | Var[out]/Var[in] | status | rule |", "|---|---|---|---|"]
        lines += [
            f"| {b.name} | {number(b.growth, '.3g')} | {icon[b.status]} {b.status} | {b.rule or ''} |"
            for b in report.residual_blocks
        ]
    flagged = [(f.name, f.status, f.rule, f.message) for f in report.layers if f.status in ("warn", "error")]
    flagged += [
        (f"{b.name} (block)", b.status, b.rule, b.message) for b in report.residual_blocks if b.status != "ok"
    ]
    if flagged:
        lines += ["", "### Findings", ""]
        lines += [
            f"- **{name}** ({status}{f', {rule}' if rule else ''}): {text}"
            for name, status, rule, text in flagged
        ]
    return lines


def counts_text(report: Report, skip: bool = True) -> str:
    """The summary's counts: the layers', then the residual blocks' when some are not ok."""
    s = report.summary
    text = f"ok {s.ok}, warn {s.warn}, error {s.error}" + (f", skip {s.skip}" if skip else "")
    blocks = {k: sum(1 for b in report.residual_blocks if b.status == k) for k in ("ok", "warn", "error")}
    if blocks["warn"] or blocks["error"]:
        text = f"layers: {text}; residual blocks: " + ", ".join(f"{k} {n}" for k, n in blocks.items())
    return text
