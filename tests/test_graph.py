"""Graph-aware diagnosis: nonlinearities read from the graph, normalized layers, residual blocks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initdoctor
from examples.resnets import resnet_bn, resnet_plain


def _mlp(act: nn.Module, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), act]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # initialised for ReLU
    return model.eval()


@pytest.mark.parametrize(
    "act,name,gain",
    [
        (nn.Tanh(), "tanh", 5 / 3),
        (nn.GELU(), "gelu", 1.5335),
        (nn.LeakyReLU(0.2), "leaky_relu(0.2)", math.sqrt(2 / 1.04)),
        (nn.SiLU(), "silu", 1.6765),
    ],
    ids=["tanh", "gelu", "leaky0.2", "silu"],
)
def test_each_layer_is_judged_with_its_own_gain_in_torch_and_onnx(tmp_path, act, name, gain):
    model = _mlp(act)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(2, 64),), str(path), dynamo=False)
    for report in (initdoctor.diagnose(model), initdoctor.diagnose(path)):
        hidden = [f for f in report.layers if f.role == "hidden"]
        assert len(hidden) == 6
        for f in hidden:
            assert f.nonlinearity == name and f.nonlinearity_source == "graph"
            assert f.expected_std == pytest.approx(gain / math.sqrt(64), rel=0.01)
        out = report.layers[-1]
        assert (out.role, out.nonlinearity, out.gain) == ("output", "linear", 1.0)


def test_resnet_with_batchnorm_is_healthy_in_torch_and_onnx(tmp_path):
    model = resnet_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = initdoctor.diagnose(model, probe=True, batch_size=8)
    assert report.summary.status != "error" and report.summary.error == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # probe left no trace
    convs = [f for f in report.layers if f.kind == "conv2d"]
    assert len(convs) == 17 and {f.role for f in convs} == {"normalized"}
    growth = [b.growth for b in report.residual_blocks]
    assert len(growth) == 8 and growth[0] > growth[-1] and growth[-1] < 1.5  # linear, not exponential
    # BatchNorm kept as nodes (a training-mode export): onnxruntime normalizes with batch statistics
    path = tmp_path / "resnet_bn.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.randn(2, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "b"}},
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
    )
    onnx_report = initdoctor.diagnose(path, probe=True, batch_size=8)
    assert onnx_report.summary.status != "error"
    assert [b.growth for b in onnx_report.residual_blocks] == pytest.approx(growth, rel=0.01)


def test_resnet_without_batchnorm_reports_residual_growth(tmp_path):
    model = resnet_plain()
    report = initdoctor.diagnose(model, probe=True, batch_size=8)
    assert report.summary.status == "error"
    assert "residual stream grows" in report.summary.message and "Fixup" in report.summary.message
    growth = [b.growth for b in report.residual_blocks]
    assert len(growth) == 8
    assert 1.6 <= report.summary.residual_growth <= 3.0  # ≈ 2× per block
    flagged = [b.name for b in report.residual_blocks if b.status == "error"]
    assert "layers.0" in flagged and len(flagged) >= 6
    assert {f.role for f in report.layers if f.name.startswith("layers.")} == {"residual"}
    # names, roles and statuses agree with the ONNX export
    path = tmp_path / "resnet.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.randn(2, 3, 32, 32),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "b"}},
    )
    onnx_report = initdoctor.diagnose(path, probe=True, batch_size=8)
    # the head (role output) is left out: its P207 depends on each probe's own batch
    assert [f.rule for f in report.layers if f.role == "output"] == ["P207"]
    assert [(f.name, f.role, f.status) for f in onnx_report.layers if f.role != "output"] == [
        (f.name, f.role, f.status) for f in report.layers if f.role != "output"
    ]
    assert [b.name for b in onnx_report.residual_blocks] == [b.name for b in report.residual_blocks]
    assert [b.growth for b in onnx_report.residual_blocks] == pytest.approx(growth, rel=0.01)


def test_static_report_names_the_blocks_and_asks_for_the_probe():
    report = initdoctor.diagnose(resnet_plain(), probe=False)  # the static report (probe: default)
    assert len(report.residual_blocks) == 8 and report.residual_blocks[0].layers == [
        "layers.0.conv1",
        "layers.0.conv2",
    ]
    assert "need the probe" in report.notes[-1] or "needs the probe" in report.notes[-1]
