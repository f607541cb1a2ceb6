"""Acceptance of the static inspector on plain deep ReLU nets (He et al. 2015, Figure 3 setting)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_cnn, plain_mlp
from tests.conftest import cli_json

SQRT2 = math.sqrt(2)


def _hidden(report):
    return [f for f in report.layers if f.role == "hidden"]


@pytest.mark.parametrize("build", [plain_mlp, plain_cnn], ids=["mlp30", "cnn30"])
def test_kaiming_30_layers_all_ok(build):
    report = initdoctor.diagnose(build(init="kaiming"), probe=False)  # the weights' verdict
    hidden = _hidden(report)
    assert len(hidden) == 29 and len(report.layers) == 30
    for f in hidden:
        assert f.status == "ok", (f.name, f.message)
        assert f.std_ratio == pytest.approx(1.0, abs=0.03), f.name
        assert f.nonlinearity == "relu" and f.nonlinearity_source == "graph"
    out = report.layers[-1]
    # the logit layer: read from the graph as feeding the output, judged against gain 1;
    # kaiming_normal_(relu) gives it std sqrt(2/fan_in), i.e. std_ratio sqrt(2): fine for logits
    assert out.role == "output" and out.gain == 1.0 and out.status == "ok"
    assert out.std_ratio == pytest.approx(SQRT2, rel=0.05)
    assert report.summary.status == "ok"
    assert report.summary.compound_variance_ratio == pytest.approx(1.0, abs=0.5)


@pytest.mark.parametrize("build", [plain_mlp, plain_cnn], ids=["mlp30", "cnn30"])
def test_xavier_30_layers_flagged_and_error(build):
    report = initdoctor.diagnose(build(init="xavier"))
    for f in _hidden(report):
        assert f.status in ("warn", "error"), f.name
    assert report.summary.status == "error"
    assert report.summary.compound_variance_ratio < 1e-6
    if build is plain_mlp:
        square = [f for f in _hidden(report) if f.shape == [256, 256]]
        assert len(square) == 28
        for f in square:
            # xavier std sqrt(2/(256+256)) vs kaiming sqrt(2/256): rescale by sqrt(2)
            assert f.suggested_scale == pytest.approx(SQRT2, rel=0.03)
            assert f.weight_variance_ratio == pytest.approx(0.5, rel=0.06)


def test_pytorch_default_linear_init_flagged_with_sqrt6():
    report = initdoctor.diagnose(plain_mlp(init="default"))
    for f in _hidden(report):
        assert f.status == "error"
        # default: kaiming_uniform_(a=sqrt(5)) → std 1/sqrt(3·fan_in); relu wants sqrt(2/fan_in)
        assert f.suggested_scale == pytest.approx(math.sqrt(6), rel=0.03)
    assert report.summary.status == "error"


def test_one_layer_scaled_by_10_is_the_only_finding():
    """One layer off (std ×10) does not compound over depth: a warning naming it and its rescale
    (issue 14: "a one-off off-scale layer that does not compound is at most a warning"; C501 tests
    the chain's product without its single worst layer)."""
    model = plain_mlp(init="kaiming")
    with torch.no_grad():
        model[20].weight.mul_(10)  # the 11th Linear (module path "20")
    report = initdoctor.diagnose(model, probe=False)  # static: the probe adds P207 on the head
    flagged = [f.name for f in report.layers if f.status != "ok"]
    assert flagged == ["20"]
    bad = next(f for f in report.layers if f.name == "20")
    assert (bad.status, bad.rule) == ("warn", "K101")
    assert bad.std_ratio == pytest.approx(10, rel=0.03)
    assert bad.suggested_scale == pytest.approx(0.1, rel=0.03)
    assert report.summary.worst_layer == "20" and report.summary.status == "warn"


def test_compounding_turns_a_chain_of_warnings_into_errors():
    """Each layer alone only warns (std ×0.8, variance ×0.64); 30 of them shrink it ×2e-6."""
    model = plain_mlp(init="kaiming")
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.8)
    single = plain_mlp(init="kaiming")
    with torch.no_grad():
        single[10].weight.mul_(0.8)
    one = next(f for f in initdoctor.diagnose(single).layers if f.name == "10")
    assert one.status == "warn" and one.weight_variance_ratio == pytest.approx(0.64, rel=0.05)
    report = initdoctor.diagnose(model)
    assert report.summary.status == "error"
    assert report.summary.compound_variance_ratio == pytest.approx(0.64**29, rel=0.3)
    assert all(f.status == "error" for f in _hidden(report))
    # a looser compound threshold leaves them warnings
    loose = initdoctor.diagnose(model, compound_threshold=1e6)
    assert {f.status for f in _hidden(loose)} == {"warn"} and loose.summary.status == "warn"


