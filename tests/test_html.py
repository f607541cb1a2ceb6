"""``--format html`` (issue 16, "CI and integrations"): one self-contained page with the table,
the block rows, the findings with rule codes, the summary and the plot inline; every model string
escaped; without matplotlib the page says so.

Real models: the tiny LLaMA with N(0, 1) weights (tests/realzoo.py) through the CLI into a tmp
file, and a torch MLP whose layer is named ``<script>…``.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

import initdoctor
from initdoctor.htmlreport import render_html
from tests.conftest import ROOT
from tests.test_verdict import cli

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def broken_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    code, stdout, stderr = cli("inspect", "tests.realzoo:llama_broken", "-f", "html", "-o", str(out))
    return code, out.read_text(encoding="utf-8"), stdout, stderr


def test_page_holds_the_verdict_the_block_rows_and_the_rule_codes(broken_page):
    code, page, stdout, _ = broken_page
    assert code == 1 and stdout == ""  # -o: the page goes to the file; the exit code is inspect's
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    _, report = initdoctor_json()
    s = report["summary"]
    assert s["status"] == "error" and s["rule"] == "R302"
    assert '<p class="summary error" id="summary">ERROR: residual blocks that alone change' in page
    # block rows: the block's name, its growth (as the report has it) and R302 in the row
    for block in (b for b in report["residual_blocks"] if b["status"] == "error"):
        growth = "×" + format(block["growth"], ".3g")
        row = re.search(
            rf'<tr class="block error"><td class="text">{re.escape(block["name"])} \(block\)</td>.*?</tr>',
            page,
        )
        assert row, block["name"]
        assert growth in row.group(0) and '<td class="text">R302</td>' in row.group(0)
    # findings: every warn/error layer with its rule code and message (escaped: the head's → &#x27;)
    assert "<code>R302</code> <b>model</b>" in page
    head = next(f for f in report["layers"] if f["name"] == "lm_head")
    assert head["status"] == "warn" and head["rule"] == "P207"
    assert "<code>P207</code> <b>lm_head</b>" in page
    # every layer is a row, its std ratio as the table prints it
    for f in report["layers"]:
        assert f'<td class="text">{f["name"]}</td>' in page
    q = next(f for f in report["layers"] if f["name"] == "model.layers.0.self_attn.q_proj")
    assert f"<td>{q['std_ratio']:.3f}</td>" in page  # ≈ 1 / (Kaiming std 0.125 for fan_in 64) ≈ 7.9


def test_page_is_self_contained_with_the_plot_inline(broken_page):
    _, page, _, _ = broken_page
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == 1
    png = base64.b64decode(found[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (800, 600)  # plot.py's 8×6 in at 100 dpi
    lowered = page.lower()
    for external in ("<script", "<link", "http://", "https://", "@import", "url("):
        assert external not in lowered, external


def test_a_layer_named_like_a_script_is_escaped():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict([(EVIL, nn.Linear(32, 32)), ("act", nn.ReLU()), ("out", nn.Linear(32, 4))])
    )
    nn.init.normal_(model[0].weight, std=1.0)  # 4× Kaiming (std √(2/32) = 0.25): a finding
    report = initdoctor.diagnose(model, probe=True)
    first = report.layers[0]
    assert first.name == EVIL and first.status in ("warn", "error") and first.rule
    page = render_html(report, plot=False)
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f'<td class="text">{escaped}</td>' in page  # the table row
    assert f"<code>{first.rule}</code> <b>{escaped}</b>" in page  # the finding
    assert abs(first.std_ratio - 4.0) < 0.3  # std 1 / Kaiming 0.25
    assert f"<td>{first.std_ratio:.3f}</td>" in page


def test_without_matplotlib_the_page_says_so_instead_of_failing():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if the extra were not installed
        "import torch, initdoctor; from torch import nn\n"
        "from initdoctor.htmlreport import render_html\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))\n"
        "print(render_html(initdoctor.diagnose(m, probe=True)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (
        "No plot: the HTML report&#x27;s plot needs matplotlib: pip install &#x27;initdoctor[plot]&#x27;."
        in done.stdout
    )
    assert "data:image/png" not in done.stdout and "<table>" in done.stdout


def test_html_is_refused_by_compare_in_one_line():
    code, stdout, stderr = cli("compare", "tests.realzoo:llama", "tests.realzoo:llama", "-f", "html")
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == [
        "initdoctor: error: --format html is for inspect; compare writes table or json"
    ]


def initdoctor_json() -> tuple[int, dict]:
    import json

    code, out, _ = cli("inspect", "tests.realzoo:llama_broken", "-f", "json")
    return code, json.loads(out)
