"""R3xx: residual blocks — ``growth_k = Var[out_k] / Var[skip_k]``, measured by the probe.

Two ways a residual stream grows (Hanin & Rolnick 2018; De & Smith 2020, "Batch normalization
biases residual blocks towards the identity"):

* **exponential** — an *unnormalized* branch scales with its input, ``Var[branch_k] = g ·
  Var[skip_k]``, so each block multiplies the stream by ``1 + g`` and the stream grows as
  ``(1 + g)^L`` (a Kaiming ReLU branch: ``g ≈ 1``, doubling per block). It compounds through
  unnormalized projections (a downsampling 1×1 conv carries the stream's scale on).
* **linear** — a *normalized* branch (one of its layers feeds a normalization) adds a bounded
  amount ``Δ`` whatever the stream's scale: ``Var[skip_k] ≈ V_0 + k·Δ`` and the branch gain
  ``g_k = (Var[out_k] − Var[skip_k]) / Var[skip_k]`` decays like ``1/k``. Healthy.

R301 judges each *run* of consecutive unnormalized blocks: the stream's growth over the run,
``prod_k Var[out_k] / Var[out_{k−1}]`` (= ``Var[out_last] / Var[skip_first]``), beyond the compound
threshold is an ``error`` when the growth is exponential — the slope ``b`` of ``ln Δ_k`` against
``ln Var[skip_k]`` is ≥ ½ (``b = 1``: the branch scales with its input; ``b = 0``: it adds a
constant). R302 sees a single block that alone grows or shrinks the stream beyond the compound
threshold, whatever the other blocks do (a pre-normalized branch against what the other blocks
add, not against a stream that starts tiny). R303 sees a post-norm block (the add feeds a norm,
BERT) whose branch dwarfs the skip, which the norm then erases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..report import BlockFinding, Status
from .modes import tap_fraction
from .registry import Rule, flag

if TYPE_CHECKING:
    from ..model import ModelDescription
    from ..probe import ProbeResult
    from ..settings import Settings

_REMEDY = (
    "Zero-init the last norm's γ or the last layer of each branch, or scale branches by "
    "1/sqrt(number of blocks) (Fixup, Zhang et al. 2019); or normalize the branches"
)

R301 = Rule(
    code="R301",
    name="residual-growth",
    severities=(Status.ERROR,),
    applies_to="residual block and model (the residual stream, measured)",
    title="The residual stream grows exponentially over unnormalized blocks.",
    what="Over each run of consecutive unnormalized residual blocks (no layer of the branch feeds "
    "a normalization): the stream's growth `Var[out_last] / Var[skip_first]` and the slope `b` "
    "of `ln Δ_k` against `ln Var[skip_k]`, `Δ_k = Var[out_k] − Var[skip_k]` divided by the "
    "fraction of the branch convs' taps that read real input (on maps smaller than the kernel "
    "reaches a branch adds less for that reason alone).",
    why="An unnormalized branch scales with its input (`Δ_k = g·Var[skip_k]`, `b = 1`): the "
    "stream grows as `(1 + g)^L` and training diverges (a ResNet-18 without BatchNorm: NaN at "
    "lr 0.1, where the BN version trains). A normalized branch adds a bounded amount (`b ≈ 0`, "
    "linear growth): healthy (De & Smith 2020).",
    formula="error when `b ≥ 0.5` and either `Var[out_last] / Var[skip_first] > T_chain` "
    "(`compound-threshold`) or a block with `g_k = Δ_k / Var[skip_k] ≥ 1` (a branch that "
    "doubles the stream: Kaiming scale, unnormalized). `b` is the least-squares slope over the "
    "run's blocks with `Δ_k > 0` whose skip is the previous block's output (all of the run's "
    "blocks when fewer than 3 are); with fewer than 3 points or a spread of `ln Var[skip]` under "
    "ln 2 it is undetermined and the total alone decides. Blocks with `growth ≥ 1.5` carry the "
    "status.",
    silence=_REMEDY + "; or raise `compound-threshold`.",
    messages={
        "default": "residual stream grows exponentially over {n} unnormalized blocks: ×{total:.3g} "
        "({first} → {last}; ×{geo:.3g} per block, branch gain slope {slope}); blocks: {flagged}; "
        "remedies: zero-init the last norm's γ or the last layer of each branch, or scale "
        "branches by 1/sqrt(number of blocks) (Fixup)",
        "block": "part of an exponentially growing residual stream (unnormalized branch)",
    },
)

R302 = Rule(
    code="R302",
    name="residual-block-jump",
    severities=(Status.ERROR,),
    applies_to="residual block (measured)",
    title="One residual block alone grows or shrinks the stream beyond the compound threshold.",
    what="`growth_k = Var[out_k] / Var[skip_k]` of each block; for a pre-normalized branch (its "
    "first op normalizes the stream, pre-LN) that grows the stream, against a reference skip "
    "`R_k = max(Var[skip_k], min(1, median_{j≠k} Δ_j))`: `1 + Δ_k / R_k`, `Δ_k = Var[out_k] − "
    "Var[skip_k]`.",
    why="A single branch whose output is much larger than the stream (a block initialized "
    "×10 too large, a LLaMA with `initializer_range=1.0`: ×17,594 in block 0) swamps the "
    "stream whatever the other blocks do. A pre-normalized branch adds a bounded amount whatever "
    "the stream's scale, so a stream that starts tiny (CLIP's text embeddings, std 0.02) grows "
    "×34 in its first block and that is no jump: the first block adds what the others add "
    "(Xiong et al. 2020, pre-LN).",
    formula="error when `|ln growth_k| > ln T_chain` (`compound-threshold`, default 16); for a "
    "pre-normalized branch with `Δ_k > 0`, `growth_k = 1 + Δ_k / R_k` (the others' median "
    "addition, capped at 1: what a unit-gain branch adds from a normalized input).",
    silence="Rescale the named block's branch (its last layer), or raise `compound-threshold`.",
    messages={
        "default": "residual blocks that alone change the stream beyond ×{threshold:g}: {blocks}",
        "block": "this block alone changes the stream ×{growth:.3g} (beyond ×{threshold:g})",
    },
)

R303 = Rule(
    code="R303",
    name="post-norm-branch-dominates",
    severities=(Status.ERROR,),
    applies_to="residual block (post-norm: the add feeds a normalization, measured)",
    title="A post-norm block's branch dwarfs its skip: the norm that follows erases the stream.",
    what="`growth_k = Var[x + branch] / Var[x]` at the add of a post-LN block (BERT, DistilBERT: "
    "the add feeds a LayerNorm, the branch does not start with one).",
    why="A post-LN block normalizes the stream after each add, so the stream never grows; what "
    "breaks is the share of the skip: after the norm the skip keeps `1 / growth_k` of the "
    "variance. A branch at Kaiming/Xavier scale adds about the skip's variance (`growth ≈ 2`, the "
    "original Transformer); a block ×10 too large (BERT, std ×10 in one layer: ×4.4 at the "
    "attention add, ×6.6 at the FFN add, healthy ×1.00) swamps the skip and the gradient through "
    "the residual path (Liu et al. 2020, 'Understanding the Difficulty of Training Transformers'; "
    "Xiong et al. 2020).",
    formula="error when a post-norm block's `growth_k > 4` (the skip keeps under a quarter of "
    "the normalized output's variance: twice a Kaiming-scale branch's share).",
    silence="Rescale the named block's branch (its last layer), or ignore the rule.",
    messages={
        "default": "post-norm blocks whose branch dwarfs the skip (Var[x + branch] / Var[x] > "
        "{limit:g}; the norm after the add erases the stream): {blocks}",
        "block": "post-norm add: the branch dwarfs the skip (×{growth:.3g} > {limit:g}); the skip "
        "keeps {share:.0%} of the variance",
    },
)

POST_NORM_LIMIT = 4.0  # growth of a post-norm add beyond which the skip keeps under 1/4

RULES = (R301, R302, R303)


@dataclass
class Stream:
    """The residual stream's verdict for the summary."""

    growth: float  # geometric mean of the blocks' growth
    message: str
    status: Status  # ok when healthy, or when the rule is ignored
    ignored: bool = False  # the rule would have fired but is ignored by configuration
    rule: Rule = R301


