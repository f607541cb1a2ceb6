"""CNN verdicts (issue 14, round 2): torchvision's VGG at its real widths, one-off layers at most
warn, hardswish/hardsigmoid/ReLU6 gains, measured vanishing named, DenseNet's concat-fed layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initdoctor
from initdoctor.gains import calculate_gain
from tests import realzoo
from tests.realcnn import VGG, tv_init


def _probe(model: nn.Module, **settings: object) -> initdoctor.Report:
    torch.manual_seed(1)
    return initdoctor.diagnose(model, probe=True, example_inputs=torch.randn(16, 3, 32, 32), **settings)


def test_torchvision_vgg11_at_its_real_widths_is_not_an_error():
    """VGG-11 with torchvision's widths (64…512, classifier 25088 → 4096 → 4096 → 10) and init:
    convs fan_out, linears N(0, 0.01). classifier.0 is 25088 · 1e-4 / 2 = 1.254× Kaiming in fan_in
    (judged so: its std is far closer to fan_in's than to fan_out's, ×0.2), just beyond the warn
    threshold 1.25: a warning; classifier.3 is 4096 · 1e-4 / 2 = ×0.2, a classifier-head layer:
    a note. The product ×0.26 does not compound."""
    torch.manual_seed(0)
    report = _probe(tv_init(VGG(11, width=1), "fan_out", "normal"))
    s = report.summary
    assert s.status == "warn" and s.kaiming_mode == "fan_out", s.message
    by = {f.name: f for f in report.layers}
    assert by["classifier.0"].fan_in == 25088 and "fan_in 25088" in by["classifier.0"].message
    assert by["classifier.0"].weight_variance_ratio == pytest.approx(1.2544, rel=0.01)
    assert by["classifier.0"].status == "warn"
    assert by["classifier.3"].weight_variance_ratio == pytest.approx(0.2048, rel=0.01)
    # a classifier-head layer (feeds only the logits) at ×0.2 ≥ 1/16: a note (tests/test_head_layers.py)
    assert (by["classifier.3"].status, by["classifier.3"].rule) == ("ok", None)
    assert s.compound_variance_ratio == pytest.approx(1.25 * 0.2048, rel=0.05)


def test_torchvision_literal_init_at_tiny_widths_really_vanishes():
    """The same N(0, 0.01) linears at fan_in 64 multiply the variance by 64 · 1e-4 / 2 = 0.0032
    each: two of them ×1e-5, measured ×3e-6 from the first conv to classifier.3 (SGD did not
    train it: benchmarks/results/train_evidence.txt) — an error; the zoo's VGG therefore rescales
    them to torchvision's fan_ins (realcnn.VGG)."""
    torch.manual_seed(0)
    report = _probe(tv_init(VGG(11), "fan_out", "normal"))
    assert (report.summary.status, report.summary.rule) == ("error", "C501")
    by = {f.name: f for f in report.layers}
    assert by["classifier.3"].depth_ratio < 1e-4
    assert {f.name for f in report.layers if f.status == "error"} == {"classifier.0", "classifier.3"}


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_zoo_vgg_is_torchvisions_scale_and_not_an_error(name):
    report = initdoctor.diagnose(f"tests.realzoo:{name}", probe=True)
    assert report.summary.status == "ok", report.summary.message  # classifier.3: head note
    by = {f.name: f for f in report.layers}
    assert by["classifier.0"].weight_variance_ratio == pytest.approx(1.25, rel=0.05)  # as torchvision's
    assert by["classifier.3"].weight_variance_ratio == pytest.approx(0.2048, rel=0.05)
    assert not any(f.status == "error" for f in report.layers)


def test_one_off_scale_layer_warns_two_compound_to_an_error():
    """Issue 14 item 1: one layer at variance ×0.01 is a constant factor (warn, K101); two of them
    (×1e-4 without the worse one: ×0.01 < 1/16) compound (C501 error)."""

    def mlp(scaled: tuple[int, ...]) -> nn.Sequential:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for i in range(6):
            lin = nn.Linear(64, 64)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            if i in scaled:
                lin.weight.data.mul_(0.1)
            layers += [lin, nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(64, 10))

    one = initdoctor.diagnose(mlp((2,)), probe=False)
    f = next(f for f in one.layers if f.name == "4")
    assert (f.status, f.rule) == ("warn", "K101") and f.weight_variance_ratio == pytest.approx(0.01, rel=0.2)
    assert one.summary.status == "warn" and one.summary.rule is None
    # measured (diagnose probes by default): the depth drift of ×0.01 is one layer's: still a warning
    assert (initdoctor.diagnose(mlp((2,))).summary.status, "probed") == ("warn", "probed")
    two = initdoctor.diagnose(mlp((2, 4)), probe=False)
    assert (two.summary.status, two.summary.rule) == ("error", "C501")
    assert {f.name for f in two.layers if f.status == "error"} == {"4", "8"}
    assert initdoctor.diagnose(mlp((2, 4))).summary.status == "error"


