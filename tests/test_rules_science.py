"""The rules' science on torchvision-like nets (tests/archs.py): residual growth (R301, R302), He's
two conditions (fan_in / fan_out), saturating nonlinearities (the variance map's fixed point),
concatenation, the depth ratio without the output layer, convs on maps smaller than their kernel.
Evidence from training runs: docs/rules-evidence.md (benchmarks/rules_training.py)."""

from __future__ import annotations

import math

import archs
import pytest
import torch
from torch import nn

import initdoctor
from initdoctor.checks.blocks import slope
from initdoctor.checks.modes import chi, fixed_point, tap_fraction

IMAGES = ((8, 3, 32, 32),)


def probe(model: nn.Module, shapes: tuple = IMAGES, **settings: object) -> initdoctor.Report:
    return initdoctor.diagnose(model, probe=True, input_shapes=shapes, **settings)


def blocks(report: initdoctor.Report) -> dict[str, tuple[float, str, str | None]]:
    return {b.name: (b.growth, b.status, b.rule) for b in report.residual_blocks}


# --- R301 / R302: residual growth ---------------------------------------------------------------
def test_resnet18_with_batchnorm_grows_linearly_and_is_healthy():
    report = probe(archs.resnet18())
    assert report.summary.status == "ok", report.summary.message
    growth = blocks(report)
    assert len(growth) == 8 and all(status == "ok" for _, status, _ in growth.values())
    # each normalized branch adds about one unit: identity blocks ≈ ×1.5, never ×2.4 as unnormalized
    assert 1.3 < growth["layer2.1"][0] < 1.7 and 1.3 < growth["layer4.1"][0] < 1.7
    assert all("normalized branch" in b.message for b in report.residual_blocks)
    assert report.summary.kaiming_mode == "fan_out"  # torchvision's convs, read through the BNs


def test_resnet18_without_batchnorm_grows_exponentially():
    report = probe(archs.resnet18(bn=False))
    s = report.summary
    assert (s.status, s.rule) == ("error", "R301"), s.message
    assert "exponentially over 8 unnormalized blocks" in s.message and "×88" in s.message
    growth = blocks(report)
    assert growth["layer1.0"][0] == pytest.approx(2.41, rel=0.05)  # ≈ doubling per block
    flagged = [name for name, (_, status, _) in growth.items() if status == "error"]
    assert flagged == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    # the branch's added variance scales with the stream (slope ≈ 1), not a constant (slope 0)
    b = float(s.message.split("branch gain slope ")[1].split(")")[0])
    assert 0.7 < b < 1.2


def test_unnormalized_resnet_with_fixup_scaling_is_healthy_and_one_block_x10_is_named():
    healthy = probe(archs.fixup(archs.resnet18(bn=False)))
    assert healthy.summary.status != "error", healthy.summary.message
    assert max(g for g, _, _ in blocks(healthy).values()) < 1.2
    broken = probe(archs.scale_block(archs.fixup(archs.resnet18(bn=False)), "layer3.1", 10.0))
    assert (broken.summary.status, broken.summary.rule) == ("error", "R302")
    growth = blocks(broken)
    assert [n for n, (_, st, _) in growth.items() if st == "error"] == ["layer3.1"]
    assert growth["layer3.1"][0] > 16 * 10 and growth["layer3.1"][2] == "R302"
    assert "layer3.1 (×" in broken.summary.message


def test_normal_branches_are_single_block_jumps_everywhere():
    report = probe(archs.normal_branches(archs.resnet18(bn=False)))
    assert (report.summary.status, report.summary.rule) == ("error", "R302")
    assert all(g > 1000 and st == "error" for g, st, _ in blocks(report).values())
    assert "… 4 more" in report.summary.message


def test_resnet50_and_inverted_residual_nets_ending_in_batchnorm_are_not_residual_errors():
    for model in (archs.resnet50(), archs.mobilenet()):
        report = probe(model)
        assert report.summary.rule not in ("R301", "R302"), report.summary.message
        assert report.summary.status != "error", report.summary.message
        assert all(b.status == "ok" for b in report.residual_blocks)
    # MobileNet/EfficientNet: ~1 unit added per block, growth factors falling (0.48 → 0.33 branch gain)
    growth = [b.growth for b in report.residual_blocks]
    assert len(growth) == 9 and growth[-1] < growth[-2] < 1.6


def test_ignoring_r302_leaves_the_summary_ok_and_says_so():
    model = archs.scale_block(archs.fixup(archs.resnet18(bn=False)), "layer3.1", 10.0)
    report = probe(model, ignore=("R302",))
    assert report.summary.status != "error"
    assert "R302 (residual-block-jump) ignored by configuration" in report.summary.message


def test_branch_gain_slope_tells_exponential_from_linear():
    exponential = [(v, 1.0 * v) for v in (1.0, 2.0, 4.0, 8.0)]  # Δ = g · Var[skip]
    linear = [(1.0 + k, 1.0) for k in range(6)]  # Δ = 1 whatever the stream
    assert slope(exponential) == pytest.approx(1.0)
    assert slope(linear) == pytest.approx(0.0)
    assert slope([(1.0, 1.0), (1.2, 1.0), (1.1, 1.0)]) is None  # spread under ln 2


