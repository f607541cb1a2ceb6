"""Repairing an initialization: plan (pure) and apply (through the loaders' editable twins).

Methods, for each selected layer with weight ``W``, Kaiming std ``σ* = gain / sqrt(fan)``:

``kaiming`` (static, default)
    ``W ← W · σ*/std(W)`` — the report's ``suggested_scale``. Selected: layers whose static status
    reaches ``fail_on`` (default ``warn``), or every weighted layer with ``all_layers``. All-zero,
    constant or NaN weights cannot be rescaled: they are listed as skipped (use ``reinit``).
``reinit``
    ``W ← N(0, σ*²)`` drawn from ``numpy.random.default_rng(seed)`` — ``kaiming_normal_`` with the
    layer's gain and mode. Same selection as ``kaiming``, zero/constant/NaN weights included.
``lsuv`` (data-driven, Mishkin & Matas 2016)
    Layer by layer in execution order: probe, ``W ← W / sqrt(variance_ratio)``, probe again, until
    ``|variance_ratio − 1| < tol`` or ``max_iter``. Selected: hidden layers whose measured ratio is
    outside ``tol`` (every layer but embeddings with ``all_layers``). Needs a graph.

Biases are left alone unless ``zero_bias``; normalization layers are never touched.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InitDoctorError, SettingsError
from .report import Report, at_least

METHODS = ("kaiming", "lsuv", "reinit")


@dataclass
class Change:
    """One layer's repair: ``factor`` for rescales (None for a redraw)."""

    name: str
    weight_key: str
    method: str
    old_std: float | None
    new_std: float | None
    factor: float | None
    status_before: str
    bias_zeroed: bool = False
    iterations: int = 0
    bias_key: str | None = None
    expected_std: float | None = None
    shape: tuple[int, ...] = ()


@dataclass
class FixResult:
    changes: list[Change]
    skipped: list[tuple[str, str]]
    before: Report
    after: Report | None = None
    output: Path | None = None
    backup: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        report = self.after or self.before
        return report.summary.status != "error"


def plan(
    report: Report,
    method: str = "kaiming",
    fail_on: str = "warn",
    all_layers: bool = False,
    tol: float = 0.05,
) -> tuple[list[Change], list[tuple[str, str]]]:
    """Which layers to change and how (pure: reads the report only)."""
    if method not in METHODS:
        raise SettingsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    for f in report.layers:
        if f.role == "embedding" or f.expected_std is None:
            continue
        if method == "lsuv":
            if f.role == "output" and not all_layers:
                continue
            if f.variance_ratio is None:
                skipped.append((f.name, "not measured by the probe"))
                continue
            if not all_layers and abs(f.variance_ratio - 1) < tol:
                continue
        elif not (all_layers or at_least(f.status, fail_on)):
            continue
        broken = bool(f.nan_count or f.inf_count) or not f.weight_std
        if method in ("kaiming", "lsuv") and broken:
            skipped.append(
                (f.name, "NaN/Inf, all-zero or constant weights cannot be rescaled: use --method reinit")
            )
            continue
        factor = f.expected_std / f.weight_std if method == "kaiming" else None
        changes.append(
            Change(
                f.name,
                f.weight_key,
                method,
                f.weight_std,
                f.expected_std if method != "lsuv" else None,
                factor,
                f.status,
                bias_key=f.bias_key,
                expected_std=f.expected_std,
                shape=tuple(f.shape),
            )
        )
    return changes, skipped


def apply(
    editable: Any,
    changes: list[Change],
    *,
    zero_bias: bool = False,
    seed: int = 0,
    lsuv: dict[str, Any] | None = None,
    progress: Any = None,
) -> None:
    """Carry out ``changes`` on an :class:`~initdoctor.loaders.editable.Editable`;
    ``progress(done, total)`` after each layer."""
    rng = np.random.default_rng(seed)
    for done, change in enumerate(changes, 1):
        if change.method == "kaiming":
            editable.scale(change.weight_key, change.factor)
        elif change.method == "reinit":
            editable.assign(change.weight_key, rng.standard_normal(change.shape) * change.expected_std)
        elif change.method == "lsuv":
            _lsuv_layer(editable, change, **(lsuv or {}))
        if zero_bias and change.bias_key:
            editable.assign(change.bias_key, np.zeros_like(editable.array(change.bias_key)))
            change.bias_zeroed = True
        if change.method != "lsuv":
            change.new_std = editable.std(change.weight_key)
        if progress is not None:
            progress(done, len(changes))