def test_mobilenet_classifier_is_one_layer_a_warning():
    """torchvision's classifier N(0, 0.01) (96 → 128) before hardswish, judged in fan_out mode:
    ×128e-4 / 1.7367² = 0.0042, one layer (measured ×0.0032): warn (K101 alone is at most warn)."""
    report = initdoctor.diagnose("tests.realzoo:mobilenet", probe=True)
    s = report.summary
    # every conv is normalized: the plain chain is classifier.0 alone, so no depth verdict (P205)
    assert (s.status, s.rule, s.worst_layer) == ("warn", None, "classifier.0")
    c0 = next(f for f in report.layers if f.name == "classifier.0")
    assert c0.nonlinearity == "hardswish" and (c0.status, c0.rule) == ("warn", "K101")
    assert c0.weight_variance_ratio == pytest.approx(128 * 0.01**2 / 1.7367**2, rel=0.05)


def test_mobilenet_without_bn_measured_vanishing_is_an_error_naming_the_depthwise_convs():
    """×~1e-14 measured over 27 layers (σ of the finite-width fluctuation sqrt(5 Σ 1/n) ≈ 1.6):
    far beyond fluctuation. With C501 and P203 ignored, P205 alone makes it an error that names where."""
    report = initdoctor.diagnose("tests.realzoo:mobilenet_nobn", probe=True)
    assert report.summary.status == "error"
    alone = initdoctor.diagnose("tests.realzoo:mobilenet_nobn", probe=True, ignore=("C501", "P203"))
    s = alone.summary
    assert (s.status, s.rule) == ("error", "P205") and s.depth_ratio < 1e-10
    assert "lost at " in s.message and "fluctuation (×" in s.message
    flagged = {f.name for f in alone.layers if f.rule == "P205"}
    assert {"features.5.block.1.0", "features.6.block.1.0"} <= flagged  # depthwise, ×0.0009 each


def test_densenet_concat_fed_layers_are_normalized():
    """A dense layer's conv2 output is concatenated; every consumer of the concatenation starts
    with BatchNorm (the next layer's norm1, a transition's norm, norm5): normalized, not judged."""
    report = initdoctor.diagnose("tests.realzoo:densenet", probe=True)
    assert report.summary.status == "ok", report.summary.message
    roles = {f.name: f.role for f in report.layers}
    assert roles["features.denseblock1.0.conv2"] == "normalized"
    assert roles["features.transition1.2"] == "normalized"


@pytest.mark.parametrize(
    ("name", "fn", "value"),
    [
        ("hardswish", nn.functional.hardswish, 1.7367),
        ("hardsigmoid", nn.functional.hardsigmoid, 1.8978),
        ("relu6", nn.functional.relu6, math.sqrt(2)),
        ("relu", nn.functional.relu, math.sqrt(2)),
    ],
)
def test_gain_is_one_over_root_second_moment(name, fn, value):
    """gain = 1 / sqrt(E[f(z)²]), z ~ N(0, 1), by the trapezoid rule on [−10, 10]; for relu it is
    torch's sqrt(2)."""
    z = torch.linspace(-10, 10, 400_001, dtype=torch.float64)
    density = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    second = torch.trapezoid(fn(z) ** 2 * density, z).item()
    assert calculate_gain(name) == pytest.approx(1 / math.sqrt(second), abs=2e-4)
    assert calculate_gain(name) == pytest.approx(value, abs=1e-4)
    if name == "relu":
        assert calculate_gain(name) == pytest.approx(nn.init.calculate_gain("relu"))


def test_zoo_entries_are_built():
    assert realzoo.BY_NAME["vgg11"].healthy and not realzoo.BY_NAME["mobilenet_nobn"].healthy
