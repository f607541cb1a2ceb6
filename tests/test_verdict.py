"""One meaning for "no verdict" (``unknown``), measurement over assumption, and one verdict for
every entry point (issue 14, items 1 and 2).

Real models only: tiny transformers LLaMA, torch MLPs with a norm the graph cannot see, the example
ResNets; files written to tmp folders and read back by the CLI (typer's runner, in this process).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_mlp
from initdoctor.checks.structure import chains, not_plain, repeated_groups
from initdoctor.errors import InitDoctorError
from initdoctor.report import Status, at_least
from tests.conftest import invoke as cli

STATIC_ONLY = "static only: depth behaviour not measured"


def inspect_json(*args: str) -> tuple[int, dict]:
    code, out, _ = cli("inspect", *args, "--format", "json")
    return code, json.loads(out)


# --- models -------------------------------------------------------------------------------------
class HiddenGain(nn.Module):
    """A weightless ×sqrt(2) after the ReLU that the rules do not model: the graph shows the ReLU as
    each layer's follower (a norm written out as ops would be recognised as a norm), and the
    signal's variance is held: xavier's ×½ per layer, ×2 back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2**0.5


def rms_mlp(depth: int = 20, width: int = 128, norm: type[nn.Module] = HiddenGain) -> nn.Sequential:
    """``depth`` xavier Linear layers (×0.5 variance each against ReLU's Kaiming), each hidden one
    followed by ReLU then ``norm``: the static product says ×0.5¹⁹ ≈ 1.9e-6, the signal is held."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(width, width if i < depth - 1 else 10)
        nn.init.xavier_normal_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < depth - 1:
            layers += [nn.ReLU(), norm()]
    return nn.Sequential(*layers)


def layernorm_mlp() -> nn.Sequential:
    return rms_mlp(depth=6, width=64, norm=lambda: nn.LayerNorm(64))  # type: ignore[arg-type, return-value]


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verdict")
    state = {k: v.contiguous() for k, v in tiny_llama().state_dict().items()}
    torch.save(state, folder / "llama.pt")
    torch.save(plain_mlp(depth=12, width=64, init="xavier").state_dict(), folder / "xavier.pt")
    torch.save(rms_mlp().state_dict(), folder / "rms.pt")
    torch.save(layernorm_mlp().state_dict(), folder / "layernorm.pt")
    broken = dict(state)
    broken["model.layers.0.mlp.up_proj.weight"] = torch.zeros_like(state["model.layers.0.mlp.up_proj.weight"])
    torch.save(broken, folder / "llama_zero.pt")
    return folder


# --- structure: evidently a plain chain or not ---------------------------------------------------
def test_repeated_groups_and_shape_chaining():
    assert repeated_groups(["layers.0.attn.q", "layers.0.mlp.up", "layers.1.attn.q", "layers.1.mlp.up"]) == [
        "layers.0",
        "layers.1",
    ]
    assert repeated_groups(["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"])
    assert repeated_groups(["0", "2", "4", "6"]) == []  # a Sequential MLP: one layer per index
    assert repeated_groups(["blocks.0.fc1", "blocks.0.fc2", "head"]) == []  # only one N
    desc = initdoctor.describe(plain_mlp(depth=5, width=32))
    layers = desc.layers
    assert all(chains(a, b) for a, b in zip(layers, layers[1:], strict=False))
    assert not chains(layers[1], layers[0])  # 32 out → 64 in


def test_plain_and_structured_state_dicts(files):
    assert not_plain(initdoctor.describe(files / "xavier.pt")) == []
    assert not_plain(initdoctor.describe(files / "rms.pt")) == []  # the norm has no weights
    assert not_plain(initdoctor.describe(files / "layernorm.pt"))[0].startswith("normalization layers")
    evidence = " | ".join(not_plain(initdoctor.describe(files / "llama.pt")))
    assert "normalization layers" in evidence and "model.layers.0" in evidence and "q_proj" in evidence


# --- unknown ---------------------------------------------------------------------------------------
def test_llama_state_dict_is_unknown_with_facts_and_no_rescale(files):
    code, data = inspect_json(str(files / "llama.pt"))
    s = data["summary"]
    assert code == 0 and s["status"] == "unknown" and s["unknown_reason"] == "no-graph"
    assert (
        s["message"].startswith(STATIC_ONLY) and "config.json" in s["message"] and "--model" in s["message"]
    )
    assert s["compound_variance_ratio"] is None and s["error"] == 0 and s["warn"] == 0
    q = next(f for f in data["layers"] if f["name"] == "model.layers.0.self_attn.q_proj")
    # a fact: std 0.02 (initializer_range) against Kaiming sqrt(2/32) = 0.25 → 0.08×, nothing suggested
    assert q["status"] == "ok" and q["suggested_scale"] is None and q["rule"] is None
    assert q["expected_std"] == pytest.approx(math.sqrt(2 / 32))
    assert q["std_ratio"] == pytest.approx(0.02 / math.sqrt(2 / 32), rel=0.1)
    assert "structure unknown" in q["message"] and "rescale" not in q["message"].replace("no rescale", "")
    assert all(f["suggested_scale"] is None for f in data["layers"])
    assert any(n.startswith("structure not known (no-graph)") for n in data["notes"])
    assert inspect_json(str(files / "llama.pt"), "--fail-on", "unknown")[0] == 1
    assert inspect_json(str(files / "llama.pt"), "--fail-on", "warn")[0] == 0  # unknown < warn


def test_all_zero_weight_keeps_its_error_under_unknown(files):
    code, data = inspect_json(str(files / "llama_zero.pt"))
    zero = next(f for f in data["layers"] if f["name"] == "model.layers.0.mlp.up_proj")
    assert zero["status"] == "error" and zero["rule"] == "K106"
    s = data["summary"]
    assert code == 1 and s["status"] == "error" and s["unknown_reason"] is None and s["error"] == 1
    assert STATIC_ONLY in s["message"]


def test_graph_with_norms_not_probed_is_unknown_and_probed_is_judged():
    code, data = inspect_json("tests.test_verdict:layernorm_mlp", "--no-probe")
    assert code == 0 and data["summary"]["status"] == "unknown"
    assert data["summary"]["unknown_reason"] == "not-probed"
    assert data["summary"]["message"].endswith("run the probe")
    code, data = inspect_json("tests.test_verdict:layernorm_mlp")
    assert code == 0 and data["summary"]["status"] == "ok" and data["summary"]["unknown_reason"] is None


def test_unknown_in_table_and_markdown(files):
    code, out, _ = cli("inspect", str(files / "layernorm.pt"))
    assert code == 0 and f"UNKNOWN: {STATIC_ONLY}" in out
    code, out, _ = cli("inspect", str(files / "layernorm.pt"), "--format", "markdown")
    assert out.startswith("## initdoctor: ❔ unknown")


def test_status_order_for_fail_on():
    assert at_least(Status.UNKNOWN, "unknown") and not at_least(Status.UNKNOWN, "warn")
    assert at_least(Status.WARN, "unknown") and at_least(Status.ERROR, "unknown")
    assert not at_least(Status.OK, "unknown")


# --- fix refuses unknown ---------------------------------------------------------------------------
def test_fix_refuses_unknown_and_force_restores_the_rescale(files, tmp_path):
    for extra in ((), ("--check",)):
        code, out, err = cli("fix", str(files / "llama.pt"), "-o", str(tmp_path / "o.pt"), *extra)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "--model pkg.mod:fn" in err and "config.json" in err and "--force" in err
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(InitDoctorError, match="no-graph"):
        initdoctor.fix_model(files / "llama.pt", dry_run=True)
    result = initdoctor.fix_model(files / "llama.pt", dry_run=True, force=True)
    q = next(c for c in result.changes if c.name == "model.layers.0.self_attn.q_proj")
    assert q.factor == pytest.approx(math.sqrt(2 / 32) / 0.02, rel=0.1)  # 0.8.0's ×12.5 on a healthy layer
    assert len(result.changes) >= 14  # every projection and the head: what --force asks for
    code, out, _ = cli("fix", str(files / "llama.pt"), "--check", "--force", "--format", "json")
    assert code == 1 and json.loads(out)["before"]["status"] == "error"


# --- measurement beats assumption ------------------------------------------------------------------
def test_measured_chain_contradicts_the_static_product():
    """19 xavier layers: the static product is 0.5¹⁹ ≈ 1.9e-6, but a ×sqrt(2) the rules do not model holds
    the signal: measured Var[y_last] / (2 · E[x²]) = 0.168 over the same chain (width 128)."""
    code, data = inspect_json("tests.test_verdict:rms_mlp")
    s = data["summary"]
    assert s["compound_variance_ratio"] == pytest.approx(0.5**19, rel=0.5)  # kept as explanation
    assert code == 0 and s["status"] == "warn" and s["rule"] is None and s["error"] == 0
    assert "is not confirmed: the probe measured ×0.168" in s["message"]  # within [1/16, 16]
    hidden = [f for f in data["layers"] if f["role"] == "hidden"]
    assert len(hidden) == 19 and all(f["status"] == "warn" and f["suggested_scale"] for f in hidden)
    # each layer measured ×0.5 against ReLU's gain (geometric mean), yet the signal is held (P203 does
    # not fire): first to last hidden Var[y] stays within the compound threshold (0.33 measured)
    assert s["measured_chain_ratio"] == pytest.approx(0.5, rel=0.2) and 1 / 16 < s["depth_ratio"] < 16
    # no probe: the graph shows a plain chain, so the static verdict stands (C501)
    code, data = inspect_json("tests.test_verdict:rms_mlp", "--no-probe")
    assert code == 1 and data["summary"]["status"] == "error" and data["summary"]["rule"] == "C501"


def test_static_product_confirmed_by_the_measurement_keeps_its_error():
    report = initdoctor.diagnose(plain_mlp(depth=12, width=64, init="xavier"), probe=True)
    assert report.summary.status == "error" and report.summary.rule == "C501"
    assert report.summary.depth_ratio < 1 / 16


def test_plain_state_dict_keeps_the_static_verdict_and_structured_is_unknown(files):
    code, data = inspect_json(str(files / "rms.pt"))  # plain chain in shape, no norm weights
    assert code == 1 and data["summary"]["status"] == "error" and data["summary"]["rule"] == "C501"
    code, data = inspect_json(str(files / "layernorm.pt"))
    assert code == 0 and data["summary"]["status"] == "unknown"


# --- one verdict for every entry point -------------------------------------------------------------
def _four(source: str, probe: bool) -> dict[str, tuple[str, int]]:
    """(status, exit code) from inspect, check, fix --check and diagnose for one model."""
    flag = "--probe" if probe else "--no-probe"
    code, out, _ = cli("inspect", source, flag, "--format", "json")
    got = {"inspect": (json.loads(out)["summary"]["status"], code)}
    code, out, _ = cli("check", source, flag)
    got["check"] = (out.split(": ", 1)[1].split(" — ", 1)[0], code)
    code, out, err = cli("fix", source, "--check", flag, "--format", "json")
    got["fix"] = (json.loads(out)["before"]["status"] if code != 2 else "unknown", code)
    got["diagnose"] = (initdoctor.diagnose(source, probe=probe).summary.status, -1)
    return got


def test_inspect_check_fix_and_diagnose_agree(files):
    xavier = _four(str(files / "xavier.pt"), probe=True)
    assert xavier == {
        "inspect": ("error", 1),
        "check": ("error", 1),
        "fix": ("error", 1),
        "diagnose": ("error", -1),
    }
    llama = _four(str(files / "llama.pt"), probe=True)
    assert llama == {
        "inspect": ("unknown", 0),
        "check": ("unknown", 0),
        "fix": ("unknown", 2),
        "diagnose": ("unknown", -1),
    }
    resnet = _four("examples.resnets:resnet_bn", probe=True)
    statuses = {status for status, _ in resnet.values()}
    assert len(statuses) == 1 and statuses != {"unknown"}, resnet
    assert _four("examples.resnets:resnet_bn", probe=False)["inspect"] == ("unknown", 0)


def test_check_takes_a_model_factory_for_a_state_dict(tmp_path):
    """`check` (the pre-commit entry) gets `--model` like inspect: a LLaMA state_dict alone is
    unknown (no graph), with its factory and the probe it gets the measured verdict — ok for the
    library's init, error R302 naming block 0 for N(0, 1) weights (initializer_range=1.0)."""
    from tests.realzoo import llama, llama_broken

    torch.save(llama().state_dict(), tmp_path / "llama.pt")
    torch.save(llama_broken().state_dict(), tmp_path / "broken.pt")
    code, out, _ = cli("check", str(tmp_path / "llama.pt"))
    assert code == 0 and ": unknown — static only" in out and "--model pkg.mod:fn" in out
    code, out, _ = cli("check", str(tmp_path / "llama.pt"), "--model", "tests.realzoo:llama", "--probe")
    assert code == 0 and ": ok — " in out
    code, out, _ = cli("check", str(tmp_path / "broken.pt"), "--model", "tests.realzoo:llama", "--probe")
    assert code == 1 and ": error — " in out and "model.layers.0.self_attn" in out
