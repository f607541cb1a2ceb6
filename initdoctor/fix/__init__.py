"""Repairing an initialization: plan (pure) and apply (through the formats' editable twins).

Methods, for each selected layer with weight ``W``, Kaiming std ``σ* = gain / sqrt(fan)``:

``auto`` (default)
    The residual remedy for the blocks an R3xx rule flags (``fixup`` on every unnormalized block
    when a flagged one is unnormalized; ``skipinit`` on flagged normalized blocks), then
    ``kaiming`` on the layers it selects outside the remedied blocks (measured P2xx findings are
    left to the re-inspection when a block is remedied), ``lsuv`` for a measured finding whose
    Kaiming rescale would be under 10 % (the std is right, the signal is not). Each change
    records the method that made it.
``fixup`` / ``skipinit`` (alias ``zero-gamma``)
    See :mod:`initdoctor.fix.blocks` (Zhang et al. 2019; Goyal et al. 2017; De & Smith 2020).
``kaiming`` (static)
    ``W ← W · σ*/std(W)`` — the report's ``suggested_scale``. Selected: layers whose status
    reaches ``fail_on`` (default ``warn``) by a static rule or one the measurement confirms (not
    :data:`MEASURED_ONLY`), or every weighted layer with ``all_layers``. All-zero,
    constant or NaN weights cannot be rescaled: they are listed as skipped (use ``reinit``).
``reinit``
    ``W ← N(0, σ*²)`` drawn from ``numpy.random.default_rng(seed)`` — ``kaiming_normal_`` with the
    layer's gain and mode. Same selection as ``kaiming``, zero/constant/NaN weights included.
``lsuv`` (data-driven, Mishkin & Matas 2016)
    Layer by layer in execution order: probe, ``W ← W / sqrt(variance_ratio)``, probe again, until
    ``|variance_ratio − 1| < tol`` or ``max_iter``. Selected: hidden layers whose measured ratio is
    outside ``tol`` (every layer but embeddings with ``all_layers``). Needs a graph.

Biases are left alone unless ``zero_bias`` (a layer Fixup/SkipInit zeroes loses its bias too);
normalization layers are touched only by ``skipinit`` (γ ← 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InitDoctorError, SettingsError
from ..options import METHODS
from ..report import Change, FixResult, Report, at_least
from .blocks import branch_of, flagged, plan_branch_kaiming, plan_fixup, plan_skipinit

#: measured-only findings a static rescale cannot address (NaN activations, dead units, finite-width
#: fluctuation of Kaiming weights): kaiming and reinit do not select a layer for them
MEASURED_ONLY = ("P201", "P202", "P204")

# Change and FixResult (the result's data) live in initdoctor.report; re-exported here, where they
# were before
__all__ = ["METHODS", "Change", "FixResult", "apply", "only_new", "plan", "refuse_trained"]

#: why a trained layer is not rescaled (``checks/trained.py``)
TRAINED = "trained weights, not an initialization: a rescale would destroy what was learned (--force)"


def refuse_trained(report: Report, force: bool) -> None:
    """A trained checkpoint (``summary.weights == "trained"``) is not rescaled without ``force``."""
    if report.summary.weights == "trained" and not force:
        raise InitDoctorError(
            "fix: the weights are trained, not an initialization (see the report's notes); a rescale "
            "would destroy what was learned — give --force to rescale them anyway"
        )


def only_new(
    report: Report, planned: tuple[list[Change], list[tuple[str, str]]], loaded: Any, force: bool
) -> tuple[list[Change], list[tuple[str, str]]]:
    """A trained checkpoint is refused (:func:`refuse_trained`); a mixed one (a trained backbone
    with new layers): only the new layers are changed, unless ``force``; the others are listed as
    skipped."""
    refuse_trained(report, force)
    changes, skipped = planned
    if report.summary.weights != "mixed" or force:
        return changes, skipped
    new = set(loaded.description.new_layers)
    skipped.extend((c.name, TRAINED) for c in changes if c.weight_key not in new)
    return [c for c in changes if c.weight_key in new], skipped


def plan(
    report: Report,
    method: str = "kaiming",
    fail_on: str = "warn",
    all_layers: bool = False,
    tol: float = 0.05,
    *,
    blocks: Any = None,
    norms: Any = None,
) -> tuple[list[Change], list[tuple[str, str]]]:
    """Which layers to change and how (pure: reads the report, and for the residual remedies the
    description's ``blocks`` and ``norms``). ``auto``: the residual remedy for the blocks an R3xx
    rule flags (:func:`residual_remedy`), Kaiming for the other layers a static rule flags, LSUV
    for those only the measurement flags (when the probe measured them)."""
    if method not in METHODS:
        raise SettingsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method in ("fixup", "skipinit", "zero-gamma", "auto"):
        planned: set[str] = set()
        changes, skipped = residual_remedy(report, method, blocks, norms or [], planned)
        if method != "auto":
            return changes, skipped
        return _auto_layers(report, changes, skipped, planned, fail_on, all_layers, tol)
    return _plan_layers(report, report.layers, method, fail_on, all_layers, tol, set())


def _auto_layers(
    report: Report,
    changes: list[Change],
    skipped: list[tuple[str, str]],
    planned: set[str],
    fail_on: str,
    all_layers: bool,
    tol: float,
) -> tuple[list[Change], list[tuple[str, str]]]:
    """``auto``'s per-layer part, after the residual remedy: the layers of remedied blocks are
    left to it, and so are the measured (P2xx) findings when a block is remedied (they measure a
    stream the remedy changes: the re-inspection says whether they stand). Otherwise Kaiming as
    ``kaiming`` selects; a measured finding whose Kaiming rescale is under 10 % (the weights'
    std is right, the signal is not: Mishkin & Matas 2016) gets LSUV where the probe measured it."""
    blocks = {c.block for c in changes if c.block}
    remedied = {n for b in report.residual_blocks if b.name in blocks for n in b.layers}
    taken = planned | {f.weight_key for f in report.layers if f.name in remedied}
    layers = [f for f in report.layers if not (blocks and (f.rule or "").startswith("P") and not _head(f))]
    more, skip2 = _plan_layers(report, layers, "kaiming", fail_on, all_layers, tol, taken)
    by_name = {f.name: f for f in report.layers}
    for c in more:
        f = by_name[c.name]
        small = c.factor is not None and abs(math.log(c.factor)) < math.log(1.1)
        if small and (f.rule or "").startswith("P") and f.variance_ratio is not None:
            c.method, c.new_std, c.factor = "lsuv", None, None
    return changes + more, skipped + skip2


def _head(f: Any, limit: float = 4.0) -> bool:
    """A P207 head (the logits at init too large) whose own weight std is off Kaiming beyond the
    error threshold (variance ×4): its scale, not the stream's, makes the logits — kept by ``auto``
    with a block remedy (a LLaMA drawn N(0, 1): lm_head 8× Kaiming)."""
    if f.rule != "P207" or not f.weight_std or not f.expected_std:
        return False
    return not 1 / limit <= (f.weight_std / f.expected_std) ** 2 <= limit


def residual_remedy(
    report: Report, method: str, blocks: Any, norms: list[Any], planned: set[str]
) -> tuple[list[Change], list[tuple[str, str]]]:
    """``fixup``: every unnormalized block (and every flagged one); ``skipinit``/``zero-gamma``:
    every block; ``auto``: when a flagged block is unnormalized, Fixup on all unnormalized blocks
    (``L`` = their number: Fixup is an initialization of the whole network), and zero-γ / the
    branch's last layer zeroed for flagged normalized blocks (they end in, or start with, a norm)."""
    branches = branch_of(report, blocks)
    bad = flagged(report)
    if method == "fixup":
        return plan_fixup(report, [b for b in branches if not b[2] or b[0] in bad], planned)
    if method in ("skipinit", "zero-gamma"):
        return plan_skipinit(report, branches, norms, planned)
    plain = [b for b in branches if not b[2]]
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    if any(b[0] in bad for b in plain):
        changes, skipped = plan_fixup(report, plain, planned)
    normed = [b for b in branches if b[2]]
    more, skip2 = plan_skipinit(report, [b for b in normed if b[0] in bad], norms, planned)
    if more:  # the branch layers drifting off Kaiming, in every normalized block
        more = plan_branch_kaiming(report, normed, planned) + more
    return changes + more, skipped + skip2


def _plan_layers(
    report: Report,
    layers: Any,
    method: str,
    fail_on: str,
    all_layers: bool,
    tol: float,
    planned: set[str],
) -> tuple[list[Change], list[tuple[str, str]]]:
    """The per-layer methods (kaiming, reinit, lsuv) on ``layers``."""
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    for f in layers:
        if f.role == "embedding" or f.expected_std is None:
            continue
        if f.weight_key in planned:  # one tensor reported twice: fixed once (tied weights)
            continue
        if method == "lsuv":
            if f.role == "output" and not all_layers:
                continue
            if f.variance_ratio is None:
                skipped.append((f.name, "not measured by the probe"))
                continue
            if not all_layers and abs(f.variance_ratio - 1) < tol:
                continue
        elif not (all_layers or (at_least(f.status, fail_on) and f.rule not in MEASURED_ONLY)):
            continue
        broken = bool(f.nan_count or f.inf_count) or not f.weight_std
        if method in ("kaiming", "lsuv") and broken:
            skipped.append(
                (f.name, "NaN/Inf, all-zero or constant weights cannot be rescaled: use --method reinit")
            )
            continue
        factor = f.expected_std / f.weight_std if method == "kaiming" and f.weight_std else None
        planned.add(f.weight_key)
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
    """Carry out ``changes`` on an :class:`~initdoctor.formats.Editable`;
    ``progress(done, total)`` after each layer."""
    rng = np.random.default_rng(seed)
    for done, change in enumerate(changes, 1):
        if change.factor == 0.0 and change.method in ("fixup", "skipinit"):  # Fixup/SkipInit: W ← 0
            editable.assign(
                change.weight_key, np.zeros(change.shape or editable.array(change.weight_key).shape)
            )
            if change.bias_key:
                editable.assign(change.bias_key, np.zeros_like(editable.array(change.bias_key)))
                change.bias_zeroed = True
        elif change.method in ("kaiming", "fixup") and change.factor is not None:
            editable.scale(change.weight_key, change.factor)
        elif change.method == "reinit" and change.expected_std is not None:
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
    example_inputs: Any = None,
) -> None:
    from ..formats import LoadedModel
    from ..probe import run_probe

    total = 1.0
    target = LoadedModel(loaded.description, None, editable.probe_backend)
    for iteration in range(1, max_iter + 1):
        target.runnable = editable.runnable()
        measured = run_probe(target, probe_settings, example_inputs=example_inputs).layers.get(change.name)
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


