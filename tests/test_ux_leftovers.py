"""Issue 16's leftovers: ``check`` with several models in html/markdown/json (worst exit code), the
Markdown table's rule column and block rows, the ``next:`` step in ``check`` and as JSON
``summary.next_step`` carrying the flags that change the verdict (running it repairs the model),
and ``check`` reading ``probe`` from the resolved settings only."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import invoke
from torch import nn

from initdoctor.commands import verdict_flags

safetensors_torch = pytest.importorskip("safetensors.torch")

FACTORY = "tests.test_ux_leftovers:small_mlp"
WIDTH, DEPTH = 32, 6


def small_mlp(init: str = "kaiming") -> nn.Sequential:
    """``DEPTH`` hidden Linear(32, 32) + ReLU and a Linear(32, 4) head; Kaiming: std √(2/32) = 0.25;
    Xavier: std √(2/64) = 0.177, 0.71× Kaiming."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        linear = nn.Linear(WIDTH, WIDTH)
        (nn.init.kaiming_normal_ if init == "kaiming" else nn.init.xavier_normal_)(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 4))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ux")
    out = {}
    for init in ("kaiming", "xavier"):
        out[init] = folder / f"{init}.safetensors"
        state = {k: v.contiguous() for k, v in small_mlp(init).state_dict().items()}
        safetensors_torch.save_file(state, str(out[init]))
    return out


# --- 1. check with several models: one document, the worst exit code ----------------------------
def test_check_html_with_two_models_is_one_page_with_a_section_each(files, tmp_path):
    page = tmp_path / "report.html"
    code, _, _ = invoke("check", str(files["kaiming"]), str(files["xavier"]), "-f", "html", "-o", str(page))
    text = page.read_text()
    assert code == 1  # the worst of ok (0) and error (1)
    assert text.count("<!DOCTYPE html>") == 1 and text.count("<h2><code>") == 2
    assert "2 models, worst error" in text
    summaries = re.findall(r'<p class="summary (\w+)" id="(model-\d)">', text)
    assert summaries == [("ok", "model-1"), ("error", "model-2")]
    # the xavier section: its 6 hidden layers at std ratio √(2/64)/√(2/32) = 0.71, rule C501 each
    xavier = text[text.index('id="model-2"') :]
    assert xavier.count('<td class="text">C501</td>') == DEPTH and "model-1" not in xavier
    assert text[: text.index('id="model-2"')].count("C501") == 0
    fixed = files["xavier"].with_name("xavier.fixed.safetensors")
    assert f"<p>next: <code>initdoctor fix {files['xavier']} -o {fixed}</code>" in xavier
    assert "src=" not in text.replace('src="data:image/png;base64,', "")  # nothing external


