"""The ``initdoctor`` command: load, call the library, print. Nothing else lives here.

Exit codes: 0 nothing reaches ``--fail-on``; 1 something does; 2 usage or input error.
Results go to stdout (or ``--output``), messages to stderr.
"""

from __future__ import annotations

import io
import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .errors import InitDoctorError

app = typer.Typer(
    name="initdoctor",
    help="Diagnose the weight initialization of a neural network (He et al. 2015, Kaiming).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class Format(StrEnum):
    table = "table"
    json = "json"
    markdown = "markdown"


class FailOn(StrEnum):
    warn = "warn"
    error = "error"
    never = "never"


class Mode(StrEnum):
    fan_in = "fan_in"
    fan_out = "fan_out"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"initdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Diagnose the weight initialization of a neural network (He et al. 2015, Kaiming)."""


# Options shared by several commands (one definition each).
ModelArg = Annotated[
    str,
    typer.Argument(
        help=(
            "Model file (.pt/.pth/.bin, .safetensors or its index .json, .onnx, TorchScript, .pt2) or "
            "a factory package.module:function."
        )
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="State_dict or safetensors file to load into a factory's model.")
]
TrustOpt = Annotated[
    bool | None,
    typer.Option(
        "--trust/--no-trust",
        show_default=False,
        help="Allow formats whose loading runs code from the file: full pickles, TorchScript, torch.export.",
    ),
]
NonlinearityOpt = Annotated[
    str | None,
    typer.Option(
        show_default="relu",
        help=(
            "Nonlinearity assumed after each layer where no graph shows it: relu, leaky_relu, tanh, "
            "sigmoid, selu, gelu, silu, linear."
        ),
    ),
]
SlopeOpt = Annotated[
    float | None, typer.Option(show_default="0.01", help="Slope for --nonlinearity leaky_relu.")
]
ModeOpt = Annotated[
    Mode | None,
    typer.Option(
        show_default="fan_in",
        help="fan_in keeps the forward signal (He eq. 10), fan_out the backward one (eq. 14).",
    ),
]
WarnOpt = Annotated[
    float | None,
    typer.Option(show_default="1.25", help="Variance factor beyond which a layer warns (either way)."),
]
ErrorOpt = Annotated[
    float | None, typer.Option(show_default="4", help="Variance factor beyond which a layer is an error.")
]
CompoundOpt = Annotated[
    float | None,
    typer.Option(
        show_default="16",
        help="Variance factor over the whole chain of hidden layers beyond which the model is an error.",
    ),
]
FactoryOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help=(
            "Factory package.module:function that builds the model whose weights MODEL holds (gives a "
            "state_dict a graph to probe)."
        ),
    ),
]
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        help=(
            "Probe input shape, e.g. 8,3,32,32 (repeat for several inputs). Default: the ONNX "
            "graph's, else inferred from the first layer."
        ),
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        show_default="float32", help="Probe input dtype: float32, float64, float16, bfloat16, int64, int32."
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option(show_default="32", help="Probe batch size (fills a dynamic batch dimension).")
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        show_default="0",
        help="Seed of the probe's inputs (and of --method reinit): the same seed gives the same result.",
    ),
]
VocabOpt = Annotated[
    int | None,
    typer.Option(help="Range of integer (token id) inputs; default: the smallest embedding table."),
]
DebugOpt = Annotated[bool, typer.Option(help="Show tracebacks.")]


def _shape(text: str) -> tuple[int, ...]:
    from .errors import SettingsError

    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise SettingsError(
            f"--input-shape {text!r}: expected integers separated by commas, e.g. 8,3,32,32"
        ) from None
    if not shape:
        raise SettingsError(f"--input-shape {text!r}: empty")
    return shape


DEFAULTS: dict[str, Any] = {
    "nonlinearity": "relu",
    "negative-slope": 0.01,
    "mode": "fan_in",
    "warn-threshold": 1.25,
    "error-threshold": 4.0,
    "compound-threshold": 16.0,
    "fail-on": "error",
    "probe": True,
    "input-shape": [],
    "input-dtype": "float32",
    "batch-size": 32,
    "seed": 0,
    "vocab-size": None,
    "trust": False,
    "ignore": [],
    "overrides": {},
}


