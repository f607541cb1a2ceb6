"""What the commands share beyond the option table, kept out of the thin ``cli.py``: the flags every
command reads (``--no-color``, ``-q``), one error line per
problem, the output's destination (stdout or ``-o``), and ``check``'s loop over its files (every
file reported, a bad one as one error line, the exit code the worst of them).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import InitDoctorError
from .options import BY_NAME, FIX, for_command


def common_flags(command: str, opts: dict[str, Any]) -> None:
    """Apply the flags every command shares, before any output: ``--no-color`` (as ``NO_COLOR``,
    which rich reads when a console is made) and ``-q`` (only the summary line, so no progress bar)."""
    if opts.get("no_color"):
        os.environ["NO_COLOR"] = "1"
    if opts.get("quiet"):
        opts["no_progress"] = True


def error_line(exc: BaseException) -> str:
    """An exception as the one line the CLI prints after ``initdoctor: error:``."""
    if isinstance(exc, InitDoctorError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    else:
        message = f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)"
    return message.splitlines()[0] if message else type(exc).__name__


def emit(text: str, output: Path | None) -> None:
    """``text`` to stdout, or atomically to ``output`` (``-o``)."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from .fileio import atomic_write_text

        atomic_write_text(output, text)


def recorded(render: Any, *args: Any) -> str:
    """What a rich renderer (``render(*args, console)``) prints, as plain text (for ``-o``)."""
    from rich.console import Console

    console = Console(record=True, file=io.StringIO())
    render(*args, console)
    return console.export_text()


def verdict_flags(command: str, opts: dict[str, Any]) -> list[str]:
    """The flags of ``command``'s command line (``opts``: its parameters) that change the verdict
    and that ``fix`` takes too (check's ``--model`` is fix's ``--model``): the model's source
    (``--model``, ``--weights``, ``--trust``), the judgement's and the probe's settings as given.
    Carried into the suggested ``initdoctor fix`` command, so that copying it judges the model as
    the report did (options not given, or left at their default, are not repeated)."""
    words: list[str] = []
    for option in for_command(command):
        target = BY_NAME["model-factory"] if option.name == "check-model" else option
        if FIX not in target.commands or not (target.field or target.name in _SOURCE_OPTIONS):
            continue
        value = opts.get(option.param)
        if value is None or value == [] or value == {} or (not option.config and value == option.default):
            continue
        on, _, off = (target.flag or f"--{target.name}").partition("/")
        if option.type is bool:
            words += [on] if value else [off] if off else []
            continue
        for item in value if isinstance(value, list) else [value]:
            words += [on, str(item)]
    return words


#: options that say where the model comes from (no library field: the CLI reads them)
_SOURCE_OPTIONS = ("model-factory", "weights", "trust", "probe")


def check_line(source: str, report: Any, verbose: bool) -> str:
    """``check``'s table format: one line per model (``-v``: then each layer's message and the
    notes), then the command that repairs it (``next:``)."""
    from .columns import counts_text
    from .nextstep import next_command

    s = report.summary
    lines = [f"{source}: {s.status} — {s.message} ({counts_text(report, skip=False)})"]
    if verbose:
        for f in report.layers:
            lines.append(f"  {f.name}: {f.status}{f' {f.rule}' if f.rule else ''} — {f.message}")
        lines += [f"  note: {note}" for note in report.notes]
    if (step := next_command(report)) is not None:
        lines.append(f"  next: {step[0]}{step[1]}")
    return "\n".join(lines) + "\n"


def run_check(
    models: list[str], opts: dict[str, Any], settings: dict[str, Any], resolved: dict[str, Any]
) -> int:
    """Judge every model of ``check`` (``opts``: its parameters; ``settings``, ``resolved``: what
    :func:`initdoctor.config.resolve` made of them); a model that cannot be read is one error line
    on stderr (exit code 2) and the others are still judged. Returns the worst exit code. Formats:
    a line per model (table), a list of reports (json), a report per model (markdown), one page
    with a section per model (html)."""
    from .api import diagnose, input_files
    from .fileio import check_output
    from .nextstep import set_next_step

    if opts["output"] is not None:
        check_output(opts["output"], [p for m in models for p in input_files(m, None)])
    fmt, stream = opts["format"], opts["format"] == "table" and opts["output"] is None
    carry = verdict_flags("check", opts)
    worst, texts, reports = 0, [], []
    for source in models:
        model, weights = (opts["model"], Path(source)) if opts["model"] else (source, None)
        try:
            report = diagnose(
                model, trust=opts["trust"], weights=weights, probe=resolved["probe"], **settings
            )
        except Exception as exc:  # one line per bad file; the others are still checked
            if opts["debug"]:
                raise
            message = error_line(exc)
            message = message if source in message else f"{source}: {message}"
            print(f"initdoctor: error: {message}", file=sys.stderr)
            worst = 2
            continue
        set_next_step(report, source, carry)
        worst = max(worst, report.exit_code(resolved["fail-on"]))
        if fmt == "table":
            text = check_line(source, report, opts["verbose"])
            if stream:  # a line as soon as its model is judged
                emit(text, None)
            else:
                texts.append(text)
        elif fmt == "markdown":
            from .render import render_markdown

            texts.append(render_markdown(report))
        reports.append((source, report))
    if fmt == "json":
        texts = [json.dumps([r.to_dict() for _, r in reports], indent=2, allow_nan=False) + "\n"]
    elif fmt == "html" and reports:
        from .htmlreport import render_html_many

        texts = [render_html_many(reports)]
    if not stream and (reports or opts["output"] is None):  # no model judged: no output file
        emit("\n".join(texts) if fmt == "markdown" else "".join(texts), opts["output"])
    return worst
