"""The option table: every option of initdoctor stated once.

Each :class:`Option` gives a name (the long CLI flag ``--name`` and the ``[tool.initdoctor]`` key),
its type, default, help, the commands that take it, the library field it fills
(:class:`~initdoctor.settings.Settings`, :class:`~initdoctor.settings.ProbeSettings` or a
:func:`~initdoctor.api.fix_model` argument) and its valid values. Derived from it:

* the typer options of every command (``cli.py`` builds each command's signature from it),
* the config keys and their types (``config.py``), precedence command line > file > default,
* the library defaults (the dataclass fields in ``settings.py`` read :func:`default`).

Adding an option is one entry here (and the code that reads it). Where one flag has two meanings
(``--fail-on`` in ``inspect`` vs ``fix``), there are two entries with the same ``flag``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Nonlinearities with a closed-form gain (the ``torch.nn.init.calculate_gain`` table) plus GELU
#: and SiLU, whose gains follow He et al. eq. 7 numerically (see :func:`initdoctor.gains.calculate_gain`).
NONLINEARITIES = (
    "linear",
    "identity",
    "conv1d",
    "conv2d",
    "conv3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
    "gelu",
    "silu",
    "hardswish",
    "hardsigmoid",
    "relu6",
)
#: Nonlinearities with a Kaiming gain (:func:`initdoctor.gains.calculate_gain` is the reference).
NONLINEARITY_NAMES = (
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "selu",
    "gelu",
    "silu",
    "hardswish",
    "hardsigmoid",
    "relu6",
    "linear",
)
MODES = ("auto", "fan_in", "fan_out")
#: ``--device`` values (whether the device exists is checked when the model is loaded)
DEVICE_PATTERN = re.compile(r"cpu|cuda|cuda:\d+|mps|auto")
INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")
#: ``--fail-on`` of inspect/check: ok < unknown < warn < error (``never``: always 0)
FAIL_ON = ("unknown", "warn", "error", "never")
#: ``fix --fail-on``: the layers' statuses (a layer is never ``unknown``)
FIX_FAIL_ON = ("warn", "error", "never")
FORMATS = ("table", "json", "markdown", "html")
#: commands whose ``--format`` takes ``html`` (the others refuse it with one line)
HTML_COMMANDS = ("inspect", "check")
METHODS = ("auto", "kaiming", "fixup", "skipinit", "zero-gamma", "lsuv", "reinit")
ONNX_STRATEGIES = ("reduce", "expose")

INSPECT, CHECK, COMPARE, FIX = "inspect", "check", "compare", "fix"
_CODES = "Exit codes: 0 nothing reaches --fail-on; 1 something does; 2 a usage or input error."
#: how each command's ``--help`` ends: its exit codes (README, "Exit codes")
EXIT_CODES = {
    INSPECT: _CODES,
    CHECK: _CODES,
    COMPARE: "Exit codes: 0 both reports printed; 2 a usage or input error.",
    FIX: "Exit codes: 0 the written model's verdict is below --fail-on (or --dry-run); 1 it reaches it, "
    "or --check found layers to change; 2 a usage or input error, or an unknown verdict without --force.",
}
MODEL_COMMANDS = (INSPECT, FIX)  # commands that take one model and the judgement's settings
JUDGING_COMMANDS = (INSPECT, CHECK, FIX)  # commands that take the thresholds and probe inputs
ALL_COMMANDS = (INSPECT, CHECK, COMPARE, FIX)


@dataclass(frozen=True)
class Option:
    """One option. ``type`` is the value's type (``list`` = repeatable, ``dict`` = a table);
    ``choices`` are checked by the command line parser (other values are checked by the settings);
    ``flag`` the CLI declaration when it is not ``--name`` (``"--probe/--no-probe"``);
    ``field`` the library field it fills (None: read by the CLI itself); ``config``: a
    ``[tool.initdoctor]`` key; ``cli_help``: a command's own wording of the help."""

    name: str
    type: type
    default: Any
    help: str
    commands: tuple[str, ...] = ()
    field: str | None = None
    config: bool = False
    choices: tuple[str, ...] = ()
    flag: str | None = None
    short: str | None = None
    cli_help: tuple[tuple[str, str], ...] = ()

    @property
    def param(self) -> str:
        """The Python parameter name in a command's signature (``warn_threshold``; a command's own
        variant ``fix-fail-on`` is ``fail_on``)."""
        return self.name.removeprefix("fix-").removeprefix("check-").replace("-", "_")

    def help_for(self, command: str) -> str:
        return dict(self.cli_help).get(command, self.help)


