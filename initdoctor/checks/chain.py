"""C5xx: compounding over the chain of hidden layers.

The hidden layers form a chain whose variances multiply: when ``prod(weight_variance_ratio)`` over
the chain leaves ``[1/T_chain, T_chain]`` (default 16) the summary is ``error`` and every ``warn``
layer drifting the same way becomes ``error``: 30 layers that each halve the variance (xavier on a
square ReLU layer) shrink the signal by 2⁻²⁹.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..report import LayerFinding, Status
from .registry import Rule, flag

if TYPE_CHECKING:
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
    formula="error when `|Σ ln r_l| > ln T_chain` (`compound-threshold`, default 16); every warn "
    "layer drifting the same way (`ln r_l · Σ ln r > 0`) becomes error.",
    silence="Fix the per-layer scales (`initdoctor fix`), or raise `compound-threshold`.",
    messages={
        "default": "the signal's variance changes ×{total:.3g} over the chain of hidden layers "
        "(beyond ×{threshold:g}): it will vanish or explode",
        "layer": "compounds over {n} layers to ×{total:.3g}",
    },
)

RULES = (C501,)


def compound(chain: list[tuple[LayerFinding, float]], s: Settings, ignored: frozenset[str]) -> float | None:
    """ln of the product of the chain's variance ratios, ``Σ ln r_l``; promotes same-direction
    ``warn`` layers to ``error`` when it is beyond the compound threshold (C501)."""
    if not chain:
        return None
    total = sum(ln_r for _, ln_r in chain)  # ln prod(r_l) = Σ ln r_l
    if broken(total, s) and C501.code not in ignored:
        drifting = [f for f, ln_r in chain if f.status == Status.WARN and ln_r * total > 0]
        for f in drifting:
            f.message += "; " + C501.message("layer", n=len(chain), total=math.exp(total))
            flag(f, C501, Status.ERROR, ignored)
    return total


def broken(ln_compound: float | None, s: Settings) -> bool:
    """C501's test: ``|Σ ln r| > ln T_chain``."""
    return ln_compound is not None and abs(ln_compound) > math.log(s.compound_threshold)
