"""The verdict: judge every layer of a model description against its rules and build the report.

Each rule has a stable code (docs/rules.md, ``initdoctor rule CODE``); the rules live by family:
:mod:`.skips` (S0xx, not judged), :mod:`.weights` (K1xx, static per layer, He et al. 2015),
:mod:`.measured` (P2xx, the probe; P207, the loss at init, in :mod:`.initloss`), :mod:`.blocks`
(R3xx, residual growth), :mod:`.norms` (N4xx), :mod:`.chain` (C5xx, compounding),
:mod:`.summary` (the model-level verdict, and the precedence of measurement over assumption);
:mod:`.roles` resolves what each layer is; :mod:`.structure` whether the structure is known well
enough for a model-level verdict (else ``unknown``). This module only runs them in order.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import asdict
from typing import TYPE_CHECKING

from ..errors import SettingsError
from ..report import LayerFinding, Report, Role, Source, Status
from ..settings import Settings
from . import blocks, chain, initloss, measured, modes, norms, skips, structure, trained, weights
from . import summary as summary_module
from .registry import CODE, Registry, Rule, mark_skip
from .roles import new_finding
from .summary import summarize

if TYPE_CHECKING:
    from ..model import ModelDescription
    from ..probe import ProbeResult

__all__ = ["REGISTRY", "Rule", "inspect_description", "rule_text", "rules_markdown"]

REGISTRY = Registry(
    [
        *skips.RULES,
        *weights.RULES,
        *measured.RULES,
        *trained.RULES,
        *initloss.RULES,
        *blocks.RULES,
        *norms.RULES,
        *chain.RULES,
    ]
)


#: the summary's first words when the exporter folded BatchNorm (formats/onnx_graph.py's note)
BN_FOLDED_PREFIX = "BatchNorm folded by the exporter: judged as unnormalized — "


def rules_markdown() -> str:
    """docs/rules.md, generated from the registry, with the model-level verdict's precedence (the
    part of :mod:`.summary`'s docstring that states it)."""
    return REGISTRY.markdown({"The model-level verdict: precedence": summary_module.PRECEDENCE})


def rule_text(code: str | None) -> str:
    """``initdoctor rule CODE``: the rule's doc; ``None``: one line per rule. An unknown code is
    a :class:`~initdoctor.errors.SettingsError`."""
    if code is None:
        return REGISTRY.listing()
    rule = REGISTRY.get(code)
    if rule is None:
        raise SettingsError(f"unknown rule {code!r}; `initdoctor rule --all` lists them")
    return rule.doc()


def linears(desc: ModelDescription) -> set[str]:
    return {layer.name for layer in desc.layers if layer.kind in ("linear", "matmul")}


