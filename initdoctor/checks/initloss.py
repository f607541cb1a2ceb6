"""P207: the loss at initialization, predicted from the logits the probe measured.

Every training recipe's first check is "verify the loss at init": a classifier over ``C`` classes
(a language model over a vocabulary of ``C``) that knows nothing should predict the uniform
distribution, cross-entropy ``ln C``. For logits ``z`` the cross-entropy of label ``y`` is
``CE = logsumexp_j z_j − z_y``; for a label uniform among the classes its expectation is
``logsumexp_j z_j − mean_j z_j``, measured exactly from the probe's own logits (mean over the
batch's positions; :class:`~initdoctor.probe.LogitStats`). For ``z_j ~ N(μ, σ²)`` i.i.d. and
large ``C``, ``E[logsumexp z] = μ + ln C + ln E[e^(z−μ)] = μ + ln C + σ²/2`` (the log-normal mean),
so ``E[CE] ≈ ln C + σ²/2``: the excess over ``ln C`` is the logits' variance across classes, halved
(exact for small ``σ``; for large ``σ`` the excess grows like ``σ·sqrt(2 ln C)``, which the
measured value shows and the approximation does not).

Which models: a classifier or language model, decided by the model's output and the role of its
last layer: transformers' heads that return ``logits`` (``*ForCausalLM``, ``*ForMaskedLM``,
``*ForConditionalGeneration``, ``*ForSequenceClassification``, ``*ForImageClassification``; tied
heads included), or a model whose output tensor is the output of its last Linear (role
``output``, ``fan_out = C ≥ 2``, fed to nothing else). Backbones without a head (``BertModel``,
``LlamaModel``: hidden states, no logits), models with several or non-tensor outputs, a single
output unit (regression, a binary logit) get no P207. An ONNX graph's logits are its output
``logits``, or its only output when a projection by a stored weight writes it (the dynamo
exporter names a causal LM's logits ``linear``): probe/onnx_logits.py; other ONNX outputs, none.
A regression net with several outputs whose last Linear is the output would be judged too: ignore
P207 for it.

Measurement over assumption: where the probe measured the logits of a head that is a layer of its
own, P207 replaces the static K102 (output weights too large against gain 1) on that layer: the
head warns when the measured loss is off, and is ``ok`` when the logits contradict K102 (a small
input to the head, T5's d^-0.5 scaling), K102's ratio staying in the message as the explanation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..report import LayerFinding, Role, Status
from .registry import Rule, flag

if TYPE_CHECKING:
    from ..probe import ProbeResult

#: the static rule on the head's weights (checks/weights.py), which the measured logits supersede
K102 = "K102"
#: warn when the expected initial loss exceeds ln C by more than this (nats); see P207's doc
MARGIN = 1.0
#: the logit std (across classes) the suggested rescale brings the head to: E[CE] ≈ ln C + 0.125
TARGET_STD = 0.5
#: the per-class offset dominates when it carries more than this share of the logits' variance
OFFSET_SHARE = 0.5

P207 = Rule(
    code="P207",
    name="initial-loss",
    severities=(Status.WARN,),
    applies_to="model (the output logits of a classifier or language model, measured)",
    title="Measured: the expected cross-entropy at init is far above ln(number of classes).",
    what="The expected initial cross-entropy for uniformly random labels, `mean over positions of "
    "logsumexp_j z_j − mean_j z_j`, from the probe's own logits, against `ln C` (C: classes or "
    "vocabulary); also `ln C + σ²/2` from the logits' variance across classes σ², and the share "
    "of σ² that is a fixed offset per class (a bias, or a constant input direction).",
    why="A head whose logits are far from uniform at init starts confidently wrong: the first steps "
    "go to shrinking the logits instead of learning, and large logits saturate the softmax "
    "(a LLaMA with `initializer_range=1.0` starts at loss 26.9 against ln 1000 = 6.91 and is "
    "still at 23.0 after 80 AdamW steps, docs/rules-evidence.md). Karpathy's 'A recipe for "
    "training neural networks' (2019): verify the loss at init is `ln C`.",
    formula="`E[CE] = logsumexp(z) − z_y`, averaged over a uniform `y`; for `z ~ N(0, σ²)` i.i.d., "
    f"`E[CE] ≈ ln C + σ²/2`. warn when `E[CE] − ln C > {MARGIN:g}` nat (σ² ≳ 2, σ ≳ 1.4): below "
    "it are healthy defaults that train, T5's tied head (σ² ≈ 1, +0.5 nat, d^-0.5 scaling) and "
    "a ResNet's fc (+0.3 nat). The rescale: multiply the head's output (weight and bias) by "
    f"`k = {TARGET_STD:g} / σ`, which brings the logits' std to {TARGET_STD:g} "
    "(`E[CE] ≈ ln C + 0.125`); a tied head is scaled through the final norm's weight.",
    silence="Rescale the head as suggested (or zero-initialize it), or ignore P207 for a model "
    "whose output is not a classifier's.",
    messages={
        "default": "expected initial loss {expected:.3g} nats against ln {classes} = {baseline:.3g} "
        "(logit std {std:.3g} across classes{offset}): the head's logits are too large; "
        "rescale {head} by {scale:.3g} (logit std → {target:g})",
        "contradicted": "not confirmed by the measured logits: expected initial loss {expected:.3g} "
        "nats against ln {classes} = {baseline:.3g} (logit std {std:.3g})",
    },
)

RULES = (P207,)


def head_layer(findings: list[LayerFinding], classes: int) -> LayerFinding | None:
    """The last layer with role ``output`` whose ``fan_out`` is the number of classes."""
    outputs = [f for f in findings if f.role == Role.OUTPUT and f.fan_out == classes]
    return outputs[-1] if outputs else None


def judge_init_loss(
    findings: list[LayerFinding], probe: ProbeResult | None, ignored: frozenset[str]
) -> tuple[dict[str, Any] | None, Status, str | None]:
    """(``summary.init_loss``, its status, its message) — None, ok, None where P207 does not
    apply (see the module docstring). A layer finding for the head, when there is one, is
    flagged too."""
    z = probe.logits if probe is not None else None
    if z is None or z.classes < 2:
        return None, Status.OK, None
    head = head_layer(findings, z.classes)
    if z.source != "output.logits" and head is None:
        return None, Status.OK, None  # a tensor output that no Linear output layer produced
    baseline = math.log(z.classes)
    std = math.sqrt(z.logit_var)
    share = z.offset_var / z.logit_var if z.logit_var > 0 else 0.0
    scale = TARGET_STD / std if std > TARGET_STD else None
    info: dict[str, Any] = {
        "classes": z.classes,
        "baseline": baseline,  # ln C
        "expected": z.lse_minus_mean,  # measured from the logits
        "approx": baseline + z.logit_var / 2,  # ln C + σ²/2
        "logit_std": std,
        "offset_share": share,
        "head": head.name if head is not None else None,
        "source": z.source,
        "suggested_scale": None,
        "status": Status.OK,
    }
    fires = z.lse_minus_mean - baseline > MARGIN and scale is not None
    if head is not None and head.rule == K102:  # measurement over assumption: the logits decide
        head.status, head.rule = Status.OK, None
        if not fires:
            head.message += "; " + P207.message(
                "contradicted", expected=z.lse_minus_mean, classes=z.classes, baseline=baseline, std=std
            )
    if not fires:
        return info, Status.OK, None
    offset = (
        f"; {share:.0%} of it a fixed offset per class: the head's bias or its input's mean"
        if share > OFFSET_SHARE
        else ""
    )
    name = head.name if head is not None else "the tied head (through the final norm's weight)"
    message = P207.message(
        expected=z.lse_minus_mean,
        classes=z.classes,
        baseline=baseline,
        std=std,
        offset=offset,
        head=name,
        scale=scale,
        target=TARGET_STD,
    )
    info["suggested_scale"] = scale
    if P207.code in ignored:
        return info, Status.OK, None
    info["status"] = Status.WARN
    if head is not None:
        head.message = f"{head.message}; {message}" if head.message else message
        flag(head, P207, Status.WARN, ignored)
    return info, Status.WARN, message
