"""The scripts in examples/ run and print what the README says they print."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, run_cli


def test_models_writer_then_inspect(tmp_path):
    out = subprocess.run(
        [sys.executable, "examples/models.py", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(
        f"{i}_mlp30.{e}" for i in ("kaiming", "xavier") for e in ("onnx", "pt", "safetensors")
    )
    xavier = run_cli("inspect", str(tmp_path / "xavier_mlp30.onnx"))
    kaiming = run_cli("inspect", str(tmp_path / "kaiming_mlp30.safetensors"))
    assert xavier.returncode == 1 and "×7.43e-10" in xavier.stdout
    assert kaiming.returncode == 0 and "OK: 30 of 30 layers" in kaiming.stdout


def test_probe_figures_script():
    out = subprocess.run(
        [sys.executable, "examples/probe_figures.py", "--seeds", "1", "--batch", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:4]): line.split() for line in out.stdout.splitlines()[1:]}
    xavier = rows[("mlp30", "w256", "xavier", "0")]
    assert float(xavier[-3]) < 1e-5 and xavier[-1] == "error"  # depth ratio, status
    kaiming = rows[("mlp30", "w256", "kaiming", "0")]
    assert kaiming[-1] == "ok" and 0.2 <= float(kaiming[-3]) <= 5


def test_paper_figure3_shortened():
    """5 epochs of the He et al. Figure 3 reproduction: the xavier net sits at chance (ln 10),
    the fixed one has clearly started to learn."""
    sys.path.insert(0, str(ROOT / "examples"))
    from examples.paper_figure3 import run

    results = run(epochs=5)
    xavier, fixed = results["xavier"]["losses"], results["fixed"]["losses"]
    assert results["changed_layers"] == 29
    assert min(xavier) > 2.25  # ln 10 = 2.3026: no learning
    assert fixed[-1] < 1.2 and fixed[-1] < xavier[-1] - 1.0
    assert results["fixed"]["accuracy"] > 0.5 > results["xavier"]["accuracy"]
