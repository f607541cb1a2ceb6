"""Static inspection: judge each weighted layer's std against Kaiming, without running the model.

For a layer with weight std ``s``, fan ``n`` (``fan_in`` or ``fan_out`` by ``mode``) followed by a
nonlinearity with gain ``g`` (:func:`initdoctor.gains.calculate_gain`)::

    expected_std    = g / sqrt(n)                      (He et al. 2015, eq. 10 / eq. 14)
    std_ratio       = s / expected_std
    weight_variance_ratio = std_ratio²                 (1.0 is Kaiming-exact: the layer keeps
                                                        the signal's variance)
    suggested_scale = 1 / std_ratio                    (multiply W by it to make it Kaiming)

Status rules (thresholds are variance factors, symmetric in log space, all configurable):

* **hidden layers** — ``warn`` when ``weight_variance_ratio`` is outside ``[1/T_warn, T_warn]``
  (default ``T_warn = 1.25``, std off by ±12%), ``error`` outside ``[1/T_err, T_err]``
  (default ``T_err = 4``, std off by 2×). Each band is widened by 4 standard errors of the
  std estimate, ``exp(8 / sqrt(2(numel − 1)))``, so a tiny layer is not flagged for sampling
  noise (a 64×64 Linear: ×1.09; a 4-weight layer is effectively never flagged).
* **compounding** — the hidden layers form a chain whose variances multiply: when
  ``prod(weight_variance_ratio)`` over the chain leaves ``[1/T_chain, T_chain]`` (default 16) the summary
  is ``error`` and every ``warn`` layer drifting the same way becomes ``error``: 30 layers that
  each halve the variance (xavier on a square ReLU layer) shrink the signal by 2⁻²⁹.
* **output (logit) layer** — judged against gain 1 (no nonlinearity after it); small is fine
  (zero init included, a common choice for logits), only too large is flagged: ``warn`` above
  ``2·T_warn``, ``error`` above ``2·T_err`` (the 2 lets a ReLU-gain Kaiming logit layer pass).
  It is the layer the graph shows feeding a model output, or without a graph the last weighted
  layer in order. It is not part of the chain.
* **embeddings** — a lookup table has no fan-in: reported, ``skip``.
* NaN/Inf values, all-zero and constant hidden weights are ``error``; a mean larger than half the
  std is ``warn`` (Kaiming assumes zero-mean weights); integer (quantized) or empty weights ``skip``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass

from .gains import calculate_gain, expected_std
from .model import Layer, ModelDescription, NormLayer
from .probe import ProbeResult
from .report import BlockFinding, LayerFinding, NormFinding, Report, Summary, worse
from .settings import Settings
from .stats import is_float_dtype


def sampling_allowance(numel: int) -> float:
    """Log-space widening of a band: 4 standard errors of ``ln(variance)`` from ``numel`` samples.

    The relative standard error of a sample std is ``1 / sqrt(2(n − 1))`` (normal weights), so that
    of the variance in log space is twice that: 4 of them = ``8 / sqrt(2(n − 1))``.
    """
    if numel < 2:
        return math.inf
    return 8.0 / math.sqrt(2.0 * (numel - 1))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _judge_weights(layer: Layer) -> tuple[str, str] | None:
    """Findings that come before any ratio: dtype, empty, NaN/Inf, zero, constant."""
    st = layer.stats
    if not is_float_dtype(st.dtype):
        return "skip", f"{st.dtype} weights (quantized or integer): not judged"
    if st.numel == 0:
        return "skip", "empty weight (0 elements)"
    if st.nan_count or st.inf_count:
        return "error", f"{st.nan_count} NaN and {st.inf_count} Inf values in the weight"
    return None


def inspect_description(
    desc: ModelDescription, settings: Settings | None = None, probe: ProbeResult | None = None
) -> Report:
    """Judge every layer of ``desc`` (and, given a probe result, what the signal did); see the
    module docstring for the rules."""
    s = settings or Settings()
    judged = [layer for layer in desc.layers if layer.kind != "embedding"]
    last_name = judged[-1].name if judged else None
    findings: list[LayerFinding] = []
    chain: list[tuple[LayerFinding, float]] = []  # (finding, ln weight_variance_ratio)

    branch_of = {name: block.name for block in desc.blocks for name in block.layers}
    feeders = set(desc.stream_inputs)
    for layer in desc.layers:
        role, nonlin, param, source = _resolve_role(layer, desc, s, last_name)
        if role == "hidden" and layer.name in branch_of:
            role = "residual"
        elif role == "hidden" and layer.name in feeders:
            role = "stream"
        gain = 1.0 if nonlin == "normalized" else calculate_gain(nonlin, param)
        fan = layer.fan_in if s.mode == "fan_in" else layer.fan_out
        st = layer.stats
        finding = LayerFinding(
            name=layer.name,
            kind=layer.kind,
            role=role,
            shape=list(layer.shape),
            fan_in=layer.fan_in,
            fan_out=layer.fan_out,
            groups=layer.groups,
            nonlinearity=nonlin if param is None else f"{nonlin}({param:g})",
            nonlinearity_source=source,
            gain=gain,
            dtype=st.dtype,
            numel=st.numel,
            weight_mean=st.mean,
            weight_std=st.std,
            expected_std=None,
            std_ratio=None,
            weight_variance_ratio=None,
            suggested_scale=None,
            nan_count=st.nan_count,
            inf_count=st.inf_count,
            status="ok",
            message="",
            weight_key=layer.weight_key,
            bias_key=layer.bias_key,
        )
        findings.append(finding)
        pre = _judge_weights(layer)
        if any(fnmatch.fnmatchcase(layer.name, pattern) for pattern in s.ignore):
            finding.status, finding.message = "skip", "ignored by configuration"
            continue
        if role == "embedding":
            finding.status, finding.message = pre or (
                "skip",
                "embedding: a lookup table has no fan-in; std reported, not judged",
            )
            continue
        if pre is not None:
            finding.status, finding.message = pre
            continue
        exp = expected_std(gain, max(fan, 1))
        finding.expected_std = exp
        zero = st.all_zero
        if role in ("normalized", "residual"):
            _judge_structural(finding, layer, branch_of.get(layer.name), zero)
            continue
        if zero:
            finding.std_ratio = finding.weight_variance_ratio = 0.0
            if role == "output":
                finding.message = "all-zero output layer: a common choice for logits"
            else:
                finding.status = "error"
                finding.message = "all weights are zero: no signal passes, no gradient reaches earlier layers"
            continue
        if st.std == 0.0:
            finding.std_ratio = finding.weight_variance_ratio = 0.0
            finding.status = "error"
            finding.message = (
                f"constant weights (every value {_fmt(st.mean)}): all units compute the same function"
            )
            continue
        ratio = st.std / exp
        finding.std_ratio = ratio
        finding.weight_variance_ratio = ratio * ratio
        finding.suggested_scale = 1.0 / ratio
        ln_r = math.log(finding.weight_variance_ratio)
        allow = sampling_allowance(st.finite_count)
        what = (
            f"std {_fmt(st.std)} is {ratio:.2f}× Kaiming {_fmt(exp)} ({finding.nonlinearity}, {s.mode} {fan})"
        )
        if role == "output":
            if ln_r > math.log(2 * s.error_threshold) + allow:
                finding.status = "error"
            elif ln_r > math.log(2 * s.warn_threshold) + allow:
                finding.status = "warn"
            finding.message = f"output layer, judged against gain {gain:.3g}: {what}" + (
                "; too large: logits start saturated" if finding.status != "ok" else "; fine"
            )
            continue
        if abs(ln_r) > math.log(s.error_threshold) + allow:
            finding.status = "error" if role != "stream" else "warn"
        elif abs(ln_r) > math.log(s.warn_threshold) + allow:
            finding.status = "warn"
        if finding.status == "ok":
            finding.message = f"{what}: ok"
        else:
            change = "shrinks" if ln_r < 0 else "grows"
            finding.message = (
                f"{what}: variance {change} ×{finding.weight_variance_ratio:.3g} here; "
                f"rescale W by {finding.suggested_scale:.3g}"
            )
        if (
            st.mean is not None
            and abs(st.mean) > 0.5 * st.std
            and abs(st.mean) > 4 * st.std / math.sqrt(st.finite_count)
        ):
            finding.status = worse(finding.status, "warn")
            finding.message += (
                f"; mean {_fmt(st.mean)} is {abs(st.mean) / st.std:.2f}× the std (Kaiming assumes zero mean)"
            )
        if role == "stream":
            finding.message += "; feeds the residual stream (its starting scale): at most a warning"
            continue
        chain.append((finding, ln_r))

    compound = _compound(chain, s)
    measured = _apply_probe(findings, probe, s) if probe is not None else None
    norms = [_judge_norm(n) for n in desc.norms]
    blocks, residual = _judge_blocks(desc, probe, s)
    summary = _summarize(findings, norms, compound, s, measured)
    if residual is not None:
        summary.residual_growth, message, status = residual
        if status != "ok":
            summary.status = worse(summary.status, status)
            summary.message = message if summary.status == status else f"{summary.message}; {message}"
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
    if desc.blocks and probe is None:
        notes.append(f"{len(desc.blocks)} residual blocks found; their growth needs the probe")
    return Report(model, asdict(s), findings, norms, summary, notes, probe_info, blocks)


def _judge_structural(f: LayerFinding, layer: Layer, block: str | None, zero: bool) -> None:
    """Layers whose weight scale does not set the forward signal by itself: followed by a
    normalization (``normalized``), or inside a residual branch (``residual``, judged by the
    block's measured growth instead of against Kaiming)."""
    st = layer.stats
    if not zero and st.std > 0:
        f.std_ratio = st.std / f.expected_std
        f.weight_variance_ratio = f.std_ratio**2
    if f.role == "normalized":
        f.message = (
            "followed by a normalization layer: its scale does not set the forward signal; "
            "not judged against Kaiming"
        )
        if zero:
            f.status, f.message = "error", "all weights are zero: the normalization then divides zero by ~0"
        elif st.std == 0:
            f.status, f.message = (
                "error",
                f"constant weights (every value {_fmt(st.mean)}): all units compute the same function",
            )
        return
    if zero:
        f.message = f"all-zero, inside residual block {block}: the block starts as the identity (zero-init)"
    elif st.std == 0:
        f.status, f.message = (
            "error",
            f"constant weights (every value {_fmt(st.mean)}): all units compute the same function",
        )
    else:
        f.message = (
            f"inside residual block {block}: std is {f.std_ratio:.2f}× Kaiming; judged by the block's "
            "measured growth (residual stream), not per layer"
        )


def _resolve_role(
    layer: Layer, desc: ModelDescription, s: Settings, last_name: str | None
) -> tuple[str, str, float | None, str]:
    """(role, nonlinearity, param, source) for one layer."""
    if layer.kind == "embedding":
        return "embedding", "linear", None, "rule"
    for pattern, nonlinearity, slope in s.overrides:
        if fnmatch.fnmatchcase(layer.name, pattern):
            role = (
                "output" if layer.is_output or (not desc.has_graph and layer.name == last_name) else "hidden"
            )
            param = (
                (slope if slope is not None else s.negative_slope) if nonlinearity == "leaky_relu" else None
            )
            return role, nonlinearity, param, "config"
    if layer.nonlinearity == "normalized":
        return "normalized", "normalized", None, "graph"
    if layer.nonlinearity is not None:
        role = "output" if layer.is_output else "hidden"
        return role, layer.nonlinearity, layer.nonlinearity_param, "graph"
    if not desc.has_graph and layer.name == last_name:
        return "output", "linear", None, "rule"
    param = s.negative_slope if s.nonlinearity == "leaky_relu" else None
    return "hidden", s.nonlinearity, param, "flag"


def _compound(chain: list[tuple[LayerFinding, float]], s: Settings) -> float | None:
    """ln of the product of the chain's variance ratios; promotes same-direction ``warn`` layers
    to ``error`` when it is beyond the compound threshold."""
    if not chain:
        return None
    total = sum(ln_r for _, ln_r in chain)
    if abs(total) > math.log(s.compound_threshold):
        drifting = [f for f, ln_r in chain if f.status == "warn" and ln_r * total > 0]
        for f in drifting:
            f.status = "error"
            f.message += f"; compounds over {len(chain)} layers to ×{math.exp(total):.3g}"
    return total


@dataclass
class Measured:
    """Chain-level results of the probe (see :func:`_apply_probe`)."""

    chain_ratio: float | None  # geometric mean of measured variance ratios over the hidden chain
    systematic: bool
    depth_ratio: float | None
    grad_depth_ratio: float | None


def _apply_probe(findings: list[LayerFinding], probe: ProbeResult, s: Settings) -> Measured:
    """Merge measured statistics into the findings and judge them.

    * ``variance_ratio = Var[y] / (gain² · E[x²])`` per layer; ``measured_scale = 1/sqrt(it)``.
    * **systematic** drift: the geometric mean of ``variance_ratio`` over the hidden chain, ``G``,
      beyond ``[1/T_warn, T_warn]`` widened by 3 standard errors of that mean
      (``3 · sd(ln r) / sqrt(L)``): an ``error``, as for the static check.
    * **fluctuation**: one layer's measured ratio beyond ``[1/T_probe, T_probe]`` (default 2) while
      its weights are within the Kaiming band: at most ``warn``, naming finite-width fluctuation
      and the data-driven fix; likewise depth drift beyond the compound threshold (summary).
    * NaN/Inf produced by the forward: ``error``. Dead units above ``dead_threshold``: ``warn``.
    """
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
        if f.role == "embedding":
            continue
        plain = f.role in ("hidden", "output")  # depth is a plain chain's notion
        if plain and first_var is None and math.isfinite(a.activation_var) and a.activation_var > 0:
            first_var = a.activation_var
        if first_var and math.isfinite(a.activation_var):
            f.depth_ratio = a.activation_var / first_var
        if a.input_nonfinite:
            f.input_second_moment = f.activation_var = f.depth_ratio = None
            f.message += "; not measured: its input already carries NaN/Inf from an earlier layer"
            continue
        if a.nan_count or a.inf_count:
            f.status = "error"
            f.message += f"; the forward produces {a.nan_count} NaN and {a.inf_count} Inf values here"
            continue
        ex2 = a.input_second_moment
        if math.isfinite(ex2) and ex2 > 0 and math.isfinite(a.activation_var) and a.activation_var > 0:
            f.variance_ratio = a.activation_var / (f.gain**2 * ex2)
            f.measured_scale = 1.0 / math.sqrt(f.variance_ratio)
            if f.role == "hidden" and f.status != "skip":
                chain.append((f, math.log(f.variance_ratio)))
        if a.input_grad_second_moment and a.output_grad_second_moment:
            f.grad_ratio = a.input_grad_second_moment / (f.gain**2 * a.output_grad_second_moment)
        if a.grad_var is not None and f.role == "hidden":
            first_grad = a.grad_var if first_grad is None else first_grad
            last_hidden_grad = a.grad_var
        if f.dead_fraction is not None and f.dead_fraction >= s.dead_threshold and f.role == "hidden":
            f.status = worse(f.status, "warn")
            f.message += (
                f"; {f.dead_fraction:.0%} of its ReLU units are zero for the whole probe batch (dead)"
            )

    chain_ratio, systematic = None, False
    if chain:
        logs = [ln for _, ln in chain]
        mean_ln = sum(logs) / len(logs)
        chain_ratio = math.exp(mean_ln)
        if len(logs) >= 2:
            sd = math.sqrt(sum((x - mean_ln) ** 2 for x in logs) / (len(logs) - 1))
            systematic = abs(mean_ln) > math.log(s.warn_threshold) + 3 * sd / math.sqrt(len(logs))
    for f, ln_r in chain:
        if systematic and ln_r * math.log(chain_ratio) > 0 and abs(ln_r) > math.log(s.warn_threshold):
            if f.status != "error":
                f.status = "error"
                f.message += (
                    f"; measured ×{f.variance_ratio:.3g} here, part of a systematic drift "
                    f"(geometric mean ×{chain_ratio:.3g} per layer)"
                )
        elif abs(ln_r) > math.log(s.probe_warn_threshold) and f.status == "ok":
            f.status = "warn"
            f.message += (
                f"; measured variance ratio {f.variance_ratio:.3g} although the weights are Kaiming: "
                "finite-width fluctuation for this input; data-driven fix (LSUV): rescale by "
                f"{f.measured_scale:.3g}"
            )
    last = next(
        (f for f in reversed(findings) if f.depth_ratio is not None and f.role in ("hidden", "output")), None
    )
    if not chain:
        last = None  # no plain chain of hidden layers (normalized or residual nets): no depth verdict
    grad_depth = first_grad / last_hidden_grad if first_grad and last_hidden_grad else None
    return Measured(chain_ratio, systematic, last.depth_ratio if last else None, grad_depth)


def _judge_blocks(
    desc: ModelDescription, probe: ProbeResult | None, s: Settings
) -> tuple[list[BlockFinding], tuple[float, str, str] | None]:
    """Residual blocks: ``growth_k = Var[out_k] / Var[skip_k]``.

    A branch at Kaiming scale adds as much variance as the skip carries, so an un-normalized
    residual net *doubles* the variance per block — exponential growth. Normalized nets (BatchNorm
    on batch statistics) add about one unit per block — linear growth, growth factors falling
    towards 1 (1.49 → 1.12 over 8 blocks): healthy. The finding is a *constant* factor: the
    geometric mean over the later half of the blocks ≥ 1.5 → ``warn``, and ``error`` when the total
    over all blocks exceeds the compound threshold.
    """
    if not desc.blocks:
        return [], None
    tv = probe.tensor_vars if probe is not None else {}
    blocks = []
    for b in desc.blocks:
        skip, out = tv.get(b.skip_tensor), tv.get(b.out_tensor)
        growth = out / skip if skip and out is not None and skip > 0 else None
        blocks.append(BlockFinding(b.name, list(b.layers), growth, "ok", ""))
    growths = [b.growth for b in blocks if b.growth is not None and b.growth > 0]
    if not growths:
        for b in blocks:
            b.message = "growth not measured (no probe)"
        return blocks, None
    late = growths[len(growths) // 2 :]
    late_geo = math.exp(sum(math.log(g) for g in late) / len(late))
    total = math.prod(growths)
    geo = math.exp(sum(math.log(g) for g in growths) / len(growths))
    status = "ok"
    if late_geo >= 1.5:
        status = "error" if total > s.compound_threshold else "warn"
    for b in blocks:
        if b.growth is None:
            b.message = "growth not measured"
            continue
        b.message = f"Var[out]/Var[skip] = {b.growth:.3g}"
        if status != "ok" and b.growth >= 1.5:
            b.status = status
            b.message += "; the residual stream grows by a constant factor per block"
    if status == "ok":
        message = (
            f"residual stream: ×{geo:.3g} per block on average "
            f"(×{total:.3g} over {len(growths)} blocks): healthy"
        )
    else:
        flagged = [b.name for b in blocks if b.status != "ok"]
        message = (
            f"residual stream grows ×{late_geo:.3g} per block (×{total:.3g} over {len(growths)} blocks: "
            f"{', '.join(flagged[:6])}{'…' if len(flagged) > 6 else ''}); remedies: zero-init the last "
            "norm's γ or the last layer of each branch, or scale branches by 1/sqrt(number of blocks) (Fixup)"
        )
    return blocks, (geo, message, status)


def _judge_norm(norm: NormLayer) -> NormFinding:
    st = norm.stats
    bias = norm.bias_stats
    status, message = "ok", "affine scale reported; not judged against Kaiming"
    if st.nan_count or st.inf_count or (bias and (bias.nan_count or bias.inf_count)):
        status, message = "error", "NaN or Inf in the affine parameters"
    elif st.numel and st.all_zero:
        status, message = "ok", "all-zero scale (zero-init of a residual branch's last norm)"
    return NormFinding(
        norm.name,
        norm.kind,
        list(norm.shape),
        st.mean,
        st.std,
        bias.mean if bias else None,
        bias.std if bias else None,
        status,
        message,
    )


def _summarize(
    findings: list[LayerFinding],
    norms: list[NormFinding],
    ln_compound: float | None,
    s: Settings,
    measured: Measured | None = None,
) -> Summary:
    counts = {"ok": 0, "warn": 0, "error": 0, "skip": 0}
    status = "ok"
    for f in findings:
        counts[f.status] += 1
        status = worse(status, f.status)
    for n in norms:
        status = worse(status, n.status)
    compound = math.exp(ln_compound) if ln_compound is not None else None
    chain_broken = ln_compound is not None and abs(ln_compound) > math.log(s.compound_threshold)
    if chain_broken:
        status = "error"
    scored = [f for f in findings if f.status != "skip"]
    worst = None
    if scored:

        def badness(f: LayerFinding) -> tuple[int, float]:
            dev = abs(math.log(f.weight_variance_ratio)) if f.weight_variance_ratio else math.inf
            if f.role == "output" and f.status == "ok":
                dev = 0.0
            return ({"ok": 1, "warn": 2, "error": 3}[f.status], dev)

        worst = max(scored, key=badness).name
    n = len(findings)
    if not n:
        message = "no weighted layers found"
    elif chain_broken:
        message = (
            f"the signal's variance changes ×{compound:.3g} over the chain of hidden layers "
            f"(beyond ×{s.compound_threshold:g}): it will vanish or explode"
        )
    elif measured is not None and measured.systematic:
        status = "error"
        message = (
            f"measured: the signal's variance changes ×{measured.chain_ratio:.3g} per layer on average "
            f"(geometric mean over the chain): a systematic scale error"
        )
    elif (
        measured is not None
        and measured.depth_ratio
        and abs(math.log(measured.depth_ratio)) > math.log(s.compound_threshold)
    ):
        status = worse(status, "warn")
        message = (
            f"measured: the signal's variance drifts ×{measured.depth_ratio:.3g} from first to last layer "
            f"although the weights are Kaiming: finite-width fluctuation; data-driven init (LSUV) fixes it"
        )
    elif status == "ok":
        message = f"{counts['ok']} of {n} layers within Kaiming bands"
    else:
        message = f"{counts['error']} error, {counts['warn']} warn of {n} layers; worst: {worst}"
    # counts after the summary-level rules
    counts = {k: sum(1 for f in findings if f.status == k) for k in ("ok", "warn", "error", "skip")}
    summary = Summary(
        status, counts["ok"], counts["warn"], counts["error"], counts["skip"], worst, compound, message
    )
    if measured is not None:
        summary.depth_ratio = measured.depth_ratio
        summary.measured_chain_ratio = measured.chain_ratio
        summary.grad_depth_ratio = measured.grad_depth_ratio
    return summary