_PROBE_HELP = (
    "Run a seeded random batch through the model (when it has a graph) and measure each layer's "
    "activation variance [default: probe]."
)

OPTIONS: tuple[Option, ...] = (
    # --- where the model comes from
    Option("weights", Path, None, "State_dict or safetensors file to load into a factory's model.",
           MODEL_COMMANDS),
    Option("check-model", str, None, "Factory package.module:function that builds the model whose weights "
           "each MODEL holds (gives a state_dict a graph: a verdict instead of unknown).", (CHECK,),
           flag="--model"),
    Option("trust", bool, False, "Allow formats whose loading runs code from the file: full pickles, "
           "TorchScript, torch.export, a Hugging Face folder's auto_map code. Command line only: never "
           "from a config file.", ALL_COMMANDS,
           flag="--trust/--no-trust"),
    Option("model-factory", str, None, "Factory package.module:function that builds the model whose weights "
           "MODEL holds (gives a state_dict a graph to probe).", MODEL_COMMANDS, flag="--model"),
    # --- the judgement (Settings)
    Option("nonlinearity", str, "relu", "Nonlinearity assumed after each layer where no graph shows it: "
           + ", ".join(NONLINEARITY_NAMES) + ".", MODEL_COMMANDS, "nonlinearity", True),
    Option("negative-slope", float, 0.01, "Slope for --nonlinearity leaky_relu.", MODEL_COMMANDS,
           "negative_slope", True),
    Option("mode", str, "auto", "fan_in keeps the forward signal (He eq. 10), fan_out the backward one "
           "(eq. 14); auto: the one the weights follow (fan_out when most layers are Kaiming for "
           "fan_out and not fan_in), else fan_in.", MODEL_COMMANDS, "mode", True, MODES),
    Option("warn-threshold", float, 1.25, "Variance factor beyond which a layer warns (either way).",
           JUDGING_COMMANDS, "warn_threshold", True),
    Option("error-threshold", float, 4.0, "Variance factor beyond which a layer is an error.",
           JUDGING_COMMANDS, "error_threshold", True),
    Option("compound-threshold", float, 16.0, "Variance factor over the whole chain of hidden layers beyond "
           "which the model is an error.", JUDGING_COMMANDS, "compound_threshold", True),
    Option("probe-warn-threshold", float, 2.0, "Measured variance ratio beyond which a Kaiming layer warns "
           "(finite-width fluctuation).", (), "probe_warn_threshold"),
    Option("dead-threshold", float, 0.9, "Fraction of ReLU units zero for the whole batch beyond which a "
           "layer warns.", (), "dead_threshold"),
    Option("ignore", list, [], "A rule code (K101), a code prefix (K1) or a layer-name glob (head.*) not to "
           "judge (repeat for several; replaces the config's list).", ALL_COMMANDS, "ignore", True),
    Option("overrides", dict, {}, "glob → {nonlinearity, negative-slope}: the nonlinearity of matching "
           "layers.", (), "overrides", True),
    # --- the probe (ProbeSettings)
    Option("probe", bool, True, _PROBE_HELP, (INSPECT, CHECK, COMPARE, FIX), config=True,
           flag="--probe/--no-probe",
           cli_help=((CHECK, "Probe each model that has a graph, as inspect does [default: probe]; "
                      "--no-probe: the static look only (faster; a residual net is then unknown)."),
                     (COMPARE, "Probe both (when they have a graph) [default: probe]."),
                     (FIX, "Probe the written model to check the fix (when it has a graph) [default: probe]; "
                      "--no-probe checks it statically, without running it."))),
    Option("input-shape", list, [], "Probe input shape, e.g. 8,3,32,32 (repeat for several inputs). Default: "
           "the ONNX graph's, else inferred from the first layer.", JUDGING_COMMANDS, "input_shapes", True),
    Option("input", list, [], "A named probe input name=shape:dtype, e.g. input_ids=8,16:int64 (repeat for "
           "several; dtype default float32). Default: what the model's config says (token ids, images, "
           "decoder ids), else inferred from the first layer.", JUDGING_COMMANDS, "named_inputs", True),
    Option("inputs", str, None, "A file of real example tensors for the probe and --method lsuv: .npz, .pt "
           "(read with weights_only=True) or .safetensors; a name → tensor mapping is passed by name, a "
           "single tensor by position.", MODEL_COMMANDS, "inputs_file", True),
    Option("input-dtype", str, None, "Probe input dtype: " + ", ".join(INPUT_DTYPES) + ". Default: a torch "
           "model's floating dtype (a bf16 model gets bf16 inputs), else float32.",
           MODEL_COMMANDS, "input_dtype", True),  # validated by ProbeSettings (its message), not by click
    Option("device", str, None, "Where a factory's or loaded checkpoint's model is described and probed: "
           "cpu, cuda, cuda:N, mps or auto (CUDA if available). Default: files on the CPU, a factory's "
           "model where the factory put it.", MODEL_COMMANDS, "device", True),
    Option("batch-size", int, 32, "Probe batch size (fills a dynamic batch dimension).", MODEL_COMMANDS,
           "batch_size", True),
    Option("seed", int, 0, "Seed of the probe's inputs (and of --method reinit): the same seed gives the "
           "same result.", MODEL_COMMANDS, "seed", True),
    Option("vocab-size", int, None, "Range of integer (token id) inputs; default: the smallest embedding "
           "table.", MODEL_COMMANDS, "vocab_size", True),
    Option("backward", bool, False, "Also run one backward pass and report gradient variance per layer "
           "(torch models).", (INSPECT,), "backward", flag="--backward"),
    Option("stream", bool, False, "Probe a Hugging Face folder with each block's weights read from its "
           "safetensors files as it runs (automatic when they exceed half the available memory).",
           (INSPECT,), "stream", flag="--stream"),
    Option("timeout", float, 0.0, "Seconds loading and probing may run (0: no limit).", MODEL_COMMANDS,
           "timeout"),
    Option("max-input-mib", float, 1024.0, "Largest probe batch, in MiB.", (INSPECT,), "max_input_mib"),
    Option("onnx-strategy", str, "reduce", "ONNX: reduce adds reduction nodes to the graph (memory ≈ plain "
           "inference, one run); expose fetches the intermediate tensors in groups.", (), "onnx_strategy",
           choices=ONNX_STRATEGIES),
    Option("group-bytes", int, 256 << 20, "ONNX expose strategy: most bytes of intermediate tensors fetched "
           "per onnxruntime run.", (), "group_bytes"),
    # --- output
    Option("plot", Path, None, "Write a PNG of activation variance across depth (needs the 'plot' extra: "
           "matplotlib).", (INSPECT,)),
    Option("fail-on", str, "error", "Lowest status that makes the exit code 1 (ok < unknown < warn < "
           "error; unknown: no verdict on depth could be formed).", (INSPECT, CHECK), config=True,
           choices=FAIL_ON),
    Option("format", str, "table", "Output format: table, json, markdown or html (one self-contained "
           "page, the plot inline).", ALL_COMMANDS, choices=FORMATS,
           short="-f", cli_help=((CHECK, "Output format: table (one line per model), json (a list of "
                                  "inspect's reports), markdown (one report per model) or html."),
                                 (COMPARE, "Output format: table or json (markdown: the table)."),
                                 (FIX, "Output format: table, json or markdown."))),
    Option("output", Path, None, "Write the report to FILE instead of stdout.", (INSPECT, CHECK, COMPARE),
           short="-o"),
    Option("verbose", bool, False, "Also print every layer's message (not only the first 10 findings) and "
           "the notes.", (INSPECT, CHECK, FIX), flag="--verbose", short="-v",
           cli_help=((FIX, "Also print every finding still standing after the fix (not only the first "
                      "20)."),)),
    Option("quiet", bool, False, "Print only the summary line (table format; no progress bar).",
           MODEL_COMMANDS, flag="--quiet", short="-q"),
    Option("no-progress", bool, False, "No progress bar.", MODEL_COMMANDS, flag="--no-progress"),
    Option("no-color", bool, False, "No colours (as the NO_COLOR environment variable).", ALL_COMMANDS,
           flag="--no-color"),
    # --- fix
    Option("fix-output", Path, None, "Where to write the repaired model, in MODEL's own format (a folder "
           "for a sharded checkpoint or a Hugging Face folder; a state_dict for a factory).", (FIX,),
           flag="--output", short="-o"),
    Option("method", str, "auto", "auto: Kaiming rescale for layers a static rule flags, the residual "
           "remedy for blocks R3xx flags (fixup for unnormalized branches, zero-γ where they end in a norm), "
           "LSUV for layers only the probe flags; kaiming: rescale W to the Kaiming std; fixup: branch "
           "layers × L^(-1/(2m-2)) on their Kaiming std and each branch's last layer zeroed (Zhang et "
           "al. 2019); skipinit (zero-gamma): each branch's last norm γ zeroed, else its last layer (Goyal "
           "et al. 2017; De & Smith 2020); lsuv: rescale until the measured variance ratio is 1 (needs a "
           "graph); reinit: redraw W from N(0, Kaiming std²).", (FIX,),
           choices=METHODS),
    Option("select-from", str, "warn", "Fix the layers whose status reaches this (warn: warn and error).",
           (FIX,), choices=FIX_FAIL_ON),
    Option("fix-fail-on", str, "error", "Lowest status of the written model (re-inspected) that makes the "
           "exit code 1, as inspect's --fail-on (ok < unknown < warn < error).", (FIX,), choices=FAIL_ON,
           flag="--fail-on"),
    Option("all-layers", bool, False, "Fix every weighted layer.", (FIX,), flag="--all"),
    Option("zero-bias", bool, False, "Also set the fixed layers' biases to zero.", (FIX,),
           flag="--zero-bias"),
    Option("tol", float, 0.05, "lsuv: stop when |variance ratio - 1| < tol.", (FIX,)),
    Option("max-iter", int, 10, "lsuv: most iterations per layer.", (FIX,)),
    Option("in-place", bool, False, "Overwrite MODEL, keeping MODEL.bak first.", (FIX,), flag="--in-place"),
    Option("dry-run", bool, False, "Print what would change; write nothing.", (FIX,), flag="--dry-run"),
    Option("check", bool, False, "CI mode: exit 1 and list the layers if a fix would change anything; write "
           "nothing.", (FIX,), flag="--check"),
    Option("force", bool, False, "Act although the model-level verdict is unknown (no graph and not a plain "
           "chain, or not probed): judge the layers as a plain chain.", (FIX,), flag="--force"),
    Option("debug", bool, False, "Show tracebacks.", ALL_COMMANDS, flag="--debug/--no-debug"),
)  # fmt: skip

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: ``[tool.initdoctor]`` keys (kebab-case) → their options
CONFIG_KEYS: dict[str, Option] = {o.name: o for o in OPTIONS if o.config}
#: keys of one ``overrides`` entry
OVERRIDE_KEYS = ("nonlinearity", "negative-slope")


