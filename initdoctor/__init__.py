"""initdoctor: diagnose and repair the weight initialization of neural networks.

He et al. (2015): a layer followed by a ReLU keeps the forward signal's variance when
``std(W) = sqrt(2) / sqrt(fan_in)``; other nonlinearities have other gains. initdoctor reads a model
(PyTorch checkpoint, TorchScript, torch.export, safetensors, ONNX or a Python factory) and reports,
per weighted layer, how far its weights are from that.

>>> import initdoctor
>>> report = initdoctor.diagnose("model.safetensors")        # doctest: +SKIP
>>> report.summary.status                                     # doctest: +SKIP
'ok'

Importing this package does not import torch or onnxruntime (loaders import them when used), nor
numpy until a model is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Report
    from .settings import Settings

__version__ = "0.7.0"

__all__ = [
    "__version__",
    "diagnose",
    "assert_healthy_init",
    "InitializationError",
    "fix_model",
    "describe",
    "load",
    "Settings",
    "Report",
    "InitDoctorError",
    "InputError",
    "UntrustedFormatError",
    "SettingsError",
]

from .errors import InitDoctorError, InitializationError, InputError, SettingsError, UntrustedFormatError


def __getattr__(name: str) -> Any:
    """``Settings`` and ``Report`` on first use, so that ``initdoctor --help`` does not import numpy."""
    if name == "Settings":
        from .settings import Settings

        return Settings
    if name == "Report":
        from .report import Report

        return Report
    raise AttributeError(f"module 'initdoctor' has no attribute {name!r}")


def load(source: Any, *, trust: bool = False, weights: Any = None, progress: Any = None):
    """Read a model into a :class:`~initdoctor.loaders.LoadedModel` (description + runnable).

    ``source`` is a path, a ``package.module:callable`` factory spec, or an in-memory
    ``torch.nn.Module``.
    """
    from .loaders import LoadedModel

    if _is_torch_module(source):
        from .loaders.torch_module import describe_module_graph

        return LoadedModel(*describe_module_graph(source, path=type(source).__name__, fmt="torch-module"))
    from .loaders import load as _load

    return _load(source, trust=trust, weights=weights, progress=progress)


def describe(source: Any, *, trust: bool = False, weights: Any = None):
    """Read a model into a :class:`~initdoctor.model.ModelDescription` (no tensors kept)."""
    return load(source, trust=trust, weights=weights).description


def diagnose(
    source: Any,
    *,
    trust: bool = False,
    weights: Any = None,
    probe: bool = False,
    progress: Any = None,
    example_inputs: Any = None,
    **settings: Any,
) -> Report:
    """Inspect ``source`` and return a :class:`Report`.

    ``probe=True`` also runs a seeded random batch through the model (see :mod:`initdoctor.probe`)
    when it has a graph; a bare state_dict/safetensors file stays static-only, with a note.
    ``settings`` are :class:`Settings` fields (``nonlinearity``, ``mode``, thresholds…) and
    :class:`~initdoctor.probe.ProbeSettings` fields (``input_shapes``, ``batch_size``, ``seed``,
    ``vocab_size``, ``backward``, ``input_dtype``). ``progress(done, total)`` is told of the
    probe's progress. ``example_inputs`` (a tensor or a tuple of tensors) replaces the seeded random
    batch for a torch model.
    """
    from .checks import inspect_description
    from .probe import run_probe, time_limit

    inspect_settings, probe_settings = _split_settings(settings)
    result = None
    notes = []
    with time_limit(probe_settings.timeout):  # tracing and probing both run the model's code
        phase = getattr(progress, "phase", None)  # a progress object with phases (the CLI's bar)
        loaded = load(
            source, trust=trust, weights=weights, progress=phase("reading weights") if phase else None
        )
        if probe and loaded.runnable is None:
            notes.append(
                f"static only: a {loaded.description.format} file holds weights but no graph to probe; "
                "give the model's factory (--model pkg.mod:fn) to measure activations"
            )
        elif probe:
            result = run_probe(loaded, probe_settings, progress, example_inputs)
    report = inspect_description(loaded.description, inspect_settings, result)
    report.notes.extend(notes)
    return report


def _split_settings(settings: dict[str, Any]) -> tuple[Settings, Any]:
    """Route keyword settings to :class:`Settings` and :class:`~initdoctor.probe.ProbeSettings`;
    an unknown key is a :class:`SettingsError` naming it."""
    import dataclasses

    from .settings import ProbeSettings, Settings

    inspect_keys = {f.name for f in dataclasses.fields(Settings)}
    probe_keys = {f.name for f in dataclasses.fields(ProbeSettings)}
    unknown = sorted(set(settings) - inspect_keys - probe_keys)
    if unknown:
        valid = ", ".join(sorted(inspect_keys | probe_keys))
        raise SettingsError(f"unknown setting {unknown[0]!r}; valid: {valid}")
    return (
        Settings(**{k: v for k, v in settings.items() if k in inspect_keys}),
        ProbeSettings(**{k: v for k, v in settings.items() if k in probe_keys}),
    )


def assert_healthy_init(
    model: Any,
    example_inputs: Any = None,
    *,
    fail_on: str = "error",
    probe: bool | None = None,
    **settings: Any,
) -> Report:
    """Raise :class:`InitializationError` when ``model``'s initialization has findings at or above
    ``fail_on`` — for users' own test suites and a pre-training check::

        def test_init():
            initdoctor.assert_healthy_init(build_model())

    The probe runs when ``example_inputs`` are given (or ``probe=True``). Returns the report.
    """
    report = diagnose(
        model,
        probe=bool(example_inputs is not None) if probe is None else probe,
        example_inputs=example_inputs,
        **settings,
    )
    if report.exit_code(fail_on):
        failing = report.failing(fail_on)
        lines = [f"  {f.name} ({f.status}): {f.message}" for f in failing[:20]]
        more = f"\n  … and {len(failing) - 20} more" if len(failing) > 20 else ""
        raise InitializationError(
            f"initialization check failed: {report.summary.message}\n" + "\n".join(lines) + more, report
        )
    return report


def fix_model(source: Any, **kwargs: Any):
    """Repair ``source``'s initialization; see :func:`initdoctor.fix.fix_model`."""
    from .fix import fix_model as _fix_model

    return _fix_model(source, **kwargs)


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)
