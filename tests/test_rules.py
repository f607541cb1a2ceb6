"""The rules' registry: codes, docs (docs/rules.md), `initdoctor rule`, ignoring rules by code."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_mlp
from initdoctor.checks import REGISTRY, inspect_description, rules_markdown
from initdoctor.checks.registry import CODE, FAMILIES
from initdoctor.errors import SettingsError
from initdoctor.report import Role, Source, Status
from tests.conftest import ROOT, cli_json, run_cli

DOC = ROOT / "docs" / "rules.md"


def test_every_rule_has_a_code_a_name_and_a_doc():
    assert len(REGISTRY) >= 19
    for rule in REGISTRY:
        assert re.fullmatch(r"[A-Z][0-9]{3}", rule.code) and CODE.match(rule.code), rule.code
        assert rule.code[0] in FAMILIES
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule.name), rule.name
        assert rule.severities and all(isinstance(s, Status) for s in rule.severities)
        for part in (rule.title, rule.what, rule.why, rule.formula, rule.silence, rule.applies_to):
            assert part.strip(), (rule.code, part)
        assert rule.messages.get("default"), rule.code
        assert rule.ignorable == (Status.SKIP not in rule.severities), rule.code


def test_docs_rules_md_is_generated_from_the_registry():
    text = DOC.read_text(encoding="utf-8")
    assert text == rules_markdown(), "docs/rules.md is stale: write initdoctor.checks.rules_markdown() to it"
    documented = re.findall(r"^### ([A-Z][0-9]{3}) `([a-z0-9-]+)`$", text, flags=re.M)
    assert documented == [(r.code, r.name) for r in REGISTRY]


def test_cli_rule_prints_one_rule_and_lists_all():
    proc = run_cli("rule", "K101")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == REGISTRY.get("K101").doc()
    assert "hidden-variance-off-kaiming" in proc.stdout and "He et al. 2015" in proc.stdout
    assert run_cli("rule", "c501").stdout.startswith("### C501 `compound-drift`")
    listing = run_cli("rule", "--all")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [r.code for r in REGISTRY]
    assert lines[0].split()[:2] == ["S001", "non-float-weights"]


def test_cli_rule_unknown_code_is_one_error_line():
    proc = run_cli("rule", "K999")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "initdoctor: error: unknown rule 'K999'; `initdoctor rule --all` lists them"
    ]
    assert run_cli("rule").returncode == 2


def test_enums_keep_todays_strings():
    # 0.9.0 added "unknown" (model-level only; schemas /2)
    assert [s.value for s in Status] == ["skip", "ok", "unknown", "warn", "error"]
    assert {r.value for r in Role} == {
        "hidden",
        "output",
        "embedding",
        "residual",
        "stream",
        "normalized",
        "gate",
    }
    assert {s.value for s in Source} == {"graph", "flag", "rule", "config", "structure"}


def test_rule_field_names_the_rule_that_set_the_status():
    model = plain_mlp(depth=6, width=64, init="kaiming")
    with torch.no_grad():
        model[4].weight.mul_(3.0)  # variance ×9: one layer does not compound, at most warn
        model[6].weight.zero_()
    report = initdoctor.diagnose(model, ignore=("2",))
    by = {f.name: f for f in report.layers}
    assert (by["4"].status, by["4"].rule) == (Status.WARN, "K101")
    assert (by["6"].status, by["6"].rule) == (Status.ERROR, "K106")
    assert (by["2"].status, by["2"].rule, by["2"].message) == (
        Status.SKIP,
        "S004",
        "ignored by configuration",
    )
    assert by["0"].status == Status.OK and by["0"].rule is None
    data = json.loads(report.to_json())
    assert [layer["rule"] for layer in data["layers"]] == [f.rule for f in report.layers]
    assert data["summary"]["rule"] is None and data["summary"]["status"] == "error"
    assert isinstance(data["layers"][0]["status"], str) and data["layers"][0]["role"] == "hidden"


def test_ignoring_the_compounding_rule_leaves_the_layers_own_statuses():
    """xavier 30-layer MLP (examples/models.py): 28 square layers at variance ×0.5 warn, the
    64-wide first layer (×0.2) too (one layer alone is at most a warning, issue 14 item 1);
    compounding (×7e-10 < 1/16) makes them all errors. Ignoring C501 leaves the per-layer
    statuses: 29 warn."""
    model = plain_mlp(init="xavier")
    plain = initdoctor.diagnose(model, probe=False)  # the static look (the probe adds P rules)
    assert (plain.summary.status, plain.summary.rule) == ("error", "C501")
    assert (plain.summary.error, plain.summary.warn) == (29, 0)
    assert plain.summary.compound_variance_ratio < 1e-6
    assert sum(f.rule == "C501" for f in plain.layers) == 29
    for entry in ("C501", "C5"):
        report = initdoctor.diagnose(model, probe=False, ignore=(entry,))
        s = report.summary
        assert (s.status, s.rule, s.ok, s.warn, s.error) == ("warn", None, 1, 29, 0)
        assert (
            s.message
            == "0 error, 29 warn of 30 layers; worst: 0; C501 (compound-drift) ignored by configuration"
        )
        assert s.compound_variance_ratio == pytest.approx(plain.summary.compound_variance_ratio)
        assert {f.rule for f in report.layers} == {"K101", None}
        assert not any("compounds over" in f.message for f in report.layers)


def test_ignoring_a_family_by_prefix_and_a_single_code():
    model = plain_mlp(init="xavier")
    report = initdoctor.diagnose(model, probe=False, ignore=("K1", "C501"))
    assert report.summary.status == "ok" and report.summary.ok == 30
    square = next(f for f in report.layers if f.name == "2")
    assert square.status == "ok" and square.rule is None
    assert square.weight_variance_ratio == pytest.approx(0.5, rel=0.06)
    assert square.message.endswith("; K101 (hidden-variance-off-kaiming) ignored by configuration")
    one = plain_mlp(depth=6, width=64, init="kaiming")
    with torch.no_grad():
        one[4].weight.mul_(3.0)
    f = next(f for f in initdoctor.diagnose(one, probe=False, ignore=("K101",)).layers if f.name == "4")
    assert f.status == "ok" and f.message.startswith("std ") and "variance grows ×" in f.message


def test_ignoring_probe_rules_keeps_their_measurements():
    model = plain_mlp(init="xavier")
    report = initdoctor.diagnose(model, probe=True, ignore=("C501",))
    assert (report.summary.status, report.summary.rule) == ("error", "P203")
    both = initdoctor.diagnose(model, probe=True, ignore=("C501", "P203"))
    # measured ×1e-9 over 29 layers of width 64 (fluctuation ×exp(±4·sqrt(5·29/64)) ≈ ×4e-3):
    # the signal is lost, an error naming the layers where it drops
    assert (both.summary.status, both.summary.rule, both.summary.error) == ("error", "P205", 28)
    assert "lost at " in both.summary.message
    assert both.summary.message.endswith(
        "; C501 (compound-drift) ignored by configuration; P203 (systematic-drift) ignored by configuration"
    )
    assert all(f.variance_ratio is not None for f in both.layers)


def test_ignoring_the_nonfinite_norm_rule():
    model = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[1].weight[0] = float("nan")
    norm = initdoctor.diagnose(model).norm_layers[0]
    assert (norm.status, norm.rule) == ("error", "N401")
    quiet = initdoctor.diagnose(model, ignore=("N4",)).norm_layers[0]
    assert quiet.status == "ok" and quiet.rule is None
    assert (
        quiet.message
        == "NaN or Inf in the affine parameters; N401 (nonfinite-norm-params) ignored by configuration"
    )


@pytest.mark.parametrize("entry", ["K999", "X1", "S001", "S0"])
def test_ignore_entries_that_select_no_ignorable_rule_are_errors(entry):
    with pytest.raises(SettingsError, match=re.escape(repr(entry))):
        initdoctor.diagnose(plain_mlp(depth=3, width=8), ignore=(entry,))


def test_ignore_codes_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.initdoctor]\nignore = ["C501"]\nprobe = false\n')
    torch.save(plain_mlp(init="xavier").state_dict(), tmp_path / "m.pt")
    # in this process: run_cli with a cwd other than ROOT would import the installed copy
    code, data = cli_json("m.pt", cwd=tmp_path)
    assert code == 0  # one off-scale layer is at most a warning: no error left
    assert data["settings"]["ignore"] == ["C501"]
    assert data["summary"]["rule"] is None and data["summary"]["warn"] == 29
    assert data["summary"]["message"].endswith("; C501 (compound-drift) ignored by configuration")


def test_inspect_description_is_the_public_entry():
    assert initdoctor.checks.inspect_description is inspect_description


def test_ignore_on_the_command_line_takes_codes_and_globs(tmp_path):
    """``--ignore`` (repeatable) on the command line, as the config's ``ignore`` list: the xavier
    MLP's summary loses its C501 verdict (warn: no layer is an error on its own); a glob skips
    the first layer."""
    torch.save(plain_mlp(init="xavier").state_dict(), tmp_path / "m.pt")
    code, data = cli_json(str(tmp_path / "m.pt"), "--ignore", "C501")
    assert code == 0 and data["settings"]["ignore"] == ["C501"]
    assert (data["summary"]["rule"], data["summary"]["warn"], data["summary"]["error"]) == (None, 29, 0)
    code, data = cli_json(str(tmp_path / "m.pt"), "--ignore", "C501", "--ignore", "0")
    assert code == 0 and data["settings"]["ignore"] == ["C501", "0"]
    first = data["layers"][0]
    assert (first["name"], first["status"], first["rule"]) == ("0", "skip", "S004")
    assert (data["summary"]["status"], data["summary"]["warn"], data["summary"]["skip"]) == ("warn", 28, 1)
    proc = run_cli("check", str(tmp_path / "m.pt"), "--ignore", "C501", "--ignore", "0")
    assert proc.returncode == 0 and proc.stdout.startswith(f"{tmp_path / 'm.pt'}: warn")