def _resolve(**cli: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Command line > ``[tool.initdoctor]`` > defaults. ``cli`` holds a command's parameters by
    their Python names (``warn_threshold``); only the configurable ones (:data:`DEFAULTS`) are read,
    ``None`` meaning "not given". Returns (library settings for :func:`initdoctor.diagnose`, the
    resolved options by long name)."""
    from .config import load_config, overrides_setting

    table, _ = load_config()
    opts: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        value = cli.get(key.replace("-", "_"))
        if isinstance(value, Enum):
            value = value.value
        if value is None or value == []:
            value = table.get(key, default)
        opts[key] = value
    settings = {
        "nonlinearity": opts["nonlinearity"],
        "negative_slope": float(opts["negative-slope"]),
        "mode": opts["mode"],
        "warn_threshold": float(opts["warn-threshold"]),
        "error_threshold": float(opts["error-threshold"]),
        "compound_threshold": float(opts["compound-threshold"]),
        "input_shapes": tuple(
            _shape(str(text) if not isinstance(text, list) else ",".join(map(str, text)))
            for text in opts["input-shape"]
        ),
        "input_dtype": opts["input-dtype"],
        "batch_size": int(opts["batch-size"]),
        "seed": int(opts["seed"]),
        "vocab_size": opts["vocab-size"],
        "ignore": tuple(opts["ignore"]),
        "overrides": overrides_setting({"overrides": opts["overrides"]}),
    }
    if opts["fail-on"] not in ("warn", "error", "never"):
        from .errors import SettingsError

        raise SettingsError(f"fail-on must be warn, error or never, got {opts['fail-on']!r}")
    return settings, opts


def _source(model: str, model_factory: str | None, weights: Path | None) -> tuple[str, Path | None]:
    """``inspect weights.pt --model pkg:fn`` is ``inspect pkg:fn --weights weights.pt``."""
    return (model_factory, Path(model)) if model_factory else (model, weights)


@app.command()
def inspect(
    model: ModelArg,
    weights: WeightsOpt = None,
    trust: TrustOpt = None,
    nonlinearity: NonlinearityOpt = None,
    negative_slope: SlopeOpt = None,
    mode: ModeOpt = None,
    warn_threshold: WarnOpt = None,
    error_threshold: ErrorOpt = None,
    compound_threshold: CompoundOpt = None,
    probe: Annotated[
        bool | None,
        typer.Option(
            "--probe/--no-probe",
            show_default=False,
            help=(
                "Run a seeded random batch through the model (when it has a graph) and measure each "
                "layer's activation variance [default: probe]."
            ),
        ),
    ] = None,
    model_factory: FactoryOpt = None,
    input_shape: ShapeOpt = None,
    input_dtype: DtypeOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    vocab_size: VocabOpt = None,
    backward: Annotated[
        bool,
        typer.Option(
            "--backward",
            help="Also run one backward pass and report gradient variance per layer (torch models).",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds the probe may run (0: no limit).")] = 0.0,
    max_input_mib: Annotated[float, typer.Option(help="Largest probe batch, in MiB.")] = 1024.0,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG of activation variance across depth (needs the 'plot' extra: matplotlib)."
        ),
    ] = None,
    fail_on: Annotated[
        FailOn | None, typer.Option(show_default="error", help="Lowest status that makes the exit code 1.")
    ] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report to FILE instead of stdout.")
    ] = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Report, per weighted layer, how far its weights are from Kaiming initialization."""
    from . import diagnose
    from .render import ProgressBar

    with _errors(debug):
        source, weights_file = _source(model, model_factory, weights)
        settings, opts = _resolve(**locals())  # the command's own options, by name
        with ProgressBar("probing layers", quiet=quiet) as bar:
            report = diagnose(
                source,
                trust=opts["trust"],
                weights=weights_file,
                probe=opts["probe"],
                progress=bar,
                backward=backward,
                timeout=timeout,
                max_input_mib=max_input_mib,
                **settings,
            )
        _emit(report, format, output)
        if plot is not None:
            from .plot import plot_report

            plot_report(report, plot)
    raise typer.Exit(report.exit_code(opts["fail-on"]))


@app.command()
def check(
    models: Annotated[
        list[str],
        typer.Argument(help="Model files (or factories) to check, e.g. the files pre-commit passes."),
    ],
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Also run the probe (slower; static by default here).")
    ] = False,
    trust: TrustOpt = None,
    fail_on: Annotated[
        FailOn | None, typer.Option(show_default="error", help="Lowest status that makes the exit code 1.")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """One line per model, exit 1 if any reaches --fail-on: for pre-commit hooks and quick CI gates."""
    from . import diagnose

    worst = 0
    with _errors(debug):
        settings, opts = _resolve(trust=trust, fail_on=fail_on)
        for source in models:
            report = diagnose(source, trust=opts["trust"], probe=probe, **settings)
            s = report.summary
            code = report.exit_code(opts["fail-on"])
            worst = max(worst, code)
            typer.echo(f"{source}: {s.status} — {s.message} (ok {s.ok}, warn {s.warn}, error {s.error})")
    raise typer.Exit(worst)


@app.command()
def compare(
    before: Annotated[str, typer.Argument(help="First model (e.g. the original).")],
    after: Annotated[str, typer.Argument(help="Second model (e.g. after fix, or the ONNX export).")],
    probe: Annotated[
        bool | None,
        typer.Option(
            "--probe/--no-probe",
            show_default=False,
            help="Probe both (when they have a graph) [default: probe].",
        ),
    ] = None,
    trust: TrustOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
    debug: DebugOpt = False,
) -> None:
    """Two reports side by side with per-layer deltas (before/after fix, torch vs its ONNX export)."""
    from . import diagnose
    from .render import compare_rows, render_compare

    with _errors(debug):
        settings, opts = _resolve(trust=trust, probe=probe)
        a = diagnose(before, trust=opts["trust"], probe=opts["probe"], **settings)
        b = diagnose(after, trust=opts["trust"], probe=opts["probe"], **settings)
        if format is Format.json:
            import json

            data = {
                "schema": "initdoctor.compare/1",
                "a": a.model,
                "b": b.model,
                "layers": compare_rows(a, b),
                "summary": {"a": a.summary.status, "b": b.summary.status},
            }
            sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        else:
            render_compare(a, b)


class Method(StrEnum):
    kaiming = "kaiming"
    lsuv = "lsuv"
    reinit = "reinit"


@app.command()
def fix(
    model: ModelArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help=(
                "Where to write the repaired model, in MODEL's own format (a folder for a sharded "
                "checkpoint; a state_dict for a factory)."
            ),
        ),
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            help=(
                "kaiming: rescale W to the Kaiming std; lsuv: rescale until the measured variance "
                "ratio is 1 (needs a graph); reinit: redraw W from N(0, Kaiming std²)."
            )
        ),
    ] = Method.kaiming,
    fail_on: Annotated[
        FailOn, typer.Option(help="Fix the layers whose status reaches this (kaiming, reinit).")
    ] = FailOn.warn,
    all_layers: Annotated[bool, typer.Option("--all", help="Fix every weighted layer.")] = False,
    zero_bias: Annotated[
        bool, typer.Option("--zero-bias", help="Also set the fixed layers' biases to zero.")
    ] = False,
    tol: Annotated[float, typer.Option(help="lsuv: stop when |variance ratio - 1| < tol.")] = 0.05,
    max_iter: Annotated[int, typer.Option(help="lsuv: most iterations per layer.")] = 10,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Overwrite MODEL, keeping MODEL.bak first.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; write nothing.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="CI mode: exit 1 and list the layers if a fix would change anything; write nothing.",
        ),
    ] = False,
    probe: Annotated[
        bool | None,
        typer.Option(
            "--probe/--no-probe",
            show_default=False,
            help=(
                "Probe the written model to check the fix (when it has a graph) [default: probe]; "
                "--no-probe checks it statically, without running it."
            ),
        ),
    ] = None,
    quiet: QuietOpt = False,
    weights: WeightsOpt = None,
    trust: TrustOpt = None,
    model_factory: FactoryOpt = None,
    nonlinearity: NonlinearityOpt = None,
    negative_slope: SlopeOpt = None,
    mode: ModeOpt = None,
    warn_threshold: WarnOpt = None,
    error_threshold: ErrorOpt = None,
    compound_threshold: CompoundOpt = None,
    input_shape: ShapeOpt = None,
    input_dtype: DtypeOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    vocab_size: VocabOpt = None,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="Output format (table or json).")
    ] = Format.table,
    debug: DebugOpt = False,
) -> None:
    """Rescale (or redraw) drifting layers and write the repaired model, never touching the input."""
    from .fix import fix_model
    from .render import ProgressBar

    with _errors(debug):
        source, weights_file = _source(model, model_factory, weights)
        settings, opts = _resolve(**locals())  # the command's own options, by name
        trust = opts["trust"]
        if fail_on is FailOn.never and not all_layers:
            raise typer.BadParameter("--fail-on never would fix nothing; use warn, error or --all")
        with ProgressBar("probing layers", quiet=quiet) as bar:
            result = fix_model(
                source,
                method=method.value,
                output=output,
                in_place=in_place,
                dry_run=dry_run or check,
                fail_on=fail_on.value,
                all_layers=all_layers,
                zero_bias=zero_bias,
                tol=tol,
                max_iter=max_iter,
                trust=trust,
                weights=weights_file,
                probe=bool(opts["probe"]),
                progress=bar,
                **settings,
            )
        from .render import fix_to_dict, render_fix

        if format is Format.json:
            import json

            sys.stdout.write(
                json.dumps(fix_to_dict(result, check or dry_run), indent=2, allow_nan=False) + "\n"
            )
        else:
            render_fix(result, dry=check or dry_run)
    if check:
        raise typer.Exit(1 if result.changes else 0)
    raise typer.Exit(0 if dry_run or result.healthy else 1)


@app.command()
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


def _emit(report, fmt: Format, output: Path | None) -> None:
    from . import render

    if fmt is Format.json:
        text = report.to_json() + "\n"
    elif fmt is Format.markdown:
        text = render.render_markdown(report)
    else:
        from rich.console import Console

        if output is None:
            render.render_table(report, Console(width=None if sys.stdout.isatty() else 160))
            return
        console = Console(record=True, width=160, file=io.StringIO())
        render.render_table(report, console)
        text = console.export_text()
    if output is None:
        sys.stdout.write(text)
    else:
        from .fileio import atomic_write_text

        atomic_write_text(output, text)


class _errors:
    """Turn library errors into one line on stderr and exit code 2 (``--debug``: traceback)."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (typer.Exit, KeyboardInterrupt, SystemExit)):
            return False
        if self.debug:
            return False
        if isinstance(exc, InitDoctorError):
            message = str(exc)
        elif isinstance(exc, OSError):
            message = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        else:
            message = f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)"
        typer.echo(
            f"initdoctor: error: {message.splitlines()[0] if message else type(exc).__name__}", err=True
        )
        raise typer.Exit(EXIT_ERROR)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
