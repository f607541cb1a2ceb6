"""The ``initdoctor`` command: load, call the library, print. Nothing else lives here.

Exit codes: 0 nothing reaches ``--fail-on``; 1 something does; 2 usage or input error.
Results go to stdout (or ``--output``), messages to stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

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


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


class FailOn(str, Enum):
    warn = "warn"
    error = "error"
    never = "never"


class Mode(str, Enum):
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


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Model file (.pt/.pth/.bin, .safetensors or its index .json, .onnx, TorchScript, .pt2) or a factory package.module:function.")],
    weights: Annotated[Optional[Path], typer.Option(help="State_dict or safetensors file to load into a factory's model.")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="Allow formats whose loading runs code from the file: full pickles, TorchScript, torch.export.")] = False,
    nonlinearity: Annotated[str, typer.Option(help="Nonlinearity assumed after each layer where no graph shows it: relu, leaky_relu, tanh, sigmoid, selu, gelu, silu, linear.")] = "relu",
    negative_slope: Annotated[float, typer.Option(help="Slope for --nonlinearity leaky_relu.")] = 0.01,
    mode: Annotated[Mode, typer.Option(help="fan_in keeps the forward signal (He eq. 10), fan_out the backward one (eq. 14).")] = Mode.fan_in,
    warn_threshold: Annotated[float, typer.Option(help="Variance factor beyond which a layer warns (either way).")] = 1.25,
    error_threshold: Annotated[float, typer.Option(help="Variance factor beyond which a layer is an error.")] = 4.0,
    compound_threshold: Annotated[float, typer.Option(help="Variance factor over the whole chain of hidden layers beyond which the model is an error.")] = 16.0,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Run a seeded random batch through the model (when it has a graph) and measure each layer's activation variance.")] = True,
    model_factory: Annotated[Optional[str], typer.Option("--model", help="Factory package.module:function that builds the model whose weights MODEL holds (gives a state_dict a graph to probe).")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="Probe input shape, e.g. 8,3,32,32 (repeat for several inputs). Default: the ONNX graph's, else inferred from the first layer.")] = None,
    input_dtype: Annotated[str, typer.Option(help="Probe input dtype: float32, float64, float16, bfloat16, int64, int32.")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Probe batch size (fills a dynamic batch dimension).")] = 32,
    seed: Annotated[int, typer.Option(help="Probe seed: the same seed gives the same report.")] = 0,
    vocab_size: Annotated[Optional[int], typer.Option(help="Range of integer (token id) inputs; default: the smallest embedding table.")] = None,
    backward: Annotated[bool, typer.Option("--backward", help="Also run one backward pass and report gradient variance per layer (torch models).")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of activation variance across depth (needs the 'plot' extra: matplotlib).")] = None,
    fail_on: Annotated[FailOn, typer.Option(help="Lowest status that makes the exit code 1.")] = FailOn.error,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to FILE instead of stdout.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Report, per weighted layer, how far its weights are from Kaiming initialization."""
    from . import diagnose

    from .render import ProgressBar

    with _errors(debug):
        source, weights_file = (model_factory, Path(model)) if model_factory else (model, weights)
        with ProgressBar("probing layers") as bar:
            report = diagnose(
                source,
                trust=trust,
                weights=weights_file,
                probe=probe,
                progress=bar,
                input_shapes=tuple(_shape(text) for text in input_shape or ()),
                input_dtype=input_dtype,
                batch_size=batch_size,
                seed=seed,
                vocab_size=vocab_size,
                backward=backward,
                nonlinearity=nonlinearity,
                negative_slope=negative_slope,
                mode=mode.value,
                warn_threshold=warn_threshold,
                error_threshold=error_threshold,
                compound_threshold=compound_threshold,
            )
        _emit(report, format, output)
        if plot is not None:
            from .plot import plot_report

            plot_report(report, plot)
    raise typer.Exit(report.exit_code(fail_on.value))


def _shape(text: str) -> tuple[int, ...]:
    from .errors import SettingsError

    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"--input-shape {text!r}: expected integers separated by commas, e.g. 8,3,32,32") from None
    if not shape:
        raise SettingsError(f"--input-shape {text!r}: empty")
    return shape


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
        console = Console(record=True, width=160, file=open(os.devnull, "w"))
        render.render_table(report, console)
        text = console.export_text()
    if output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(output, text)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the destination folder, fsync, ``os.replace``."""
    from .errors import InputError

    folder = path.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        typer.echo(f"initdoctor: error: {message.splitlines()[0] if message else type(exc).__name__}", err=True)
        raise typer.Exit(EXIT_ERROR)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
