"""The pipeline: load → probe → judge, in one place for every entry point.

:func:`diagnose`, :func:`assert_healthy_init`, :func:`fix_model` and the ``check``/``inspect``
commands all run :func:`run`: the model is read (:mod:`initdoctor.formats`), a seeded batch is
run through it when it has a graph (:mod:`initdoctor.probe`), and every layer is judged
(:mod:`initdoctor.checks`). The time limit and the progress display are applied here, once.

The time limit (a ``SIGALRM`` timer) is used only where safe: the main thread, no handler of the
user's, no timer pending; else the run is unbounded, with a note (training loops, callbacks and
torch.distributed ranks keep their own signals).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import render  # noqa: F401  # registers how reports display themselves (report.display)
from .errors import InitDoctorError, InitializationError, SettingsError, no_exit_from_model_code
from .nextstep import set_next_step
from .options import default
from .settings import example_inputs_from

if TYPE_CHECKING:
    from .formats import LoadedModel
    from .probe import ProbeResult
    from .report import FixResult, Report
    from .settings import ProbeSettings, Settings


@dataclass
class Run:
    """What one pass of the pipeline produced."""

    loaded: LoadedModel
    probe: ProbeResult | None
    report: Report


def is_torch_module(obj: Any) -> bool:
    """True for an in-memory ``torch.nn.Module`` (without importing torch when nobody has)."""
    torch = sys.modules.get("torch")
    live = (torch.nn.Module, torch.export.ExportedProgram) if torch is not None else ()
    return torch is not None and isinstance(obj, live)  # a program: a factory read by torch.export


def load(
    source: Any, *, trust: bool = False, weights: Any = None, progress: Any = None, stream: bool = False
) -> LoadedModel:
    """Read a model into a :class:`~initdoctor.formats.LoadedModel` (description + runnable):
    ``source`` is a path, a ``package.module:callable`` factory spec or an in-memory module."""
    from .formats import LoadedModel
    from .formats import load as load_file

    if is_torch_module(source):
        from .formats.torch_module import class_name, describe_module_graph

        return LoadedModel(*describe_module_graph(source, path=class_name(source), fmt="torch-module"))
    return load_file(source, trust=trust, weights=weights, progress=progress, stream=stream)


def input_files(source: Any, weights: Any = None) -> list[Path]:
    """The files a run reads its model from (every file of a sharded or external-data model, and a
    ``--weights`` file): no output may replace one of them."""
    from .formats import model_files

    files: list[Path] = []
    for path in (source, weights):
        if isinstance(path, (str, Path)) and Path(path).exists():
            files += model_files(Path(path))
    return files


def describe(source: Any, *, trust: bool = False, weights: Any = None) -> Any:
    """Read a model into a :class:`~initdoctor.model.ModelDescription` (no tensors kept)."""
    return load(source, trust=trust, weights=weights).description


def split_settings(settings: dict[str, Any]) -> tuple[Settings, ProbeSettings]:
    """Route keyword settings to :class:`Settings` and :class:`ProbeSettings`; an unknown key is a
    :class:`SettingsError` naming it."""
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


def run(
    source: Any,
    inspect_settings: Settings,
    probe_settings: ProbeSettings,
    *,
    trust: bool = False,
    weights: Any = None,
    probe: bool = False,
    progress: Any = None,
    example_inputs: Any = None,
    need_graph: str | None = None,
    force: bool = False,
) -> Run:
    """Load ``source``, probe it (``probe`` and a graph), judge it. The time limit
    (``probe_settings.timeout``) bounds loading and probing: both run the model's code (tracing a
    factory, a TorchScript file). ``need_graph``: the message of the error raised when the probe is
    asked for and the model has no graph (default: a note, and a static judgement). ``force``:
    judge the layers as a plain chain even where the structure is unknown (``fix --force``).

    This is the one function that decides the verdict for every entry point (``inspect``,
    ``check``, ``fix --check``, :func:`diagnose`): the same model and settings, probed or not, give
    the same ``summary.status``."""
    from .checks import inspect_description
    from .formats.torch_device import probe_plan, requested_device
    from .probe import distributed_job, run_probe, time_limit

    result = None
    notes: list[str] = []
    phase = getattr(progress, "phase", None)  # a progress object with phases (the CLI's bar)
    # a torch.distributed job (FSDP2/DTensor): every rank probes, rank 0 judges, all get its report
    with (
        distributed_job(source) as job,
        time_limit(probe_settings.timeout) as limit,
        no_exit_from_model_code(),
        requested_device(probe_settings.device),  # --device: checked, then applied on load
        probe_plan(probe_settings, probe, example_inputs),  # torch.export once, on the probe's inputs
    ):
        reading = phase("reading weights") if phase else None
        loaded = load(source, trust=trust, weights=weights, progress=reading, stream=probe_settings.stream)
        if probe and loaded.runnable is None:
            if need_graph:
                raise InitDoctorError(need_graph.format(format=loaded.description.format))
            notes.append(
                f"static only: a {loaded.description.format} file holds weights but no graph to probe; "
                "give the model's factory (--model pkg.mod:fn) to measure activations"
            )
        elif probe and loaded.description.layers:  # no weighted layer: nothing to measure
            result = run_probe(loaded, probe_settings, progress, example_inputs)
    report = job.share(
        lambda: inspect_description(loaded.description, inspect_settings, result, assume_chain=force)
    )
    report.notes.extend(notes)
    if probe_settings.timeout and not limit.enforced:
        report.notes.append(f"time limit of {probe_settings.timeout:g} s not enforced: {limit.reason}")
    return Run(loaded, result, report)


def diagnose(
    source: Any,
    *,
    trust: bool = False,
    weights: Any = None,
    probe: bool = True,
    progress: Any = None,
    example_inputs: Any = None,
    inputs: Any = None,
    **settings: Any,
) -> Report:
    """Inspect ``source`` and return a :class:`~initdoctor.report.Report`.

    The probe (default) runs a seeded batch through the model when it has a graph (about one
    forward; inputs on the model's device, in its floating dtype: :mod:`initdoctor.probe`), so the
    verdict is the one ``inspect`` and ``check`` give; a bare state_dict/safetensors file stays
    static-only, with a note. ``probe=False``: the static look only.
    ``settings`` are :class:`~initdoctor.settings.Settings` fields (``nonlinearity``, ``mode``,
    thresholds…) and :class:`~initdoctor.settings.ProbeSettings` fields (``input_shapes``,
    ``batch_size``, ``seed``, ``vocab_size``, ``backward``, ``input_dtype``, ``timeout``).
    ``progress(done, total)`` is told of the probe's progress. ``example_inputs`` (a tensor or a
    tuple of tensors) replaces the seeded random batch. ``inputs``: real example tensors for the
    probe, a ``{name: tensor or array}`` dict (passed by name: ``forward``'s keywords, an ONNX
    graph's inputs) or the path of a .npz/.pt/.safetensors file (``--inputs``).
    """
    example_inputs = example_inputs_from(inputs, example_inputs, settings)
    inspect_settings, probe_settings = split_settings(settings)
    report = run(
        source,
        inspect_settings,
        probe_settings,
        trust=trust,
        weights=weights,
        probe=probe,
        progress=progress,
        example_inputs=example_inputs,
    ).report
    if isinstance(source, (str, os.PathLike)):  # a file or factory: summary.next_step can name it
        set_next_step(report, str(source), ["--weights", str(weights)] if weights is not None else [])
    return report


def assert_healthy_init(
    model: Any,
    example_inputs: Any = None,
    *,
    fail_on: str = "error",
    probe: bool = True,
    **settings: Any,
) -> Report:
    """Raise :class:`~initdoctor.errors.InitializationError` when ``model``'s initialization has
    findings at or above ``fail_on`` — for users' own test suites and a pre-training check::

        def test_init():
            initdoctor.assert_healthy_init(build_model())

    The model is probed as :func:`diagnose` probes it (on ``example_inputs`` when given);
    ``probe=False``: the static look only. Returns the report.
    """
    report = diagnose(model, probe=probe, example_inputs=example_inputs, **settings)
    if report.exit_code(fail_on):
        failing = report.failing(fail_on)
        lines = [f"  {f.name} ({f.status}): {f.message}" for f in failing[:20]]
        more = f"\n  … and {len(failing) - 20} more" if len(failing) > 20 else ""
        raise InitializationError(
            f"initialization check failed: {report.summary.message}\n" + "\n".join(lines) + more, report
        )
    return report


def fix_model(
    source: Any,
    *,
    method: str = default("method"),
    output: str | Path | None = None,
    in_place: bool = False,
    dry_run: bool = False,
    fail_on: str = default("select-from"),
    all_layers: bool = False,
    zero_bias: bool = False,
    tol: float = default("tol"),
    max_iter: int = default("max-iter"),
    seed: int = default("seed"),
    trust: bool = False,
    weights: Any = None,
    probe: bool = True,
    progress: Any = None,
    inputs: Any = None,
    force: bool = False,
    **settings: Any,
) -> FixResult:
    """Plan and apply a repair (:mod:`initdoctor.fix`). An in-memory ``nn.Module`` is changed in
    place; a file is written to ``output`` (or, with ``in_place``, over itself after a ``.bak``
    copy) in its own format, then reloaded and re-inspected (``result.after``; probed when the
    output has a graph, unless ``probe=False``). ``dry_run`` plans only. ``progress``: a
    ``progress(done, total)`` callback, or an object with ``phase(label)`` giving one per phase (the
    CLI's bar). ``settings`` are :func:`diagnose` settings (nonlinearity, thresholds, probe inputs,
    ``timeout``: it bounds loading and probing, before and after the fix). ``inputs``: real example
    tensors (a dict or a file, as for :func:`diagnose`) for the probe and ``--method lsuv``.

    The model is judged as :func:`diagnose` judges it (probed when ``probe`` and it has a graph), so
    ``fix --check`` and ``inspect`` agree. A model whose verdict is ``unknown`` (no graph and not a
    plain chain, or residual/normalized and not probed) is refused with an
    :class:`~initdoctor.errors.InitDoctorError` saying what a verdict needs, unless ``force``: then
    its layers are judged (and rescaled) as a plain chain."""
    from .checks.structure import NEEDS
    from .fileio import backup_all, check_output, commit_staged, stage_path
    from .fix import METHODS, apply, only_new, plan, settle, unrepaired
    from .formats import TorchModule, open_editable
    from .report import FixResult

    if method not in METHODS:
        raise SettingsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not 0 < tol < 1:
        raise SettingsError(f"tol must be in (0, 1), got {tol}")
    if in_place and output is not None:
        raise SettingsError("--in-place writes over MODEL (keeping MODEL.bak); it takes no --output")
    if method == "lsuv" and not probe:
        raise SettingsError("--method lsuv measures the model as it goes; it cannot run with --no-probe")
    example_inputs = example_inputs_from(inputs, None, settings)
    inspect_settings, probe_settings = split_settings(settings)
    phase = getattr(progress, "phase", None)
    needs = (
        "--method lsuv needs a graph to run; a {format} file has none "
        "(give the model's factory with --model, or use --method kaiming)"
    )
    first = run(
        source,
        inspect_settings,
        probe_settings,
        trust=trust,
        weights=weights,
        probe=probe or method == "lsuv",
        progress=_phases_only(progress),
        need_graph=needs if method == "lsuv" else None,
        example_inputs=example_inputs,
        force=force,
    )
    loaded, before = first.loaded, first.report
    reason = before.summary.unknown_reason
    if reason is not None:
        raise InitDoctorError(
            f"fix: no verdict on this model's depth behaviour ({reason}); for one, {NEEDS[reason]} "
            "— or give --force to rescale its layers as a plain chain"
        )
    in_memory = is_torch_module(source)
    desc = loaded.description
    planned = plan(before, method, fail_on, all_layers, tol, blocks=desc.blocks, norms=desc.norms)
    changes, skipped = only_new(before, planned, loaded, force)
    result = FixResult(changes, skipped, before, unrepaired=unrepaired(before, changes, method, fail_on))
    if dry_run or not changes:
        return result
    if not in_memory and output is None and not in_place:
        raise SettingsError("fix needs --output FILE (or --in-place, --dry-run, --check)")
    if output is not None and not in_place:  # checked before any work: never replace an input
        inputs = input_files(source, weights)
        folder = loaded.description.format in ("safetensors-sharded", "hf-folder")
        check_output(Path(output), inputs, folder=folder)
        if loaded.format_name == "onnx":  # the twin may write <OUT>.data beside it
            check_output(Path(output).with_name(Path(output).name + ".data"), inputs)
    editable = (
        TorchModule(source, "torch-module") if in_memory else open_editable(loaded, str(source), trust=trust)
    )
    gains = {f.name: f.gain for f in before.layers}
    lsuv = {
        "loaded": loaded,
        "probe_settings": probe_settings,
        "gains": gains,
        "tol": tol,
        "max_iter": max_iter,
        "example_inputs": example_inputs,
    }
    apply(
        editable,
        changes,
        zero_bias=zero_bias,
        seed=seed,
        progress=phase("fixing layers") if phase else progress,
        lsuv=lsuv,
    )
    run_after_probe = probe and (method == "lsuv" or editable.probe_backend is not None)
    if method == "auto" and run_after_probe and (in_memory or desc.format == "factory"):
        live = getattr(editable, "model", None)  # the twin of a live model (TorchModule)
        settle(  # a block remedied can leave the next one jumping: re-inspect the live model, remedy again
            lambda: (
                run(live, inspect_settings, probe_settings, probe=True, example_inputs=example_inputs).report
            ),
            lambda new: apply(editable, new, seed=seed),
            changes,
            desc,
        )
    staged = dst = None
    if in_memory or loaded.description.format == "factory":
        assert isinstance(editable, TorchModule)  # the twin of an in-memory module or a factory's
        target = editable.model
    else:
        dst = Path(source) if in_place else Path(output)  # type: ignore[arg-type]  # checked above
        if in_place:
            hf_folder = loaded.format_name == "hf-folder"
            if not hf_folder and (
                Path(source).is_dir() or loaded.description.format == "safetensors-sharded"
            ):
                raise SettingsError("--in-place does not work on a sharded checkpoint; give --output FOLDER")
            replaced = getattr(editable, "replaced_files", None)  # a folder: only the files it rewrites
            backups = backup_all(replaced() if replaced else input_files(source))  # ONNX: graph and data
            result.backup, result.backups = backups[0], backups
        if loaded.format_name in ("onnx", "hf-folder") or loaded.description.format == "safetensors-sharded":
            target = editable.save(dst)  # checked by onnxruntime before its commit; a folder
            result.output = target
        else:  # one file: written beside dst and re-checked before it replaces anything
            staged = stage_path(dst)
            target = editable.save(staged)
    try:
        result.after = run(
            target,
            inspect_settings,
            probe_settings,
            trust=trust,
            probe=run_after_probe,
            progress=progress if phase else None,
            example_inputs=example_inputs,
            force=force,
        ).report
    except BaseException as exc:
        if staged is not None:  # nothing replaced: the stage and MODEL's fresh backups go
            for path in (staged, *(result.backups or [])):
                path.unlink(missing_ok=True)
            result.backup, result.backups = None, []
        if staged is not None and isinstance(exc, InitDoctorError):
            kept = f"{dst} left unchanged" if in_place else f"{dst} not written"
            raise type(exc)(f"the fixed model failed its re-check ({exc}); {kept}") from None
        raise
    if staged is not None and dst is not None:
        result.output = commit_staged(staged, dst)
        result.after.model["path"] = str(dst)
    if loaded.description.format == "factory" and not in_memory:
        result.output = Path(editable.save(Path(output))) if output else None
    return result


def _phases_only(progress: Any) -> Any:
    """The progress object when it has phases (the CLI's bar); a bare callback is for the fix."""
    return progress if getattr(progress, "phase", None) else None
