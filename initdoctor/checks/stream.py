"""K103: a layer that starts the residual stream (:func:`initdoctor.graph.stream_inputs`), judged
against Kaiming like a hidden layer (:mod:`initdoctor.checks.weights` applies it) but at most a
warning, and not when the stream's starting scale is divided out downstream: every block
normalizes its input (pre-LN), or every path from the layer meets a normalization
(``ModelDescription.renormalized``: a post-LN block, or a norm through linear ops)."""

from __future__ import annotations

from ..report import Status
from .registry import Rule

BANDS = (
    "Widen with `warn-threshold` / `error-threshold`, or give the layer its true nonlinearity "
    "(`overrides`), or rescale W by `suggested_scale` (`initdoctor fix`)."
)

K103 = Rule(
    code="K103",
    name="stream-variance-off-kaiming",
    severities=(Status.WARN,),
    applies_to="layer (role stream)",
    title="A layer feeding the residual stream is off Kaiming (at most a warning).",
    what="As K101, for a layer whose output starts the residual stream.",
    why="It sets the stream's starting scale, which the residual blocks then carry; it does not "
    "compound like a chain layer, so it is never more than a warning. When every block "
    "normalizes its input (pre-LN: ViT's patch projection, std 0.02 = 0.28× Kaiming) a small "
    "start is harmless: each branch sees a unit-variance input and their additions set the "
    "stream's scale (Xiong et al. 2020); only too large (the stream dwarfs the branches) warns. "
    "So is a small start when every path from the layer meets a normalization through linear "
    "ops or enters a post-LN block (ALBERT, ELECTRA; ConvNeXt's LayerNorms), down to "
    "`r = 1/T_chain²` (ALBERT trained as well at r = 0.013 as at 1, worse at 1.3e-6). Not when a "
    "nonlinearity outside a block reads it first (Wav2Vec2's positional conv + GELU: the rescale "
    "trained better).",
    formula="As K101 (He et al. 2015, eq. 10 / 14, with the sampling allowance), capped at warn; "
    "with every block pre-normalized, only `ln r > ln T + a` warns; with the layer's output "
    "renormalized, `ln r > ln T + a` or `ln r < −2 ln T_chain − a`.",
    silence=BANDS,
    messages={
        "default": "{what}: variance {change} ×{ratio:.3g} here; rescale W by {scale:.3g}",
        "note": "feeds the residual stream (its starting scale): at most a warning",
        "prenormed": "{what}: the stream starts ×{ratio:.3g} small; fine: every block normalizes "
        "its input (pre-norm), so the blocks' additions set the stream's scale",
        "renormalized": "{what}: the stream starts ×{ratio:.3g} small; fine: every path from it "
        "meets a normalization before the output, which divides its scale out",
    },
)
