"""Issue 15: fix repairs every finding inspect makes — Fixup, SkipInit (zero-γ), auto — and
`fix --check` exits as inspect does."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import initdoctor
from examples.resnets import resnet_bn, resnet_plain
from tests import zoo

L, M = 8, 2  # resnet_plain: 8 basic blocks of 2 convs, no normalization


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["fixup", "auto"])
def test_fixup_on_the_unnormalized_resnet(method):
    model = resnet_plain()
    assert initdoctor.diagnose(resnet_plain(), probe=True).exit_code() == 1  # R301
    before = _state(model)
    result = initdoctor.fix_model(model, method=method)
    by_name = {c.name: c for c in result.changes}
    assert sorted(by_name) == sorted(f"layers.{k}.conv{j}" for k in range(L) for j in (1, 2))
    factor = L ** (-1 / (2 * M - 2))
    assert factor == pytest.approx(8**-0.5)
    for k in range(L):
        c1 = by_name[f"layers.{k}.conv1"]
        w0 = before[f"layers.{k}.conv1.weight"]
        sigma = (2 / (32 * 9)) ** 0.5  # Kaiming fan_out, relu: 32 channels × 3×3
        assert c1.method == "fixup" and c1.block == f"layers.{k}"
        assert c1.factor == pytest.approx(sigma / w0.std(unbiased=False).item() * factor, rel=1e-5)
        got = model.layers[k].conv1.weight.detach()
        assert torch.allclose(got, w0 * c1.factor, rtol=1e-6)
        assert got.std(unbiased=False).item() == pytest.approx(sigma * factor, rel=1e-5)
        assert torch.count_nonzero(model.layers[k].conv2.weight) == 0
        assert torch.count_nonzero(model.layers[k].conv2.bias) == 0
        assert by_name[f"layers.{k}.conv2"].bias_zeroed
    after = _state(model)
    for key in ("stem.weight", "stem.bias", "fc.weight", "fc.bias") + tuple(
        f"layers.{k}.conv1.bias" for k in range(L)
    ):
        assert torch.equal(after[key], before[key]), key
    assert result.after is not None and result.after.exit_code() == 0
    assert initdoctor.diagnose(model, probe=True).exit_code() == 0


def test_fixup_cli_writes_pt_safetensors_onnx_untouched_bit_identical(tmp_path):
    model = resnet_plain().eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "m.pt")
    save_file(state, str(tmp_path / "m.safetensors"))
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(tmp_path / "m.onnx"), dynamo=False)
    factory = ["--model", "examples.resnets:resnet_plain"]
    for name in ("m.pt", "m.safetensors"):
        out = tmp_path / f"fixed_{name}"
        code, _ = _cli("fix", str(tmp_path / name), *factory, "--method", "fixup", "-o", str(out))
        assert code == 0, name
        fixed = torch.load(out, weights_only=True) if name.endswith(".pt") else load_file(str(out))
        for key, value in state.items():
            if ".conv" in key and key.startswith("layers."):
                continue
            assert torch.equal(fixed[key], value), key  # untouched: bit-identical
        assert torch.count_nonzero(fixed["layers.3.conv2.weight"]) == 0
        assert _cli("inspect", str(out), *factory)[0] == 0
    out = tmp_path / "fixed.onnx"
    code, data = _cli(
        "fix", str(tmp_path / "m.onnx"), "--method", "fixup", "-o", str(out), "--format", "json"
    )
    assert code == 0 and data["after"]["status"] != "error"
    import onnx
    from onnx import numpy_helper

    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    changed = {c["weight_key"] for c in data["changes"]} | {
        c["weight_key"].removesuffix("weight") + "bias" for c in data["changes"] if c["bias_zeroed"]
    }
    assert len({c["weight_key"] for c in data["changes"]}) == 8 * 2  # 16 conv weights
    for key in a:
        if key not in changed:
            assert a[key].tobytes() == b[key].tobytes(), key
    assert _cli("inspect", str(out))[0] == 0


def test_skipinit_zeroes_exactly_the_last_bn_gamma_of_each_branch():
    model = resnet_bn()
    before = _state(model)
    result = initdoctor.fix_model(model, method="skipinit")
    assert sorted(c.name for c in result.changes) == sorted(f"layers.{k}.bn2" for k in range(L))
    after = _state(model)
    zeroed = {f"layers.{k}.bn2.weight" for k in range(L)}
    for key in before:
        if key in zeroed:
            assert torch.count_nonzero(after[key]) == 0
        else:
            assert torch.equal(after[key], before[key]), key
    assert result.after is not None and result.after.exit_code() == 0


def _gpt2_x8():
    """tests.realzoo's tiny GPT-2 (pre-LN, 4 blocks, width 64) with every branch's output
    projection (attn.c_proj, mlp.c_proj) ×8."""
    pytest.importorskip("transformers")
    from tests.realzoo import gpt2

    model = gpt2()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(8.0)
            block.mlp.c_proj.weight.mul_(8.0)
    return model


def test_gpt2_with_output_projections_x8_after_fix_auto_inspects_clean():
    """inspect already says ok before any fix (pre-LN), and auto changes nothing — yet the net
    trains worse than stock: 4.199 vs 3.855 after 200 AdamW steps (docs/fix-evidence.md, round 2).
    inspect's ok is lenient here; this test pins what the tool does, not that the net is fine."""
    model = _gpt2_x8()
    result = initdoctor.fix_model(model, method="auto")
    assert not result.unrepaired
    assert initdoctor.diagnose(model, probe=True).exit_code() == 0


