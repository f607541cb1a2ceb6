"""Issue 16, "Consistent flags" and "Papercuts": each flag's effect on real (small) models.

The models are the examples' 30-layer MLPs (``examples.models:xavier_mlp``: 29 of 30 layers
error, std 0.44–0.71× Kaiming; ``kaiming_mlp``: 30 of 30 ok; first layer fan_in 64). Commands run
in a subprocess (``conftest.run_cli``) where the environment or stderr matters, else in this
process with typer's runner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from typer.testing import CliRunner

from initdoctor.cli import app
from initdoctor.version import __version__

XAVIER, KAIMING = "examples.models:xavier_mlp", "examples.models:kaiming_mlp"
#: an ANSI colour (foreground 30–38, 90–97), not bold or italic
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])[;m]")


def _run(*args: str) -> tuple[int, str, str]:
    """``initdoctor ARGS`` in this process from the repository root: (exit code, stdout, stderr)."""
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)
    return result.exit_code, result.stdout, result.stderr


def test_check_json_to_a_file_holds_every_report(tmp_path):
    out = tmp_path / "check.json"
    code, stdout, _ = _run("check", KAIMING, XAVIER, "-f", "json", "-o", str(out))
    assert code == 1 and stdout == ""
    reports = json.loads(out.read_text())
    assert [r["summary"]["status"] for r in reports] == ["ok", "error"]
    assert [r["summary"]["error"] for r in reports] == [0, 29]
    assert reports[0]["schema"] == "initdoctor.report/2"


def test_check_reports_every_file_and_exits_with_the_worst(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("check", XAVIER, str(tmp_path / "missing.pt"), str(bad), KAIMING)
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    # the failing model's line is followed by the command that repairs it (issue 16: `next:`)
    assert lines.pop(1) == "  next: initdoctor fix examples.models:xavier_mlp -o fixed.safetensors"
    assert [line.split(":")[0] + ":" + line.split(":")[1].split()[0] for line in lines] == [
        "examples.models:xavier_mlp",
        "examples.models:kaiming_mlp",
    ]
    assert lines[0].split(": ")[1].startswith("error") and lines[1].split(": ")[1].startswith("ok")
    errors = proc.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("initdoctor: error: ") for e in errors), proc.stderr
    assert "missing.pt" in errors[0] and "broken.pt" in errors[1]
    assert "Traceback" not in proc.stderr


def test_check_takes_inspect_s_thresholds_and_probe_inputs():
    code, stdout, _ = _run(
        "check", XAVIER, "-f", "json", "--warn-threshold", "10", "--error-threshold", "20",
        "--compound-threshold", "1e10",
    )  # fmt: skip
    (report,) = json.loads(stdout)
    assert report["settings"]["warn_threshold"] == 10.0 and report["settings"]["error_threshold"] == 20.0
    assert report["summary"]["error"] == 0 and code == 0  # first layer: variance ×0.195 = 1/5.1 < 10
    code, stdout, _ = _run("check", KAIMING, "-f", "json", "--probe", "--input-shape", "4,64")
    (report,) = json.loads(stdout)
    assert code == 0 and report["probe"]["inputs"][0]["shape"] == [4, 64]


def test_check_markdown_and_verbose():
    code, stdout, _ = _run("check", KAIMING, "-f", "markdown")
    assert code == 0 and stdout.startswith("## initdoctor: ✅ ok")
    code, stdout, _ = _run("check", XAVIER, "-v")
    lines = stdout.splitlines()
    assert code == 1 and len([line for line in lines if " C501 — " in line]) == 29
    assert lines[1].startswith("  0: error C501 — std 0.078 is 0.44× Kaiming 0.177")


def test_inspect_verbose_lists_every_layer_s_message(tmp_path):
    plain, verbose = tmp_path / "plain.txt", tmp_path / "verbose.txt"
    assert _run("inspect", XAVIER, "--no-probe", "-o", str(plain))[0] == 1
    assert _run("inspect", XAVIER, "--no-probe", "-v", "-o", str(verbose))[0] == 1
    assert "… and 19 more (see --format json)" in plain.read_text()  # 29 findings, 10 shown
    text = verbose.read_text()
    assert "more (see --format json)" not in text
    assert len(re.findall(r"^\S+ \d+: ", text, re.M)) == 30  # every layer, the ok head (58) too
    assert "ok 58: output layer, judged against gain 1" in text


def test_compare_writes_to_output(tmp_path):
    out = tmp_path / "cmp.json"
    code, stdout, _ = _run("compare", XAVIER, KAIMING, "--no-probe", "-f", "json", "-o", str(out))
    data = json.loads(out.read_text())
    assert code == 0 and stdout == "" and data["schema"] == "initdoctor.compare/2"
    assert len(data["layers"]) == 30
    table = tmp_path / "cmp.txt"
    assert _run("compare", XAVIER, KAIMING, "--no-probe", "-o", str(table))[0] == 0
    text = table.read_text()  # layer 0: std 0.441× Kaiming in A, 0.987× in B
    assert re.search(r"│ 0 +│ +0\.441 │ +0\.987 │ \+0\.545 │", text), text
    assert text.splitlines()[-1].startswith("B: OK 30 of 30")


def test_fix_markdown_and_select_from():
    code, stdout, _ = _run("fix", XAVIER, "--dry-run", "-f", "markdown")
    assert code == 0 and stdout.startswith("## initdoctor fix: 29 layers would change")
    assert "| 0 | kaiming | error | 0.078 | 0.1768 | 2.266 |" in stdout  # 0.1768 / 0.078 = 2.266
    fix_help = " ".join(_run("fix", "--help")[1].split())
    assert "table, json or markdown" in fix_help
    assert (
        "-v, --verbose Also print every finding still standing after the fix (not only the first 20)"
        in fix_help
    )


def _scaled_mlp(tmp_path: Path, factors: dict[int, float]) -> Path:
    """``kaiming_mlp``'s weights (seed 0) with layer ``i``'s weight × ``factors[i]``, as a state_dict."""
    import torch

    sys.path.insert(0, str(ROOT))
    from examples.models import kaiming_mlp

    torch.manual_seed(0)
    state = kaiming_mlp().state_dict()
    weights = [k for k in state if k.endswith("weight")]
    for i, factor in factors.items():
        state[weights[i]] = state[weights[i]] * factor
    path = tmp_path / "scaled.pt"
    torch.save(state, path)
    return path


def test_fix_fail_on_sets_the_exit_code(tmp_path):
    """0.11: ``fix --fail-on`` is the exit threshold of the model fix leaves, as inspect's (was: the
    deprecated name of --select-from). Layer 5 × 1.5 and layer 10 × 0.1: two warn layers, the model
    WARN. ``--select-from error`` fixes nothing, so the model stays WARN: exit 0 under the default
    ``--fail-on error``, 1 under ``--fail-on warn``. Fixing the warn layers (default selection) cures
    it: exit 0 under ``--fail-on warn``, the two factors 1/1.5 and ≈10."""
    src = _scaled_mlp(tmp_path, {5: 1.5, 10: 0.1})
    base = ["fix", str(src), "--model", KAIMING, "--no-progress"]
    untouched = run_cli(*base, "--select-from", "error", "-o", str(tmp_path / "a.pt"), "-q")
    assert untouched.returncode == 0 and untouched.stderr == ""
    assert untouched.stdout == "nothing to fix: no layer reaches the threshold\n"
    strict = run_cli(*base, "--select-from", "error", "-o", str(tmp_path / "a.pt"), "--fail-on", "warn")
    assert strict.returncode == 1 and strict.stderr == ""
    cured = run_cli(*base, "-o", str(tmp_path / "b.pt"), "--fail-on", "warn", "-f", "json")
    data = json.loads(cured.stdout)
    assert cured.returncode == 0 and data["after"]["status"] == "ok"
    factors = sorted(c["factor"] for c in data["changes"])
    assert len(factors) == 2 and factors[0] == pytest.approx(1 / 1.5, rel=0.02)
    assert factors[1] == pytest.approx(10, rel=0.05)
    again = run_cli("inspect", str(tmp_path / "b.pt"), "--model", KAIMING, "--fail-on", "warn", "-q")
    assert again.returncode == 0 and again.stdout.startswith("OK: 30 of 30 layers")


def test_quiet_prints_only_the_summary_line(tmp_path):
    """0.11: ``-q`` prints the summary line only (table format), nothing on stderr; JSON unchanged."""
    quiet = run_cli("inspect", XAVIER, "-q")
    lines = quiet.stdout.splitlines()
    assert quiet.returncode == 1 and quiet.stderr == "" and len(lines) == 1
    assert lines[0].startswith("ERROR: ") and "error 29" in lines[0]
    full = run_cli("inspect", XAVIER, "--no-progress")
    assert lines[0] in full.stdout.splitlines() and len(full.stdout.splitlines()) > 10
    as_json = run_cli("inspect", KAIMING, "-q", "-f", "json")
    assert as_json.returncode == 0 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["summary"]["ok"] == 30
    fixed = run_cli("fix", XAVIER, "-q", "-o", str(tmp_path / "f.pt"))
    assert fixed.returncode == 0 and fixed.stderr == ""
    assert fixed.stdout.splitlines() == [
        f"fixed 29 layers → {tmp_path / 'f.pt'}; after: " + fixed.stdout.split("after: ", 1)[1].rstrip("\n")
    ]
    assert "after: OK 30 of 30 layers" in fixed.stdout


def test_version_short_flag():
    assert _run("-V")[:2] == (0, f"initdoctor {__version__}\n")


def test_no_color_flag_and_environment():
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)

    def run(*args: str, **extra: str) -> str:
        cmd = [sys.executable, "-m", "initdoctor", "inspect", XAVIER, "--no-probe", *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, env={**env, **extra}, timeout=300
        )
        assert proc.returncode == 1, proc.stderr
        return proc.stdout

    assert COLOUR.search(run())  # forced terminal: the statuses are coloured
    assert not COLOUR.search(run("--no-color"))
    assert not COLOUR.search(run(NO_COLOR="1"))


def _project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(f"[tool.initdoctor]\n{body}\n")
    return tmp_path


def test_config_key_typo_names_the_closest_key(tmp_path):
    folder = _project(tmp_path, "warn_threshold = 1.5")
    proc = run_cli("check", "m.pt", cwd=folder)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"initdoctor: error: unknown key 'warn_threshold' in {folder / 'pyproject.toml'} "
        "[tool.initdoctor]; did you mean 'warn-threshold'?\n"
    )


def test_config_bad_choice_names_the_file(tmp_path):
    folder = _project(tmp_path, 'fail-on = "warning"')
    proc = run_cli("inspect", "m.pt", cwd=folder)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert str(folder / "pyproject.toml") in proc.stderr and "did you mean 'warn'?" in proc.stderr
