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
class LogitStats:
    """The model's output logits as the probe saw them (a classifier's or language model's head):
    ``z`` of shape (positions, classes), over every sample and position of the batch.

    ``lse_minus_mean`` = mean over positions of ``logsumexp_j(z_j) − mean_j z_j``: the expected
    cross-entropy for a label drawn uniformly among the classes (``E_y[−log softmax(z)_y]``),
    exactly, for these logits. ``logit_var`` = mean over positions of ``Var_j(z_j)`` (across
    classes); ``offset_var`` = ``Var_j`` of the per-class mean over positions (the part of
    ``logit_var`` that is a fixed offset per class: a bias, or a constant input direction)."""

    classes: int
    positions: int
    lse_minus_mean: float
    logit_var: float
    offset_var: float
    source: str  # where the logits came from: "output.logits", "output", or a layer's name


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
    #: the output logits (classifiers and language models; see :class:`LogitStats`), None elsewhere
    logits: LogitStats | None = None


#: ``progress(done, total)``: called as the probe measures layers (the CLI draws a bar with it).
Progress = Callable[[int, int], None]
