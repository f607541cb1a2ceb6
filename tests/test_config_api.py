"""The user's day: [tool.initdoctor], the Python API, pre-commit, compare, plots."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
import torch
import yaml

import initdoctor
from examples.models import plain_mlp
from tests.conftest import ROOT, run_cli


def _project(tmp_path, table: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text(f"[project]\nname = 'x'\n\n[tool.initdoctor]\n{table}\n")
    sub = tmp_path / "models" / "deep"
    sub.mkdir(parents=True)
    return sub


def test_pyproject_config_changes_thresholds_and_ignores_a_layer(tmp_path):
    model = plain_mlp(depth=6, width=64, init="kaiming")
    with torch.no_grad():
        model[4].weight.mul_(1.3)  # variance ×1.69: warn at the default 1.25 band
        model[8].weight.mul_(3.0)  # variance ×9: beyond the error band, alone a warning (no compounding)
    sub = _project(tmp_path, 'warn-threshold = 2.0\nignore = ["8"]\nfail-on = "warn"\nprobe = false')
    torch.save(model.state_dict(), sub / "m.pt")
    plain = run_cli(
        "inspect",
        "m.pt",
        "--format",
        "json",
        "--warn-threshold",
        "1.25",
        "--error-threshold",
        "4",
        "--fail-on",
        "error",
        cwd=ROOT,
    )
    assert plain.returncode == 2  # m.pt is not in ROOT: the path is relative to the project
    default = json.loads(run_cli("inspect", str(sub / "m.pt"), "--format", "json", cwd=ROOT).stdout)
    by = {layer["name"]: layer for layer in default["layers"]}
    assert by["4"]["status"] == "warn" and by["8"]["status"] == "warn"
    assert by["8"]["weight_variance_ratio"] > 4  # the error band: K101 alone is at most warn
    proc = run_cli("inspect", "m.pt", "--format", "json", cwd=sub)  # config found walking up
    data = json.loads(proc.stdout)
    by = {layer["name"]: layer for layer in data["layers"]}
    assert data["settings"]["warn_threshold"] == 2.0 and data["settings"]["ignore"] == ["8"]
    assert (
        by["4"]["status"] == "ok"
        and by["8"]["status"] == "skip"
        and by["8"]["message"] == "ignored by configuration"
    )
    assert proc.returncode == 0 and data["probe"] is None
    # the command line wins over the file
    data = json.loads(
        run_cli("inspect", "m.pt", "--format", "json", "--warn-threshold", "1.25", cwd=sub).stdout
    )
    assert {layer["name"]: layer for layer in data["layers"]}["4"]["status"] == "warn"


def test_config_unknown_key_and_overrides(tmp_path):
    sub = _project(tmp_path, "warn-treshold = 2.0")
    torch.save(plain_mlp(depth=3, width=8).state_dict(), sub / "m.pt")
    proc = run_cli("inspect", "m.pt", cwd=sub)
    assert (
        proc.returncode == 2 and "unknown key 'warn-treshold'" in proc.stderr and proc.stderr.count("\n") == 1
    )
    sub = _project(tmp_path / "b", 'overrides = { "2" = { nonlinearity = "tanh" } }')
    torch.save(plain_mlp(depth=3, width=8).state_dict(), sub / "m.pt")
    data = json.loads(run_cli("inspect", "m.pt", "--format", "json", cwd=sub).stdout)
    layer = data["layers"][1]
    assert (layer["name"], layer["nonlinearity"], layer["nonlinearity_source"]) == ("2", "tanh", "config")
    assert layer["gain"] == pytest.approx(5 / 3)


def test_in_memory_diagnose_matches_the_cli_on_disk(tmp_path):
    model = plain_mlp(depth=8, width=64, init="xavier")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "nets.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom examples.models import plain_mlp\n"
        "def build():\n    return plain_mlp(depth=8, width=64)\n"
    )
    memory = initdoctor.diagnose(model, probe=True)
    disk = json.loads(
        run_cli("inspect", "m.pt", "--model", "nets:build", "--format", "json", cwd=tmp_path).stdout
    )
    for f, layer in zip(memory.layers, disk["layers"], strict=False):
        assert f.name == layer["name"] and f.status == layer["status"]
        assert f.weight_std == pytest.approx(layer["weight_std"], rel=1e-9)
        assert f.std_ratio == pytest.approx(layer["std_ratio"], rel=1e-9)
        assert f.activation_var == pytest.approx(layer["activation_var"], rel=1e-6)
    assert memory.summary.status == disk["summary"]["status"] == "error"


def test_assert_healthy_init():
    with pytest.raises(initdoctor.InitializationError) as info:
        initdoctor.assert_healthy_init(plain_mlp(init="xavier"))
    message = str(info.value)
    assert "initialization check failed" in message and "  2 (error): std 0.0623" in message
    assert info.value.report.summary.status == "error"
    report = initdoctor.assert_healthy_init(plain_mlp(init="kaiming"), torch.randn(64, 64))
    assert report.probe["inputs"] == [{"shape": [64, 64], "dtype": "float32"}]
    assert "<table" in report._repr_html_() or "<pre" in report._repr_html_()


def test_pre_commit_hook_runs_on_a_staged_model(tmp_path):
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "initdoctor")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    torch.save(plain_mlp(init="xavier").state_dict(), repo / "model.pt")
    (repo / "notes.txt").write_text("not a model")
    subprocess.run(git + ["add", "model.pt", "notes.txt"], cwd=repo, check=True)
    staged = subprocess.run(
        ["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True, check=True
    )
    files = [f for f in staged.stdout.split() if re.search(hook["files"], f)]
    assert files == ["model.pt"]
    entry = shlex.split(hook["entry"])
    assert entry[0] == "initdoctor"
    command = [sys.executable, "-m", "initdoctor", *entry[1:], *files]
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout.startswith("model.pt: error")
    torch.save(plain_mlp(init="kaiming").state_dict(), repo / "model.pt")
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("model.pt: ok")


def test_compare_before_and_after_fix(tmp_path):
    torch.save(plain_mlp(depth=8, width=32, init="xavier").state_dict(), tmp_path / "a.pt")
    initdoctor.fix_model(tmp_path / "a.pt", output=tmp_path / "b.pt")
    proc = run_cli("compare", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--format", "json")
    data = json.loads(proc.stdout)
    rows = {r["name"]: r for r in data["layers"]}
    assert rows["2"]["std_ratio_b"] == pytest.approx(1.0, abs=1e-6)
    assert rows["2"]["std_ratio_delta"] == pytest.approx(
        rows["2"]["std_ratio_b"] - rows["2"]["std_ratio_a"], abs=1e-12
    )
    assert rows["2"]["std_ratio_delta"] == pytest.approx(
        1 - 0.707, abs=0.06
    )  # xavier → Kaiming, square 32×32 layer
    # 7 xavier hidden layers: variance ×½ each; without the worst one still ≈ ×0.016 (C501)
    assert data["summary"] == {"a": "error", "b": "ok"}


def test_plot_from_torch_and_onnx(tmp_path):
    model = plain_mlp(depth=8, width=32, init="xavier")
    torch.onnx.export(model.eval(), (torch.randn(1, 64),), str(tmp_path / "m.onnx"), dynamo=False)
    (tmp_path / "nets.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom examples.models import plain_mlp\n"
        "def build():\n    return plain_mlp(depth=8, width=32, init='xavier')\n"
    )
    for source, png in (("nets:build", "torch.png"), ("m.onnx", "onnx.png")):
        proc = run_cli("inspect", source, "--plot", png, cwd=tmp_path)
        assert proc.returncode in (0, 1), proc.stderr
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (800, 600)
