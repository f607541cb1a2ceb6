"""The ``initdoctor`` command: load, call the library, print. Nothing else lives here.

Exit codes: 0 nothing reaches ``--fail-on``; 1 something does; 2 usage or input error (and
``fix`` refusing a model whose verdict is ``unknown`` without ``--force``). Statuses order
ok < unknown < warn < error, so ``unknown`` alone exits 0 unless ``--fail-on unknown``.
Results go to stdout (or ``--output``), messages to stderr.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
import typer.core

from .cli_params import QuickCommand, QuickGroup
from .errors import SettingsError, Terminated
from .options import CONFIG_KEYS, EXIT_CODES, HTML_COMMANDS, Option, for_command
from .version import __version__


class _Command(QuickCommand):
    """A command whose help names its arguments plainly (``MODEL``, ``[CODE]``, ``MODELS...``)."""

    @staticmethod
    def _name(param: Any) -> str:
        return str(param.name).upper() + ("..." if param.nargs != 1 else "")

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(self._name(param) if param.required else f"[{self._name(param)}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        args = [
            (self._name(p), getattr(p, "help", None) or "") for p in params if p.param_type_name == "argument"
        ]
        opts = [r for p in params if p.param_type_name == "option" and (r := p.get_help_record(ctx))]
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


app = typer.Typer(
    name="initdoctor",
    cls=QuickGroup,
    help="Diagnose the weight initialization of a neural network (He et al. 2015, Kaiming).",
    epilog=EXIT_CODES["inspect"],
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _version(value: bool) -> None:
    if value:
        typer.echo(f"initdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Diagnose the weight initialization of a neural network (He et al. 2015, Kaiming)."""


ModelArg = Annotated[
    str,
    typer.Argument(
        help=(
            "Model file (.pt/.pth/.bin, .safetensors or its index .json, .onnx, TorchScript, .pt2), a "
            "Hugging Face folder (config.json + weights) or a factory package.module:function."
        )
    ),
]


def _parameter(option: Option, command: str) -> inspect.Parameter:
    """A command's typer parameter for ``option``: its flag, help and type from the option table.
    Configurable options default to ``None`` ("not given") so that the config file can fill them."""
    decls = [option.flag or f"--{option.name}", *([option.short] if option.short else [])]
    extra: dict[str, Any] = {}
    value_type: Any = list[str] if option.type is list else str if option.type is dict else option.type
    if option.choices:  # click checks them: an Enum of the valid values, passed on as plain strings
        value_type = cast(Any, StrEnum)(option.param, {choice: choice for choice in option.choices})
    configurable = option.config and option.name in CONFIG_KEYS
    text = option.help_for(command)
    if option.type is not bool:
        extra["metavar"] = "|".join(option.choices) if option.choices else _METAVAR.get(option.type, "TEXT")
    if configurable:  # click would print a string default in parentheses: written here instead
        extra["show_default"] = False
        if option.type is not bool and option.default not in (None, [], {}):
            text += f"  [default: {_shown(option.default)}]"
    annotation: Any = value_type | None if configurable or option.default is None else value_type
    default = None if configurable else option.default
    info = typer.Option(default, *decls, help=text, **extra)
    return inspect.Parameter(
        option.param, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
    )


_METAVAR: dict[Any, str] = {float: "FLOAT", int: "INTEGER", Path: "FILE", str: "TEXT", list: "TEXT"}


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``func`` as command ``name`` with its own arguments plus every option the table gives
    ``name`` (see :mod:`initdoctor.options`); the options reach ``func`` as keyword arguments."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        own = [
            p
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ]
        params = own + [_parameter(option, name) for option in for_command(name)]
        func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # read by typer
        func.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(name, cls=_Command, epilog=EXIT_CODES[name])(func)

    return register


