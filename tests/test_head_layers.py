"""Issue 14: a convolutional net's classifier head (a linear that reaches the model only through
the output layer, graph.head_layers) smaller than Kaiming is a note, not a K101 warning, within
1/T_chain (compound-threshold, 16); a hidden layer at the same factor still warns, a head layer far off still
warns. Evidence: docs/rules-evidence.md "Head layers" (benchmarks/head_layers.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initdoctor
from tests.realcnn import VGG, tv_init
from tests.realzoo import MATRIX


def _vgg(scale: dict[str, float] | None = None) -> nn.Module:
    """The zoo's VGG-11 (torchvision's init at 1/8 width), some weights multiplied by a factor."""
    torch.manual_seed(0)
    model = tv_init(VGG(11), "fan_out", "vgg_scaled").eval()
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, factor in (scale or {}).items():
            mods[name].weight.mul_(factor)
    return model


def _by_name(report: initdoctor.Report) -> dict:
    return {f.name: f for f in report.layers}


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_zoo_vgg_head_layer_is_a_note(name):
    """classifier.3: N(0, 0.01 · sqrt(4096 / 64)) at fan_in 64 before ReLU: variance factor
    64 · 0.08² / 2 = 0.2048 (torchvision's 4096 · 1e-4 / 2); it feeds only classifier.6 (the
    logits): ok with the head note, its rescale suggestion kept."""
    report = initdoctor.diagnose(f"tests.realzoo:{name}", probe=True)
    assert (report.summary.status, report.summary.rule) == ("ok", None), report.summary.message
    c3 = _by_name(report)["classifier.3"]
    assert (c3.status, c3.rule, c3.role) == ("ok", None, "hidden")
    assert c3.weight_variance_ratio == pytest.approx(0.2048, rel=0.05)
    assert c3.suggested_scale == pytest.approx(1 / math.sqrt(c3.weight_variance_ratio))
    assert "classifier-head layer" in c3.message and "rescale W by" in c3.message


def test_zoo_mobilenet_head_layer_is_reported():
    """MobileNet's classifier.0 at the zoo's width (96 → 128): N(0, 0.01) before hardswish,
    ×128e-4 / 1.7367² = 0.0042 in fan_out mode — below 1/16: still a warning (rightly: at Kaiming
    the head trains to 0.16 held-out loss with SGD where this one stays at 1.92)."""
    report = initdoctor.diagnose("tests.realzoo:mobilenet", probe=True)
    c0 = _by_name(report)["classifier.0"]
    assert c0.weight_variance_ratio == pytest.approx(128e-4 / 1.7367**2, rel=0.05)
    assert (c0.status, c0.rule) == ("warn", "K101")


@pytest.mark.parametrize("entry", [e for e in MATRIX if e.name in ("vgg16_xavier", "mobilenet_nobn")])
def test_broken_twins_still_error_with_their_culprits(entry):
    report = initdoctor.diagnose(f"tests.realzoo:{entry.name}", probe=True)
    assert report.summary.status == "error", report.summary.message
    errors = {f.name for f in report.layers if f.status == "error"}
    assert any(n.startswith(c) for n in errors for c in entry.culprits), errors


def test_hidden_conv_at_the_head_layers_factor_still_warns():
    """features.8 (a conv with no BN after it) scaled by sqrt(0.2048): variance ×0.2048 — K101 warn,
    while classifier.3 at that factor is a note."""
    report = initdoctor.diagnose(_vgg({"features.8": math.sqrt(0.2048)}), probe=True)
    by = _by_name(report)
    assert (by["features.8"].status, by["features.8"].rule) == ("warn", "K101")
    assert by["features.8"].weight_variance_ratio == pytest.approx(0.2048, rel=0.05)
    assert by["classifier.3"].status == "ok"
    assert report.summary.status == "warn"


def test_head_layer_far_off_is_still_reported():
    """classifier.3 scaled by 0.01 more (variance ×2e-5, below 1/16): K101 warn."""
    report = initdoctor.diagnose(_vgg({"classifier.3": 0.01}), probe=True)
    c3 = _by_name(report)["classifier.3"]
    assert (
        c3.weight_variance_ratio == pytest.approx(0.2048e-4, rel=0.05) and c3.weight_variance_ratio < 1 / 16
    )
    assert (c3.status, c3.rule) == ("warn", "K101")


def test_head_layer_too_large_is_still_reported():
    """Too large is not a small logit scale: classifier.3 ×sqrt(10 / 0.2048) (variance ×10) warns."""
    report = initdoctor.diagnose(_vgg({"classifier.3": math.sqrt(10 / 0.2048)}), probe=True)
    c3 = _by_name(report)["classifier.3"]
    assert c3.weight_variance_ratio == pytest.approx(10, rel=0.05)
    assert (c3.status, c3.rule) == ("warn", "K101")


def test_mlp_last_hidden_layer_is_not_a_head():
    """A plain MLP's last hidden layer is part of its feature stack: ×0.2 there still warns."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(4):
        lin = nn.Linear(64, 64)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    with torch.no_grad():
        model[6].weight.mul_(math.sqrt(0.2))
    f = _by_name(initdoctor.diagnose(model))["6"]
    assert f.weight_variance_ratio == pytest.approx(0.2, rel=0.2)
    assert (f.status, f.rule) == ("warn", "K101")
