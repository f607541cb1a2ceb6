"""P2xx: what the probe measured — merged into the findings and judged.

* ``variance_ratio = Var[y] / (gain² · E[x²])`` per layer; ``measured_scale = 1/sqrt(it)``.
* **systematic** drift (P203): the geometric mean of ``variance_ratio`` over the hidden chain,
  ``G``, beyond ``[1/T_warn, T_warn]`` widened by 3 standard errors of that mean
  (``3 · sd(ln r) / sqrt(L)``): an ``error``, as for the static check.
* **fluctuation** (P204): one layer's measured ratio beyond ``[1/T_probe, T_probe]`` (default 2)
  while its weights are within the Kaiming band: at most ``warn``, naming finite-width fluctuation
  and the data-driven fix.
* **depth drift** (P205): ``depth_ratio = Var[y_last] / Var[y_first]`` over the plain chain beyond
  ``[1/T_chain, T_chain]``. Finite-width fluctuation of Kaiming ReLU layers makes ``ln depth_ratio``
  roughly Gaussian with variance ``5 · Σ 1/n_l`` (Hanin & Nica 2019, "Products of many large random
  matrices and gradients in deep neural networks": ``ln |z_L|²`` has variance ≈ 5β, β = Σ 1/n_l;
  the probe averages over the batch, so this bounds it): with ``σ = sqrt(5 Σ 1/n_l)`` over the
  chain's layers (``n_l`` their output widths), a drift without its single worst layer beyond
  ``ln T_chain + 4σ`` is not fluctuation — the signal is lost: ``error``, naming the layers with the
  largest measured drop (``variance_ratio`` in the drift's direction, beyond ``T_warn``); one layer
  accounting for the drift, or a modest drift: ``warn`` (the one layer, or fluctuation / LSUV).
  mobilenet_nobn (realzoo): ×2.5e-10 over 26 layers, σ ≈ 1.7, threshold ×6e-5: error at its
  depthwise convs (fan_out mode gives them ``fan_in / fan_out = 1/64`` each).
* NaN/Inf produced by the forward: ``error`` (P201). Dead units above ``dead_threshold``: ``warn``
  (P202).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..report import LayerFinding, Role, Status
from . import modes
from .registry import Rule, flag
from .weights import sampling_allowance

if TYPE_CHECKING:
    from ..probe import ProbeResult
    from ..settings import Settings

_PROBE = "Run without the probe (`--no-probe`) to judge the weights alone"

P201 = Rule(
    code="P201",
    name="nonfinite-activations",
    severities=(Status.ERROR,),
    applies_to="layer (measured)",
    title="The forward pass produces NaN or Inf at this layer.",
    what="NaN and Inf values in the layer's output for the probe's seeded batch, its input being finite.",
    why="Overflow (weights or activations too large for the dtype) or a NaN source: training "
    "cannot start from it.",
    formula="`nan_count + inf_count > 0` in the layer's output.",
    silence=f"Fix the scale that overflows. {_PROBE}.",
    messages={"default": "the forward produces {nan} NaN and {inf} Inf values here"},
)

P202 = Rule(
    code="P202",
    name="dead-units",
    severities=(Status.WARN,),
    applies_to="layer (role hidden, measured)",
    title="Most of the layer's ReLU units are zero for the whole probe batch.",
    what="`dead_fraction`: the share of units (features / channels) whose ReLU output is zero for "
    "every sample and position of the batch.",
    why="A dead unit passes no signal and gets no gradient; a large share usually means a large "
    "negative bias or a badly scaled input.",
    formula="warn when `dead_fraction ≥ dead_threshold` (default 0.9).",
    silence=f"Check the biases and the input scale; raise `dead_threshold` (library). {_PROBE}.",
    messages={"default": "{fraction:.0%} of its ReLU units are zero for the whole probe batch (dead)"},
)

P203 = Rule(
    code="P203",
    name="systematic-drift",
    severities=(Status.ERROR,),
    applies_to="model (the hidden chain, measured) and its drifting layers",
    title="Measured: the signal's variance changes by a constant factor per layer.",
    what="The geometric mean `G` of the measured `variance_ratio = Var[y] / (gain² · E[x²])` over "
    "the hidden chain.",
    why="A systematic per-layer factor compounds with depth like a scale error in the weights "
    "(He et al. 2015, eq. 7: `Var[y] = fan_in · Var[w] · E[x²]`).",
    formula="error when `|ln G| > ln T_warn + 3·sd(ln r)/sqrt(L)` (3 standard errors of the mean "
    "of `L ≥ 2` layers); each layer beyond `T_warn` in the same direction becomes error. `G` "
    "divides by the assumed gain: when the signal measured over the chain stays within "
    "`[1/T_chain, T_chain]`, P203 does not fire.",
    silence=f"Fix the per-layer scales (`initdoctor fix`). {_PROBE}.",
    messages={
        "default": "measured: the signal's variance changes ×{ratio:.3g} per layer on average "
        "(geometric mean over the chain): a systematic scale error",
        "layer": "measured ×{ratio:.3g} here, part of a systematic drift "
        "(geometric mean ×{mean:.3g} per layer)",
    },
)

P204 = Rule(
    code="P204",
    name="measured-fluctuation",
    severities=(Status.WARN,),
    applies_to="layer (role hidden, measured)",
    title="Measured: one layer's variance ratio is off although its weights are Kaiming.",
    what="The layer's measured `variance_ratio` while its weights are within the Kaiming band.",
    why="Finite width: a layer's realized variance ratio fluctuates around 1 for a given input; "
    "a data-driven init (LSUV, Mishkin & Matas 2016) removes it.",
    formula="warn when `|ln variance_ratio| > ln T_probe` (`probe_warn_threshold`, default 2).",
    silence=f"`initdoctor fix --method lsuv`, or raise `probe_warn_threshold` (library). {_PROBE}.",
    messages={
        "default": "measured variance ratio {ratio:.3g} although the weights are Kaiming: "
        "finite-width fluctuation for this input; data-driven fix (LSUV): rescale by {scale:.3g}"
    },
)

P205 = Rule(
    code="P205",
    name="depth-drift",
    severities=(Status.WARN, Status.ERROR),
    applies_to="model (the hidden chain, measured) and the layers where the signal is lost",
    title="Measured: the signal's variance drifts from the first to the last layer.",
    what="`depth_ratio = Var[y_last] / Var[y_first]` over the plain chain of hidden layers; each "
    "layer's measured `variance_ratio` says where it drifts.",
    why="Finite-width fluctuation of Kaiming layers compounds like `exp(±sqrt(5 Σ 1/n_l))` "
    "(Hanin & Nica 2019); far beyond that the signal really vanishes or explodes, whatever the "
    "weights' nominal scale (measurement beats assumption).",
    formula="`d = ln depth_ratio − ln v_worst` (the single layer drifting most the same way "
    "removed: one layer does not compound), `σ = sqrt(5 Σ 1/n_l)`: error when "
    "`|d| > ln T_chain + 4σ`, and each layer drifting the same way beyond `T_warn` becomes error; "
    "otherwise warn when `|ln depth_ratio| > ln T_chain`.",
    silence=f"Rescale the named layers (`initdoctor fix`), `initdoctor fix --method lsuv` for a "
    f"modest drift, or raise `compound-threshold`. {_PROBE}.",
    messages={
        "default": "measured: the signal's variance drifts ×{ratio:.3g} from first to last layer "
        "although the weights are Kaiming: finite-width fluctuation; data-driven init (LSUV) fixes it",
        "one": "measured: the signal's variance drifts ×{ratio:.3g} from first to last layer, "
        "mostly at one layer: {name} (×{layer:.3g}); one layer does not compound: rescale it",
        "lost": "measured: the signal's variance {change} ×{ratio:.3g} over {n} layers, beyond "
        "×{threshold:g} and the finite-width fluctuation (×{fluct:.3g}): lost at {where}",
        "layer": "measured ×{ratio:.3g} here: the signal {change} over depth (P205)",
    },
)

RULES = (P201, P202, P203, P204, P205)
NOT_MEASURED = "not measured: its input already carries NaN/Inf from an earlier layer"


@dataclass
class Measured:
    """Chain-level results of the probe (see :func:`apply_probe`)."""

    chain_ratio: float | None  # geometric mean of measured variance ratios over the hidden chain
    systematic: bool  # P203's test (True even when P203 is ignored)
    depth_ratio: float | None
    grad_depth_ratio: float | None
    depth_lost: bool = False  # P205's error test (see the module doc)
    depth_message: str | None = None  # P205's message when the depth ratio is beyond T_chain


def kaiming(f: LayerFinding, s: Settings) -> bool:
    """Whether the layer's weights are within K101's warn band (``|ln r| ≤ ln T_warn + a``)."""
    r = f.weight_variance_ratio
    if r is None or r <= 0:
        return True
    return abs(math.log(r)) <= math.log(s.warn_threshold) + sampling_allowance(f.numel)


def apply_probe(
    findings: list[LayerFinding],
    probe: ProbeResult,
    s: Settings,
    ignored: frozenset[str],
    off_chain: set[str] | None = None,
    depth_healthy: bool = False,
) -> Measured:
    """Merge measured statistics into the findings and judge them (see the module docstring).
    ``off_chain``: hidden layers the graph does not show in a plain chain (a concat follows).
    ``depth_healthy``: the signal measured over the chain stays within the compound threshold
    (:func:`initdoctor.checks.chain.measured_ratio`), so the gain-normalized mean ``G`` cannot
    claim a drift the signal does not show: no layer becomes P203 error (see checks/summary.py)."""
    off_chain = off_chain or set()
    notes: dict[str, tuple[float, str]] = {}  # expected measured ratio and why, where not 1
    explained: dict[str, float] = {}  # ln of the share of it that is no loss over depth
    plain_measured = 0
    first_var: float | None = None
    first_grad: float | None = None
    last_hidden_grad: float | None = None
    chain: list[tuple[LayerFinding, float]] = []
    for f in findings:
        a = probe.layers.get(f.name)
        if a is None:
            continue
        f.input_second_moment = a.input_second_moment
        f.activation_var = a.activation_var
        f.dead_fraction = a.dead_fraction
        f.grad_var = a.grad_var
        if f.role == Role.EMBEDDING:
            continue
        # depth is a plain chain's notion: hidden layers in a chain, not the output (logit) layer
        plain = f.role == Role.HIDDEN and f.name not in off_chain
        if plain and first_var is None and math.isfinite(a.activation_var) and a.activation_var > 0:
            first_var = a.activation_var
        if first_var and math.isfinite(a.activation_var):
            f.depth_ratio = a.activation_var / first_var  # Var[y_l] / Var[y_first]
        if a.input_nonfinite:
            f.input_second_moment = f.activation_var = f.depth_ratio = None
            f.message += "; " + NOT_MEASURED
            continue
        if a.nan_count or a.inf_count:
            f.message += "; " + P201.message(nan=a.nan_count, inf=a.inf_count)
            flag(f, P201, Status.ERROR, ignored)
            continue
        ex2 = a.input_second_moment
        if math.isfinite(ex2) and ex2 > 0 and math.isfinite(a.activation_var) and a.activation_var > 0:
            f.variance_ratio = a.activation_var / (f.gain**2 * ex2)  # Var[y] / (gain² · E[x²])
            f.measured_scale = 1.0 / math.sqrt(f.variance_ratio)
            spatial = (a.input_spatial, a.output_spatial) if a.input_spatial and a.output_spatial else None
            factor, note = modes.expected_measured(f, s.mode, spatial)  # fan_out mode, padded taps
            explained[f.name] = math.log(modes.telescoping(f, s.mode, factor))
            if note:
                notes[f.name] = (factor, note)
            saturating = f.nonlinearity.split("(")[0] in modes.SATURATING  # judged by depth stability
            plain_measured += plain
            if plain and f.status != Status.SKIP and not saturating:
                chain.append((f, math.log(f.variance_ratio / factor)))
        if a.input_grad_second_moment and a.output_grad_second_moment:
            # E[(∂L/∂x)²] / (gain² · E[(∂L/∂y)²]): He et al. 2015, eq. 14
            f.grad_ratio = a.input_grad_second_moment / (f.gain**2 * a.output_grad_second_moment)
        if a.grad_var is not None and f.role == Role.HIDDEN:
            first_grad = a.grad_var if first_grad is None else first_grad
            last_hidden_grad = a.grad_var
        # P202: dead_fraction ≥ dead_threshold
        if f.dead_fraction is not None and f.dead_fraction >= s.dead_threshold and f.role == Role.HIDDEN:
            f.message += "; " + P202.message(fraction=f.dead_fraction)
            flag(f, P202, Status.WARN, ignored)

    chain_ratio, systematic, mean_ln = None, False, 0.0
    if chain:
        logs = [ln for _, ln in chain]
        mean_ln = sum(logs) / len(logs)
        chain_ratio = math.exp(mean_ln)  # G = exp(mean ln r)
        if len(logs) >= 2:
            sd = math.sqrt(sum((x - mean_ln) ** 2 for x in logs) / (len(logs) - 1))
            # P203: |ln G| > ln T_warn + 3 · sd(ln r) / sqrt(L)
            systematic = abs(mean_ln) > math.log(s.warn_threshold) + 3 * sd / math.sqrt(len(logs))
    drift = systematic and P203.code not in ignored and not depth_healthy
    for f, ln_r in chain:
        if drift and ln_r * mean_ln > 0 and abs(ln_r) > math.log(s.warn_threshold):
            if f.status != Status.ERROR:
                f.message += "; " + P203.message("layer", ratio=f.variance_ratio, mean=chain_ratio)
                flag(f, P203, Status.ERROR, ignored)
        elif abs(ln_r) > math.log(s.probe_warn_threshold) and f.status == Status.OK and kaiming(f, s):
            # P204: |ln variance_ratio| > ln T_probe with Kaiming weights (not a layer ok for
            # another reason: a head layer's note, a pre-normed stream feeder, K101 ignored)
            f.message += "; " + P204.message(ratio=f.variance_ratio, scale=f.measured_scale)
            flag(f, P204, Status.WARN, ignored)
        if f.name in notes:
            f.message += "; measured ratio expected ×{:.3g}: {}".format(*notes[f.name])
    last = next(
        (
            f
            for f in reversed(findings)
            if f.depth_ratio is not None and f.role == Role.HIDDEN and f.name not in off_chain
        ),
        None,
    )
    if not plain_measured:
        last = None  # no plain chain of hidden layers (normalized or residual nets): no depth verdict
    grad_depth = first_grad / last_hidden_grad if first_grad and last_hidden_grad else None
    depth = last.depth_ratio if last else None
    lost, message = depth_drift(findings, last, depth, s, ignored, explained)
    return Measured(chain_ratio, systematic, depth, grad_depth, lost, message)


def depth_drift(
    findings: list[LayerFinding],
    last: LayerFinding | None,
    depth: float | None,
    s: Settings,
    ignored: frozenset[str],
    explained: dict[str, float],
) -> tuple[bool, str | None]:
    """P205 (see the module doc): (whether the signal is lost, the summary's message); flags the
    layers where it is lost. ``(False, None)`` when the depth ratio, less what fan_out's
    telescoping and padded taps explain (``explained``, :func:`.modes.telescoping`), is within
    ``T_chain``."""
    if last is None or not depth or depth <= 0:
        return False, None
    first = next(i for i, f in enumerate(findings) if f.depth_ratio is not None)
    span = findings[first : findings.index(last) + 1]
    on_path = (Role.HIDDEN, Role.STREAM, Role.RESIDUAL)  # normalized layers' output is rescaled
    # each layer's measured step less its explained share; the first layer is the reference
    steps = [
        (f, math.log(f.variance_ratio) - explained.get(f.name, 0.0))
        for f in span[1:]
        if f.role in on_path and f.variance_ratio is not None and f.variance_ratio > 0
    ]
    expl = sum(explained.get(f.name, 0.0) for f in span[1:] if f.role in on_path)
    ln_d = math.log(depth) - expl  # the drift fan_out's telescoping and padded taps do not explain
    if abs(ln_d) <= math.log(s.compound_threshold):
        return False, None
    lost, message = _depth_verdict(steps, span, ln_d, depth, s, ignored)
    if abs(expl) > 0.01:
        message += (
            f"; the expected ratios (fan_out's telescoping, padded taps) account for ×{math.exp(expl):.3g}"
        )
    return lost, message


def _depth_verdict(
    steps: list[tuple[LayerFinding, float]],
    span: list[LayerFinding],
    ln_d: float,
    depth: float,
    s: Settings,
    ignored: frozenset[str],
) -> tuple[bool, str]:
    """P205's split (module doc): one layer, fluctuation, or lost (flagging where)."""
    on_path = (Role.HIDDEN, Role.STREAM, Role.RESIDUAL)
    widths = [f.shape[0] for f in span if f.role in on_path and f.shape and f.shape[0] > 0]
    sigma = math.sqrt(5 * sum(1 / n for n in widths))  # sd of ln depth_ratio (Hanin & Nica 2019)
    worst = max(steps, key=lambda t: t[1] * ln_d, default=None)
    if worst is not None and worst[1] * ln_d > 0:
        rest = ln_d - worst[1]  # without the single worst layer: one layer does not compound
        if abs(rest) <= math.log(s.compound_threshold):
            name, ratio = worst[0].name, worst[0].variance_ratio
            return False, P205.message("one", ratio=depth, name=name, layer=ratio)
    else:
        rest = ln_d
    limit = math.log(s.compound_threshold) + 4 * sigma  # ln T_chain + 4σ
    if abs(rest) <= limit or P205.code in ignored:
        return False, P205.message(ratio=depth)
    change = "vanishes" if ln_d < 0 else "explodes"
    drops = sorted(
        (t for t in steps if t[1] * ln_d > 0 and abs(t[1]) > math.log(s.warn_threshold)),
        key=lambda t: -abs(t[1]),
    )
    for f, _ in drops:
        if f.status != Status.ERROR:
            f.message += "; " + P205.message("layer", ratio=f.variance_ratio, change=change)
            flag(f, P205, Status.ERROR, ignored)
    where = ", ".join(f"{f.name} (×{f.variance_ratio:.3g})" for f, _ in drops[:3])
    where += f" and {len(drops) - 3} more" if len(drops) > 3 else ""
    fluct = math.exp(-limit if ln_d < 0 else limit)  # the fluctuation's 4σ edge beyond T_chain
    message = P205.message(
        "lost",
        change=change,
        ratio=depth,
        n=len(steps),
        threshold=s.compound_threshold,
        fluct=fluct,
        where=where or "no single layer (the drift is spread)",
    )
    return True, message