def _lsuv_layer(
    editable: Any,
    change: Change,
    *,
    loaded: Any,
    probe_settings: Any,
    gains: dict[str, float],
    tol: float,
    max_iter: int,
) -> None:
    from .loaders import LoadedModel
    from .probe import run_probe

    total = 1.0
    target = LoadedModel(loaded.description, None, editable.probe_backend)
    for iteration in range(1, max_iter + 1):
        target.runnable = editable.runnable()
        measured = run_probe(target, probe_settings).layers.get(change.name)
        if measured is None or not measured.input_second_moment or not measured.activation_var:
            break
        ratio = measured.activation_var / (gains[change.name] ** 2 * measured.input_second_moment)
        change.iterations = iteration
        if abs(ratio - 1) < tol or not math.isfinite(ratio) or ratio <= 0:
            break
        step = 1 / math.sqrt(ratio)
        editable.scale(change.weight_key, step)
        total *= step
    change.factor = total
    change.new_std = editable.std(change.weight_key)


def fix_model(
    source: Any,
    *,
    method: str = "kaiming",
    output: str | Path | None = None,
    in_place: bool = False,
    dry_run: bool = False,
    fail_on: str = "warn",
    all_layers: bool = False,
    zero_bias: bool = False,
    tol: float = 0.05,
    max_iter: int = 10,
    seed: int = 0,
    trust: bool = False,
    weights: Any = None,
    probe: bool = True,
    progress: Any = None,
    **settings: Any,
) -> FixResult:
    """Plan and apply a repair. An in-memory ``nn.Module`` is changed in place; a file is written to
    ``output`` (or, with ``in_place``, over itself after a ``.bak`` copy) in its own format, then
    reloaded and re-inspected (``result.after``; probed when the output has a graph, unless
    ``probe=False``). ``dry_run`` plans only. ``progress``: a ``progress(done, total)`` callback,
    or an object with ``phase(label)`` giving one per phase (the CLI's bar). ``settings`` are
    :func:`initdoctor.diagnose` settings (nonlinearity, thresholds, probe inputs)."""
    from . import _is_torch_module, _split_settings, load
    from .checks import inspect_description
    from .fileio import backup
    from .loaders.editable import TorchModule, open_editable
    from .probe import run_probe

    if method not in METHODS:
        raise SettingsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not 0 < tol < 1:
        raise SettingsError(f"tol must be in (0, 1), got {tol}")
    if method == "lsuv" and not probe:
        raise SettingsError("--method lsuv measures the model as it goes; it cannot run with --no-probe")
    inspect_settings, probe_settings = _split_settings(settings)
    phase = getattr(progress, "phase", None)
    loaded = load(source, trust=trust, weights=weights, progress=phase("reading weights") if phase else None)
    in_memory = _is_torch_module(source)
    probed = None
    if method == "lsuv":
        if loaded.runnable is None:
            raise InitDoctorError(
                f"--method lsuv needs a graph to run; a {loaded.description.format} file has none "
                "(give the model's factory with --model, or use --method kaiming)"
            )
        probed = run_probe(loaded, probe_settings)
    before = inspect_description(loaded.description, inspect_settings, probed)
    changes, skipped = plan(before, method, fail_on, all_layers, tol)
    result = FixResult(changes, skipped, before)
    if dry_run or not changes:
        return result
    if not in_memory and output is None and not in_place:
        raise SettingsError("fix needs --output FILE (or --in-place, --dry-run, --check)")
    editable = (
        TorchModule(source, "torch-module") if in_memory else open_editable(loaded, str(source), trust=trust)
    )
    gains = {f.name: f.gain for f in before.layers}
    apply(
        editable,
        changes,
        zero_bias=zero_bias,
        seed=seed,
        progress=phase("fixing layers") if phase else progress,
        lsuv={
            "loaded": loaded,
            "probe_settings": probe_settings,
            "gains": gains,
            "tol": tol,
            "max_iter": max_iter,
        },
    )
    run_after_probe = probe and (method == "lsuv" or editable.probe_backend is not None)
    if in_memory or loaded.description.format == "factory":
        target = editable.model
    else:
        dst = Path(source) if in_place else Path(output)
        if in_place:
            if Path(source).is_dir() or loaded.description.format == "safetensors-sharded":
                raise SettingsError("--in-place does not work on a sharded checkpoint; give --output FOLDER")
            result.backup = backup(Path(source))
        target = editable.save(dst)
        result.output = target
    if loaded.description.format == "factory" and not in_memory:
        result.output = Path(editable.save(Path(output))) if output else None
    after_settings = {**dataclasses.asdict(inspect_settings), **dataclasses.asdict(probe_settings)}
    from . import diagnose

    result.after = diagnose(
        target, trust=trust, probe=run_after_probe, progress=progress if phase else None, **after_settings
    )
    return result