# --- He's two conditions -----------------------------------------------------------------------
def test_vgg11_fan_out_is_healthy_in_fan_out_mode_and_forcing_fan_in_only_warns():
    report = probe(archs.vgg())
    s = report.summary
    assert s.status != "error" and s.kaiming_mode == "fan_out", s.message
    assert report.settings["mode"] == "fan_out"
    assert any("fan_out mode" in n for n in report.notes)
    hidden = [f for f in report.layers if f.role == "hidden"]
    assert all(f.weight_variance_ratio == pytest.approx(1.0, abs=0.25) for f in hidden)
    assert "fan_out" in hidden[0].message
    forced = probe(archs.vgg(), mode="fan_in")
    assert forced.summary.kaiming_mode == "fan_in" and forced.summary.rule is None
    assert forced.summary.compound_variance_ratio < 1 / 16  # ×0.054: c_first / d_last-like, not exp.
    # without its worst layer (the first, 27/72 = ×0.375) the product is ×0.14: no compounding
    assert forced.summary.status == "warn"


def test_fan_in_models_stay_fan_in():
    assert probe(archs.vgg(init="fan_in")).summary.kaiming_mode == "fan_in"
    assert initdoctor.diagnose(archs.tanh_mlp()).summary.kaiming_mode == "fan_in"


def test_xavier_vgg16_vanishes():
    model = archs.vgg(archs.VGG16, "xavier")
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) == 16
    report = probe(model)
    s = report.summary
    assert (s.status, s.rule, s.kaiming_mode) == ("error", "C501", "fan_in")
    assert s.compound_variance_ratio < 1e-4  # ≈ ½ per ReLU layer over 15 hidden layers
    assert s.depth_ratio < 1e-3  # measured: the signal really vanishes


# --- saturating nonlinearities -------------------------------------------------------------------
def test_tanh_fixed_point_numbers():
    assert fixed_point("tanh", 2.0) == pytest.approx(0.618, abs=0.003)  # ReLU-gain Kaiming on tanh
    assert fixed_point("tanh", (5 / 3) ** 2) == pytest.approx(1.18, abs=0.01)
    assert fixed_point("tanh", 0.9) == 0.0 and fixed_point("tanh", 1.0) == 0.0
    assert chi("tanh", 2.0, 0.618) == pytest.approx(1.105, abs=0.005)
    assert fixed_point("sigmoid", 0.5) > 0  # φ(0) = ½: never the trivial fixed point


def test_tanh_mlp_with_relu_gain_is_stable_not_vanishing():
    report = probe(archs.tanh_mlp(), shapes=((64, 32),))
    s = report.summary
    assert s.status != "error" and s.rule is None, s.message
    assert s.compound_variance_ratio == pytest.approx(1.0)
    hidden = [f for f in report.layers if f.role == "hidden"]
    assert len(hidden) == 10 and all("q* = 0.6" in f.message for f in hidden[1:])
    # measured: the pre-activation variance settles at q* (first layer: 2 · E[x²] = 2)
    last = hidden[-1]
    assert last.activation_var == pytest.approx(0.62, rel=0.15)
    assert 0.2 < s.depth_ratio < 0.5  # 0.62 / 2: stable, not ×0.0019


def test_tanh_mlp_at_pytorch_default_still_vanishes():
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(10):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))  # σ_w² = 1/3 < 1: no fixed point q* > 0
    report = initdoctor.diagnose(model)
    assert report.summary.rule == "C501" and report.summary.compound_variance_ratio < 1e-3
    assert "no fixed point" in report.layers[0].message


# --- concat, depth ratio, padded taps ------------------------------------------------------------
def test_densenet_concatenation_is_not_a_chain():
    report = probe(archs.densenet())
    s = report.summary
    assert s.status == "ok" and s.rule is None, s.message
    assert s.depth_ratio is None and s.measured_chain_ratio is None  # no plain chain to judge
    assert all(f.rule not in ("P203", "P205", "C501") for f in report.layers)


def test_depth_ratio_leaves_the_output_layer_out():
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        lin = nn.Linear(64, 64)
        nn.init.kaiming_normal_(lin.weight)
        layers += [lin, nn.ReLU()]
    head = nn.Linear(64, 10)
    nn.init.normal_(head.weight, 0, 1e-3)  # tiny logits: a common, harmless choice
    report = probe(nn.Sequential(*layers, head), shapes=((256, 64),))
    assert report.summary.depth_ratio == pytest.approx(1.0, abs=0.5)  # hidden layers only
    assert report.layers[-1].depth_ratio < 0.01  # the head's own ratio (×0.002) is still reported
    assert report.summary.rule is None


def test_tap_fraction():
    assert tap_fraction((3, 3), (1, 1), (1, 1)) == pytest.approx(1 / 9)
    assert tap_fraction((3, 3), (2, 2), (2, 2)) == pytest.approx(4 / 9)
    assert tap_fraction((3, 3), (4, 4), (2, 2)) == pytest.approx((5 / 6) ** 2)  # stride 2
    assert tap_fraction((1, 1), (1, 1), (1, 1)) == 1.0
    assert tap_fraction((3, 3), (8, 8), (5, 5)) is None  # not 'same' padding: unknown


def test_convs_on_1x1_and_2x2_maps_are_not_finite_width_fluctuation():
    report = probe(archs.vgg())
    small = {f.name: f for f in report.layers if "of the kernel's taps" in f.message}
    assert small, [f.message for f in report.layers]
    for f in small.values():
        assert f.rule != "P204", f.message
        expected = float(f.message.split("measured ratio expected ×")[1].split(":")[0])
        assert f.variance_ratio / expected == pytest.approx(1.0, abs=0.6)
    assert any("on a 4×4 map 0.69" in f.message for f in small.values())
    assert any("on a 2×2 map 0.44" in f.message for f in small.values())
    assert math.isfinite(report.summary.measured_chain_ratio)
