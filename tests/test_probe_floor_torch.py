"""Issue 17 (session 5): the torch probe at its CPU floor — the statistics' own ops run with the
write guard popped, ``Σx²`` in one read (squared row norms), a tensor two layers see reduced once
— and the logits' statistics in row groups, never a float64 copy of every logit. Every number is
checked against float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_mlp
from initdoctor.formats.torch_moments import ROW, reduce
from initdoctor.probe.collector import logit_stats
from initdoctor.probe.torch_collect import Measured, TorchCollector, torch_logit_stats
from initdoctor.probe.torch_state import ModelState
from initdoctor.stats import scan


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_norm_squares_equal_float64(dtype: torch.dtype) -> None:
    """A ReLU-like tensor of 3 rows of 4096 and a tail of 1000: var and mean to 1e-6 of float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(3 * ROW + 1000, generator=g) * 0.7 + 0.2).to(dtype)
    moments = reduce(x)[0]
    ref = scan(x.float().numpy().astype(np.float64)).moments
    assert moments.count == 3 * ROW + 1000
    assert _rel(moments.var, ref.var) < 1e-6 and _rel(moments.mean, ref.mean) < 1e-6


def test_statistics_ops_do_not_pass_the_write_guard() -> None:
    """Under the probe's guard, a collector's hook runs sum/norm/amax with the guard popped: the
    guard's schema cache holds the model's ops only (addmm, relu…), no reduction of the probe's."""
    model = plain_mlp(depth=2, width=16, in_features=8).eval()
    state = ModelState(model)
    state.prepare()
    collector = TorchCollector("0", "linear", True)
    first = model.get_submodule("0")
    handle = first.register_forward_hook(lambda _m, a, out: collector.observe(a[0], out))
    try:
        with state.guard(), torch.no_grad():
            model(torch.randn(32, 8))
    finally:
        handle.remove()
        state.restore()
    seen = {str(f) for f in state.writes.cache}
    assert any("addmm" in op for op in seen)
    assert not [op for op in seen if any(k in op for k in ("sum", "norm", "amax", "dot"))]
    stats = collector.result()
    assert stats.calls == 1 and stats.activation_var is not None and stats.activation_var > 0


class _SharedInput(nn.Module):
    """q, k and v projections of one input (as in attention), then their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) + self.k(x) + self.v(x)


def test_a_tensor_three_layers_read_is_reduced_once() -> None:
    torch.manual_seed(0)
    model = _SharedInput()
    measured = Measured()
    collectors = {n: TorchCollector(n, "linear", False, None, measured) for n in ("q", "k", "v")}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, a, out, c=c: c.observe(a[0], out)  # type: ignore[misc]
        )
        for n, c in collectors.items()
    ]
    x = torch.randn(128, 64) * 1.5
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert measured.hits == 2  # the shared input: measured for q, remembered for k and v
    ref = float((x.double() ** 2).mean())
    for c in collectors.values():
        assert _rel(c.result().input_second_moment, ref) < 1e-6


def test_a_tensor_written_in_place_is_measured_again() -> None:
    measured = Measured()
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    first = measured.reduce(x)[0].var
    x.mul_(2.0)  # same object, new version: its old moments are not reused
    second = measured.reduce(x)[0].var
    assert measured.hits == 0 and _rel(second, 4 * first) < 1e-6
    assert measured.reduce(x)[0].var == second and measured.hits == 1


@pytest.mark.parametrize("chunk", [1, 3 * 53, 10_000, 1 << 22])
def test_logit_stats_in_row_groups_equal_numpy(chunk: int) -> None:
    """One row per group up to all rows in one: the five numbers equal numpy's float64 to 1e-6."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 37, 53, generator=g) * 3 + torch.arange(53.0) / 7
    ours, ref = torch_logit_stats(z, "output", chunk=chunk), logit_stats(z.numpy(), "output")
    assert ours is not None and ref is not None
    assert (ours.positions, ours.classes) == (148, 53)
    for field in ("lse_minus_mean", "logit_var", "offset_var"):
        assert _rel(getattr(ours, field), getattr(ref, field)) < 1e-6


def test_logit_stats_bf16_and_non_finite() -> None:
    z = (torch.randn(64, 100, generator=torch.Generator().manual_seed(3)) * 2).to(torch.bfloat16)
    ours = torch_logit_stats(z, "output", chunk=7 * 100)
    ref = logit_stats(z.float().numpy(), "output")
    assert ours is not None and ref is not None
    assert _rel(ours.logit_var, ref.logit_var) < 1e-6 and _rel(ours.offset_var, ref.offset_var) < 1e-6
    z[40, 3] = math.inf  # in the sixth group of seven rows
    assert torch_logit_stats(z, "output", chunk=7 * 100) is None


def test_probe_numbers_through_the_guard_equal_float64() -> None:
    """The whole path (hooks under the guard, statistics with it popped): the first layer's output
    variance and the second layer's input second moment equal float64 of the same forward."""
    torch.manual_seed(4)
    model = plain_mlp(depth=3, width=48, in_features=24)
    x = torch.randn(200, 24)
    report = initdoctor.diagnose(model, probe=True, example_inputs=(x,))
    with torch.no_grad():
        first = model.get_submodule("0")
        y = (x.double() @ first.weight.double().T + first.bias.double()).numpy()
    layers = {layer.name: layer for layer in report.layers}
    assert _rel(layers["0"].activation_var, float(y.var())) < 1e-6
    assert _rel(layers["2"].input_second_moment, float((np.maximum(y, 0) ** 2).mean())) < 1e-5
