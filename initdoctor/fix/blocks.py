"""The residual remedies: Fixup and SkipInit (zero-γ), planned from a report and its blocks (pure).

``fixup`` — Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without
Normalization", §3 and Algorithm 1. For ``L`` residual branches of ``m`` weighted layers each:

* every branch layer but the last: ``W ← W · σ*/std(W) · L^(−1/(2m−2))`` (its Kaiming std ``σ*``,
  then Fixup's factor: the branch's output variance then sums to O(1) over the ``L`` blocks);
* the last layer of each branch: ``W ← 0`` and its bias ``← 0`` (Alg. 1, step 1: "initialize the
  classification layer and the last layer of each residual branch to 0").

A branch of ``m = 1`` layer has no "other" layers: ``L^(−1/(2m−2))`` is undefined, and its single
layer is the last, so it is zeroed (Alg. 1, step 1). ``L`` counts the blocks the remedy applies to
(the unnormalized ones Fixup is meant for), ``m`` each branch's own weighted layers.

``skipinit`` (alias ``zero-gamma``) — Goyal et al. 2017, "Accurate, Large Minibatch SGD", §5.1
("zero γ": the last BatchNorm of each residual branch gets ``γ = 0``) and De & Smith 2020,
"Batch Normalization Biases Residual Blocks Towards the Identity Function" (SkipInit: a scalar
``α = 0`` at the end of each branch). Where the branch's last layer feeds a normalization, that
norm's ``γ ← 0``; a branch with no norm at its end gets ``α = 0`` as its last layer ``W ← 0``
(bias too): the same function at init, the block is the identity.
"""

from __future__ import annotations

import re
from typing import Any

from ..report import Change, Report, Role


def fixup_factor(blocks: int, m: int) -> float | None:
    """Fixup's rescale of a branch's non-last layers, ``L^(−1/(2m−2))`` (Zhang et al. 2019, §3);
    None for ``m = 1`` (no such layer)."""
    return blocks ** (-1 / (2 * m - 2)) if m > 1 else None


def branch_of(report: Report, blocks: Any) -> list[tuple[str, list[str], bool]]:
    """(block name, branch layers in order, normalized) for each residual block of the report;
    ``normalized``: a layer of the branch feeds a normalization (or the branch starts with one)."""
    roles = {f.name: f.role for f in report.layers}
    pre = {b.name: b.pre_norm for b in blocks or []}
    return [
        (
            b.name,
            list(b.layers),
            pre.get(b.name, False) or any(roles.get(n) == Role.NORMALIZED for n in b.layers),
        )
        for b in report.residual_blocks
    ]


def _zero(f: Any, method: str, block: str) -> Change:
    return Change(
        f.name,
        f.weight_key,
        method,
        f.weight_std,
        0.0,
        0.0,
        f.status,
        bias_key=f.bias_key,
        expected_std=f.expected_std,
        shape=tuple(f.shape),
        block=block,
    )


def plan_fixup(
    report: Report, selected: list[tuple[str, list[str], bool]], planned: set[str]
) -> tuple[list[Change], list[tuple[str, str]]]:
    """Fixup on the ``selected`` blocks (``L = len(selected)``); ``planned``: tensors already
    changed (a layer in two branches is changed once)."""
    by_name = {f.name: f for f in report.layers}
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    count = len(selected)
    for block, layers, _ in selected:
        found = [by_name[n] for n in layers if n in by_name]
        factor = fixup_factor(count, len(found))
        for i, f in enumerate(found):
            if f.weight_key in planned:
                continue
            if i == len(found) - 1:  # Alg. 1 step 1: the last layer of the branch → 0
                planned.add(f.weight_key)
                changes.append(_zero(f, "fixup", block))
                continue
            if f.expected_std is None or not f.weight_std or f.nan_count or f.inf_count:
                skipped.append((f.name, "fixup: no Kaiming std or all-zero/NaN weights to rescale"))
                continue
            assert factor is not None  # m > 1 here
            planned.add(f.weight_key)
            # Fixup (Zhang et al. 2019, §3): W ← W · σ*/std(W) · L^(−1/(2m−2))
            scale = f.expected_std / f.weight_std * factor
            changes.append(
                Change(
                    f.name,
                    f.weight_key,
                    "fixup",
                    f.weight_std,
                    f.expected_std * factor,
                    scale,
                    f.status,
                    bias_key=f.bias_key,
                    expected_std=f.expected_std,
                    shape=tuple(f.shape),
                    block=block,
                )
            )
    return changes, skipped


