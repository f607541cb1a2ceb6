"""Issue 14, densenet_nobn: does the backward signal at init separate the BN-free DenseNet from its
healthy twin? The hypothesis was that a concatenated feature map, read by every later layer of its
dense block, gets a gradient that is a sum over its k consumers (k× the variance, He et al. 2015
§2.2 per consumer), so the gradient would grow toward the input. Measured: it does not — the sum is
there in the healthy (BatchNorm) DenseNet, ×3.8-4.0 ≈ k + 1 = 4, and much weaker without BN
(×0.9-1.7); the gradient shrinks toward the input (initdoctor's ``grad_depth_ratio`` 0.0062); the
conv weights are the healthy model's, bit for bit. So no rule: the row stays a known gap
(tests/test_real_matrix.py), with the evidence in docs/rules-evidence.md ("DenseNet without BN: the
backward signal") and benchmarks/dense_backward.py. These tests keep those numbers checkable.
"""

from __future__ import annotations

import torch
from torch import nn

import initdoctor
from tests import realzoo
from tests.test_real_matrix import KNOWN_GAPS

BLOCKS = ("denseblock1", "denseblock2", "denseblock3")  # 3 dense layers each (realcnn.DenseNet)


def consumer_gain(name: str) -> list[float]:
    """Per dense block: ``|∂L/∂x_in|² / |∂L/∂out[:, :c_in]|²``, the squared gradient norm at the
    block's input over the part that reaches it through the concatenation's identity alone. The
    input is read by the identity and by each of the block's k = 3 layers; with independent
    contributions of equal size the ratio is k + 1 = 4. Train mode (BatchNorm on batch statistics,
    as the probe runs it), the probe's seeded batch of 8 images, a seeded N(0, 1) output gradient."""
    model = realzoo.BY_NAME[name].build().train()
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str, t: torch.Tensor) -> None:
        t.retain_grad()
        seen[key] = t

    for n in BLOCKS:
        block = getattr(model.features, n)
        block.register_forward_pre_hook(lambda _m, args, n=n: keep(n + ".in", args[0]))
        block.register_forward_hook(lambda _m, _a, y, n=n: keep(n + ".out", y))
    x = realzoo.probe_inputs(realzoo.BY_NAME[name], batch=8)["x"]
    out = model(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)))
    gains = []
    for n in BLOCKS:
        x_in, y = seen[n + ".in"], seen[n + ".out"]
        assert x_in.grad is not None and y.grad is not None
        skip = y.grad[:, : x_in.shape[1]].pow(2).sum()
        gains.append((x_in.grad.pow(2).sum() / skip).item())
    return gains


def test_healthy_densenet_sums_its_consumers_gradients() -> None:
    # measured 3.77, 3.96, 4.02: the k + 1 = 4 of independent consumers
    assert all(3.0 < g < 5.0 for g in consumer_gain("densenet"))


def test_bn_free_densenet_sums_less_not_more() -> None:
    # measured 1.65, 0.88, 1.67: below the healthy model's in every block, no k× growth
    healthy = consumer_gain("densenet")
    broken = consumer_gain("densenet_nobn")
    assert all(g < 2.0 for g in broken)
    assert all(b < h / 2 for b, h in zip(broken, healthy, strict=True))


def test_backward_probe_sees_the_gradient_shrink_toward_the_input() -> None:
    report = initdoctor.diagnose("tests.realzoo:densenet_nobn", probe=True, backward=True)
    grad = {f.name: f.grad_var for f in report.layers}
    # Var[∂L/∂y] at the stem over the last hidden conv: 6.5e-6 / 1.05e-3 = 0.0062 (per element;
    # the stem's map has 16× the positions of the last block's)
    assert report.summary.grad_depth_ratio is not None and 0.001 < report.summary.grad_depth_ratio < 0.05
    assert grad["features.conv0"] is not None and 1e-6 < grad["features.conv0"] < 3e-5
    assert report.summary.status == "ok"  # the backward probe does not change the verdict
    assert "densenet_nobn" not in KNOWN_GAPS  # healthy in the matrix: it trains as well as with BN


def test_bn_free_weights_are_the_healthy_models() -> None:
    """Same seed, and BatchNorm draws nothing: every conv and linear tensor of the broken twin is
    the healthy model's, so no weight-statistics rule can tell them apart."""
    healthy = dict(realzoo.densenet().named_parameters())
    broken = dict(realzoo.densenet_nobn().named_parameters())
    assert len(broken) == 23
    assert all(torch.equal(p, healthy[n]) for n, p in broken.items())


def test_kaiming_mlp_backward_reference() -> None:
    """The reference a healthy plain net gives: 8 ReLU linears 256 → 256, Kaiming fan_in (= fan_out
    here, so He's backward condition ½·fan_out·Var[w] = 1 holds too): the gradient keeps its scale
    over depth, grad_depth_ratio 0.97."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(8):
        lin = nn.Linear(256, 256)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    mlp = nn.Sequential(*layers, nn.Linear(256, 10))
    report = initdoctor.diagnose(mlp, probe=True, input_shapes=((32, 256),), backward=True)
    assert report.summary.grad_depth_ratio is not None and 0.5 < report.summary.grad_depth_ratio < 2.0