HEALTHY = "residual stream: ×{geo:.3g} per block on average (×{total:.3g} over {n} blocks): healthy"
NORMALIZED = "normalized branch: adds a bounded amount (linear growth)"


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``ln Δ`` on ``ln V`` over ``(V, Δ)`` points with ``Δ > 0``; None
    with fewer than 3 points or a spread of ``ln V`` under ln 2 (the slope is not determined)."""
    pts = [(math.log(v), math.log(d)) for v, d in points if v > 0 and d > 0]
    if len(pts) < 3:
        return None
    xs = [x for x, _ in pts]
    if max(xs) - min(xs) < math.log(2):
        return None
    mx, my = sum(xs) / len(xs), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx  # b = cov(ln V, ln Δ) / var(ln V)


def taps(desc: ModelDescription, probe: ProbeResult | None, names: list[str]) -> float:
    """Product of the branch convs' padded-tap fractions (:func:`.modes.tap_fraction`; 1 when the
    probe did not record the maps): a branch on a 2×2 map adds (4/9)² of what it adds on a large one."""
    shapes = {layer.name: layer.shape for layer in desc.layers}
    frac = 1.0
    for name in names:
        a = probe.layers.get(name) if probe is not None else None
        if a is None or not a.input_spatial or not a.output_spatial or name not in shapes:
            continue
        f = tap_fraction(tuple(shapes[name][2:]), a.input_spatial, a.output_spatial)
        frac *= f if f else 1.0
    return frac


def jump_growth(
    pre_norm: bool, growth: float | None, skip: float, added: dict[int, float], k: int
) -> float | None:
    """R302's growth of block ``k``: ``Var[out] / Var[skip]``; for a pre-normalized branch that
    adds (``Δ_k > 0``), ``1 + Δ_k / R_k`` with ``R_k = max(Var[skip_k], min(1, median_{j≠k} Δ_j))``:
    the stream's scale is at least what the other blocks add, up to what a unit-gain branch adds
    from a normalized (unit-variance) input. A block with ``Δ_j ≤ 0`` adds nothing and counts as 0
    (it was dropped: in Gemma with layer 1 ×10, 2 layers, layer 0's blocks measure Δ ≈ 0 of either
    sign, so the median of what was left was the ×10 MLP's Δ = 3.6, R = 1, and the attention's
    Var[out]/Var[skip] = 58.6 became ×2.5; it trains 1.05 nats worse at 300 steps,
    docs/rules-evidence.md "Gemma ×10 in one layer")."""
    if growth is None or not pre_norm or growth <= 1 or skip <= 0:
        return growth
    others = sorted(max(d, 0.0) for j, d in added.items() if j != k)
    typical = others[len(others) // 2] if others else 0.0
    reference = max(skip, min(1.0, typical))
    return 1 + (growth - 1) * skip / reference


def runs(desc: ModelDescription, normalized: set[str]) -> list[list[int]]:
    """Indices of consecutive blocks whose branches are unnormalized (no layer feeds a norm, the
    branch does not start with one, the add feeds none: a pre-LN branch reads a unit-variance input
    whatever the stream's scale, a post-LN add is renormalized, so neither grows the stream
    exponentially; ELECTRA's post-LN stream measured ×75 from its first skip to its last add with
    every block at ×1.00, docs/rules-evidence.md). Sums
    of embedding lookups are no blocks at all (:func:`initdoctor.graph.residual_blocks` drops them:
    a trained BERT's type embeddings gave ×1.77e3 "growth", docs/rules-evidence.md)."""
    out: list[list[int]] = []
    current: list[int] = []
    for k, b in enumerate(desc.blocks):
        if b.pre_norm or b.post_norm or any(name in normalized for name in b.layers):
            if current:
                out.append(current)
            current = []
        else:
            current.append(k)
    if current:
        out.append(current)
    return out


def judge_blocks(
    desc: ModelDescription,
    probe: ProbeResult | None,
    s: Settings,
    ignored: frozenset[str],
    normalized: set[str] | None = None,
) -> tuple[list[BlockFinding], Stream | None]:
    """The blocks' findings and, when measured, the stream's verdict for the summary.
    ``normalized``: names of layers that feed a normalization (their branches grow linearly)."""
    if not desc.blocks:
        return [], None
    normalized = normalized or set()
    tv = probe.tensor_vars if probe is not None else {}
    blocks = []
    for b in desc.blocks:
        skip, out = tv.get(b.skip_tensor), tv.get(b.out_tensor)
        growth = out / skip if skip and out is not None and skip > 0 else None  # Var[out] / Var[skip]
        blocks.append(BlockFinding(b.name, list(b.layers), growth, Status.OK, ""))
    growths = [b.growth for b in blocks if b.growth is not None and b.growth > 0]
    if not growths:
        for bf in blocks:
            bf.message = "growth not measured (no probe)"
        return blocks, None
    for b, bf in zip(desc.blocks, blocks, strict=True):
        if bf.growth is None:
            bf.message = "growth not measured"
            continue
        bf.message = f"Var[out]/Var[skip] = {bf.growth:.3g}"
        if any(name in normalized for name in b.layers):
            bf.message += f"; {NORMALIZED}"
    total_all = math.prod(growths)
    geo = math.exp(sum(math.log(g) for g in growths) / len(growths))
    problems: list[tuple[Rule, str]] = []
    # R302: one block alone, |ln growth_k| > ln T_chain (a pre-normalized branch: 1 + Δ_k / R_k)
    limit = math.log(s.compound_threshold)
    jumps: list[str] = []
    added = {k: tv[b.out_tensor] - tv[b.skip_tensor] for k, b in enumerate(desc.blocks) if blocks[k].growth}
    for k, (b, bf) in enumerate(zip(desc.blocks, blocks, strict=True)):
        jump = jump_growth(b.pre_norm, bf.growth, tv.get(b.skip_tensor, 0.0), added, k)
        if jump is not None and jump > 0 and abs(math.log(jump)) > limit:
            bf.message += "; " + R302.message("block", growth=jump, threshold=s.compound_threshold)
            flag(bf, R302, Status.ERROR, ignored)
            jumps.append(f"{bf.name} (×{jump:.3g})")
    if jumps:
        more = f", … {len(jumps) - 4} more" if len(jumps) > 4 else ""
        text = R302.message(blocks=", ".join(jumps[:4]) + more, threshold=s.compound_threshold)
        problems.append((R302, text))
    # R303: a post-norm add (the add feeds a norm, the branch does not start with one)
    swamped = []
    for b, bf in zip(desc.blocks, blocks, strict=True):
        if b.post_norm and not b.pre_norm and bf.growth is not None and bf.growth > POST_NORM_LIMIT:
            bf.message += "; " + R303.message(
                "block", growth=bf.growth, limit=POST_NORM_LIMIT, share=1 / bf.growth
            )
            flag(bf, R303, Status.ERROR, ignored)
            swamped.append(f"{bf.name} (×{bf.growth:.3g})")
    if swamped:
        problems.append((R303, R303.message(blocks=", ".join(swamped[:4]), limit=POST_NORM_LIMIT)))
    # R301: exponential growth over a run of unnormalized blocks
    for run in runs(desc, normalized):
        measured = [
            k for k in run if blocks[k].growth is not None and tv.get(desc.blocks[k].skip_tensor, 0.0) > 0
        ]
        if not measured:
            continue
        first, last = desc.blocks[measured[0]], desc.blocks[measured[-1]]
        total = tv[last.out_tensor] / tv[first.skip_tensor]  # Var[out_last] / Var[skip_first]
        # (Var[skip_k], Δ_k = Var[out_k] − Var[skip_k]) over the blocks whose skip is the previous
        # block's output (the same stream; a projection's block adds a resampled branch)
        same = [k for k in measured if k > 0 and desc.blocks[k].skip_tensor == desc.blocks[k - 1].out_tensor]
        points = []
        for k in same if len(same) >= 3 else measured:
            v = tv[desc.blocks[k].skip_tensor]
            # Δ_k over the fraction of the branch convs' taps that read real input (small maps)
            points.append((v, (tv[desc.blocks[k].out_tensor] - v) / taps(desc, probe, desc.blocks[k].layers)))
        gain_slope = slope(points)
        top_gain = max((d / v for v, d in points), default=0.0)  # largest g_k = Δ_k / Var[skip_k]
        # exponential: the total beyond T_chain (slope ≥ ½ or undetermined), or a measured slope
        # ≥ ½ with a branch that at least doubles the stream (g ≥ 1: an unnormalized branch at
        # Kaiming scale; shallow nets or small maps keep the total under T_chain but not the kind)
        big = math.isfinite(total) and total > s.compound_threshold
        if not (
            (big and (gain_slope is None or gain_slope >= 0.5))
            or (gain_slope is not None and gain_slope >= 0.5 and top_gain >= 1.0)
        ):
            continue
        flagged = [blocks[k] for k in measured if (blocks[k].growth or 0) >= 1.5]
        for bf in flagged:
            bf.message += "; " + R301.message("block")
            flag(bf, R301, Status.ERROR, ignored)
        names = [bf.name for bf in flagged]
        text = R301.message(
            n=len(measured),
            total=total,
            first=first.name,
            last=last.name,
            geo=total ** (1 / len(measured)),
            slope="undetermined" if gain_slope is None else f"{gain_slope:.2f}",
            flagged=f"{', '.join(names[:6])}{'…' if len(names) > 6 else ''}",
        )
        problems.append((R301, text))
    healthy = HEALTHY.format(geo=geo, total=total_all, n=len(growths))
    active = [(rule, text) for rule, text in problems if rule.code not in ignored]
    if active:
        rule = active[0][0]
        return blocks, Stream(geo, "; ".join(t for _, t in active), Status.ERROR, rule=rule)
    if problems:
        return blocks, Stream(geo, healthy, Status.OK, ignored=True, rule=problems[0][0])
    return blocks, Stream(geo, healthy, Status.OK)