def test_gpt2_skipinit_zeroes_each_pre_ln_branch_end():
    """A pre-LN branch ends in no norm: SkipInit's α = 0 is its last layer zeroed (bias too), and
    every block is then exactly the identity (growth 1)."""
    model = _gpt2_x8()
    before = _state(model)
    result = initdoctor.fix_model(model, method="skipinit")
    ends = {f"transformer.h.{k}.{part}.c_proj" for k in range(4) for part in ("attn", "mlp")}
    assert {c.name for c in result.changes} == ends
    after = _state(model)
    for key in before:
        if key.rsplit(".", 1)[0] in ends and key.endswith(("weight", "bias")):
            assert torch.count_nonzero(after[key]) == 0, key
        else:
            assert torch.equal(after[key], before[key]), key
    report = initdoctor.diagnose(model, probe=True)
    assert report.exit_code() == 0
    assert all(b.growth == pytest.approx(1.0, abs=1e-6) for b in report.residual_blocks)


def _cli(*args: str):
    from typer.testing import CliRunner

    from initdoctor.cli import app

    if args[0] in ("inspect", "fix") and "--format" not in args:
        args = (*args, "--format", "json")
    result = CliRunner().invoke(app, list(args))
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = result.stdout
    return result.exit_code, data


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    zoo.write_fixtures(folder)
    return folder


INSPECT_CASES = [c for c, argv in zoo.CASES.items() if argv[0] == "inspect"]


@pytest.mark.parametrize("fail_on", ["warn", "error"])
@pytest.mark.parametrize("case", INSPECT_CASES)
def test_fix_check_exits_as_inspect(zoo_files, case, fail_on):
    """``fix --check --select-from X`` exits as ``inspect --fail-on X`` (fix's default is warn)."""
    old = os.getcwd()
    os.chdir(zoo.ROOT)
    try:
        args = [a for a in zoo.argv(case, zoo_files) if a != "--backward"]
        code, report = _cli(*args, "--fail-on", fail_on)
        if report["summary"]["status"] == "unknown":
            pytest.skip("verdict unknown: fix refuses without --force")
        fix_code, data = _cli("fix", *args[1:], "--check", "--select-from", fail_on)
    finally:
        os.chdir(old)
    assert fix_code == code, (report["summary"]["message"], data)
    if code:
        assert data["changes"] or data["unrepaired"]


def test_fix_check_names_what_kaiming_cannot_repair(tmp_path):
    code, data = _cli("fix", "examples.resnets:resnet_plain", "--method", "kaiming", "--check")
    assert code == 1
    assert {u["rule"] for u in data["unrepaired"]} == {"R301"}
    assert all("--method auto" in u["reason"] for u in data["unrepaired"])
    assert np.isfinite(data["before"]["residual_growth"])


class _Untraceable(torch.nn.Module):
    """torch.fx cannot trace ``if x.shape[0] > 0`` (a Python branch on a traced value);
    torch.export can: a factory read through torch.export (issue 15: fix then failed with
    "initdoctor: error: ExportedProgram:")."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(12))
        for layer in self.layers:
            torch.nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x):
        if x.shape[0] > 0:
            for layer in self.layers:
                x = torch.relu(layer(x))
        return x


def untraceable_mlp():
    torch.manual_seed(0)
    return _Untraceable()


def test_fix_of_a_torch_export_factory_writes_and_rechecks(tmp_path):
    out = tmp_path / "x.pt"
    code, data = _cli(
        "fix", "tests.test_fix_methods:untraceable_mlp", "-o", str(out), "--input-shape", "4,32"
    )
    assert code == 0, data
    assert data["changes"] and all(c["method"] == "kaiming" for c in data["changes"])
    state = torch.load(out, weights_only=True)
    # N(0, 0.02) → Kaiming relu std sqrt(2/32) = 0.25
    assert state["layers.5.weight"].std(unbiased=False).item() == pytest.approx(0.25, rel=1e-4)


@pytest.mark.parametrize("name", ["gpt2_broken", "bert_broken", "vit_broken", "t5_broken", "llama_broken"])
def test_auto_repairs_the_broken_real_zoo_models(name):
    """tests.realzoo's broken models (one block's weight matrices ×10; llama_broken: N(0, 1)):
    inspect errors (R302/R303); fix_model(auto) re-inspects the live model until no block is
    flagged, rescaling to Kaiming the branch layers ×2 off it (std); inspect then exits 0."""
    pytest.importorskip("transformers")
    import tests.realzoo as realzoo

    model = getattr(realzoo, name)()
    assert initdoctor.diagnose(model, probe=True).summary.rule in ("R302", "R303")
    result = initdoctor.fix_model(model, method="auto")
    assert {c.method for c in result.changes} <= {"fixup", "skipinit", "kaiming"} and result.changes
    assert all(c.block or c.name == "lm_head" for c in result.changes)
    for c in result.changes:
        if c.method == "kaiming":  # drifting ≥ ×2: the ×10 block's (std 10σ*) or N(0, 1)'s (8σ*)
            assert c.old_std / c.expected_std > 2 and c.new_std == pytest.approx(c.expected_std, rel=1e-4)
            assert name == "llama_broken" or f".{realzoo.B}." in c.name, c.name
    assert initdoctor.diagnose(model, probe=True).exit_code() == 0
