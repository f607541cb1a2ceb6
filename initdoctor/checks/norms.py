"""N4xx: normalization layers' affine parameters (reported; only non-finite values are judged)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..report import NormFinding, Status
from .registry import Rule, flag

if TYPE_CHECKING:
    from ..model import NormLayer

N401 = Rule(
    code="N401",
    name="nonfinite-norm-params",
    severities=(Status.ERROR,),
    applies_to="norm layer",
    title="NaN or Inf in a normalization layer's affine scale or shift.",
    what="NaN and Inf values in the normalization's weight (γ) and bias (β).",
    why="The normalization's output is `γ·x̂ + β`: one NaN makes every output it touches NaN.",
    formula="`nan_count + inf_count > 0` in γ or β.",
    silence="Re-initialize γ (ones, or zeros for a residual branch's last norm) and β (zeros).",
    messages={"default": "NaN or Inf in the affine parameters"},
)

RULES = (N401,)
REPORTED = "affine scale reported; not judged against Kaiming"
ZERO_SCALE = "all-zero scale (zero-init of a residual branch's last norm)"


def judge_norm(norm: NormLayer, ignored: frozenset[str]) -> NormFinding:
    st = norm.stats
    bias = norm.bias_stats
    finding = NormFinding(
        norm.name,
        norm.kind,
        list(norm.shape),
        st.mean,
        st.std,
        bias.mean if bias else None,
        bias.std if bias else None,
        Status.OK,
        REPORTED,
    )
    if st.nan_count or st.inf_count or (bias and (bias.nan_count or bias.inf_count)):
        finding.message = N401.message()
        flag(finding, N401, Status.ERROR, ignored)
    elif st.numel and st.all_zero:
        finding.message = ZERO_SCALE
    return finding
