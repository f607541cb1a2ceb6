"""Issue 16, the next step named: inspect and fix --check name the command that repairs the model;
torch's own default init is named as such (K101); a full pickle loads with --trust from the folder
holding its class's module, and without --trust is refused in one short line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "initdoctor"  # the console script: no cwd on sys.path

MODULE = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def full_pickle(tmp_path: Path) -> Path:
    """torch.save of a whole module whose class lives in tmp_path/mymodels.py."""
    (tmp_path / "mymodels.py").write_text(MODULE)
    code = "import torch, mymodels; torch.manual_seed(0); torch.save(mymodels.Net(), 'net.pt')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    sys.modules.pop("mymodels", None)
    return tmp_path / "net.pt"


def test_a_trusted_full_pickle_loads_from_the_folder_holding_its_module(tmp_path):
    full_pickle(tmp_path)
    done = cli("inspect", "net.pt", "--trust", "-f", "json", cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    import json

    layers = {layer["name"]: layer for layer in json.loads(done.stdout)["layers"]}
    # torch's default init: U(±1/√16), std 1/√(3·16) = 0.144; fan_in 16 for fc1, 32 for fc2
    assert layers["fc1"]["fan_in"] == 16 and layers["fc2"]["fan_in"] == 32
    assert abs(layers["fc1"]["weight_std"] - 1 / (3 * 16) ** 0.5) < 0.02


def test_a_trusted_full_pickle_elsewhere_names_the_missing_module(tmp_path):
    full_pickle(tmp_path)
    (tmp_path / "sub").mkdir()
    done = cli("inspect", "../net.pt", "--trust", cwd=tmp_path / "sub")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "module 'mymodels'" in lines[0] and "PYTHONPATH" in lines[0], lines


def test_an_untrusted_full_pickle_is_refused_in_one_short_line(tmp_path):
    full_pickle(tmp_path)
    done = cli("inspect", "net.pt", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "mymodels.Net" in line and "give --trust if you trust it" in line
    assert "add_safe_globals" not in line and len(line) < 220, (len(line), line)
    assert torch.__version__  # the refusal came from torch's restricted unpickler, not a crash


# --- torch's default init, named (K101)


def relu_mlp(depth: int = 6, width: int = 128, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def test_torch_default_linear_init_is_named_on_every_hidden_layer():
    import initdoctor

    report = initdoctor.diagnose(relu_mlp(), probe=False)
    hidden = [f for f in report.layers if f.role == "hidden"]
    assert len(hidden) == 6
    for f in hidden:
        # U(±1/√128): std 1/√384 = 0.0510; Kaiming √(2/128) = 0.125; ratio 1/√6 = 0.408
        assert abs(f.weight_std - 1 / 384**0.5) < 0.002 and abs(f.std_ratio - 6**-0.5) < 0.01
        assert "torch's default init for nn.Linear/nn.Conv (U(±1/√fan_in)), 0.41× Kaiming" in f.message
        assert f.rule in ("K101", "C501")


def test_torch_default_conv_init_is_named_with_its_fan_in():
    import initdoctor

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 10),
    )
    layers = initdoctor.diagnose(model, probe=False).layers
    assert [f.fan_in for f in layers] == [72, 36, 1024]  # 8·3·3; (16/4)·3·3; 16·8·8
    assert all("torch's default init" in f.message for f in layers[:2])
    assert "torch's default init" not in layers[2].message  # the output layer: K102, fine


def test_a_normal_init_of_the_same_std_is_not_called_torch_default():
    import initdoctor

    model = relu_mlp()
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=1 / (3 * m.in_features) ** 0.5)
    report = initdoctor.diagnose(model, probe=False)
    hidden = [f for f in report.layers if f.role == "hidden"]
    assert all(abs(f.std_ratio - 6**-0.5) < 0.01 for f in hidden)  # the same std, 0.41× Kaiming
    assert not any("torch's default" in f.message for f in hidden)  # but max|w| ≈ 4.5σ, past √3σ


def test_the_max_abs_of_the_scan_is_the_largest_finite_value():
    import numpy as np

    from initdoctor.stats import array_stats

    a = np.linspace(-0.25, 0.5, 1001, dtype=np.float32)
    a[7] = np.nan
    assert array_stats(a).max_abs == 0.5 and array_stats(a).nan_count == 1


# --- the next step, named


def xavier_file(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    model = relu_mlp(depth=8, width=64)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_normal_(m.weight)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    return tmp_path / "m.safetensors"


def test_inspect_names_the_fix_command_after_the_summary_and_it_repairs(tmp_path):
    xavier_file(tmp_path)
    done = cli("inspect", "m.safetensors", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    assert lines[-2].startswith("ERROR: ") and "(ok 1, warn 0, error 8, skip 0)" in lines[-2]
    assert lines[-1].startswith("next: initdoctor fix m.safetensors -o m.fixed.safetensors"), lines[-1]
    # the named command, run as named, writes a model that passes
    fixed = cli("fix", "m.safetensors", "-o", "m.fixed.safetensors", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    again = cli("inspect", "m.fixed.safetensors", cwd=tmp_path)
    assert again.returncode == 0 and "next:" not in again.stdout


def test_markdown_names_the_command_too(tmp_path):
    xavier_file(tmp_path)
    done = cli("inspect", "m.safetensors", "-f", "markdown", cwd=tmp_path)
    assert "Next: `initdoctor fix m.safetensors -o m.fixed.safetensors`" in done.stdout


def test_fix_check_ends_with_the_command_that_writes_the_changes(tmp_path):
    xavier_file(tmp_path)
    done = cli("fix", "m.safetensors", "--check", "--nonlinearity", "relu", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stdout.rstrip("\n").splitlines()
    assert lines[-2] == "8 layers would change (nothing written)"
    assert (
        lines[-1] == "to write them: initdoctor fix m.safetensors --nonlinearity relu -o m.fixed.safetensors"
    )


def test_a_residual_finding_names_its_remedy(tmp_path):
    done = cli("inspect", "examples.resnets:resnet_plain", cwd=ROOT)
    last = done.stdout.rstrip("\n").splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith("next: initdoctor fix examples.resnets:resnet_plain -o fixed.safetensors")
    assert "fixup on the residual blocks: R301" in last


def test_next_step_is_pure_text_from_the_report():
    from initdoctor.nextstep import check_next_step, fixed_name

    assert fixed_name("ckpt/model.safetensors") == "ckpt/model.fixed.safetensors"
    assert fixed_name("pkg.mod:build") == "fixed.safetensors"
    assert (
        check_next_step(["fix", "a b.pt", "--check"], "a b.pt")
        == "to write them: initdoctor fix 'a b.pt' -o 'a b.fixed.pt'"
    )
    assert (
        check_next_step(["fix", "m.pt", "--dry-run", "--in-place"], "m.pt")
        == "to write them: initdoctor fix m.pt --in-place"
    )
