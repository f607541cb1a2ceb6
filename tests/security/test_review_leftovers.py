"""Issue 13 (remaining items): ``fix`` keeps no output whose re-check fails, and a probe whose
forward changes the model's own weights is caught. Real models, real files, real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import initdoctor
from initdoctor.errors import InitDoctorError
from tests.test_hostile_inputs import assert_one_line_error

BROKEN = '''
import torch

class Broken(torch.nn.Module):
    """Xavier-scaled layers (fix rescales them) whose forward raises: the re-check's probe fails."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 64)
        self.b = torch.nn.Linear(64, 64)
        self.c = torch.nn.Linear(64, 10)
        for m in (self.a, self.b):
            torch.nn.init.normal_(m.weight, std=0.01)

    def forward(self, x):
        raise RuntimeError("this forward always fails")

def broken():
    torch.manual_seed(0)
    return Broken()
'''


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
        env=env,
    )


def test_fix_keeps_no_output_whose_recheck_fails(tmp_path):
    """0.8.0 wrote OUT (and replaced MODEL with --in-place), then reported the re-check's error:
    a fixed model that cannot be checked was kept. Now OUT is not written, MODEL keeps its bytes
    and no backup is left behind."""
    (tmp_path / "brokenmod.py").write_text(BROKEN)
    sys.path.insert(0, str(tmp_path))
    try:
        import brokenmod

        torch.save(brokenmod.broken(), tmp_path / "model.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("brokenmod", None)
    model = tmp_path / "model.pt"
    original = model.read_bytes()
    for args, out in (
        (["fix", "model.pt", "--trust", "-o", "out.pt"], tmp_path / "out.pt"),
        (["fix", "model.pt", "--trust", "--in-place"], None),
        (["fix", "brokenmod:broken", "-o", "state.pt"], tmp_path / "state.pt"),
    ):
        result = cli(*args, cwd=tmp_path)
        line = assert_one_line_error(result)
        assert "failed its re-check" in line or "forward raised" in line, line
        assert "this forward always fails" in line, line
        if out is not None:
            assert not out.exists(), f"{args}: the output of a failed re-check was kept"
    assert model.read_bytes() == original
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("model.pt", "brokenmod.py"))
    assert [n for n in leftovers if n != "__pycache__"] == []  # no .bak, no stage, no temp file


class SelfScaling(torch.nn.Module):
    """A forward that multiplies its own weight by 2 on each call (an in-place update of a
    parameter, e.g. a buggy weight-norm or EMA inside forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Linear(16, 4)

    def forward(self, x):
        with torch.no_grad():
            self.a.weight.mul_(2.0)
        return self.b(torch.relu(self.a(x)))


def test_forward_that_changes_its_weights_is_caught_and_restored():
    """The probe leaves the model as it found it: a forward that rescales its own parameter is
    named in a one-line error, and the parameter is put back (std as before, to the bit)."""
    torch.manual_seed(0)
    model = SelfScaling()
    before = model.a.weight.detach().clone()
    with pytest.raises(InitDoctorError, match=r"changed its own parameter a\.weight"):
        initdoctor.diagnose(model, probe=True)
    assert torch.equal(model.a.weight.detach(), before)
    assert float(model.a.weight.detach().std()) == pytest.approx(float(before.std()), rel=0)


def test_onnxruntime_warnings_stay_off_stderr(tmp_path):
    """A valid graph with an unused initializer makes onnxruntime log a warning ("Removing
    initializer …") in colour on stderr at its default severity. initdoctor's sessions (the probe's
    child and fix's in-process check of its output) log errors only: stderr carries no log."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 32)) * np.sqrt(1 / 32)).astype(np.float32)  # xavier: fix rescales it
    w2 = (rng.standard_normal((32, 4)) * np.sqrt(1 / 32)).astype(np.float32)
    unused = np.zeros((8,), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(unused, "unused"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    result = cli("inspect", "m.onnx", "-f", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    import json

    report = json.loads(result.stdout)
    first = next(layer for layer in report["layers"] if layer["fan_out"] == 32)
    assert first["fan_in"] == 32
    assert first["weight_std"] == pytest.approx(float(w1.std()), rel=1e-5)
    assert report["probe"]["backend"].startswith("onnx")
    fixed = cli("fix", "m.onnx", "-o", "out.onnx", cwd=tmp_path)  # onnxruntime checks the output
    assert fixed.returncode == 0, fixed.stderr
    assert "Removing initializer" not in fixed.stderr and "\x1b[" not in fixed.stderr, fixed.stderr
    assert (tmp_path / "out.onnx").exists()