def default(name: str) -> Any:
    """The built-in default of option ``name`` (a fresh copy for lists and tables)."""
    value = BY_NAME[name].default
    return type(value)(value) if isinstance(value, (list, dict)) else value


def for_command(command: str) -> list[Option]:
    """The options ``command`` takes, in table order."""
    return [o for o in OPTIONS if command in o.commands]


def config_types(option: Option) -> tuple[type, ...]:
    """Python types a ``[tool.initdoctor]`` value of ``option`` may have (TOML ints are floats too)."""
    return (int, float) if option.type is float else (option.type,)


def flags_markdown() -> str:
    """README's flags table: every command's options from this table (tests/test_flags_table.py
    keeps README.md equal to it)."""
    lines: list[str] = []
    for command in ALL_COMMANDS:
        lines += [f"`initdoctor {command}`", "", "| flag | default | what it does |", "|---|---|---|"]
        for option in for_command(command):
            decl = ", ".join(d for d in (option.short, option.flag or f"--{option.name}") if d)
            if option.type is bool:
                default = "on" if option.default else ""
            else:
                default = "" if option.default in (None, [], {}, ()) else f"`{option.default}`"
            text = option.help_for(command).replace("|", "\\|")
            lines.append(f"| `{decl}` | {default} | {text} |")
        lines.append("")
    return "\n".join(lines)
