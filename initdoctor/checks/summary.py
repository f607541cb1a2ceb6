"""The summary: the worst of the findings' statuses, then the model-level rules in order — C501
(compounding), P203 (systematic measured drift), P205 (measured depth drift), R301/R302 (residual
growth). ``summary.rule`` is the model-level rule whose message the summary carries (None when
the layers' own statuses decided it); an ignored model-level rule that would have fired is named
at the end of the message.

Precedence — measurement beats assumption:

1. **Structure-independent facts** decide first and always: NaN/Inf weights (K105), all-zero
   (K106) or constant (K107) weights, NaN/Inf produced by the forward (P201), non-finite norm
   parameters (N401). They keep their ``error`` whatever else is known.
2. **What the probe measured** decides the depth behaviour: the signal's product over the chain
   (``Var[y_last] / (g_1² · E[x_1²])``, ``chain.measured_ratio``; P205 over the plain chain),
   the residual stream's growth (R301), the per-layer measured ratios (P203, P204).
3. **The static chain product** (C501) and the gain-normalized measured mean (P203) rest on an
   assumption (each layer's gain, the chain itself). When the probe measured the same chain and
   the signal over it stays within ``[1/T_chain, T_chain]``, neither may claim "vanish/explode":
   C501 and P203 do not fire, the product stays in the report as explanation
   (``summary.compound_variance_ratio``, per-layer ratios and rescale suggestions) and the message
   says the static product is not confirmed. A static product the measurement confirms (beyond the
   threshold too) keeps its ``error``.
4. **No measurement and no known structure**: the summary is ``unknown``
   (``checks/structure.py``: no graph and not evidently a plain chain, or a graph with residual blocks or
   normalization and no probe), with ``unknown_reason``, unless a layer's structure-independent
   finding decided otherwise. Without a probe a plain chain (graph or evidently plain file)
   keeps the static verdict (C501).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from ..report import LayerFinding, NormFinding, Role, Status, Summary, worse
from .blocks import Stream
from .chain import C501, broken, within
from .measured import P203, P205, Measured
from .registry import ignored_note
from .structure import MESSAGES

if TYPE_CHECKING:
    from ..settings import Settings

_BADNESS = {Status.OK: 1, Status.UNKNOWN: 1, Status.WARN: 2, Status.ERROR: 3}


def summarize(
    findings: list[LayerFinding],
    norms: list[NormFinding],
    ln_compound: float | None,
    s: Settings,
    ignored: frozenset[str],
    measured: Measured | None = None,
    stream: Stream | None = None,
    over_chain: float | None = None,
    unknown: str | None = None,
    ln_compounding: float | None = None,
) -> Summary:
    """The model-level verdict (see the module docstring). ``over_chain``: the signal's ratio
    over the static chain as measured (None: not measured); ``unknown``: why no verdict on depth
    can be formed (:data:`~initdoctor.report.UNKNOWN_REASONS`), None when it can;
    ``ln_compounding``: the chain's product without its worst layer (:func:`.chain.compounding`),
    what C501 tests (``ln_compound`` when not given)."""
    ln_test = ln_compounding if ln_compounding is not None else ln_compound
    counts = {status: 0 for status in Status}
    status = Status.OK
    for f in findings:
        counts[f.status] += 1
        status = worse(status, f.status)
    for norm in norms:
        status = worse(status, norm.status)
    notes: list[str] = []  # model-level rules that would fire but are ignored

    def applies(rule_code: str, fires: bool) -> bool:
        if fires and rule_code in ignored:
            notes.append(ignored_note(_RULES[rule_code]))
            return False
        return fires

    compound = math.exp(ln_compound) if ln_compound is not None else None
    contradicted = within(over_chain, s)  # the measured signal over the chain stays within T_chain
    # C501: |Σ ln r − ln r_worst| > ln T_chain, unless the measurement over the chain contradicts it
    chain_broken = applies(C501.code, broken(ln_test, s) and not contradicted)
    systematic = applies(P203.code, measured is not None and measured.systematic and not contradicted)
    # P205: |ln depth_ratio| > ln T_chain (error when the signal is lost: measured.depth_drift)
    depth_drift = applies(P205.code, measured is not None and measured.depth_message is not None)
    if chain_broken:
        status = Status.ERROR
    scored = [f for f in findings if f.status != Status.SKIP]
    worst = None
    if scored:

        def badness(f: LayerFinding) -> tuple[int, float]:
            dev = abs(math.log(f.weight_variance_ratio)) if f.weight_variance_ratio else math.inf
            if f.role == Role.OUTPUT and f.status == Status.OK:
                dev = 0.0
            return (_BADNESS[f.status], dev)

        worst = max(scored, key=badness).name
    n = len(findings)
    rule = None
    if not n:
        message = "no weighted layers found"
    elif chain_broken:
        message, rule = C501.message(total=compound, threshold=s.compound_threshold), C501.code
    elif systematic:
        assert measured is not None
        status = Status.ERROR
        message, rule = P203.message(ratio=measured.chain_ratio), P203.code
    elif depth_drift:
        assert measured is not None and measured.depth_message is not None
        status = worse(status, Status.ERROR if measured.depth_lost else Status.WARN)
        message, rule = measured.depth_message, P205.code
    elif unknown is not None and status == Status.OK:
        status, message = Status.UNKNOWN, MESSAGES[unknown]
    elif status == Status.OK:
        message = f"{counts[Status.OK]} of {n} layers within Kaiming bands"
    else:
        message = f"{counts[Status.ERROR]} error, {counts[Status.WARN]} warn of {n} layers; worst: {worst}"
        if unknown is not None:
            message += f"; {MESSAGES[unknown]}"
    if broken(ln_test, s) and contradicted and n:
        message += "; " + C501.message("contradicted", total=compound, measured=over_chain)
    # counts after the summary-level rules
    counts = {k: sum(1 for f in findings if f.status == k) for k in Status}
    summary = Summary(
        status,
        counts[Status.OK],
        counts[Status.WARN],
        counts[Status.ERROR],
        counts[Status.SKIP],
        worst,
        compound,
        message,
        rule=rule,
        unknown_reason=unknown if status == Status.UNKNOWN else None,
    )
    if measured is not None:
        summary.depth_ratio = measured.depth_ratio
        summary.measured_chain_ratio = measured.chain_ratio
        summary.grad_depth_ratio = measured.grad_depth_ratio
    if stream is not None:
        summary.residual_growth = stream.growth
        if stream.status != Status.OK:  # R301
            summary.status = worse(summary.status, stream.status)
            if summary.status == stream.status:
                summary.message, summary.rule = stream.message, stream.rule.code
            else:
                summary.message = f"{summary.message}; {stream.message}"
        elif stream.ignored:
            notes.append(ignored_note(stream.rule))
    summary.message += "".join(notes)
    return summary


def add_init_loss(summary: Summary, info: dict | None, status: Status, message: str | None) -> None:
    """``summary.init_loss`` (:mod:`.initloss`); P207 decides the summary's message when nothing
    worse did, else its message is appended."""
    summary.init_loss = info
    if status == Status.OK or message is None:
        return
    quiet = summary.status in (Status.OK, Status.UNKNOWN) or (
        summary.status == Status.WARN and summary.warn <= 1  # the head's own warning at most
    )
    if summary.rule is None and quiet:
        ignored = IGNORED_NOTE.search(summary.message)  # notes of ignored rules stay
        message += summary.message[ignored.start() :] if ignored else ""
        summary.status, summary.message, summary.rule = status, message, "P207"
        return
    summary.status = worse(summary.status, status)
    summary.message += f"; {message}"


#: where the notes of ignored model-level rules start in a summary message (:func:`ignored_note`)
IGNORED_NOTE = re.compile(r"; [A-Z][0-9]{3} \([a-z0-9-]+\) ignored by configuration")
_RULES = {r.code: r for r in (C501, P203, P205)}
#: the precedence, as the module docstring states it (docs/rules.md shows it)
PRECEDENCE = (__doc__ or "").split("Precedence — measurement beats assumption:", 1)[-1]
