"""C5xx: compounding over the chain of hidden layers.

The hidden layers form a chain whose variances multiply: when ``prod(weight_variance_ratio)`` over
the chain leaves ``[1/T_chain, T_chain]`` (default 16) the summary is ``error`` and every ``warn``
layer drifting the same way becomes ``error``: 30 layers that each halve the variance (xavier on a
square ReLU layer) shrink the signal by 2⁻²⁹.

**Compounding needs two layers** (issue 14, item 1: a one-off off-scale layer that does not
compound is at most a warning). The test is on the product without its single worst layer in the
product's direction, ``Σ ln r_l − ln r_worst``: one layer's constant factor is a rescale of what
follows (like a logit scale), not a drift over depth — torchvision's MobileNetV3 classifier
``N(0, 0.01)`` at fan_in 96 is ×0.0065 alone and warns (K101); two such layers (a tiny VGG's
classifier) are ×1e-5 and error. The reported product (``compound_variance_ratio``) stays the full one.

The product is an assumption (each layer's gain, the chain itself); when the probe measured the
same chain, the measurement decides (:func:`measured_ratio`): the measured product over the chain,
``Var[y_last] / (g_1² · E[x_1²])``, within ``[1/T_chain, T_chain]`` contradicts the static product
and C501 does not fire (the product stays in the report as explanation); one beyond it confirms it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..report import LayerFinding, Status
from .registry import Rule, flag

if TYPE_CHECKING:
    from ..probe import ProbeResult
    from ..settings import Settings

C501 = Rule(
    code="C501",
    name="compound-drift",
    severities=(Status.ERROR,),
    applies_to="model (the chain of hidden layers) and its drifting layers",
    title="The hidden layers' variance ratios multiply beyond the compound threshold.",
    what="`prod(weight_variance_ratio)` over the hidden layers (embeddings, output, stream, "
    "residual and normalized layers are not in the chain).",
    why="Each layer multiplies the signal's variance by its ratio, so small per-layer errors "
    "compound: 30 layers at ×0.5 each (xavier on square ReLU layers) shrink it by 2⁻²⁹ and the "
    "signal vanishes (He et al. 2015, eq. 9: `Var[y_L] = Var[y_1] · prod(½ n_l Var[w_l])`).",
    formula="error when `|Σ ln r_l − ln r_worst| > ln T_chain` (`compound-threshold`, default 16; "
    "`r_worst` the single layer that drifts most in the direction of `Σ ln r`: compounding needs "
    "two layers); every warn layer drifting the same way (`ln r_l · Σ ln r > 0`) becomes error. "
    "Measurement beats the product: when the probe measured every layer of the chain and the "
    "measured product `Var[y_last] / (g_1² · E[x_1²])` (last output against first input) is within "
    "`[1/T_chain, T_chain]`, C501 does not fire.",
    silence="Fix the per-layer scales (`initdoctor fix`), or raise `compound-threshold`.",
    messages={
        "default": "the signal's variance changes ×{total:.3g} over the chain of hidden layers "
        "(beyond ×{threshold:g}): it will vanish or explode",
        "layer": "compounds over {n} layers to ×{total:.3g}",
        "contradicted": "the static chain product ×{total:.3g} is not confirmed: the probe measured "
        "×{measured:.3g} over the same chain",
    },
)

RULES = (C501,)


def compound(
    chain: list[tuple[LayerFinding, float]],
    s: Settings,
    ignored: frozenset[str],
    measured: float | None = None,
) -> float | None:
    """ln of the product of the chain's variance ratios, ``Σ ln r_l``; promotes same-direction
    ``warn`` layers to ``error`` when it is beyond the compound threshold (C501) and the
    measurement over the chain (``measured``, :func:`measured_ratio`) does not contradict it."""
    if not chain:
        return None
    total = sum(ln_r for _, ln_r in chain)  # ln prod(r_l) = Σ ln r_l
    if fires(compounding(chain), measured, s) and C501.code not in ignored:
        drifting = [f for f, ln_r in chain if f.status == Status.WARN and ln_r * total > 0]
        for f in drifting:
            f.message += "; " + C501.message("layer", n=len(chain), total=math.exp(total))
            flag(f, C501, Status.ERROR, ignored)
    return total


def compounding(chain: list[tuple[LayerFinding, float]]) -> float | None:
    """``Σ ln r_l − ln r_worst``: the chain's product without its single worst layer in the
    product's direction (see the module doc: one layer does not compound). None for no chain."""
    if not chain:
        return None
    total = sum(ln_r for _, ln_r in chain)
    worst = max((ln_r for _, ln_r in chain), key=lambda x: x * total, default=0.0)
    return total - worst if worst * total > 0 else total


def broken(ln_compound: float | None, s: Settings) -> bool:
    """C501's static test on :func:`compounding`: ``|Σ ln r − ln r_worst| > ln T_chain``."""
    return ln_compound is not None and abs(ln_compound) > math.log(s.compound_threshold)


def within(ratio: float | None, s: Settings) -> bool:
    """A measured ratio inside ``[1/T_chain, T_chain]``."""
    return ratio is not None and ratio > 0 and abs(math.log(ratio)) <= math.log(s.compound_threshold)


def fires(ln_compound: float | None, measured: float | None, s: Settings) -> bool:
    """C501: the static product is beyond the threshold and no measurement contradicts it."""
    return broken(ln_compound, s) and not within(measured, s)


def measured_ratio(chain: list[tuple[LayerFinding, float]], probe: ProbeResult | None) -> float | None:
    """The chain's variance product as the probe measured it: ``Var[y_last] / (g_1² · E[x_1²])``,
    the last layer's output against the first layer's input (the first layer's gain ``g_1`` is
    the one assumption left; a Kaiming chain gives 1, as ``prod(r_l)`` does). None without a probe,
    with fewer than 2 layers, or unless every layer of the chain was measured (finite, positive,
    from a finite input): then it is not the same chain."""
    if probe is None or len(chain) < 2:
        return None
    variances = []
    for f, _ in chain:
        a = probe.layers.get(f.name)
        if a is None or a.input_nonfinite or not math.isfinite(a.activation_var) or a.activation_var <= 0:
            return None
        variances.append(a.activation_var)
    first = probe.layers[chain[0][0].name]
    ex2 = first.input_second_moment
    if not (math.isfinite(ex2) and ex2 > 0):
        return None
    return variances[-1] / (chain[0][0].gain ** 2 * ex2)  # Var[y_L] / (g_1² · E[x_1²])