def _library_settings(command_name: str, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resolve ``opts`` (a command's parameters): the library settings and the resolved options."""
    from .commands import common_flags
    from .config import resolve

    common_flags(command_name, opts)
    settings, resolved = resolve(opts)
    if opts.get("format") == "html" and command_name not in HTML_COMMANDS:
        raise SettingsError(f"--format html is for inspect; {command_name} writes table or json")
    for option in for_command(command_name):  # command-line-only options that set a library field
        if option.field is not None and option.name not in CONFIG_KEYS:
            settings[option.field] = opts[option.param]
    return settings, resolved


def _check_outputs(source: str, weights: Path | None, *outputs: Path | None) -> None:
    """Before any work: no output (``-o``, ``--plot``) may replace an input or a non-regular file."""
    from .api import input_files
    from .fileio import check_output

    inputs = input_files(source, weights)
    for output in outputs:
        if output is not None:
            check_output(output, inputs)


def _source(model: str, model_factory: str | None, weights: Path | None) -> tuple[str, Path | None]:
    """``inspect weights.pt --model pkg:fn`` is ``inspect pkg:fn --weights weights.pt``."""
    return (model_factory, Path(model)) if model_factory else (model, weights)


@command("inspect")
def inspect_(model: ModelArg, **opts: Any) -> None:
    """Report, per weighted layer, how far its weights are from Kaiming initialization."""
    from .api import diagnose
    from .commands import verdict_flags
    from .nextstep import set_next_step
    from .render import ProgressBar

    with _errors(opts["debug"]):
        source, weights_file = _source(model, opts["model_factory"], opts["weights"])
        settings, resolved = _library_settings("inspect", opts)
        _check_outputs(source, weights_file, opts["output"], opts["plot"])
        with ProgressBar("probing layers", quiet=opts["no_progress"]) as bar:
            report = diagnose(
                source,
                trust=opts["trust"],
                weights=weights_file,
                probe=resolved["probe"],
                progress=bar,
                **settings,
            )
        set_next_step(report, model, verdict_flags("inspect", opts))
        _emit(report, opts["format"], opts["output"], opts["verbose"], opts["quiet"])
        if opts["plot"] is not None:
            from .plot import plot_report

            plot_report(report, opts["plot"])
    raise typer.Exit(report.exit_code(resolved["fail-on"]))


@command("check")
def check(
    models: Annotated[
        list[str],
        typer.Argument(help="Model files (or factories) to check, e.g. the files pre-commit passes."),
    ],
    **opts: Any,
) -> None:
    """One line per model, exit 1 if any reaches --fail-on: for pre-commit hooks and quick CI gates.
    Every model is reported (one that cannot be read: an error line, exit 2)."""
    from .commands import run_check

    with _errors(opts["debug"]):
        settings, resolved = _library_settings("check", opts)
        worst = run_check(models, opts, settings, resolved)
    raise typer.Exit(worst)


@command("compare")
def compare(
    before: Annotated[str, typer.Argument(help="First model (e.g. the original).")],
    after: Annotated[str, typer.Argument(help="Second model (e.g. after fix, or the ONNX export).")],
    **opts: Any,
) -> None:
    """Two reports side by side with per-layer deltas (before/after fix, torch vs its ONNX export)."""
    from .api import diagnose
    from .commands import emit, recorded
    from .render import render_compare
    from .report import compare_to_dict

    with _errors(opts["debug"]):
        settings, resolved = _library_settings("compare", opts)
        _check_outputs(before, None, opts["output"])
        _check_outputs(after, None, opts["output"])
        a = diagnose(before, trust=opts["trust"], probe=resolved["probe"], **settings)
        b = diagnose(after, trust=opts["trust"], probe=resolved["probe"], **settings)
        if opts["format"] == "json":
            import json

            emit(json.dumps(compare_to_dict(a, b), indent=2, allow_nan=False) + "\n", opts["output"])
        elif opts["output"] is not None:
            emit(recorded(render_compare, a, b), opts["output"])
        else:
            render_compare(a, b)


@command("fix")
def fix(model: ModelArg, **opts: Any) -> None:
    """Rescale (or redraw) drifting layers and write the repaired model, never touching the input."""
    from .api import fix_model
    from .render import ProgressBar

    with _errors(opts["debug"]):
        source, weights_file = _source(model, opts["model_factory"], opts["weights"])
        settings, resolved = _library_settings("fix", opts)
        if opts["select_from"] == "never" and not opts["all_layers"]:
            raise SettingsError("--select-from never would fix nothing; use warn, error or --all")
        dry = opts["dry_run"] or opts["check"]
        with ProgressBar("probing layers", quiet=opts["no_progress"]) as bar:
            result = fix_model(
                source,
                method=opts["method"],
                output=opts["output"],
                in_place=opts["in_place"],
                dry_run=dry,
                fail_on=opts["select_from"],
                all_layers=opts["all_layers"],
                zero_bias=opts["zero_bias"],
                tol=opts["tol"],
                max_iter=opts["max_iter"],
                trust=opts["trust"],
                weights=weights_file,
                probe=bool(resolved["probe"]),
                progress=bar,
                force=opts["force"],
                **settings,
            )
        from .commands import emit
        from .nextstep import check_next_step
        from .render import fix_summary, render_fix, render_fix_markdown
        from .report import fix_to_dict

        if opts["format"] == "json":
            import json

            emit(json.dumps(fix_to_dict(result, dry), indent=2, allow_nan=False) + "\n", None)
        elif opts["format"] == "markdown":
            emit(render_fix_markdown(result, dry), None)
        elif opts["quiet"]:  # the summary line only
            from rich.console import Console

            Console().print(fix_summary(result, dry), soft_wrap=True, highlight=False)
        else:
            render_fix(
                result,
                dry=dry,
                verbose=opts["verbose"],
                then=check_next_step(sys.argv[1:], model) if dry else None,
            )
    if opts["check"]:
        raise typer.Exit(1 if result.changes or result.unrepaired else 0)
    raise typer.Exit(0 if opts["dry_run"] else (result.after or result.before).exit_code(opts["fail_on"]))


@app.command(cls=_Command)
def rule(
    code: Annotated[str | None, typer.Argument(help="A rule code, e.g. K101 (a finding's `rule`).")] = None,
    all_rules: Annotated[bool, typer.Option("--all", help="List every rule.")] = False,
) -> None:
    """Explain a rule by its code (as `ruff rule`), or list every rule with --all."""
    from .checks import rule_text

    if (code is None) != all_rules:
        typer.echo("initdoctor: error: give one rule code, or --all", err=True)
        raise typer.Exit(EXIT_ERROR)
    with _errors(debug=False):
        typer.echo(rule_text(code), nl=False)


def _emit(report: Any, fmt: str, output: Path | None, verbose: bool = False, quiet: bool = False) -> None:
    from . import render
    from .commands import emit, recorded

    if fmt == "json":
        text = report.to_json() + "\n"
    elif fmt == "markdown":
        text = render.render_markdown(report)
    elif fmt == "html":  # one self-contained file: table, findings, the plot inline
        from .htmlreport import render_html

        text = render_html(report)
    else:
        from rich.console import Console

        if output is None:  # the terminal's width; piped: COLUMNS, else 80 (rich's rule)
            render.render_table(report, Console(), verbose=verbose, quiet=quiet)
            return
        text = recorded(lambda r, c: render.render_table(r, c, verbose=verbose, quiet=quiet), report)
    emit(text, output)


class _errors:
    """Turn library errors into one line on stderr and exit code 2 (``--debug``: traceback)."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug

    def __enter__(self) -> None:
        if not self.debug:  # one clean line per problem: libraries' warnings and logs under --debug
            import logging
            import warnings

            warnings.simplefilter("ignore")
            for name in ("torch", "onnxscript", "transformers"):
                logging.getLogger(name).setLevel(logging.ERROR)
            # transformers sets its logger's level when first imported: from this variable
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, (typer.Exit, KeyboardInterrupt, SystemExit)) or self.debug:
            return
        from .commands import error_line

        typer.echo(f"initdoctor: error: {error_line(exc)}", err=True)
        raise typer.Exit(EXIT_ERROR)


def main() -> None:
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise Terminated(128 + signum)  # unwinds through the writers' cleanup, as Ctrl-C does

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's errors (typer vendors click: its classes)
        code = getattr(exc, "exit_code", EXIT_ERROR)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `initdoctor`: the help
            exc.show()  # type: ignore[attr-defined]  # a click exception: it shows itself
        else:  # a usage error: the usage line and one line saying what is wrong
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                typer.echo(ctx.get_usage(), err=True)
            message = exc.format_message().replace("Value error, ", "")  # typer's choice check says so
            typer.echo(f"initdoctor: error: {message}", err=True)
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
