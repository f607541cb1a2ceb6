"""Trained checkpoints and fine-tuning: weights that are not an initialization (issue 14 item 7).

Most model folders on disk hold trained weights. Kaiming's bands describe a *fresh* draw; a
trained layer's scale is what the optimizer learned, and rescaling it would destroy that. So:

* **Which weights** (``summary.weights``): ``init``, ``trained`` or ``mixed``, with the evidence in
  a note. The evidence is conservative — a fact init conventions do not produce:
  normalization layers whose affine parameters vary **across channels** (every init convention
  sets them constant: γ = 1, β = 0, or a constant such as a zero-init last γ). When at least half
  of the model's affine norm layers (≥ 1) vary by more than :data:`SPREAD` (relative to
  ``max(1, |mean|)``), the weights are ``trained``; ``mixed`` when, in addition, the loader lists
  ``new_layers`` (a Hugging Face folder's head the checkpoint lacked, initialized by the model).
  A model without norm layers is ``init`` unless proven otherwise (a note says the evidence is
  missing only when there are new layers).
* **Trained layers** keep their facts (std, expected Kaiming std, ratio) with status ``ok``
  (structure-independent errors — NaN, all-zero, constant — are kept), no ``suggested_scale``,
  and leave the static chain product: the model verdict comes from what the probe measured
  (depth ratio, residual growth, measured per-layer rules). ``fix`` refuses them (see
  :func:`initdoctor.api.fix_model`).
* **New layers** of a ``mixed`` checkpoint (fine-tuning, P206) are judged against the scale the
  backbone delivers, measured by the probe: ``expected std = gain / sqrt(fan_in · E[x²])`` (He et
  al. 2015, eq. 7, with the measured ``E[x²]`` of the layer's input in place of the unit variance
  Kaiming assumes): the weights that give the layer's output the variance ``gain²`` — unit
  variance logits for a head.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..report import LayerFinding, Role, Status
from .registry import Rule, flag
from .weights import K105, K106, K107, WHAT

if TYPE_CHECKING:
    from ..model import ModelDescription, NormLayer
    from ..settings import Settings

#: relative per-channel spread of a norm's γ or β beyond which it is not at its init value
SPREAD = 1e-3
INIT, TRAINED, MIXED = "init", "trained", "mixed"
WEIGHTS = (INIT, TRAINED, MIXED)
#: the per-layer fact for a trained layer
LAYER_NOTE = (
    "trained weights, not an initialization: not judged against Kaiming, no rescale suggested "
    "(a rescale would destroy what was learned)"
)
_KEEP = frozenset({K105.code, K106.code, K107.code})

P206 = Rule(
    code="P206",
    name="new-layer-scale",
    severities=(Status.WARN, Status.ERROR),
    applies_to="layer (a new layer of a fine-tuned checkpoint, measured)",
    title="A new layer on a pretrained backbone is off the scale the backbone's output needs.",
    what="A layer the checkpoint lacked (a Hugging Face folder's new head, `new_layers`), its "
    "weights' std against `gain / sqrt(fan_in · E[x²])`, `E[x²]` the second moment of its input "
    "measured by the probe (the backbone's output scale).",
    why="Kaiming's `gain / sqrt(fan_in)` assumes a unit-variance input; a trained backbone delivers "
    "its own scale. He et al. 2015, eq. 7: `Var[y] = fan_in · Var[w] · E[x²]`, so this std gives "
    "the new layer's output the variance `gain²` (unit-variance logits for a head).",
    formula="`r = (std / (gain / sqrt(fan_in · E[x²])))²`; an output layer: only too large, "
    "warn when `r > 2·T_warn`, error when `r > 2·T_error`; a hidden layer: `|ln r|` beyond "
    "`ln T_warn` / `ln T_error`.",
    silence="Rescale the new layer by `suggested_scale` (`initdoctor fix` touches only new layers "
    "of a fine-tuned checkpoint).",
    messages={
        "default": "new layer (not in the checkpoint): std {std:.3g} is ×{ratio:.3g} the {expected:.3g} "
        "that gives unit-variance output on the backbone's measured input (E[x²] = {moment:.3g}, "
        "fan_in {fan}): rescale by {scale:.3g}",
        "ok": "new layer (not in the checkpoint): std {std:.3g} is ×{ratio:.3g} the {expected:.3g} "
        "that gives unit-variance output on the backbone's measured input (E[x²] = {moment:.3g}, "
        "fan_in {fan}): ok",
    },
)

RULES = [P206]


def _moved(norm: NormLayer) -> bool:
    """γ or β varies across channels: no init convention does that."""
    spread = [norm.stats] + ([norm.bias_stats] if norm.bias_stats is not None else [])
    return any(st.numel > 1 and st.std > SPREAD * max(1.0, abs(st.mean)) for st in spread)


def weights_state(desc: ModelDescription) -> tuple[str, str | None]:
    """``(init | trained | mixed, the evidence as a note or None)``; see the module docstring."""
    affine = [n for n in desc.norms if n.stats.numel > 1]
    moved = [n.name for n in affine if _moved(n)]
    trained = bool(affine) and 2 * len(moved) >= len(affine)
    if not trained:
        if desc.new_layers:
            return INIT, "weights: init (new layers, and the norm layers are at their init values)"
        return INIT, None
    shown = ", ".join(moved[:3]) + (", …" if len(moved) > 3 else "")
    evidence = (
        f"{len(moved)} of {len(affine)} norm layers have γ/β varying across channels "
        f"(init sets them constant): {shown}"
    )
    if desc.new_layers:
        return MIXED, (
            f"weights: mixed — trained backbone ({evidence}); new layers initialized by the model: "
            f"{', '.join(desc.new_layers[:6])}; the new layers are judged against the backbone's "
            "measured scale (P206), the trained ones by measured propagation only"
        )
    return TRAINED, (
        f"weights: trained ({evidence}); judged by measured propagation only, no rescale suggested"
    )


def is_new(f: LayerFinding, desc: ModelDescription) -> bool:
    return f.weight_key in desc.new_layers or f"{f.name}.weight" in desc.new_layers


def trained_facts(findings: list[LayerFinding], desc: ModelDescription, s: Settings) -> set[str]:
    """Every trained (not new) layer becomes a fact; returns their names."""
    names = set()
    for f in findings:
        if is_new(f, desc) or f.status == Status.SKIP:
            continue
        names.add(f.name)
        if f.rule in _KEEP:
            continue
        f.status, f.rule, f.suggested_scale = Status.OK, None, None
        if f.std_ratio and f.expected_std:
            fan = f.fan_in if s.mode == "fan_in" or f.role == Role.OUTPUT else f.fan_out
            mode = "fan_in" if f.role == Role.OUTPUT else s.mode
            f.message = WHAT.format(
                std=f.weight_std,
                ratio=f.std_ratio,
                expected=f.expected_std,
                nonlinearity=f.nonlinearity,
                mode=mode,
                fan=fan,
            )
            f.message += f"; {LAYER_NOTE}"
        else:
            f.message = f"{f.message}; {LAYER_NOTE}" if f.message else LAYER_NOTE
    return names


def clear_scales(findings: list[LayerFinding], trained: set[str]) -> None:
    """After the probe: no rescale for a trained layer, whatever a measured rule suggested."""
    for f in findings:
        if f.name in trained:
            f.suggested_scale = None


def judge_new(
    findings: list[LayerFinding], desc: ModelDescription, s: Settings, ignored: frozenset[str]
) -> None:
    """P206: each new layer whose input the probe measured, against the backbone's scale."""
    for f in findings:
        if not is_new(f, desc) or f.status == Status.SKIP or f.rule in _KEEP:
            continue
        moment, std = f.input_second_moment, f.weight_std
        if not moment or not std or moment <= 0 or not math.isfinite(moment):
            continue
        expected = f.gain / math.sqrt(max(f.fan_in, 1) * moment)  # He et al. 2015, eq. 7
        ratio = std / expected
        f.expected_std, f.std_ratio = expected, ratio
        f.weight_variance_ratio = ratio * ratio
        f.suggested_scale = 1.0 / ratio
        ln_r = math.log(f.weight_variance_ratio)
        status = Status.OK
        if f.role == Role.OUTPUT:  # only too large, bands doubled (as K102)
            if ln_r > math.log(2 * s.error_threshold):
                status = Status.ERROR
            elif ln_r > math.log(2 * s.warn_threshold):
                status = Status.WARN
        elif abs(ln_r) > math.log(s.error_threshold):
            status = Status.ERROR
        elif abs(ln_r) > math.log(s.warn_threshold):
            status = Status.WARN
        values = {
            "std": std,
            "ratio": ratio,
            "expected": expected,
            "moment": moment,
            "fan": f.fan_in,
            "scale": f.suggested_scale,
        }
        f.status, f.rule = Status.OK, None  # the static Kaiming judgement is replaced by this one
        f.message = P206.message("default" if status is not Status.OK else "ok", **values)
        if status is not Status.OK:
            flag(f, P206, status, ignored)


def summary_message(state: str, learned: int, depth: float | None, growth: float | None) -> str:
    """The summary of an ``ok`` trained or mixed model: what was measured, not Kaiming bands."""
    measured = [f"depth ratio ×{depth:.3g}"] if depth else []
    measured += [f"residual growth ×{growth:.3g} per block"] if growth else []
    what = f"measured propagation within bounds ({', '.join(measured)})" if measured else "not probed"
    return f"{state} weights: {what}; {learned} trained layers not judged against Kaiming"
