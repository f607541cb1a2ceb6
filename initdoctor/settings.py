"""Settings of the judgement (:class:`Settings`) and of the probe (:class:`ProbeSettings`).

Every field has its default here; the command line and ``[tool.initdoctor]`` resolve to these.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SettingsError
from .options import DEVICE_PATTERN, INPUT_DTYPES, MODES, NONLINEARITIES, ONNX_STRATEGIES, default


@dataclass(frozen=True)
class Settings:
    """Inspection settings (the CLI's options, the config keys of a later release)."""

    nonlinearity: str = default("nonlinearity")
    negative_slope: float = default("negative-slope")
    mode: str = default("mode")
    warn_threshold: float = default("warn-threshold")
    error_threshold: float = default("error-threshold")
    compound_threshold: float = default("compound-threshold")
    probe_warn_threshold: float = default("probe-warn-threshold")
    dead_threshold: float = default("dead-threshold")
    #: layer-name globs not judged (status ``skip``) and rule codes not applied (``C501``, ``K1``)
    ignore: tuple[str, ...] = ()
    #: ``(glob, nonlinearity, negative slope or None)``: the nonlinearity for matching layers
    overrides: tuple[tuple[str, str, float | None], ...] = ()

    def __post_init__(self) -> None:
        if self.nonlinearity not in NONLINEARITIES:
            raise SettingsError(
                f"unknown nonlinearity {self.nonlinearity!r}; valid: {', '.join(NONLINEARITIES)}"
            )
        if not math.isfinite(self.negative_slope):
            raise SettingsError(f"negative_slope must be a finite number, got {self.negative_slope}")
        if self.mode not in MODES:
            raise SettingsError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not 1 < self.warn_threshold < self.error_threshold:
            raise SettingsError(
                "thresholds must satisfy 1 < warn_threshold < error_threshold, got "
                f"{self.warn_threshold} and {self.error_threshold}"
            )
        if not self.compound_threshold > 1:
            raise SettingsError(f"compound_threshold must be > 1, got {self.compound_threshold}")
        if not self.probe_warn_threshold > 1:
            raise SettingsError(f"probe_warn_threshold must be > 1, got {self.probe_warn_threshold}")
        if not 0 < self.dead_threshold <= 1:
            raise SettingsError(f"dead_threshold must be in (0, 1], got {self.dead_threshold}")
        for pattern, nonlinearity, _ in self.overrides:
            if nonlinearity not in NONLINEARITIES:
                raise SettingsError(
                    f"override {pattern!r}: unknown nonlinearity {nonlinearity!r}; valid: "
                    f"{', '.join(NONLINEARITIES)}"
                )


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe feeds the model. ``input_shapes`` empty: inferred
    (see :func:`initdoctor.model.infer_input_shape`)."""

    input_shapes: tuple[tuple[int, ...], ...] = ()
    #: None: float inputs in the torch model's floating dtype (float32 where it has none)
    input_dtype: str | None = default("input-dtype")
    batch_size: int = default("batch-size")
    seed: int = default("seed")
    vocab_size: int | None = default("vocab-size")
    backward: bool = default("backward")
    #: probe a Hugging Face folder with its weights read from the files block by block (auto: larger
    #: than half the available memory)
    stream: bool = default("stream")
    #: ONNX: ``reduce`` adds reduction nodes to the graph (memory ≈ plain inference, one run);
    #: ``expose`` fetches the intermediate tensors themselves, in groups of ``group_bytes``.
    onnx_strategy: str = default("onnx-strategy")
    #: seconds the probe may run (0: no limit); a forward that never returns becomes a clear error
    timeout: float = default("timeout")
    #: most MiB of probe input the seeded batch may take (a clear error instead of a huge allocation)
    max_input_mib: float = default("max-input-mib")
    #: ONNX ``expose`` strategy: most bytes of intermediate tensors fetched per onnxruntime run.
    group_bytes: int = default("group-bytes")
    #: named seeded inputs ``(name, shape, dtype)`` (``--input name=shape:dtype``; strings are parsed)
    named_inputs: tuple[tuple[str, tuple[int, ...], str], ...] = ()
    #: a file of real example tensors (.npz, .pt, .safetensors) fed instead of a seeded batch
    inputs_file: str | None = default("inputs")
    #: where a factory's or loaded checkpoint's model runs (``--device``; None: where it is)
    device: str | None = default("device")

    def __post_init__(self) -> None:
        if self.input_dtype is not None and self.input_dtype not in INPUT_DTYPES:
            raise SettingsError(f"unknown input dtype {self.input_dtype!r}; valid: {', '.join(INPUT_DTYPES)}")
        if self.device is not None and not DEVICE_PATTERN.fullmatch(self.device):
            raise SettingsError(f"unknown device {self.device!r}; valid: cpu, cuda, cuda:N, mps, auto")
        if self.onnx_strategy not in ONNX_STRATEGIES:
            raise SettingsError(f"unknown ONNX probe strategy {self.onnx_strategy!r}; valid: reduce, expose")
        if self.batch_size < 1:
            raise SettingsError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:
            raise SettingsError(f"seed must be an integer in [0, 2^63), got {self.seed}")
        if not (math.isfinite(self.timeout) and self.timeout >= 0):
            raise SettingsError(f"timeout must be finite seconds ≥ 0 (0: no limit), got {self.timeout}")
        if not (math.isfinite(self.max_input_mib) and self.max_input_mib > 0):
            raise SettingsError(f"max_input_mib must be a finite number > 0, got {self.max_input_mib}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise SettingsError(f"vocab size must be at least 1, got {self.vocab_size}")
        if self.group_bytes < 1:
            raise SettingsError(f"group_bytes must be at least 1, got {self.group_bytes}")
        for shape in self.input_shapes:
            if not shape or any(d < 1 for d in shape):
                raise SettingsError(f"input shape {shape} must be positive integers, e.g. 8,3,32,32")
        named = tuple(parse_input(spec) if isinstance(spec, str) else spec for spec in self.named_inputs)
        if not all(isinstance(spec, tuple) and len(spec) == 3 for spec in named):
            raise SettingsError("named inputs must be strings like input_ids=8,16:int64")
        object.__setattr__(self, "named_inputs", named)  # frozen: the parsed form, set once here
        names = [spec[0] for spec in named]
        for name, shape, dtype in named:
            if not _NAME.fullmatch(str(name)) or names.count(name) > 1:
                raise SettingsError(f"--input {name!r}: a name must be an identifier, given once")
            if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
                raise SettingsError(f"--input {name}: shape {shape} must be positive integers, e.g. 8,16")
            if dtype not in INPUT_DTYPES:
                raise SettingsError(
                    f"--input {name}: unknown dtype {dtype!r}; valid: {', '.join(INPUT_DTYPES)}"
                )
        if named and self.input_shapes:
            raise SettingsError(
                "give inputs either by position (--input-shape) or by name (--input), not both"
            )
        if self.inputs_file is not None:
            path = Path(self.inputs_file)
            if path.suffix.lower() not in INPUT_FILE_SUFFIXES:
                raise SettingsError(
                    f"--inputs {path}: expected a {', '.join(INPUT_FILE_SUFFIXES)} file of example tensors"
                )
            if not path.is_file():
                raise SettingsError(f"--inputs {path}: no such file")
            object.__setattr__(self, "inputs_file", str(path))


#: files ``--inputs`` reads (numpy archives, torch tensors read with ``weights_only=True``, safetensors)
INPUT_FILE_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def parse_input(text: str) -> tuple[str, tuple[int, ...], str]:
    """``"input_ids=8,16:int64"`` → ``("input_ids", (8, 16), "int64")``; the dtype defaults to
    float32 (``"pixel_values=8,3,32,32"``)."""
    name, sep, rest = text.partition("=")
    shape_text, _, dtype = rest.partition(":")
    try:
        shape = tuple(int(p) for p in shape_text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not sep or not name.strip() or not shape:
        raise SettingsError(
            f"--input {text!r}: expected name=shape:dtype, e.g. input_ids=8,16:int64 or "
            "pixel_values=8,3,32,32"
        )
    return name.strip(), shape, dtype.strip() or "float32"


def example_inputs_from(inputs: Any, example_inputs: Any, settings: dict[str, Any]) -> Any:
    """``inputs=``: a path goes to the probe settings (``inputs_file``, read and checked there); a
    mapping or tensors become the example inputs."""
    if inputs is None:
        return example_inputs
    if example_inputs is not None:
        raise SettingsError("give example_inputs or inputs, not both")
    if isinstance(inputs, (str, Path)):
        settings["inputs_file"] = str(inputs)
        return None
    return inputs
