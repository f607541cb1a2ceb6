"""The GitHub Actions example (examples/ci/initdoctor.yml) as GitHub runs it: each `run:` step
under `bash -e` in one workspace, a failed step skipping the later ones unless `if: always()`.
The install step is skipped (this venv's initdoctor, this checkout's code on PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

yaml = pytest.importorskip("yaml")
safetensors_torch = pytest.importorskip("safetensors.torch")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "initdoctor.yml"


def xavier_mlp(path: Path, depth: int = 8, width: int = 64) -> Path:
    """A ReLU MLP under Xavier init: std √(2/(64+64)) = 0.125, 0.71× Kaiming's √(2/64) = 0.177."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_steps(workspace: Path, model: Path) -> tuple[list[tuple[str, int, str]], Path]:
    """The workflow's run steps, as the runner would: (name, exit code, output) per step run."""
    job = next(iter(yaml.safe_load(WORKFLOW.read_text())["jobs"].values()))
    summary = workspace / "step_summary.md"
    summary.write_text("")
    env = {
        **os.environ,
        **{k: str(v) for k, v in job.get("env", {}).items()},
        "MODEL": str(model),
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "80",
    }
    ran: list[tuple[str, int, str]] = []
    failed = False
    for step in job["steps"]:
        if "run" not in step or "pip install" in step["run"]:
            continue
        if failed and "always()" not in str(step.get("if", "")):
            continue
        script = workspace / f"step{len(ran)}.sh"
        script.write_text(step["run"])
        done = subprocess.run(
            ["bash", "-e", str(script)], cwd=workspace, env=env, capture_output=True, text=True, timeout=300
        )
        ran.append((step.get("name", ""), done.returncode, done.stdout + done.stderr))
        failed = failed or done.returncode != 0
    return ran, summary


def test_a_failing_model_keeps_its_report_in_the_step_summary(tmp_path):
    model = xavier_mlp(tmp_path / "model.safetensors")
    ran, summary = run_steps(tmp_path, model)
    names = [name for name, _, _ in ran]
    assert names == ["Inspect", "Would a fix change anything?"], ran
    inspect_code, fix_code = ran[0][1], ran[1][1]
    assert inspect_code == 1, ran[0][2]  # the step fails, as the model does
    text = summary.read_text()
    # the whole Markdown report, from its heading to the findings: 8 hidden layers in error
    assert text.startswith("## initdoctor: ❌ error"), text[:200]
    assert "ok 1 · warn 0 · error 8" in text
    assert "0.71× Kaiming 0.177 (relu, fan_in 64)" in text
    assert (tmp_path / "depth.png").stat().st_size > 1000
    # the fix --check step runs after the failure (if: always()) and finds the 8 layers
    assert fix_code == 1 and "8 layers would change (nothing written)" in ran[1][2], ran[1][2]


def test_the_install_step_installs_from_the_repository_not_the_index():
    job = next(iter(yaml.safe_load(WORKFLOW.read_text())["jobs"].values()))
    steps = [s.get("uses", "") or s.get("run", "") for s in job["steps"]]
    install = next(i for i, s in enumerate(steps) if "pip install" in s)
    assert 'pip install "$INITDOCTOR"' in steps[install]
    # no placeholder: the checked-out repository (initdoctor or any fork), checked out before
    assert "OWNER" not in WORKFLOW.read_text()
    assert job["env"]["INITDOCTOR"] == ".[plot]"
    assert any(s.startswith("actions/checkout@") for s in steps[:install])
    # `.` from the workspace root is this project, and `plot` one of its extras
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "initdoctor" and "plot" in project["optional-dependencies"]
