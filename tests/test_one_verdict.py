"""One model, one verdict from every entry point (issue 16, first bullet).

The 8-block residual net of examples/resnets.py, Kaiming fan_out convs: without BatchNorm its
residual stream grows ×2.4 per block (R301, error) — measured by the probe, which `inspect`,
`check`, `fix --check` and `initdoctor.diagnose` now all run by default; with BatchNorm every entry
point says ok. A bare state_dict has no graph to probe: `unknown`, never a plain ok.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_mlp
from examples.resnets import resnet_bn, resnet_plain
from initdoctor.errors import InitializationError, InputError
from tests.conftest import invoke as cli


def export(model: nn.Module, path: Path) -> Path:
    """The ONNX export; a BN model in training mode (the BN-faithful graph, docs/onnx-export.md:
    an eval export folds BatchNorm into the convs), on a copy (that export moves BN buffers)."""
    training = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    kwargs = {"training": torch.onnx.TrainingMode.TRAINING} if training else {}
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, **kwargs
        )
    return path


# (factory, its builder, the verdict, the rule, exit code of inspect/check/fix --check)
CASES = [
    ("examples.resnets:resnet_plain", resnet_plain, "error", "R301", 1),
    ("examples.resnets:resnet_bn", resnet_bn, "ok", None, 0),
]


@pytest.mark.parametrize(("factory", "build", "status", "rule", "code"), CASES, ids=["plain", "bn"])
def test_one_model_one_verdict_from_every_entry_point(tmp_path, factory, build, status, rule, code):
    model = build()
    onnx_path = export(model, tmp_path / "resnet.onnx")
    torch.save(model.state_dict(), tmp_path / "resnet.pt")

    # inspect (factory, probe on by default)
    got, out, _ = cli("inspect", factory, "--format", "json")
    summary = json.loads(out)["summary"]
    assert (summary["status"], summary["rule"], got) == (status, rule, code)

    # diagnose(model): probes by default, the same verdict and the same measured growth
    report = initdoctor.diagnose(model)
    assert (report.summary.status, report.summary.rule) == (status, rule)
    assert report.probe is not None and report.probe["inputs"][0]["shape"][1:] == [3, 32, 32]
    if status == "error":  # ×2.40 per block: Var[out]/Var[skip] of the 8 unnormalized blocks
        assert report.summary.residual_growth == pytest.approx(2.398, rel=0.01)
        assert report.summary.residual_growth == pytest.approx(summary["residual_growth"], rel=1e-6)
        assert report.summary.blocks == {"ok": 1, "warn": 0, "error": 7}
        with pytest.raises(InitializationError, match="residual stream grows"):
            initdoctor.assert_healthy_init(model)
    else:
        assert initdoctor.assert_healthy_init(model).summary.status == "ok"
    # the static look is asked for, not the default: a residual net is then unknown
    assert initdoctor.diagnose(model, probe=False).summary.status == "unknown"

    # check on the ONNX export (the pre-commit entry): probed, the same verdict and the same rule
    got, out, _ = cli("check", str(onnx_path))
    assert got == code and out.startswith(f"{onnx_path}: {status} — "), out
    onnx_report = initdoctor.diagnose(onnx_path)
    assert (onnx_report.summary.status, onnx_report.summary.rule) == (status, rule)
    if status == "error":
        assert "residual stream grows exponentially over 8 unnormalized blocks" in out
        # torch and onnxruntime measure the same growth (seeded inputs, the same weights)
        assert onnx_report.summary.residual_growth == pytest.approx(report.summary.residual_growth, rel=1e-3)
    # check on the factory agrees too
    got, out, _ = cli("check", factory)
    assert got == code and f": {status} — " in out

    # fix --check: exit 1 where something is to repair, 0 on the healthy net
    got, out, _ = cli("fix", factory, "--check", "--format", "json")
    data = json.loads(out)
    assert (data["before"]["status"], got) == (status, code)

    # a bare state_dict: no graph to probe → unknown (exit 0), never "ok"
    for command in ("inspect", "check"):
        got, out, _ = cli(
            command, str(tmp_path / "resnet.pt"), *(("--format", "json") if command == "inspect" else ())
        )
        shown = json.loads(out)["summary"]["status"] if command == "inspect" else out.split(": ", 1)[1]
        assert got == 0 and shown.startswith("unknown"), (command, out)
    # its factory given with --model: the measured verdict again
    got, out, _ = cli("check", str(tmp_path / "resnet.pt"), "--model", factory)
    assert got == code and f": {status} — " in out


def test_check_no_probe_is_the_static_look(tmp_path):
    """`check --no-probe` keeps the 0.9.0 static answer: the residual net is unknown, exit 0."""
    onnx_path = export(resnet_plain(), tmp_path / "plain.onnx")
    got, out, _ = cli("check", str(onnx_path), "--no-probe")
    assert got == 0 and ": unknown — static only: depth behaviour not measured" in out


def test_a_bf16_model_is_probed_with_bf16_inputs():
    """A bf16 model gets bf16 probe inputs (before: float32 inputs, 'mat1 and mat2 must have the
    same dtype'); its measured per-layer variance ratios match the float32 model's to 1% (measured:
    within 0.1%)."""
    model = plain_mlp(depth=6, width=64, init="kaiming")
    half = copy.deepcopy(model).to(torch.bfloat16)
    r32, r16 = initdoctor.diagnose(model), initdoctor.diagnose(half)
    assert r16.probe["inputs"] == [{"shape": [32, 64], "dtype": "bfloat16"}]
    assert r32.probe["inputs"] == [{"shape": [32, 64], "dtype": "float32"}]
    assert [p.dtype for p in half.parameters()] == [torch.bfloat16] * len(list(half.parameters()))
    assert r16.summary.status == r32.summary.status
    for a, b in zip(r32.layers, r16.layers, strict=True):
        assert a.variance_ratio is not None and b.variance_ratio is not None
        assert b.variance_ratio == pytest.approx(a.variance_ratio, rel=0.01), a.name
    # backward too: the seeded output gradient is made in the output's dtype and device
    assert initdoctor.diagnose(half, backward=True).summary.grad_depth_ratio is not None


def test_token_ids_stay_integers_when_the_model_is_half():
    """An embedding model in bf16: the ids keep int64 (only float inputs take the model's dtype);
    the first linear's measured variance ratio matches the float32 model's to 1%."""
    from tests.zoo import embed_mlp

    r32, r16 = initdoctor.diagnose(embed_mlp()), initdoctor.diagnose(embed_mlp().to(torch.bfloat16))
    assert r16.probe["inputs"] == r32.probe["inputs"] == [{"shape": [32, 16], "dtype": "int64"}]
    first = r32.layers[1].variance_ratio
    assert first is not None and r16.layers[1].variance_ratio == pytest.approx(first, rel=0.01)


def meta_mlp() -> nn.Module:
    """A factory whose model has shapes and no values (built on the meta device)."""
    with torch.device("meta"):
        return plain_mlp(depth=3, width=8)


def test_a_model_on_meta_is_one_clear_error():
    model = meta_mlp()
    for probe in (True, False):
        with pytest.raises(InputError, match="on the 'meta' device .* materialize them first"):
            initdoctor.diagnose(model, probe=probe)
    code, out, err = cli("inspect", "tests.test_one_verdict:meta_mlp")
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "'meta' device" in lines[0] and "Traceback" not in out + err