def _digits(name: str) -> str:
    match = re.search(r"(\d+)$", name.rsplit(".", 1)[-1])
    return match.group(1) if match else ""


def last_norm(layer: str, norms: list[Any]) -> Any | None:
    """The norm the branch's last layer feeds (``conv2 → bn2``): a norm of the same parent module
    whose name ends in the layer's number, else the only norm of that parent registered after it."""
    parent = layer.rsplit(".", 1)[0] if "." in layer else ""
    siblings = [n for n in norms if (n.name.rsplit(".", 1)[0] if "." in n.name else "") == parent]
    same = [n for n in siblings if _digits(n.name) and _digits(n.name) == _digits(layer)]
    if len(same) == 1:
        return same[0]
    return siblings[-1] if len(siblings) == 1 else None


def plan_skipinit(
    report: Report, selected: list[tuple[str, list[str], bool]], norms: list[Any], planned: set[str]
) -> tuple[list[Change], list[tuple[str, str]]]:
    """Zero-γ / SkipInit on the ``selected`` blocks (Goyal et al. 2017; De & Smith 2020)."""
    by_name = {f.name: f for f in report.layers}
    status = {n.name: str(n.status) for n in report.norm_layers}
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    for block, layers, _ in selected:
        found = [by_name[n] for n in layers if n in by_name]
        if not found:
            continue
        last = found[-1]
        if last.role == Role.NORMALIZED:
            norm = last_norm(last.name, norms)
            if norm is None:
                skipped.append(
                    (block, f"skipinit: the norm {last.name} feeds is not found; use --method fixup")
                )
                continue
            if norm.weight_key in planned:
                continue
            planned.add(norm.weight_key)
            # zero-γ (Goyal et al. 2017 §5.1): the branch's last norm γ ← 0, the block starts as identity
            changes.append(
                Change(
                    norm.name,
                    norm.weight_key,
                    "skipinit",
                    norm.stats.std,
                    0.0,
                    0.0,
                    status.get(norm.name, "ok"),
                    shape=tuple(norm.shape),
                    block=block,
                )
            )
        elif last.weight_key not in planned:
            planned.add(last.weight_key)
            changes.append(_zero(last, "skipinit", block))  # SkipInit's α = 0 (De & Smith 2020)
    return changes, skipped


def plan_branch_kaiming(
    report: Report, selected: list[tuple[str, list[str], bool]], planned: set[str]
) -> list[Change]:
    """``auto`` with a zero-γ/SkipInit remedy: the branch layers (those the remedy does not set,
    ``planned``) whose weight std exceeds its Kaiming ``σ*`` by more than the error threshold
    (variance factor, default 4: std > 2σ*) are rescaled to ``σ*`` first — zeroing a
    branch's end leaves its other layers as they were, and a LLaMA drawn N(0, 1)
    (``initializer_range=1.0``) keeps q/k/v/gate/up 8× too large: attention logits saturated,
    the branches learn nothing useful (docs/fix-evidence.md). ``W ← W · σ*/std(W)`` (He et al. 2015)."""
    limit = float(report.settings.get("error_threshold") or 4.0)
    by_name = {f.name: f for f in report.layers}
    changes: list[Change] = []
    for block, layers, _ in selected:
        for f in [by_name[n] for n in layers if n in by_name]:
            if f.weight_key in planned or f.expected_std is None or not f.weight_std:
                continue
            if f.nan_count or f.inf_count or (f.weight_std / f.expected_std) ** 2 <= limit:
                continue  # too small is left: GPT-2's N(0, 0.02) is below Kaiming by design
            planned.add(f.weight_key)
            scale = f.expected_std / f.weight_std
            changes.append(
                Change(
                    f.name,
                    f.weight_key,
                    "kaiming",
                    f.weight_std,
                    f.expected_std,
                    scale,
                    f.status,
                    bias_key=f.bias_key,
                    expected_std=f.expected_std,
                    shape=tuple(f.shape),
                    block=block,
                )
            )
    return changes


def flagged(report: Report) -> set[str]:
    """Blocks an R3xx rule flags (status not ok)."""
    return {b.name for b in report.residual_blocks if b.rule and b.status in ("warn", "error")}


__all__ = [
    "branch_of",
    "fixup_factor",
    "flagged",
    "last_norm",
    "plan_branch_kaiming",
    "plan_fixup",
    "plan_skipinit",
]