def inspect_description(
    desc: ModelDescription,
    settings: Settings | None = None,
    probe: ProbeResult | None = None,
    *,
    assume_chain: bool = False,
) -> Report:
    """Judge every layer of ``desc`` (and, given a probe result, what the signal did).

    When the structure is not known well enough for a model-level verdict
    (:func:`.structure.unknown_reason`) the summary is ``unknown`` and the layers carry facts only
    (no rescale suggested); ``assume_chain`` (``fix --force``) judges them as a plain chain anyway."""
    s = settings or Settings()
    reason, evidence = (None, []) if assume_chain else structure.unknown_reason(desc, probe)
    ignored = REGISTRY.ignored(s.ignore)  # rule codes; the other entries are layer-name globs
    globs = [entry for entry in s.ignore if not CODE.match(entry)]
    judged = [layer for layer in desc.layers if layer.kind != "embedding"]
    last_name = judged[-1].name if judged else None
    findings: list[LayerFinding] = []
    hidden_chain: list[tuple[LayerFinding, float]] = []  # (finding, ln weight_variance_ratio)
    branch_of = {name: block.name for block in desc.blocks for name in block.layers}
    feeders = set(desc.stream_inputs)
    # a convolutional net's classifier head (after global pooling): linears that reach the model
    # only through the output layer; an MLP's last hidden layer is its feature stack's, not a head's
    convolutional = any(layer.kind.startswith("conv") for layer in desc.layers)
    heads = {name for name in desc.head_layers if convolutional and name in linears(desc)}
    prenormed = bool(desc.blocks) and all(block.pre_norm for block in desc.blocks)
    renormed = set(desc.renormalized)
    for layer in desc.layers:
        findings.append(new_finding(layer, desc, s, last_name, branch_of, feeders))
    forced = s.mode != "auto"
    if not forced:  # He et al. 2015 §2.2: either condition is sufficient; read which one the weights follow
        s = dataclasses.replace(s, mode=modes.detect_mode(desc.layers, findings, s))
    # a graph that cannot say what follows a layer (a concat, attention): not a plain chain
    off_chain = {f.name for f in findings if desc.has_graph and f.nonlinearity_source == Source.FLAG}
    off_chain |= set(desc.concat_fed)
    for layer, finding in zip(desc.layers, findings, strict=True):
        if any(fnmatch.fnmatchcase(layer.name, pattern) for pattern in globs):
            mark_skip(finding, skips.S004, skips.S004.message())
        elif weights.precheck(finding, layer, ignored):
            pass  # integer, empty or non-finite weights: nothing more to judge
        elif finding.role == Role.EMBEDDING:
            mark_skip(finding, skips.S003, skips.S003.message())
        else:
            ln_r = weights.judge_layer(
                finding,
                layer,
                s,
                ignored,
                branch_of.get(layer.name),
                prenormed,
                not forced,
                layer.name in heads and finding.role == Role.HIDDEN,
                layer.name in renormed,
            )
            saturating = modes.saturating_factor(finding, layer) if ln_r is not None else None
            if saturating is not None:  # tanh/sigmoid: the variance map's fixed point, not the gain
                ln_r = saturating[0]
                finding.message += "; " + saturating[1]
            if ln_r is not None and layer.name not in off_chain:
                hidden_chain.append((finding, ln_r))

    state, evidence_note = trained.weights_state(desc)
    if reason is not None:
        structure.facts_only(findings, s)
        hidden_chain = []  # no chain is known: no compounding
    learned: set[str] = set()
    if (
        state != trained.INIT and not assume_chain
    ):  # trained weights: facts, judged by measured propagation only
        learned = trained.trained_facts(findings, desc, s)
    over_chain = chain.measured_ratio(hidden_chain, probe)  # Var[y_L] / (g_1² · E[x_1²]), measured
    static_chain = [(f, ln_r) for f, ln_r in hidden_chain if f.name not in learned]
    ln_compound = chain.compound(static_chain, s, ignored, over_chain) if static_chain else None
    measures = None
    if probe is not None:
        measures = measured.apply_probe(
            findings, probe, s, ignored, off_chain, depth_healthy=chain.within(over_chain, s)
        )
        if state == trained.MIXED and not assume_chain:
            trained.judge_new(findings, desc, s, ignored)
    trained.clear_scales(findings, learned)
    init_loss, init_status, init_message = initloss.judge_init_loss(findings, probe, ignored)
    norm_findings = [norms.judge_norm(n, ignored) for n in desc.norms]
    normalized = {f.name for f in findings if f.role == Role.NORMALIZED}
    block_findings, stream = blocks.judge_blocks(desc, probe, s, ignored, normalized)
    summary = summarize(
        findings,
        norm_findings,
        ln_compound,
        s,
        ignored,
        measures,
        stream,
        over_chain,
        reason,
        ln_compounding=chain.compounding(hidden_chain),
    )
    summary.kaiming_mode = s.mode
    summary.weights = state
    if learned and summary.status == Status.OK and summary.rule is None:
        summary.message = trained.summary_message(
            state, len(learned), summary.depth_ratio, summary.residual_growth
        )
    summary_module.add_init_loss(summary, init_loss, init_status, init_message)
    if desc.bn_folded and summary.status in (Status.WARN, Status.ERROR):
        # issue 14: an eval-mode export folded BatchNorm into the convs (the identity at init): say
        # first that the verdict is the unnormalized net's, not a plain finding on the trained model
        summary.message = f"{BN_FOLDED_PREFIX}{summary.message}"
    model = {
        "path": desc.path,
        "format": desc.format,
        "parameters": desc.parameters,
        "layer_order": desc.order,
        "has_graph": desc.has_graph,
    }
    probe_info = None
    if probe is not None:
        probe_info = {
            "backend": probe.backend,
            "inputs": probe.inputs,
            "seed": probe.seed,
            "runs": probe.runs,
            "backward": probe.backward,
            "notes": list(probe.notes),
        }
    notes = list(desc.notes)
    if evidence_note is not None:
        notes.append(evidence_note)
    if s.mode == "fan_out" and not forced:
        notes.append(modes.FAN_OUT_NOTE)
    if reason is not None:
        notes.append(f"structure not known ({reason}): " + "; ".join(evidence))
    elif assume_chain:
        notes.append("--force: judged as a plain chain of layers, whatever the structure")
    if desc.blocks and probe is None:
        notes.append(f"{len(desc.blocks)} residual blocks found; their growth needs the probe")
    summary.blocks = {k: sum(1 for b in block_findings if b.status == k) for k in ("ok", "warn", "error")}
    return Report(model, asdict(s), findings, norm_findings, summary, notes, probe_info, block_findings)