def test_nan_zero_and_constant_weights_are_findings():
    model = nn.Sequential(
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    with torch.no_grad():
        nn.init.kaiming_normal_(model[0].weight)
        model[0].weight[0, :3] = float("nan")
        model[2].weight.zero_()
        model[4].weight.fill_(0.125)
        nn.init.kaiming_normal_(model[6].weight)
        model[8].weight.zero_()  # zero-init logits: fine
    report = initdoctor.diagnose(model)
    by = {f.name: f for f in report.layers}
    assert by["0"].status == "error" and by["0"].nan_count == 3
    assert by["0"].weight_std == pytest.approx(math.sqrt(2 / 64), rel=0.1)  # finite values only
    assert by["2"].status == "error" and "zero" in by["2"].message
    assert by["4"].status == "error" and "constant" in by["4"].message and by["4"].weight_std == 0
    assert by["6"].status == "ok"
    assert by["8"].status == "ok" and by["8"].role == "output"
    data = json.loads(report.to_json())  # strict JSON: NaN/Inf would raise in to_json
    assert data["layers"][0]["nan_count"] == 3 and data["layers"][2]["std_ratio"] == 0.0


def test_nonlinearity_flag_and_fan_out_mode_change_the_expectation(tmp_path):
    model = plain_mlp(depth=4, width=128, init="kaiming")
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    tanh = initdoctor.diagnose(path, nonlinearity="tanh")
    f = tanh.layers[1]
    assert f.nonlinearity == "tanh" and f.nonlinearity_source == "flag"
    assert f.expected_std == pytest.approx((5 / 3) / math.sqrt(128), rel=1e-9)
    leaky = initdoctor.diagnose(path, nonlinearity="leaky_relu", negative_slope=0.2)
    assert leaky.layers[1].gain == pytest.approx(math.sqrt(2 / 1.04), rel=1e-12)
    fan_out = initdoctor.diagnose(path, mode="fan_out")
    assert fan_out.layers[0].expected_std == pytest.approx(SQRT2 / math.sqrt(128), rel=1e-9)


def test_tiny_layers_are_not_flagged_for_sampling_noise():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    report = initdoctor.diagnose(model, probe=False)  # the static bands (sampling noise)
    assert report.summary.status == "ok", [(f.name, f.std_ratio) for f in report.layers]


def test_cli_exit_codes_follow_fail_on(tmp_path):
    kaiming, xavier = tmp_path / "k.pt", tmp_path / "x.pt"
    torch.save(plain_mlp(init="kaiming").state_dict(), kaiming)
    torch.save(plain_mlp(init="xavier").state_dict(), xavier)
    code, data = cli_json(str(xavier))
    assert code == 1 and data["summary"]["status"] == "error"
    code, data = cli_json(str(kaiming))
    assert code == 0 and data["summary"]["status"] == "ok"
    code, _ = cli_json(str(xavier), "--fail-on", "never")
    assert code == 0
    model = plain_mlp(init="kaiming")
    with torch.no_grad():
        model[10].weight.mul_(1.2)  # variance ×1.44: beyond the 1.25 warn band, inside 4
    torch.save(model.state_dict(), kaiming)
    code, data = cli_json(str(kaiming))
    assert code == 0 and data["summary"]["status"] == "warn" and data["summary"]["worst_layer"] == "10"
    code, data = cli_json(str(kaiming), "--fail-on", "warn")
    assert code == 1
    code, data = cli_json(str(kaiming), "--warn-threshold", "1.6")
    assert code == 0 and data["summary"]["status"] == "ok"
