"""Which of He's two conditions a model follows, and the variance map of saturating nonlinearities.

**fan_in or fan_out** (He et al. 2015, §2.2). The forward condition ``½ · fan_in · Var[w] = 1``
(eq. 10) and the backward condition ``½ · fan_out · Var[w] = 1`` (eq. 14) are each sufficient:
with the backward one the forward product over the chain telescopes,
``prod_l fan_in_l / fan_out_l = c_first / d_last`` (eq. 16 with ``d_l = c_{l+1}``), a constant
instead of an exponential in depth. torchvision initializes VGG and ResNet convs with
``kaiming_normal_(mode="fan_out")``. :func:`detect_mode` reads the mode from the weights: the
layers with ``fan_in ≠ fan_out`` that are within the warn band for one fan and not the other
vote; ``fan_out`` wins when it has a majority of them (ties and no votes: ``fan_in``).

**Saturating nonlinearities** (tanh, sigmoid). Mean-field theory (Poole et al. 2016, eq. 3;
Schoenholz et al. 2017) gives the pre-activation variance's map over depth,
``q_{l+1} = σ_w² · E_z[φ(√q_l · z)²] + σ_b²``, ``σ_w² = fan_in · Var[w]``. For a bounded φ it has
a stable fixed point ``q*``: when ``q* > 0`` the signal neither vanishes nor explodes over depth,
whatever the "gain" — linear-gain compounding (``prod (σ_w² / gain²)``) does not apply. For tanh
without bias ``q* > 0`` iff ``σ_w² > 1`` (``φ'(0) = 1``); below, small signals shrink by
``σ_w²`` per layer. ReLU-gain Kaiming on tanh (``σ_w² = 2``): ``q* = 0.618``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..report import Role

if TYPE_CHECKING:
    from ..model import Layer
    from ..report import LayerFinding
    from ..settings import Settings

FAN_OUT_NOTE = (
    "the weights follow Kaiming's fan_out mode (He et al. 2015, eq. 14: the backward condition, "
    "as torchvision initializes its convs): judged in fan_out mode; the forward variance then "
    "changes by prod(fan_in / fan_out) = c_first / d_last over the chain, not exponentially "
    "(--mode fan_in forces the forward condition)"
)
SATURATING = {"tanh": math.tanh, "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x))}
_VOTERS = (Role.HIDDEN, Role.STREAM, Role.RESIDUAL, Role.NORMALIZED)


def _gaussian_mean(f: Callable[[float], float], n: int = 801, lim: float = 8.0) -> float:
    """``E_z[f(z)]``, ``z ~ N(0, 1)``: the trapezoid rule on ``[−8, 8]`` (pure Python: no numpy)."""
    h = 2 * lim / (n - 1)
    total = 0.0
    for i in range(n):
        z = -lim + i * h
        w = 0.5 if i in (0, n - 1) else 1.0
        total += w * math.exp(-z * z / 2) * f(z)
    return total * h / math.sqrt(2 * math.pi)


def _second_moment(phi: Callable[[float], float], root: float) -> float:
    """``E_z[φ(√q z)²]`` with ``root = √q``."""
    return _gaussian_mean(lambda z: phi(root * z) ** 2)


def fixed_point(nonlinearity: str, sw2: float, sb2: float = 0.0) -> float:
    """``q*`` of ``q ↦ σ_w² · E[φ(√q z)²] + σ_b²`` (Poole et al. 2016, eq. 3), iterated from
    ``q = 1``; 0.0 when the map has only the trivial fixed point (tanh, ``σ_b² = 0``, ``σ_w² ≤ 1``)."""
    phi = SATURATING[nonlinearity]
    if nonlinearity == "tanh" and sb2 == 0.0 and sw2 <= 1.0:
        return 0.0  # q = σ_w² · E[tanh(√q z)²] < σ_w² q ≤ q for q > 0: only q* = 0
    q = 1.0
    for _ in range(200):
        nxt = sw2 * _second_moment(phi, math.sqrt(q)) + sb2
        if abs(nxt - q) <= 1e-9 * max(q, 1e-12):
            return nxt
        q = nxt
    return q


def chi(nonlinearity: str, sw2: float, q: float) -> float:
    """``χ₁ = σ_w² · E[φ'(√q* z)²]``: the per-layer factor of the gradients' variance at the fixed
    point (Schoenholz et al. 2017, eq. 5); > 1 chaotic (gradients grow), < 1 ordered."""
    phi = SATURATING[nonlinearity]
    root = math.sqrt(max(q, 0.0))

    def slope2(z: float) -> float:
        y = phi(root * z)
        d = 1 - y * y if nonlinearity == "tanh" else y * (1 - y)
        return d * d

    return sw2 * _gaussian_mean(slope2)


def saturating_factor(f: LayerFinding, layer: Layer) -> tuple[float, str] | None:
    """For a tanh/sigmoid hidden layer: (its ``ln`` factor in the chain, a note). The factor is 0
    when the variance map has a fixed point ``q* > 0`` (the signal is stable over depth), else
    ``ln σ_w²`` (the small-signal regime: tanh is linear near 0). None for other layers."""
    base = f.nonlinearity.split("(")[0]
    if base not in SATURATING or layer.stats.std is None or not layer.stats.std > 0:
        return None
    sw2 = layer.fan_in * layer.stats.std**2  # σ_w² = fan_in · Var[w]
    q = fixed_point(base, sw2)
    if q > 0:
        c = chi(base, sw2, q)
        note = (
            f"{base}: σ_w² = {sw2:.3g}, variance map fixed point q* = {q:.3g} (stable over depth, "
            f"Poole et al. 2016), χ₁ = {c:.3g}"
        )
        return 0.0, note
    return math.log(
        sw2
    ), f"{base}: σ_w² = {sw2:.3g} ≤ 1: no fixed point q* > 0, small signals shrink ×{sw2:.3g} per layer"


def detect_mode(layers: list[Layer], findings: list[LayerFinding], s: Settings) -> str:
    """``fan_out`` when most hidden layers (hidden, stream, residual, normalized) are within the warn band for
    ``fan_out`` and, of those with ``fan_in ≠ fan_out``, more are within it for ``fan_out`` only than
    for ``fan_in`` only; else ``fan_in`` (see the module doc)."""
    from ..gains import expected_std
    from .weights import sampling_allowance

    voters = within_out = only_in = only_out = 0
    for layer, f in zip(layers, findings, strict=True):
        st = layer.stats
        # a layer followed by a norm: libraries init it with the ReLU gain (torchvision, timm)
        gain = math.sqrt(2.0) if f.role == Role.NORMALIZED else f.gain
        if f.role not in _VOTERS or st.std is None or not (st.std > 0 and math.isfinite(st.std)):
            continue
        if layer.fan_in <= 0 or layer.fan_out <= 0:
            continue
        voters += 1
        band = math.log(s.warn_threshold) + sampling_allowance(st.finite_count)
        # |ln (std / (gain / sqrt(fan)))²| within the band, for each fan (He et al. eq. 10 / 14)
        ok_in = abs(2 * math.log(st.std / expected_std(gain, layer.fan_in))) <= band
        ok_out = abs(2 * math.log(st.std / expected_std(gain, layer.fan_out))) <= band
        within_out += ok_out
        only_in += ok_in and not ok_out
        only_out += ok_out and not ok_in
    return "fan_out" if 2 * within_out > voters and only_out > only_in else "fan_in"


def telescoped(layers: list[Layer]) -> float:
    """``prod fan_in / fan_out`` over ``layers``: the forward variance factor of a chain that is
    exact in ``fan_out`` mode (He et al. 2015, eq. 16: it telescopes to ``c_first / d_last``)."""
    return math.prod(layer.fan_in / layer.fan_out for layer in layers if layer.fan_out > 0)


def tap_fraction(kernel: tuple[int, ...], n_in: tuple[int, ...], n_out: tuple[int, ...]) -> float | None:
    """The fraction of a convolution's kernel taps that read real input (not zero padding),
    averaged over output positions, for 'same'-style padding ``p = k // 2`` (stride inferred from
    the sizes). A 3×3 conv on a 1×1 map reads 1 of 9 taps, on 2×2 4 of 9: its effective fan_in is
    that fraction of ``fan_in`` and its output variance the same fraction of a full map's (He et
    al. 2015, eq. 7 with ``n`` the taps that read the signal). None when the sizes do not fit
    that padding (the fraction is then unknown)."""
    if not (len(kernel) == len(n_in) == len(n_out)):
        return None
    frac = 1.0
    for k, n, m in zip(kernel, n_in, n_out, strict=True):
        if k <= 1:
            continue
        p = k // 2
        span = n + 2 * p - k  # (span // stride) + 1 == m
        if span < 0 or m < 1:
            return None
        stride = next((st for st in range(1, span + 2) if span // st + 1 == m), None)  # the smallest
        if stride is None:
            return None
        valid = sum(1 for i in range(m) for j in range(k) if 0 <= i * stride + j - p < n)
        frac *= valid / (m * k)
    return frac


def judged_fan_out(f: LayerFinding, mode: str) -> bool:
    """Whether the layer was judged in fan_out (mode fan_out, and not moved to fan_in by
    :func:`initdoctor.checks.weights.layer_mode`: its expected std is then fan_in's)."""
    from ..gains import expected_std

    if mode != "fan_out" or f.fan_out <= 0 or f.expected_std is None:
        return False
    return not math.isclose(f.expected_std, expected_std(f.gain, max(f.fan_in, 1)), rel_tol=1e-9)


def telescoping(f: LayerFinding, mode: str, factor: float) -> float:
    """The share of a layer's expected measured ratio (:func:`expected_measured`) that is not a
    loss over depth: fan_out's ``fan_in / fan_out = c_in / c_out`` telescopes over the chain (He et
    al. 2015, eq. 16), the padded taps are the architecture's; a grouped conv's ``fan_in / fan_out
    = c_in / (groups · c_out)`` leaves ``1 / groups`` per layer that does not telescope (a
    depthwise conv in fan_out mode keeps ``1/c`` of the variance): it is a real loss."""
    return factor * (max(f.groups, 1) if judged_fan_out(f, mode) else 1)


def expected_measured(
    f: LayerFinding, mode: str, spatial: tuple[tuple[int, ...], tuple[int, ...]] | None
) -> tuple[float, str | None]:
    """What a layer's measured ``variance_ratio`` should be when its weights are exact in ``mode``,
    and a note: ``fan_in / fan_out`` in fan_out mode (eq. 14 gives ``Var[w] = gain² / fan_out``,
    so ``fan_in · Var[w] / gain² = fan_in / fan_out``), times the taps' fraction on a map smaller
    than the kernel reaches (:func:`tap_fraction`)."""
    factor, note = 1.0, None
    if judged_fan_out(f, mode):
        factor = f.fan_in / f.fan_out
    if spatial is not None and len(f.shape) > 2:
        kernel = tuple(int(k) for k in f.shape[2:])
        frac = tap_fraction(kernel, *spatial)
        if frac is not None and frac < 0.75:  # maps of ≤ 4 for a 3×3 kernel
            factor *= frac
            size = "×".join(str(d) for d in spatial[0])
            note = f"on a {size} map {frac:.2f} of the kernel's taps read real input (the rest padding)"
    return factor, note
