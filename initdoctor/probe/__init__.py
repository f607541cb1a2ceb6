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
(onnxruntime with intermediate tensors exposed as outputs, in bounded groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InitDoctorError
from ..settings import ProbeSettings
from ..stats import Moments, fast_moments, scan


class ProbeError(InitDoctorError):
    """The model could not be run: a forward that raises, inputs that do not fit."""


@dataclass
class ActivationStats:
    """What the probe measured for one weighted layer (see the module docstring)."""

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


def extra_tensors(desc: Any) -> list[str]:
    """Graph tensors besides layer inputs/outputs that the probe measures: each residual block's
    skip input and output (growth = Var[out] / Var[skip])."""
    names: list[str] = []
    for block in getattr(desc, "blocks", []):
        for t in (block.skip_tensor, block.out_tensor):
            if t not in names:
                names.append(t)
    return names


#: ``progress(done, total)``: called as the probe measures layers (the CLI draws a bar with it).
Progress = Callable[[int, int], None]


class Ticker:
    """Counts measured layer calls against an expected total and reports them to ``progress``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.progress = progress

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


class Collector:
    """Running statistics of one layer's input and output over every call and run (numpy only,
    shared by both backends so the definitions cannot drift apart)."""

    def __init__(self, name: str, kind: str, relu: bool, ticker: Ticker | None = None) -> None:
        self.name = name
        self.kind = kind
        self.ticker = ticker
        self.unit_axis = 1 if kind.startswith("conv") else -1
        self.relu = relu
        self.x = Moments()
        self.y = Moments()
        self.nan = 0
        self.inf = 0
        self.input_bad = 0
        self.calls = 0
        self.unit_max: np.ndarray | None = None
        self.grad_y = Moments()
        self.grad_x = Moments()

    def forward(self, x: np.ndarray | None, y: np.ndarray | None) -> None:
        """One call: ``x`` the layer's input (None when not a float tensor), ``y`` its output."""
        x_moments, x_bad = fast_moments(x) if x is not None and x.size and x.dtype.kind == "f" else (None, 0)
        if y is None or not y.size or y.dtype.kind != "f":
            self.add(x_moments, x_bad, None)
            return
        y_moments, bad = fast_moments(y)
        nan = inf = 0
        if bad:
            s = scan(y)
            nan, inf = s.nan, s.inf
        peak = None
        if self.relu and y.ndim >= 2:
            axis = self.unit_axis % y.ndim
            peak = np.max(y, axis=tuple(d for d in range(y.ndim) if d != axis))
        self.add(x_moments, x_bad, y_moments, nan, inf, peak)

    def add(
        self,
        x: Moments | None,
        x_bad: int,
        y: Moments | None,
        nan: int = 0,
        inf: int = 0,
        unit_max: np.ndarray | None = None,
    ) -> None:
        """One call, already reduced: input and output moments, NaN/Inf counts, per-unit max."""
        self.calls += 1
        if self.ticker is not None:
            self.ticker.tick()
        if x is not None:
            self.x.merge_moments(x)
        self.input_bad += x_bad
        if y is not None:
            self.y.merge_moments(y)
        self.nan += nan
        self.inf += inf
        if unit_max is not None:
            self.unit_max = unit_max if self.unit_max is None else np.maximum(self.unit_max, unit_max)

    def grad_output(self, g: np.ndarray) -> None:
        self.grad_y.merge_moments(fast_moments(g)[0])

    def grad_input(self, g: np.ndarray) -> None:
        self.grad_x.merge_moments(fast_moments(g)[0])

    def result(self) -> ActivationStats:
        dead = float((self.unit_max <= 0).mean()) if self.unit_max is not None else None
        return ActivationStats(
            name=self.name,
            input_second_moment=self.x.second_moment,
            activation_var=self.y.var,
            activation_mean=self.y.mean if self.y.count else math.nan,
            dead_fraction=dead,
            nan_count=self.nan,
            inf_count=self.inf,
            input_nonfinite=self.input_bad,
            calls=self.calls,
            grad_var=self.grad_y.var if self.grad_y.count else None,
            input_grad_second_moment=self.grad_x.second_moment if self.grad_x.count else None,
            output_grad_second_moment=self.grad_y.second_moment if self.grad_y.count else None,
        )


