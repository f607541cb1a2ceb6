"""The math: gains, fans and the expected Kaiming standard deviation.

He et al. (2015), "Delving Deep into Rectifiers", eq. 10: a layer ``y = W x`` followed by a
ReLU keeps the forward signal's variance when

    ½ · fan_in · Var[w] = 1,   i.e.   std(w) = gain / sqrt(fan_in),  gain = sqrt(2).

For other nonlinearities the gain changes (``torch.nn.init.calculate_gain``); with
``mode="fan_out"`` the backward condition (eq. 14) uses ``fan_out`` instead. Everything here is
plain Python so that it can be imported without torch; ``tests/test_gains.py`` checks each value
against ``torch.nn.init``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import SettingsError
from .options import NONLINEARITIES  # the valid names live with the other option values

# gain = 1 / sqrt(E[f(z)^2]) for z ~ N(0, 1): the factor that makes Var[f(W x)] match the input's
# second moment (He et al. eq. 7 generalised). Computed once with 200-point Gauss-Hermite quadrature:
#   python -c "import numpy as np; from math import erf; ..."  (see tests/test_gains.py)
_NUMERIC_GAINS = {
    "gelu": 1.5335,  # E[gelu(z)^2] = 0.4252
    "silu": 1.6765,  # E[silu(z)^2] = 0.3558
    # MobileNetV3's piecewise activations (Howard et al. 2019, §5.2): hardswish(z) = z·relu6(z+3)/6,
    # hardsigmoid(z) = relu6(z+3)/6; relu6(z) = min(max(z, 0), 6) differs from ReLU only beyond 6σ
    "hardswish": 1.7367,  # E[hardswish(z)^2] = 0.3316
    "hardsigmoid": 1.8978,  # E[hardsigmoid(z)^2] = 0.2776
    "relu6": 1.4142,  # E[relu6(z)^2] = 0.5 − O(P(z > 6)) = 0.5: sqrt(2), as ReLU
}
# The same definition reproduces torch's relu (E = 1/2: sqrt(2)), leaky_relu (E = (1 + a²)/2) and
# linear (1); torch's tanh 5/3, selu 3/4 and sigmoid 1 are other choices (it would give 1.5925,
# 1.0 and 1.8462), kept as torch has them.


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """Return the recommended gain for a nonlinearity.

    ================= ====================================================
    nonlinearity      gain
    ================= ====================================================
    linear / identity :math:`1`
    conv{1,2,3}d      :math:`1`
    sigmoid           :math:`1`
    tanh              :math:`5/3`
    relu              :math:`\\sqrt{2}`
    leaky_relu        :math:`\\sqrt{2 / (1 + a^2)}`, ``a = param`` (default 0.01)
    selu              :math:`3/4`
    gelu              :math:`1/\\sqrt{E[\\mathrm{gelu}(z)^2]} \\approx 1.5335`
    silu              :math:`1/\\sqrt{E[\\mathrm{silu}(z)^2]} \\approx 1.6765`
    hardswish         :math:`1/\\sqrt{E[\\mathrm{hardswish}(z)^2]} \\approx 1.7367`
    hardsigmoid       :math:`1/\\sqrt{E[\\mathrm{hardsigmoid}(z)^2]} \\approx 1.8978`
    relu6             :math:`1/\\sqrt{E[\\mathrm{relu6}(z)^2]} = \\sqrt{2}` (to 1e-9)
    ================= ====================================================

    The first seven rows are ``torch.nn.init.calculate_gain``'s table, value for value.

    Args:
        nonlinearity: one of :data:`NONLINEARITIES`.
        param: the negative slope for ``leaky_relu``.

    >>> round(calculate_gain("relu"), 6)
    1.414214
    """
    if nonlinearity in ("linear", "identity", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    if nonlinearity in _NUMERIC_GAINS:
        return _NUMERIC_GAINS[nonlinearity]
    raise SettingsError(f"unknown nonlinearity {nonlinearity!r}; valid: {', '.join(NONLINEARITIES)}")


#: Kinds of weighted layer whose weight is stored ``[out, in/groups, *kernel]`` (torch layout).
CONV_KINDS = ("conv1d", "conv2d", "conv3d")
#: Transposed convolutions store ``[in, out/groups, *kernel]``.
CONV_TRANSPOSE_KINDS = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def fans(kind: str, shape: Sequence[int], groups: int = 1) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight in torch layout.

    For ``linear`` (``[out, in]``), ``matmul`` (already turned into ``[out, in]`` by the loader),
    ``embedding`` and ``conv*`` (``[out, in/groups, *k]``) this is exactly
    ``torch.nn.init._calculate_fan_in_and_fan_out``::

        fan_in  = shape[1] * prod(k)      # inputs feeding one output unit (in/groups · k for groups)
        fan_out = shape[0] * prod(k)

    With ``groups > 1`` (depthwise included) ``fan_in`` is exact: each output sees ``in/groups``
    channels. ``fan_out`` keeps torch's convention ``out · k`` so that
    ``kaiming_normal_(mode="fan_out")`` reads as exact; each input actually feeds ``out/groups · k``
    outputs, which the report states for grouped convolutions.

    Transposed convolutions store ``[in, out/groups, *k]``: torch's helper would swap the roles, so
    here ``fan_in = in/groups · k`` and ``fan_out = out/groups · k · groups`` (stride 1: with stride
    ``s`` an output sees on average ``fan_in / prod(s)`` inputs; the probe measures the real effect).
    """
    if len(shape) < 2:
        raise SettingsError(f"fans need a weight with at least 2 dimensions, got shape {tuple(shape)}")
    receptive = 1
    for k in shape[2:]:
        receptive *= int(k)
    if kind in CONV_TRANSPOSE_KINDS:
        fan_in = int(shape[0]) // max(groups, 1) * receptive
        fan_out = int(shape[1]) * max(groups, 1) * receptive
        return fan_in, fan_out
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def expected_std(gain: float, fan: int) -> float:
    """Kaiming std: ``gain / sqrt(fan)`` (He et al. eq. 10 for ``fan_in``, eq. 14 for ``fan_out``)."""
    if fan <= 0:
        raise SettingsError(f"fan must be positive, got {fan}")
    return gain / math.sqrt(fan)


def torch_default_init(std: float, max_abs: float, fan_in: int, count: int) -> bool:
    """Whether weights look drawn by PyTorch's own default for ``nn.Linear``/``nn.Conv*``:
    ``kaiming_uniform_(a=√5)`` = U(±1/√fan_in), std ``1/√(3·fan_in)`` (0.577/1.414 = 0.41× Kaiming
    for ReLU). The std within 4 standard errors of that (a uniform's std has relative error
    ``√((κ−1)/(4n)) = √(0.2/n)``, kurtosis κ = 1.8), and uniform-shaped: the largest |w| at the
    bound 1/√fan_in (≤ it, and within 1 % of it: a normal of that std passes √3·σ at n ≥ 5)."""
    if not (fan_in > 0 and count > 1 and math.isfinite(std) and math.isfinite(max_abs) and std > 0):
        return False
    bound = 1.0 / math.sqrt(fan_in)
    near = abs(std * math.sqrt(3 * fan_in) - 1) <= 4 * math.sqrt(0.2 / count) + 1e-3
    return near and 0.99 * bound <= max_abs <= bound * (1 + 1e-3)
