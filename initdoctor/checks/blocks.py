"""R3xx: residual blocks — ``growth_k = Var[out_k] / Var[skip_k]``, measured by the probe.

A branch at Kaiming scale adds as much variance as the skip carries, so an un-normalized
residual net *doubles* the variance per block — exponential growth. Normalized nets (BatchNorm
on batch statistics) add about one unit per block — linear growth, growth factors falling
towards 1 (1.49 → 1.12 over 8 blocks): healthy. The finding is a *constant* factor: the
geometric mean over the later half of the blocks ≥ 1.5 → ``warn``, and ``error`` when the total
over all blocks exceeds the compound threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..report import BlockFinding, Status
from .registry import Rule, flag

if TYPE_CHECKING:
    from ..model import ModelDescription
    from ..probe import ProbeResult
    from ..settings import Settings

R301 = Rule(
    code="R301",
    name="residual-growth",
    severities=(Status.WARN, Status.ERROR),
    applies_to="residual block and model (the residual stream, measured)",
    title="The residual stream grows by a constant factor per block.",
    what="`growth_k = Var[out_k] / Var[skip_k]` per residual block, measured by the probe; the "
    "geometric mean over the later half of the blocks and the product over all of them.",
    why="A branch at Kaiming scale adds as much variance as the skip carries: an un-normalized "
    "residual net doubles its variance per block (exponential growth). Normalized nets grow "
    "linearly, factors falling towards 1: healthy.",
    formula="warn when the later half's geometric mean `≥ 1.5`; error when also `prod(growth) > "
    "T_chain` (`compound-threshold`). Blocks with `growth ≥ 1.5` carry the status.",
    silence="Zero-init the last norm's γ or the last layer of each branch, or scale branches by "
    "1/sqrt(number of blocks) (Fixup, Zhang et al. 2019); or raise `compound-threshold`.",
    messages={
        "default": "residual stream grows ×{late:.3g} per block (×{total:.3g} over {n} blocks: "
        "{flagged}); remedies: zero-init the last norm's γ or the last layer of each branch, or "
        "scale branches by 1/sqrt(number of blocks) (Fixup)",
        "block": "the residual stream grows by a constant factor per block",
    },
)

RULES = (R301,)


@dataclass
class Stream:
    """The residual stream's verdict for the summary."""

    growth: float  # geometric mean of the blocks' growth
    message: str
    status: Status  # ok when healthy, or when R301 is ignored
    ignored: bool = False  # R301 would have fired but is ignored by configuration


HEALTHY = "residual stream: ×{geo:.3g} per block on average (×{total:.3g} over {n} blocks): healthy"


def judge_blocks(
    desc: ModelDescription, probe: ProbeResult | None, s: Settings, ignored: frozenset[str]
) -> tuple[list[BlockFinding], Stream | None]:
    """The blocks' findings and, when measured, the stream's verdict for the summary."""
    if not desc.blocks:
        return [], None
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
    late = growths[len(growths) // 2 :]
    late_geo = math.exp(sum(math.log(g) for g in late) / len(late))  # later half's geometric mean
    total = math.prod(growths)
    geo = math.exp(sum(math.log(g) for g in growths) / len(growths))
    status = Status.OK
    if late_geo >= 1.5:  # R301: a constant factor; error when prod(growth) > T_chain
        status = Status.ERROR if total > s.compound_threshold else Status.WARN
    for bf in blocks:
        if bf.growth is None:
            bf.message = "growth not measured"
            continue
        bf.message = f"Var[out]/Var[skip] = {bf.growth:.3g}"
        if status != Status.OK and bf.growth >= 1.5:
            bf.message += "; " + R301.message("block")
            flag(bf, R301, status, ignored)
    healthy = HEALTHY.format(geo=geo, total=total, n=len(growths))
    if status == Status.OK:
        return blocks, Stream(geo, healthy, status)
    flagged = [bf.name for bf in blocks if bf.growth is not None and bf.growth >= 1.5]
    names = f"{', '.join(flagged[:6])}{'…' if len(flagged) > 6 else ''}"
    message = R301.message(late=late_geo, total=total, n=len(growths), flagged=names)
    if R301.code in ignored:
        return blocks, Stream(geo, message, Status.OK, ignored=True)
    return blocks, Stream(geo, message, status)
