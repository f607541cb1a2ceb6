"""K1xx: static per-layer rules — each weighted layer's std against Kaiming, without running the model.

For a layer with weight std ``s``, fan ``n`` (``fan_in`` or ``fan_out`` by ``mode``) followed by a
nonlinearity with gain ``g`` (:func:`initdoctor.gains.calculate_gain`)::

    expected_std    = g / sqrt(n)                      (He et al. 2015, eq. 10 / eq. 14)
    std_ratio       = s / expected_std
    weight_variance_ratio = std_ratio²                 (1.0 is Kaiming-exact: the layer keeps
                                                        the signal's variance)
    suggested_scale = 1 / std_ratio                    (multiply W by it to make it Kaiming)

Thresholds are variance factors, symmetric in log space, all configurable:

* **hidden layers** (K101) — ``warn`` when ``weight_variance_ratio`` is outside
  ``[1/T_warn, T_warn]`` (default ``T_warn = 1.25``, std off by ±12%), ``error`` outside
  ``[1/T_err, T_err]`` (default ``T_err = 4``, std off by 2×). Each band is widened by 4 standard
  errors of the std estimate, ``exp(8 / sqrt(2(numel − 1)))`` (:func:`sampling_allowance`), so a
  tiny layer is not flagged for sampling noise (a 64×64 Linear: ×1.09; a 4-weight layer is
  effectively never flagged).
* **output (logit) layer** (K102) — judged against gain 1 (no nonlinearity after it); small is
  fine (zero init included, a common choice for logits), only too large is flagged: ``warn`` above
  ``2·T_warn``, ``error`` above ``2·T_err`` (the 2 lets a ReLU-gain Kaiming logit layer pass).
  It is the layer the graph shows feeding a model output, or without a graph the last weighted
  layer in order. It is not part of the chain.
* **classifier-head layers** (K101 note) — a convolutional net's linear that reaches the model only
  through the output layer (``graph.head_layers``): shrinking by at most ``1/T_chain`` is ``ok``
  with a note (it sets the logits' scale, like a small output layer); larger or far smaller: K101.
* **stream layers** (K103) — feed the residual stream: the hidden band, at most ``warn``.
* NaN/Inf values (K105), all-zero (K106) and constant (K107) hidden weights are ``error``; a mean
  larger than half the std is ``warn`` (K104: Kaiming assumes zero-mean weights).
* **structural** layers — followed by a normalization, or inside a residual branch: not judged
  against Kaiming (their scale does not set the forward signal), only K106/K107.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..gains import expected_std, torch_default_init
from ..report import LayerFinding, Role, Status
from ..stats import is_float_dtype
from .registry import Rule, flag, mark_skip
from .skips import S001, S002
from .stream import BANDS as _BANDS
from .stream import K103

if TYPE_CHECKING:
    from ..model import Layer
    from ..settings import Settings


K101 = Rule(
    code="K101",
    name="hidden-variance-off-kaiming",
    severities=(Status.WARN,),
    applies_to="layer (role hidden)",
    title="A hidden layer's weight variance is off Kaiming's.",
    what="`weight_variance_ratio = (std / expected_std)²`, `expected_std = gain / sqrt(fan)`.",
    why="A hidden layer multiplies the signal's variance by its `weight_variance_ratio`; away from "
    "1 the signal shrinks or grows at every such layer and vanishes or explodes with depth. One "
    "layer alone is a constant factor, not a drift over depth: at most a warning; the layer "
    "becomes error when the drift compounds (C501, P203) or the signal measurably vanishes (P205).",
    formula="He et al. 2015, eq. 10 (`fan_in`) / eq. 14 (`fan_out`): `Var[w] = gain² / fan`. "
    "warn when `|ln r| > ln T_warn + a`, with the sampling allowance `a = 8 / sqrt(2(numel − 1))` "
    "(4 standard errors of `ln Var` from `numel` samples). In fan_out mode a layer whose std is "
    "closer to fan_in's than to fan_out's by more than that band is judged in fan_in (§2.2: "
    "either condition is sufficient; torchvision's VGG linears N(0, 0.01) at fan_in 25088 are "
    "1.25× fan_in Kaiming; not when `--mode` is forced). A convolutional net's classifier-head "
    "layer (a linear whose every path reaches the model through the output layer only: "
    "activations, dropout, flatten between) with `−ln T_chain − a < ln r < 0` is a note (ok, "
    "rescale kept): with ReLU-like followers `W·α` only scales the logits by α, as a small output "
    'layer does (K102); measured in docs/rules-evidence.md "Head layers". Weights drawn by torch\'s '
    "own default for nn.Linear/nn.Conv, `kaiming_uniform_(a=√5)` = U(±1/√fan_in) (std within 4 "
    "standard errors, `4·sqrt(0.2/numel)`, of `1/sqrt(3·fan_in)`, and `max|w|` within 1 % under "
    "`1/sqrt(fan_in)`), are named so in a ReLU layer's message: 0.41× Kaiming, Var[y] ×1/6 per "
    'ReLU layer (measured: docs/rules-evidence.md "Torch\'s default init").',
    silence=_BANDS,
    messages={
        "default": "{what}: variance {change} ×{ratio:.3g} here; rescale W by {scale:.3g}",
        "torch_default": "{what}: torch's default init for nn.Linear/nn.Conv (U(±1/√fan_in)), 0.41× "
        "Kaiming for ReLU: variance {change} ×{ratio:.3g} here, and in a deep ReLU stack ×1/6 per "
        "layer (×(1/6)^L until the biases' own variance dominates); rescale W by {scale:.3g}",
        "head": "{what}: variance shrinks ×{ratio:.3g} here; fine: a classifier-head layer that "
        "reaches the model only through the output layer sets the logits' scale, as a small output "
        "layer does (K102; the loss at init: P207), within 1/compound-threshold; rescale W by "
        "{scale:.3g} for Kaiming",
    },
)

K102 = Rule(
    code="K102",
    name="output-too-large",
    severities=(Status.WARN, Status.ERROR),
    applies_to="layer (role output)",
    title="The output (logit) layer's weights are too large.",
    what="The output layer's `weight_variance_ratio` against gain 1; only too large is flagged.",
    why="Large logits start the softmax saturated: confident wrong predictions and tiny gradients. "
    "Small output weights (zero init included) are a common, harmless choice.",
    formula="Gain 1 (no nonlinearity after it); warn when `ln r > ln(2·T_warn) + a`, error when "
    "`ln r > ln(2·T_err) + a` (the 2 lets a ReLU-gain Kaiming logit layer pass).",
    silence="Scale the logit layer down (`initdoctor fix --all`), or widen the thresholds.",
    messages={
        "default": "output layer, judged against gain {gain:.3g}: {what}; too large: logits start saturated",
        "ok": "output layer, judged against gain {gain:.3g}: {what}; fine",
    },
)

K104 = Rule(
    code="K104",
    name="nonzero-mean",
    severities=(Status.WARN,),
    applies_to="layer (roles hidden, stream)",
    title="The weights' mean is large against their std.",
    what="`|mean| / std` of the weights.",
    why="Kaiming's derivation assumes zero-mean weights; a mean shifts every unit the same way.",
    formula="warn when `|mean| > 0.5·std` and `|mean| > 4·std / sqrt(n)` (beyond 4 standard "
    "errors of the mean of `n` finite values).",
    silence="Re-initialize with a zero-mean distribution.",
    messages={"default": "mean {mean:.3g} is {times:.2f}× the std (Kaiming assumes zero mean)"},
)

K105 = Rule(
    code="K105",
    name="nonfinite-weights",
    severities=(Status.ERROR,),
    applies_to="layer (every role)",
    title="NaN or Inf values in the weight.",
    what="The count of NaN and Inf values in the weight tensor.",
    why="One NaN weight makes every output it touches NaN.",
    formula="`nan_count + inf_count > 0`.",
    silence="Re-initialize or repair the checkpoint.",
    messages={"default": "{nan} NaN and {inf} Inf values in the weight"},
)

K106 = Rule(
    code="K106",
    name="all-zero-weights",
    severities=(Status.ERROR,),
    applies_to="layer (roles hidden, stream, normalized)",
    title="Every weight is zero.",
    what="Whether every weight value is zero (an all-zero output layer or residual-branch layer "
    "is fine and not flagged).",
    why="No signal passes and no gradient reaches earlier layers; before a normalization, the "
    "normalization divides zero by ~0.",
    formula="`all(w == 0)`.",
    silence="Initialize the layer (zero-init is meant for logits and a residual branch's last layer).",
    messages={
        "default": "all weights are zero: no signal passes, no gradient reaches earlier layers",
        "normalized": "all weights are zero: the normalization then divides zero by ~0",
    },
)

K107 = Rule(
    code="K107",
    name="constant-weights",
    severities=(Status.ERROR,),
    applies_to="layer (every judged role)",
    title="Every weight has the same (non-zero) value.",
    what="The weights' std being exactly 0 with a non-zero mean.",
    why="All units compute the same function and receive the same gradient: the symmetry is never broken.",
    formula="`std == 0`.",
    silence="Initialize with a random distribution.",
    messages={"default": "constant weights (every value {mean:.3g}): all units compute the same function"},
)

RULES = (K101, K102, K103, K104, K105, K106, K107)

#: the plain ``ok`` texts (no rule fired)
WHAT = "std {std:.3g} is {ratio:.2f}× Kaiming {expected:.3g} ({nonlinearity}, {mode} {fan})"
ZERO_OUTPUT = "all-zero output layer: a common choice for logits"
NORMALIZED = (
    "followed by a normalization layer: its scale does not set the forward signal; not judged against Kaiming"
)
GATE = (
    "in a squeeze-excitation gate (σ(…) multiplies the signal): it scales the signal by a factor in "
    "(0, 1) and carries none; not judged against Kaiming"
)
ZERO_RESIDUAL = "all-zero, inside residual block {block}: the block starts as the identity (zero-init)"
RESIDUAL = (
    "inside residual block {block}: std is {ratio:.2f}× Kaiming; judged by the block's "
    "measured growth (residual stream), not per layer"
)


def sampling_allowance(numel: int) -> float:
    """Log-space widening of a band: 4 standard errors of ``ln(variance)`` from ``numel`` samples.

    The relative standard error of a sample std is ``1 / sqrt(2(n − 1))`` (normal weights), so that
    of the variance in log space is twice that: 4 of them = ``8 / sqrt(2(n − 1))``.
    """
    if numel < 2:
        return math.inf
    return 8.0 / math.sqrt(2.0 * (numel - 1))


def precheck(finding: LayerFinding, layer: Layer, ignored: frozenset[str]) -> bool:
    """Findings that come before any ratio: dtype (S001), empty (S002), NaN/Inf (K105).
    True when one of them decided the layer (no further judgement)."""
    st = layer.stats
    if not is_float_dtype(st.dtype):
        mark_skip(finding, S001, S001.message(dtype=st.dtype))
    elif st.numel == 0:
        mark_skip(finding, S002, S002.message())
    elif st.nan_count or st.inf_count:
        finding.message = K105.message(nan=st.nan_count, inf=st.inf_count)
        flag(finding, K105, Status.ERROR, ignored)
    else:
        return False
    return True


def judge_layer(
    f: LayerFinding,
    layer: Layer,
    s: Settings,
    ignored: frozenset[str],
    block: str | None,
    prenormed: bool = False,
    per_layer_mode: bool = True,
    head: bool = False,
    renormed: bool = False,
) -> float | None:
    """Judge one float, finite, non-empty layer; returns ``ln weight_variance_ratio`` when the
    layer belongs to the hidden chain (see :mod:`initdoctor.checks.chain`), else None.
    ``prenormed``: every residual block normalizes its input (pre-LN), so a stream feeder that is
    too small is harmless (K103 judges only too large). ``per_layer_mode``: a detected mode may be
    left per layer (:func:`layer_mode`); a forced one (``--mode``) may not. ``head``: the layer reaches
    the model only through the output layer (a classifier head, ``graph.head_layers``).
    ``renormed``: every path from the layer meets a normalization (``desc.renormalized``)."""
    st = layer.stats
    # the logits' scale is a forward property: the output layer is judged on fan_in in either mode
    mode = "fan_in" if f.role == Role.OUTPUT else s.mode
    if per_layer_mode and f.role != Role.OUTPUT:
        mode = layer_mode(layer, f.gain, s)
    fan = layer.fan_in if mode == "fan_in" else layer.fan_out
    exp = expected_std(f.gain, max(fan, 1))  # g / sqrt(n): He et al. 2015, eq. 10 / eq. 14
    f.expected_std = exp
    zero = st.all_zero
    if f.role in (Role.NORMALIZED, Role.RESIDUAL, Role.GATE):
        judge_structural(f, layer, exp, block, zero, ignored)
        return None
    if zero:
        f.std_ratio = f.weight_variance_ratio = 0.0
        if f.role == Role.OUTPUT:
            f.message = ZERO_OUTPUT
        else:
            f.message = K106.message()
            flag(f, K106, Status.ERROR, ignored)
        return None
    if st.std == 0.0:
        f.std_ratio = f.weight_variance_ratio = 0.0
        f.message = K107.message(mean=st.mean)
        flag(f, K107, Status.ERROR, ignored)
        return None
    ratio = st.std / exp
    f.std_ratio = ratio
    f.weight_variance_ratio = ratio * ratio  # r = (s / expected_std)²
    f.suggested_scale = 1.0 / ratio
    ln_r = math.log(f.weight_variance_ratio)
    allow = sampling_allowance(st.finite_count)  # a = 8 / sqrt(2(n − 1))
    what = WHAT.format(std=st.std, ratio=ratio, expected=exp, nonlinearity=f.nonlinearity, mode=mode, fan=fan)
    status = Status.OK
    if f.role == Role.OUTPUT:
        # K102: only too large; gain 1, bands doubled: ln r > ln(2·T) + a
        if ln_r > math.log(2 * s.error_threshold) + allow:
            status = Status.ERROR
        elif ln_r > math.log(2 * s.warn_threshold) + allow:
            status = Status.WARN
        f.message = K102.message("default" if status is not Status.OK else "ok", gain=f.gain, what=what)
        if status is not Status.OK:
            flag(f, K102, status, ignored)
        return None
    rule = K103 if f.role == Role.STREAM else K101
    renorm_floor = renormed and ln_r > -2 * math.log(s.compound_threshold) - allow
    # K101 / K103: |ln r| > ln T_warn + a, the band widened by the sampling allowance; at most warn
    # (one layer does not compound: C501, P203 and P205 promote the layers that do)
    if abs(ln_r) > math.log(s.warn_threshold) + allow:
        status = Status.WARN
    # K101 head note: a classifier-head layer (graph.head_layers) with 1/T_chain ≤ r < 1 (band
    # widened by a). With ReLU-like followers, W_head·α only scales the logits by α, as a small
    # output layer does (K102). Measured (docs/rules-evidence.md "Head layers", 3 seeds each): at
    # r = 0.2 (VGG) the head trains as at r = 1 (SGD 1.16 ± 0.26 vs 1.14 ± 0.20, AdamW 0.45 vs
    # 0.61), a feature-stack conv at r = 0.2 does not (1.54, 0.58); at r = 0.01 and below it trains
    # worse (MobileNet SGD 1.81 vs 0.16 at r = 1), and so at torchvision MobileNetV3's r = 0.032
    # (1.18 vs 0.13): the floor is the chain's own limit, 1/T_chain.
    if head and ln_r < 0 and ln_r > -math.log(s.compound_threshold) - allow and status is not Status.OK:
        status = Status.OK
        f.message = K101.message("head", what=what, ratio=f.weight_variance_ratio, scale=f.suggested_scale)
    # K103 renormalized: a norm on every path divides the start's scale out; floor 1/T_chain²,
    # measured (docs/rules-evidence.md "Sweep warnings"): ALBERT at r = 0.013 trains as at r = 1,
    # at r = 1.3e-6 worse; ConvNeXt trains alike at r = 0.024, 1 and 2.4e-6
    elif rule is K103 and ln_r < 0 and status is not Status.OK and (prenormed or renorm_floor):
        status = Status.OK  # each branch normalizes the stream first: its starting scale is secondary
        key = "prenormed" if prenormed else "renormalized"
        f.message = K103.message(key, what=what, ratio=f.weight_variance_ratio)
    elif status is Status.OK:
        f.message = f"{what}: ok"
    else:
        change = "shrinks" if ln_r < 0 else "grows"
        # torch's own default, U(±1/√fan_in) (kaiming_uniform_(a=√5)): std 1/√(3·fan_in), bound
        # max|w| = 1/√fan_in (gains.torch_default_init): named, as users meet it most
        torch_default = (
            f.nonlinearity == "relu"
            and "torch_default" in rule.messages
            and torch_default_init(st.std, st.max_abs, layer.fan_in, st.finite_count)
        )
        f.message = rule.message(
            "torch_default" if torch_default else "default",
            what=what,
            change=change,
            ratio=f.weight_variance_ratio,
            scale=f.suggested_scale,
        )
        flag(f, rule, status, ignored)
    # K104: |mean| > 0.5·std and beyond 4 standard errors of the mean, 4·std / sqrt(n)
    if (
        st.mean is not None
        and abs(st.mean) > 0.5 * st.std
        and abs(st.mean) > 4 * st.std / math.sqrt(st.finite_count)
    ):
        f.message += "; " + K104.message(mean=st.mean, times=abs(st.mean) / st.std)
        flag(f, K104, Status.WARN, ignored)
    if f.role == Role.STREAM:
        f.message += "; " + K103.message("note")
        return None
    return ln_r


def layer_mode(layer: Layer, gain: float, s: Settings) -> str:
    """The fan a layer is judged on: ``s.mode``, except in fan_out mode for a layer whose std is
    closer to fan_in's Kaiming std than to fan_out's by more than the warn band (with the sampling
    allowance) — He et al. 2015 §2.2: each condition is sufficient, and libraries mix them per
    layer (torchvision's VGG: convs ``kaiming_normal_(mode="fan_out")``, linears ``N(0, 0.01)``:
    classifier.0 is ×1.25 in fan_in 25088, ×0.2 in fan_out 4096)."""
    st = layer.stats
    if s.mode != "fan_out" or layer.fan_in == layer.fan_out or layer.fan_in <= 0 or layer.fan_out <= 0:
        return s.mode
    if st.std is None or not (st.std > 0 and math.isfinite(st.std)):
        return s.mode
    band = math.log(s.warn_threshold) + sampling_allowance(st.finite_count)
    off_in = abs(2 * math.log(st.std / expected_std(gain, layer.fan_in)))  # |ln r| for fan_in
    off_out = abs(2 * math.log(st.std / expected_std(gain, layer.fan_out)))
    return "fan_in" if off_in < off_out - band else s.mode


def judge_structural(
    f: LayerFinding, layer: Layer, exp: float, block: str | None, zero: bool, ignored: frozenset[str]
) -> None:
    """Layers whose weight scale does not set the forward signal by itself: followed by a
    normalization (``normalized``), or inside a residual branch (``residual``, judged by the
    block's measured growth instead of against Kaiming)."""
    st = layer.stats
    if not zero and st.std > 0:
        f.std_ratio = st.std / exp
        f.weight_variance_ratio = f.std_ratio**2
    if f.role in (Role.NORMALIZED, Role.GATE):
        f.message = NORMALIZED if f.role == Role.NORMALIZED else GATE
        if zero:
            f.message = K106.message("normalized")
            flag(f, K106, Status.ERROR, ignored)
        elif st.std == 0:
            f.message = K107.message(mean=st.mean)
            flag(f, K107, Status.ERROR, ignored)
        return
    if f.role == Role.GATE:  # facts only; a sigmoid gate's scale is not a signal path's
        ratio = f"{f.std_ratio:.3g}" if f.std_ratio is not None else "n/a"
        f.message = f"squeeze-excitation gate: not on the signal path, not judged (std ratio {ratio})"
        return
    if zero:
        f.message = ZERO_RESIDUAL.format(block=block)
    elif st.std == 0:
        f.message = K107.message(mean=st.mean)
        flag(f, K107, Status.ERROR, ignored)
    else:
        f.message = RESIDUAL.format(block=block, ratio=f.std_ratio)
