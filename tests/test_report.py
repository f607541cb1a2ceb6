"""Report contract (JSON keys, Markdown, --output), norm layers, grouped and transposed convs,
and the promise that importing initdoctor stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_mlp
from tests.conftest import ROOT, run_cli

LAYER_KEYS = {
    "name",
    "kind",
    "shape",
    "fan_in",
    "fan_out",
    "nonlinearity",
    "gain",
    "weight_std",
    "expected_std",
    "std_ratio",
    "suggested_scale",
    "status",
    "message",
}


def test_json_schema_keys_are_the_documented_contract(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(plain_mlp(depth=5, width=32, init="xavier").state_dict(), path)
    proc = run_cli("inspect", str(path), "--format", "json")
    data = json.loads(proc.stdout)
    # 5 xavier layers: each warns, but the chain only shrinks ×0.1 (inside ×1/16): exit 0
    assert proc.returncode == 0 and data["summary"]["status"] == "warn"
    assert data["schema"] == "initdoctor.report/2"
    assert {"path", "format", "parameters"} <= set(data["model"])
    assert data["model"]["parameters"] == 64 * 32 + 32 + 3 * (32 * 32 + 32) + 32 * 10 + 10
    for layer in data["layers"]:
        assert set(layer) >= LAYER_KEYS
    assert {"status", "ok", "warn", "error", "worst_layer"} <= set(data["summary"])
    assert data["summary"]["ok"] + data["summary"]["warn"] + data["summary"]["error"] == 5
    assert proc.stderr == ""


def test_markdown_and_output_file(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(plain_mlp(depth=5, width=32, init="kaiming").state_dict(), path)
    out = tmp_path / "report.md"
    proc = run_cli("inspect", str(path), "--format", "markdown", "--output", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    text = out.read_text()
    assert text.startswith("## initdoctor: ✅ ok")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "linear" in line]
    assert len(rows) == 5
    assert not list(tmp_path.glob(".report.md.*"))  # no temp file left behind
    table = tmp_path / "report.txt"
    assert run_cli("inspect", str(path), "-o", str(table)).returncode == 0
    first = table.read_text().splitlines()[0].replace(str(tmp_path), "<tmp>")  # pytest-130 has a 30
    assert "30" not in first and "OK: 5 of 5 layers" in table.read_text()


def test_norm_layers_reported_separately():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10), nn.LayerNorm(10)
    )
    with torch.no_grad():
        model[1].weight.fill_(0.5)
    report = initdoctor.diagnose(model, probe=False)  # shapes only: its forward cannot run
    assert [f.name for f in report.layers] == ["0", "4"]
    norms = {n.name: n for n in report.norm_layers}
    assert norms["1"].kind == "batchnorm" and norms["1"].weight_mean == pytest.approx(0.5)
    assert norms["5"].kind == "layernorm" and norms["5"].weight_std == 0.0


def test_depthwise_and_transposed_convolutions_use_the_true_fan_in():
    """The fan initdoctor uses predicts the output variance a real forward pass produces:
    Var[y] = fan_in · Var[w] · E[x²] for a stride-1 layer on a unit-variance input."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
    )
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0, 0.1)
            nn.init.zeros_(m.bias)
    report = initdoctor.diagnose(model)
    dw, tconv = report.layers[0], report.layers[1]
    assert (dw.kind, dw.groups, dw.fan_in, dw.fan_out) == ("conv2d", 16, 9, 144)
    assert (tconv.kind, tconv.fan_in, tconv.fan_out) == ("conv_transpose2d", 16 * 9, 8 * 9)
    x = torch.randn(8, 16, 48, 48)
    with torch.no_grad():
        for layer, module in ((dw, model[0]), (tconv, model[2])):
            y = module(x)[..., 2:-2, 2:-2]  # interior: every output sees the full kernel
            predicted = layer.fan_in * module.weight.var(unbiased=False).item() * x.pow(2).mean().item()
            assert y.var().item() == pytest.approx(predicted, rel=0.1)
    # torch's own helper would give the transposed conv fan_in 8·9 = 72: the trap this avoids
    assert torch.nn.init._calculate_fan_in_and_fan_out(model[2].weight)[0] == 72


def test_unknown_setting_is_a_settings_error():
    with pytest.raises(initdoctor.SettingsError, match="warn_treshold"):
        initdoctor.diagnose(plain_mlp(depth=3, width=8), warn_treshold=2)
    with pytest.raises(initdoctor.SettingsError, match="unknown nonlinearity"):
        initdoctor.diagnose(plain_mlp(depth=3, width=8), nonlinearity="swishy")


def test_bad_option_value_exits_2_with_one_line(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(plain_mlp(depth=3, width=8).state_dict(), path)
    proc = run_cli("inspect", str(path), "--nonlinearity", "swishy")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("initdoctor: error: unknown nonlinearity 'swishy'")
    proc = run_cli("inspect", str(path), "--warn-threshold", "5")
    assert proc.returncode == 2 and "warn_threshold < error_threshold" in proc.stderr


@pytest.mark.parametrize(
    "code",
    ["import initdoctor", "from initdoctor.cli import app"],
)
def test_import_does_not_pull_torch_or_onnxruntime(code):
    probe = (
        f"{code}; import sys; print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_help_does_not_import_torch():
    probe = (
        "import sys, runpy; sys.argv = ['initdoctor', '--help']\n"
        "try:\n    runpy.run_module('initdoctor', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy if heavy else 'LIGHT', file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert "inspect" in out.stdout and out.stderr.strip().endswith("HEAVY LIGHT"), out.stderr[-500:]


def test_onnx_inspect_does_not_import_torch(tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(plain_mlp(depth=3, width=8), (torch.randn(1, 64),), str(path), dynamo=False)
    probe = (
        "import sys, initdoctor\n"
        f"r = initdoctor.diagnose({str(path)!r})\n"
        "print(len(r.layers), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["3", "False"]