def unrepaired(
    report: Report, changes: list[Change], method: str, fail_on: str = "error"
) -> list[tuple[str, str, str]]:
    """The findings at or above ``fail_on`` (inspect's default: ``error``) that no planned change
    addresses: ``(name, rule, reason)``. ``fix --check`` lists them and exits 1, as inspect would."""
    changed = {c.name for c in changes}
    blocks = {c.block for c in changes if c.block}
    changed |= {n for b in report.residual_blocks if b.name in blocks for n in b.layers}
    remedy = "--method auto, fixup or skipinit"
    out: list[tuple[str, str, str]] = []
    for b in report.residual_blocks:
        if at_least(b.status, fail_on) and b.name not in blocks:
            out.append((b.name, b.rule or "", f"--method {method} does not repair {b.rule}: use {remedy}"))
    for f in report.layers:
        if at_least(f.status, fail_on) and f.name not in changed:
            if blocks and (f.rule or "").startswith("P"):
                why = (
                    "measured on the residual stream the block remedy changes: see the findings after the fix"
                )
                out.append((f.name, f.rule or "", why))
                continue
            why = (
                "measured only (NaN, dead units or width noise)"
                if f.rule in MEASURED_ONLY
                else "not selected"
            )
            out.append((f.name, f.rule or "", f"no method repairs {f.rule}: {why}"))
    s = report.summary
    if at_least(s.status, fail_on) and not changes and not out:
        out.append(("model", s.rule or "", f"no method repairs {s.rule}: {s.message}"))
    return out


def settle(
    reinspect: Callable[[], Report],
    edit: Callable[[list[Change]], None],
    changes: list[Change],
    desc: Any,
    rounds: int = 3,
) -> None:
    """``auto`` on a live model: re-inspect after the residual remedy and remedy the blocks then
    flagged (a block set to the identity can leave the next one jumping against the smaller
    stream), at most ``rounds`` times; the new changes are appended to ``changes``."""
    # a tensor is changed once, but one auto rescaled to Kaiming may still be zeroed in a later round
    planned = {c.weight_key for c in changes if c.method != "kaiming"}
    for _ in range(rounds):
        new, _ = residual_remedy(reinspect(), "auto", desc.blocks, desc.norms, planned)
        if not new:
            return
        edit(new)
        changes.extend(new)