@pytest.mark.parametrize("fmt", ["html", "json", "markdown", "table"])
def test_check_writes_no_output_file_when_no_model_could_be_judged(tmp_path, fmt):
    out = tmp_path / f"report.{fmt}"
    code, _, err = invoke("check", str(tmp_path / "missing.pt"), "-f", fmt, "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "missing.pt" in err
    assert not out.exists()  # 0.10 wrote an empty report.html


def test_check_markdown_and_json_with_two_models(files):
    code, out, _ = invoke("check", str(files["kaiming"]), str(files["xavier"]), "-f", "markdown")
    assert code == 1 and out.count("## initdoctor:") == 2
    assert out.index("## initdoctor: ✅ ok") < out.index("## initdoctor: ❌ error")
    code, out, _ = invoke("check", str(files["kaiming"]), str(files["xavier"]), "-f", "json")
    ok, bad = json.loads(out)
    assert code == 1 and ok["summary"]["next_step"] is None
    assert bad["summary"]["next_step"].startswith(f"initdoctor fix {files['xavier']}")


# --- 2. the Markdown table: rule codes, block rows -------------------------------------------------
def test_markdown_table_has_the_rule_column_and_the_block_rows():
    args = ("inspect", "examples.resnets:resnet_plain", "--input-shape", "4,3,8,8")
    code, out, _ = invoke(*args, "-f", "markdown")
    _, raw, _ = invoke(*args, "-f", "json")
    report = json.loads(raw)
    header = next(line for line in out.splitlines() if line.startswith("| layer |"))
    assert header.endswith("| rescale | status | rule |")
    flagged = [b for b in report["residual_blocks"] if b["status"] != "ok"]
    assert code == 1 and flagged
    for block in flagged:  # the block's own row: its growth Var[out]/Var[in] and its rule
        row = next(line for line in out.splitlines() if line.startswith(f"| {block['name']} (block) |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "block" and cells[-1] == block["rule"]
        assert cells[header.strip("|").split("|").index(" std ratio ")] == f"×{block['growth']:.3g}"
        assert f"- **{block['name']} (block)** ({block['status']}, {block['rule']})" in out


# --- 3. the next step, in check and in JSON, reproducing the verdict -------------------------------
def test_the_suggested_fix_carries_the_verdict_flags_and_repairs_the_model(files, tmp_path):
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(files["xavier"].read_bytes())
    flags = ["--model", FACTORY, "--input-shape", "8,32", "--warn-threshold", "1.5", "--seed", "3"]
    code, out, _ = invoke("inspect", str(weights), *flags, "-f", "json")
    report = json.loads(out)
    assert code == 1 and report["summary"]["status"] == "error" and report["probe"] is not None
    step = shlex.split(report["summary"]["next_step"])
    # every flag given, with its value (in the option table's order), then where the fix goes
    carried = ["--model", FACTORY, "--warn-threshold", "1.5", "--input-shape", "8,32", "--seed", "3"]
    assert step == ["initdoctor", "fix", str(weights), *carried, "-o", str(tmp_path / "m.fixed.safetensors")]
    # check (which takes no --seed) names it with its own flags, on a line after the model's
    code, out, _ = invoke("check", str(weights), *flags[:6])
    assert code == 1 and out.splitlines()[-1] == "  next: " + shlex.join(step[:-4] + step[-2:])
    # copying it: exit 0, and the re-inspect with the same flags is ok
    code, out, err = invoke(*step[1:])
    assert code == 0, out + err
    code, out, _ = invoke("inspect", str(tmp_path / "m.fixed.safetensors"), *flags, "-f", "json")
    again = json.loads(out)
    assert code == 0 and again["summary"]["status"] == "ok" and again["summary"]["next_step"] is None
    stds = [f["std_ratio"] for f in again["layers"] if f["role"] == "hidden"]
    assert len(stds) == DEPTH and all(abs(r - 1) < 0.02 for r in stds), stds  # rescaled to Kaiming


def test_verdict_flags_are_the_given_ones_that_fix_takes():
    opts = {
        "model": "pkg:fn",
        "trust": True,
        "warn_threshold": 1.5,
        "probe": False,
        "ignore": ["K1", "head.*"],
    }
    opts.update({"fail_on": "warn", "output": Path("r.md"), "format": "json", "timeout": 0.0})
    words = verdict_flags("check", opts)
    # check's --model is fix's --model; fail-on, output and format do not change the verdict
    assert words == ["--model", "pkg:fn", "--trust", "--warn-threshold", "1.5", "--ignore", "K1", "--ignore",
                     "head.*", "--no-probe"]  # fmt: skip
    assert verdict_flags("inspect", {"model_factory": None, "weights": None, "timeout": 0.0}) == []


def test_library_diagnose_names_the_step_for_a_file_not_for_a_module(files):
    import initdoctor

    report = initdoctor.diagnose(str(files["xavier"]))
    assert report.to_dict()["summary"]["next_step"] == (
        f"initdoctor fix {files['xavier']} -o {files['xavier'].with_name('xavier.fixed.safetensors')}"
    )
    assert initdoctor.diagnose(small_mlp("xavier")).to_dict()["summary"]["next_step"] is None


# --- 5. check's probe comes from the resolved settings (the config file too) ----------------------
def test_check_reads_probe_from_the_config_file(files, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.initdoctor]\nprobe = false\n")
    weights = str(files["xavier"])
    code, out, _ = invoke("check", weights, "--model", FACTORY, "-f", "json", cwd=tmp_path)
    assert code == 1 and json.loads(out)[0]["probe"] is None  # static: the config said so
    code, out, _ = invoke("check", weights, "--model", FACTORY, "--probe", "-f", "json", cwd=tmp_path)
    report = json.loads(out)[0]
    assert code == 1 and report["probe"]["inputs"][0]["shape"][-1] == WIDTH  # the command line wins
    assert "--probe" in shlex.split(report["summary"]["next_step"])


# --- 6. acceptance points without a test before -----------------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_exit_codes_are_the_ones_help_prints():
    from initdoctor.options import EXIT_CODES

    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Exit codes") :].split("\n### ")[0]
    rows = dict(re.findall(r"^\| ([012]) \| (.+) \|$", section, re.M))
    assert sorted(rows) == ["0", "1", "2"]
    # help's epilog (EXIT_CODES) and README say the same: 0 below --fail-on, 1 at it, 2 input errors
    assert (
        "nothing reaches `--fail-on`" in rows["0"] and "0 nothing reaches --fail-on" in EXIT_CODES["inspect"]
    )
    assert "at or above `--fail-on`" in rows["1"] and "1 something does" in EXIT_CODES["check"]
    assert "usage or input error" in rows["2"] and "2 a usage or input error" in EXIT_CODES["fix"]
    assert "unknown" in rows["2"] and "unknown verdict without --force" in EXIT_CODES["fix"]


def test_readme_trainer_callback_example_names_what_the_package_has():
    pytest.importorskip("transformers")
    from initdoctor.integrations import InitCheckCallback

    text = README.read_text(encoding="utf-8")
    block = text[text.index("```python\n  from transformers import Trainer") :].split("```")[1]
    code = "\n".join(line.removeprefix("  ") for line in block.splitlines()[1:])
    assert len(code.strip().splitlines()) == 5  # the five-line example of issue 16
    compile(code, "README.md", "exec")
    assert "from initdoctor.integrations import InitCheckCallback" in code
    callback = InitCheckCallback()  # as the example builds it: raise on error, probed
    assert (callback.action, callback.fail_on, callback.probe) == ("raise", "error", True)
