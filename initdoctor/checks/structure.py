"""Whether the model's structure is known well enough for a model-level verdict (``unknown``).

The chain rules (C501, and the depth measurements P203/P205) assume the layers form a chain whose
variances multiply. That is read from a graph, or measured by the probe; without either it is an
assumption, and a wrong one turns a healthy LLaMA checkpoint into "×3.7e-35 — will vanish". So the
summary is ``unknown`` (:data:`~initdoctor.report.UNKNOWN_REASONS`) when:

* ``no-graph`` — the file holds weights but no graph, and the layers are **not evidently a plain
  chain**. Evidently plain means all of: no normalization layers; no residual-style repeated
  groups (≥ 2 weighted layers under a common ``prefix.N.`` for ≥ 2 integers ``N``:
  ``layers.0.attn.q``, ``layer1.0.conv1``); no name containing one of :data:`STRUCTURE_WORDS`;
  and every consecutive pair of judged layers chains in shape (Linear ``out == next in``, conv
  ``out channels == next in channels``; a Linear after a conv may read the flattened map,
  ``in % channels == 0``). A plain chain keeps the static verdict.
* ``not-probed`` — a graph with residual blocks or normalization, and no probe: the depth
  behaviour is not measured.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING

from ..report import Role, Status
from .weights import K105, K106, K107, WHAT

if TYPE_CHECKING:
    from ..model import Layer, ModelDescription
    from ..probe import ProbeResult
    from ..report import LayerFinding
    from ..settings import Settings

#: structure-independent rules: they keep their status under ``unknown`` (NaN/Inf, all-zero, constant)
KEEP = frozenset({K105.code, K106.code, K107.code})

#: name fragments that say a layer sits in a residual block, an attention or an MLP sub-block
STRUCTURE_WORDS = ("downsample", "shortcut", "attn", "attention", "mlp", "ffn", "q_proj")
_INT = re.compile(r"^\d+$")

NO_GRAPH, NOT_PROBED = "no-graph", "not-probed"
#: the summary's message for each reason
MESSAGES = {
    NO_GRAPH: "static only: depth behaviour not measured — give config.json (a Hugging Face folder) "
    "or --model pkg.mod:fn for a verdict",
    NOT_PROBED: "static only: depth behaviour not measured — run the probe",
}
#: what the refusing ``fix`` says it would need
NEEDS = {
    NO_GRAPH: "give the model's factory (--model pkg.mod:fn) or a Hugging Face folder with config.json",
    NOT_PROBED: "run it with the probe (drop --no-probe)",
}
#: the per-layer fact under ``unknown``
LAYER_NOTE = "structure unknown: not judged against Kaiming, no rescale suggested"


def unknown_reason(desc: ModelDescription, probe: ProbeResult | None) -> tuple[str | None, list[str]]:
    """``(reason, evidence)``: the reason the model-level verdict is unknown (None: it is known),
    and what showed it (for the report's notes)."""
    if desc.has_graph:
        if probe is not None:
            return None, []
        normalized = [layer.name for layer in desc.layers if layer.nonlinearity == "normalized"]
        evidence = _listed("residual blocks", [b.name for b in desc.blocks])
        evidence += _listed("normalization layers", [n.name for n in desc.norms] or normalized)
        return (NOT_PROBED, evidence) if evidence else (None, [])
    evidence = not_plain(desc)
    return (NO_GRAPH, evidence) if evidence else (None, [])


def facts_only(findings: list[LayerFinding], s: Settings) -> None:
    """Under ``unknown``: every layer's finding becomes a fact — status ``ok`` (unless a
    structure-independent rule, :data:`KEEP`, fired), the expected Kaiming std and the ratio kept,
    no ``suggested_scale``, the message saying the structure is unknown."""
    for f in findings:
        if f.status == Status.SKIP or f.rule in KEEP:
            continue
        f.status, f.rule, f.suggested_scale = Status.OK, None, None
        if f.role in (Role.HIDDEN, Role.OUTPUT, Role.STREAM) and f.std_ratio and f.expected_std:
            fan = f.fan_in if s.mode == "fan_in" else f.fan_out
            f.message = WHAT.format(
                std=f.weight_std,
                ratio=f.std_ratio,
                expected=f.expected_std,
                nonlinearity=f.nonlinearity,
                mode=s.mode,
                fan=fan,
            )
            f.message += f"; {LAYER_NOTE}"


def not_plain(desc: ModelDescription) -> list[str]:
    """Why the layers of a graph-less description are not evidently a plain chain (empty: they
    are); see the module docstring."""
    judged = [layer for layer in desc.layers if layer.kind != "embedding"]
    evidence = _listed("normalization layers", [n.name for n in desc.norms])
    evidence += _listed("residual-style repeated groups", repeated_groups([x.name for x in judged]))
    named = [x.name for x in judged if any(word in x.name.lower() for word in STRUCTURE_WORDS)]
    evidence += _listed("block names", named)
    breaks = [f"{a.name} → {b.name}" for a, b in zip(judged, judged[1:], strict=False) if not chains(a, b)]
    evidence += _listed("shapes that do not chain", breaks)
    return evidence


def repeated_groups(names: list[str]) -> list[str]:
    """``prefix.N`` groups holding ≥ 2 layers, for prefixes with ≥ 2 such ``N``."""
    members: dict[tuple[str, str], int] = defaultdict(int)
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):  # a component followed by more: ``prefix.N.rest``
            if _INT.match(part):
                members[(".".join(parts[:i]), part)] += 1
    full: dict[str, list[str]] = defaultdict(list)
    for (prefix, n), count in members.items():
        if count >= 2:
            full[prefix].append(f"{prefix}.{n}" if prefix else n)
    return [group for groups in full.values() if len(groups) >= 2 for group in groups]


def channels(layer: Layer) -> tuple[int, int] | None:
    """``(in, out)`` features or channels of a graph-less layer (torch layout), None if unknown."""
    shape = layer.shape
    if layer.kind in ("linear",) and len(shape) == 2:
        return shape[1], shape[0]
    if layer.kind.startswith("conv") and "transpose" not in layer.kind and len(shape) >= 3:
        return shape[1] * max(layer.groups, 1), shape[0]
    return None


def chains(a: Layer, b: Layer) -> bool:
    """Whether ``a``'s output can feed ``b``'s input: equal widths, or a Linear reading a conv's
    flattened map (``in % channels == 0``)."""
    ca, cb = channels(a), channels(b)
    if ca is None or cb is None:
        return False
    if b.kind == "linear" and a.kind != "linear":
        return cb[0] % ca[1] == 0
    return ca[1] == cb[0]


def _listed(what: str, names: list[str]) -> list[str]:
    if not names:
        return []
    shown = ", ".join(names[:4]) + (f", … ({len(names)} in all)" if len(names) > 4 else "")
    return [f"{what}: {shown}"]
