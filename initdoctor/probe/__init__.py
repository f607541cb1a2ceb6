"""The probe: run a seeded random batch through the model and measure what the signal does.

For weighted layer ``l`` with input ``x_l`` and pre-activation output ``y_l`` (bias included,
before the nonlinearity), over the batch and all positions:

    input_second_moment = E[x_l²]
    activation_var      = Var[y_l]
    variance_ratio      = Var[y_l] / (gain_l² · E[x_l²])   measured counterpart of std_ratio²:
                                                           1.0 when the layer keeps the signal's
                                                           scale given the input it receives
    depth_ratio         = Var[y_l] / Var[y_first]          growth or decay along depth
    dead_fraction       = share of units (features / channels) whose ReLU output is zero for
                          every sample and position of the batch (ReLU layers only)

Why ``gain² · E[x²]``: with zero-mean weights independent of the input,
``Var[y] = fan_in · Var[w] · E[x²]`` (He et al. eq. 7), and Kaiming's ``Var[w] = gain²/fan_in``
makes that ``gain² · E[x²]``.

Backward (``backward=True``, torch backends): one backward pass of a seeded N(0, 1) gradient at the
output; per layer ``grad_var = Var[∂L/∂y_l]``, and ``grad_ratio = E[(∂L/∂x_l)²] /
(gain_l² · E[(∂L/∂y_l)²])`` (He et al. eq. 14, the ``fan_out`` condition: 1.0 when Kaiming in
``fan_out`` mode). Parameters' ``.grad`` are left untouched.

Backends: ``torch_backend`` (forward hooks, reductions on the fly, nothing kept), ``onnx_backend``
(onnxruntime: reduction nodes added to the graph by ``onnx_reduce``, or intermediate tensors exposed
as outputs in bounded groups; sessions and feeds in ``onnx_session``), run in a child process by
``onnx_child`` (killed at the time limit's deadline, its memory capped).

Modules: ``types`` (results, :class:`ProbeError`), ``collector`` (the statistics both backends
share), ``inputs`` (seeded inputs), ``timelimit`` (:class:`time_limit`, and what ran when it ran
out), ``dispatch`` (:func:`run_probe`, the backend choice). This package only re-exports their public names.
"""

from __future__ import annotations

from .collector import Collector, Ticker, logit_stats
from .dispatch import run_probe
from .distributed import job as distributed_job
from .inputs import check_input_size, default_vocab, extra_tensors, random_inputs
from .timelimit import TimeLimitStatus, time_limit
from .types import ActivationStats, LogitStats, ProbeError, ProbeResult, Progress

__all__ = [
    "ActivationStats",
    "Collector",
    "LogitStats",
    "ProbeError",
    "ProbeResult",
    "Progress",
    "Ticker",
    "TimeLimitStatus",
    "check_input_size",
    "distributed_job",
    "default_vocab",
    "extra_tensors",
    "logit_stats",
    "random_inputs",
    "run_probe",
    "time_limit",
]
