"""What the probe returns: per-layer measurements, the whole result, its error and progress callback
(definitions of the measured quantities in :mod:`initdoctor.probe`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InitDoctorError


class ProbeError(InitDoctorError):
    """The model could not be run: a forward that raises, inputs that do not fit."""


@dataclass
class ActivationStats:
    """What the probe measured for one weighted layer (see :mod:`initdoctor.probe`)."""

    name: str
    input_second_moment: float
    activation_var: float
    activation_mean: float
    dead_fraction: float | None = None
    nan_count: int = 0
    inf_count: int = 0
    input_nonfinite: int = 0  # NaN/Inf values already in the layer's input (from upstream)
    calls: int = 1
    grad_var: float | None = None
    input_grad_second_moment: float | None = None
    output_grad_second_moment: float | None = None
    #: convolutions: the spatial size of the layer's input and output (torch backend; None elsewhere)
    input_spatial: tuple[int, ...] | None = None
    output_spatial: tuple[int, ...] | None = None


@dataclass
class ProbeResult:
    backend: str
    layers: dict[str, ActivationStats]
    inputs: list[dict[str, Any]] = field(default_factory=list)  # [{"shape": [...], "dtype": ...}]
    notes: list[str] = field(default_factory=list)
    runs: int = 1
    seed: int = 0
    backward: bool = False
    #: Var of extra graph tensors the description asked for (residual blocks' skip and output)
    tensor_vars: dict[str, float] = field(default_factory=dict)


#: ``progress(done, total)``: called as the probe measures layers (the CLI draws a bar with it).
Progress = Callable[[int, int], None]