def random_inputs(
    specs: list[tuple[tuple[int, ...], str]],
    rng: np.random.Generator,
    vocab: int | None,
    max_input_mib: float = 1024.0,
) -> list[np.ndarray]:
    """Seeded inputs as numpy arrays (the same for every backend): N(0, 1) for float dtypes,
    token ids uniform in ``[0, vocab)`` for integer ones; refused beyond ``max_input_mib``."""
    _check_input_size(specs, ProbeSettings(max_input_mib=max_input_mib))
    arrays = []
    for shape, dtype in specs:
        if dtype.startswith("int"):
            if not vocab:
                raise ProbeError("integer inputs need --vocab-size (no embedding layer to read it from)")
            arrays.append(rng.integers(0, vocab, size=shape, dtype=np.dtype(dtype)))
        else:
            arrays.append(rng.standard_normal(size=shape, dtype=np.float32))
    return arrays


def default_vocab(desc: Any, settings: ProbeSettings) -> int | None:
    """``--vocab-size``, else the smallest embedding table (ids valid for every table)."""
    if settings.vocab_size:
        return settings.vocab_size
    tables = [layer.shape[0] for layer in desc.layers if layer.kind == "embedding"]
    return min(tables) if tables else None


def run_probe(
    loaded: Any, settings: ProbeSettings, progress: Progress | None = None, example_inputs: Any = None
) -> ProbeResult:
    """Probe a :class:`~initdoctor.formats.LoadedModel`. Raises :class:`ProbeError` when the model
    has no graph to run or its forward fails. ``progress(done, total)`` is told of each measured
    layer call."""
    if loaded.runnable is None:
        raise ProbeError(
            f"{loaded.description.path}: a {loaded.description.format} file holds weights but no graph "
            "to run; give the model's factory (--model pkg.mod:fn --weights FILE) to probe it"
        )
    result = _dispatch(loaded, settings, progress, example_inputs)
    result.seed, result.backward = settings.seed, settings.backward
    return result


class _Timeout(BaseException):  # not an Exception: passes through the forward's error handling
    pass


class time_limit:
    """Raise :class:`ProbeError` when the block runs longer than ``seconds`` (SIGALRM: main thread
    on POSIX; a no-op elsewhere or for 0). The model's own code runs twice in a diagnosis — when
    torch.fx/torch.export trace it and when the probe runs it — and either can hang; a forward
    stuck in Python code is interrupted, one stuck inside a native kernel when that kernel returns."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = False

    def __enter__(self) -> None:
        import signal
        import threading

        if (
            self.seconds > 0
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        ):

            def fire(signum: int, frame: Any) -> None:
                raise _Timeout()

            self.previous = signal.signal(signal.SIGALRM, fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.active = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        import signal

        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        if isinstance(exc, _Timeout):
            raise ProbeError(
                f"the model's code did not finish within {self.seconds:g} s (--timeout): its forward hangs"
            ) from None
        return False


def _check_input_size(specs: list[tuple[tuple[int, ...], str]], settings: ProbeSettings) -> None:
    """Refuse a probe batch larger than ``max_input_mib`` before allocating it."""
    total = sum(
        math.prod(shape) * np.dtype(dtype.replace("bfloat16", "float16")).itemsize for shape, dtype in specs
    )
    if total > settings.max_input_mib * 2**20:
        raise ProbeError(
            f"the probe batch would take {total / 2**20:.0f} MiB (inputs "
            f"{[list(s) for s, _ in specs]}); the cap is "
            f"{settings.max_input_mib:g} MiB — lower --batch-size or --input-shape"
        )


def _dispatch(
    loaded: Any, settings: ProbeSettings, progress: Progress | None, example_inputs: Any
) -> ProbeResult:
    if loaded.backend == "onnx":
        from .onnx_backend import probe_onnx

        if settings.backward:
            raise ProbeError(
                "--backward needs a torch model (factory, TorchScript, torch.export, trusted pickle)"
            )
        inputs = None
        if example_inputs is not None:
            inputs = [
                np.asarray(x)
                for x in (example_inputs if isinstance(example_inputs, (list, tuple)) else [example_inputs])
            ]
        result = probe_onnx(loaded.runnable, loaded.description, settings, inputs=inputs, progress=progress)
    else:
        from .torch_backend import probe_torch

        result = probe_torch(
            loaded.runnable, loaded.description, settings, progress=progress, example_inputs=example_inputs
        )
    return result
