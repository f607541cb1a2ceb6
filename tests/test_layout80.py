"""Issue 16, "readable where people read it": the inspect table at 80 columns (and narrower, and
piped with ``COLUMNS``) keeps every status and number whole, drops columns in the issue's order,
shortens long names in the middle, shows residual blocks with a finding as rows of their own, and
prints the summary line unwrapped.

Real models: the residual net without normalization (examples/resnets.py, the golden zoo's
``factory_resnet_plain``) and a tiny transformers LLaMA drawn from N(0, 1) (tests/realzoo.py).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import initdoctor
from initdoctor.columns import DROP_ORDER, fit, shorten_middle
from initdoctor.render import render_table

ROOT = Path(__file__).resolve().parents[1]
BLOCK_ROW = re.compile(r"^│ (\S+) \(block\) +│")


def _render(report: initdoctor.Report, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    render_table(report, console)
    lines = console.export_text().splitlines()
    return _without_next(lines) if report.summary.status in ("error", "warn") else lines


def _without_next(lines: list[str]) -> list[str]:
    """The lines up to the summary: an ERROR/WARN report ends with the repairing command (issue
    16), on its own line after the summary and, like it, never wrapped (a command to copy)."""
    assert lines[-1].startswith("next: initdoctor fix "), lines[-1]
    assert not any(line.startswith("next:") for line in lines[:-1])
    return lines[:-1]


def _table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """The header cells and the body rows' cells of the rendered box table."""
    header = next(line for line in lines if line.startswith("┃"))
    rows = [line for line in lines if line.startswith("│")]
    split = lambda line: [c.strip() for c in line[1:-1].split(line[0])]  # noqa: E731
    return split(header), [split(r) for r in rows]


@pytest.fixture(scope="module")
def resnet_plain() -> initdoctor.Report:
    sys.path.insert(0, str(ROOT))
    from examples.resnets import resnet_plain as build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return initdoctor.diagnose(build(), probe=True)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_broken() -> initdoctor.Report:
    pytest.importorskip("transformers")
    from tests.realzoo import llama_broken as build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return initdoctor.diagnose(build(), probe=True)
    finally:
        torch.set_num_threads(threads)


def test_shorten_middle_keeps_the_start_and_the_last_dotted_part() -> None:
    assert shorten_middle("model.layers.0.self_attn.q_proj", 21) == "model.layers.0…q_proj"
    assert shorten_middle("model.layers.0.self_attn.q_proj", 40) == "model.layers.0.self_attn.q_proj"
    short = shorten_middle("a" * 50, 20)
    assert len(short) == 20 and short.startswith("a" * 10) and "…" in short


def test_fit_drops_in_the_issues_order_then_shortens_names() -> None:
    headers = ["layer", "fan_in", "std ratio", "status"]
    rows = [["model.layers.0.self_attn.q_proj", "64", "7.901", "ERROR"]]
    # natural widths 31, 6, 9, 6 → 52 + 3·4 + 1 = 65 cells
    assert fit(headers, rows, 65, ("fan_in",)).columns == [0, 1, 2, 3]
    dropped = fit(headers, rows, 64, ("fan_in",))
    assert dropped.columns == [0, 2, 3] and dropped.width == 56 and dropped.name_width is None
    shortened = fit(headers, rows, 50, ("fan_in",))  # 56 − 50: the name loses 6 cells → 25
    assert shortened.columns == [0, 2, 3] and shortened.name_width == 25 and shortened.width == 50
    # boxed, the name cannot go below 12: 12 + 9 + 6 + 10 = 37 > 30; compact (no box, columns two
    # spaces apart): 31 + 9 + 6 + 4 = 50, the name loses 20 cells → 11, the table is 30 wide
    compact = fit(headers, rows, 30, ("fan_in",))
    assert compact.compact and compact.name_width == 11 and compact.width == 30


def test_residual_net_at_80_columns(resnet_plain: initdoctor.Report) -> None:
    lines = _render(resnet_plain, 80)
    *body, summary = lines
    assert max(len(line) for line in body) <= 80
    # the summary line: one line, the whole message and the counts with the blocks
    assert summary.startswith("ERROR: residual stream grows exponentially over 8 unnormalized blocks")
    assert summary.endswith("residual blocks: ok 1, warn 0, error 7)")
    assert sum(line.startswith("ERROR:") for line in lines) == 1
    headers, rows = _table(lines)
    for kept in ("layer", "std ratio", "rescale", "status", "rule"):
        assert kept in headers
    for dropped in ("var ratio (meas.)", "fan_in", "std", "kaiming std", "kind"):
        assert dropped not in headers
    by_name = {r[0]: dict(zip(headers, r, strict=True)) for r in rows}
    for f in resnet_plain.layers:  # every std ratio whole, to 3 decimals
        assert by_name[f.name]["std ratio"] == f"{f.std_ratio:.3f}"
        assert by_name[f.name]["status"] == {"ok": "ok", "warn": "WARN", "error": "ERROR"}[f.status]
    assert by_name["fc"]["rescale"] == f"{resnet_plain.layers[-1].suggested_scale:.3f}"
    # the 7 growing blocks as rows: growth ×2.04 … ×4.59, ERROR, rule R301; layers.4 (×1.43) is ok
    blocks = {b.name: b for b in resnet_plain.residual_blocks}
    rows_of_blocks = {r[0].removesuffix(" (block)"): r for r in rows if r[0].endswith(" (block)")}
    assert sorted(rows_of_blocks) == [f"layers.{i}" for i in (0, 1, 2, 3, 5, 6, 7)]
    for name, row in rows_of_blocks.items():
        cells = dict(zip(headers, row, strict=True))
        assert cells["std ratio"] == f"×{blocks[name].growth:.3g}"
        assert (cells["status"], cells["rule"]) == ("ERROR", "R301")
    assert rows_of_blocks["layers.0"][headers.index("std ratio")] == "×2.04"
    # a block row follows its block's last layer
    names = [r[0] for r in rows]
    assert names.index("layers.0 (block)") == names.index("layers.0.conv2") + 1
    text = "\n".join(lines)  # the captions say what a block row's ×g is and why depth is "–"
    assert "block rows: ×g = Var[out]/Var[in]" in text and "depth –: Var[y]/Var[y_first]" in text
    assert all(by_name[f.name]["depth"] == "–" for f in resnet_plain.layers)
    assert resnet_plain.to_dict()["summary"]["blocks"] == {"ok": 1, "warn": 0, "error": 7}
    assert resnet_plain.to_dict()["summary"]["ok"] == 17  # the layers' count keeps its meaning


@pytest.mark.parametrize("width", [200, 120, 100, 80, 70, 60])
def test_columns_go_in_order_as_the_width_shrinks(resnet_plain: initdoctor.Report, width: int) -> None:
    lines = _render(resnet_plain, width)
    assert max(len(line) for line in lines[:-1]) <= width
    headers, rows = _table(lines)
    gone = [h for h in DROP_ORDER if h not in headers]
    assert gone == list(DROP_ORDER[: len(gone)])  # a prefix of the drop order
    assert {"layer", "std ratio", "rescale", "status", "rule"} <= set(headers)
    assert all(cell in ("ok", "WARN", "ERROR") for cell in (r[headers.index("status")] for r in rows))
    if width == 200:
        assert gone == []


def test_llama_long_names_shortened_in_the_middle(llama_broken: initdoctor.Report) -> None:
    for width in (80, 60):
        lines = _render(llama_broken, width)
        assert max(len(line) for line in lines[:-1]) <= width
        headers, rows = _table(lines)
        assert {"layer", "std ratio", "rescale", "status", "rule"} <= set(headers)
    compact = _render(llama_broken, 46)  # too narrow for the box: no box, statuses still whole
    assert max(len(line) for line in compact[:-1]) <= 46
    assert not any(line.startswith("┃") for line in compact)
    assert any(line.endswith("ERROR   R302") for line in compact)
    assert any(re.search(r" ×4\.3\de\+03 ", line) for line in compact)
    lines = _render(llama_broken, 60)
    headers, rows = _table(lines)
    q_proj = rows[1]  # model.layers.0.self_attn.q_proj: 31 characters, shortened to 18
    assert q_proj[0] == "model.layer…q_proj"
    layer = llama_broken.layers[1]
    assert layer.name == "model.layers.0.self_attn.q_proj"
    assert q_proj[headers.index("std ratio")] == f"{layer.std_ratio:.3f}"
    blocks = [r for r in rows if r[0].endswith("(block)")]
    grown = [b for b in llama_broken.residual_blocks if b.status == "error"]
    assert len(blocks) == len(grown) == 2
    for row, block in zip(blocks, grown, strict=True):
        assert row[headers.index("std ratio")] == f"×{block.growth:.3g}"  # ×4.31e+03, whole
        assert (row[headers.index("status")], row[headers.index("rule")]) == ("ERROR", "R302")
    assert lines[-1].startswith("ERROR: residual blocks that alone change the stream beyond ×16")


def _inspect(env_columns: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if env_columns is not None:
        env["COLUMNS"] = env_columns
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", "inspect", "examples.resnets:resnet_plain"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("columns", ["80", None])
def test_piped_inspect_honours_columns_and_defaults_to_80(columns: str | None) -> None:
    run = _inspect(columns)
    assert run.returncode == 1, run.stderr
    lines = _without_next(run.stdout.splitlines())
    assert lines[-1].startswith("ERROR:")
    assert run.stdout.splitlines()[-1].startswith("next: initdoctor fix examples.resnets:resnet_plain -o ")
    assert max(len(line) for line in lines[:-1]) <= 80
    errors = [line for line in lines if line.startswith("ERROR:")]  # grep '^ERROR:'
    assert errors == [lines[-1]]
    assert errors[0].endswith(
        "(layers: ok 17, warn 1, error 0, skip 0; residual blocks: ok 1, warn 0, error 7)"
    )
    assert sum(bool(BLOCK_ROW.match(line)) for line in lines) == 7
    assert "R301" in run.stdout


def test_piped_inspect_wider_columns_keeps_more() -> None:
    run = _inspect("120")
    header = next(line for line in run.stdout.splitlines() if line.startswith("┃"))
    assert "kaiming std" in header and "fan_in" not in header
    assert max(len(line) for line in _without_next(run.stdout.splitlines())[:-1]) <= 120


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "80"
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["inspect", "check", "compare", "fix", "rule"])
def test_help_at_80_columns_reads_plainly(command: str) -> None:
    run = _cli(command, "--help")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    usage = {
        "inspect": "MODEL",
        "check": "MODELS...",
        "compare": "BEFORE AFTER",
        "fix": "MODEL",
        "rule": "[CODE]",
    }
    assert lines[0].endswith(f" {command} [OPTIONS] {usage[command]}")
    for noise in ("<bool>", "<str>", "{model}", "[default: (", "variance .", "╭"):
        assert noise not in run.stdout
    if command != "rule":
        assert "Exit codes: 0 " in run.stdout.replace("\n  ", " ")
    if command == "inspect":
        assert "--nonlinearity TEXT" in run.stdout and "[default: relu]" in run.stdout
        assert "--mode auto|fan_in|fan_out" in run.stdout and "--trust / --no-trust" in run.stdout


def test_usage_error_is_the_usage_line_and_one_line(tmp_path: Path) -> None:
    run = _cli("inspect", str(tmp_path / "x.pt"), "-f", "sarif")
    assert run.returncode == 2 and run.stdout == ""
    usage, error = run.stderr.splitlines()
    assert usage.endswith("inspect [OPTIONS] MODEL")
    assert error == (
        "initdoctor: error: Invalid value for '--format' / '-f': "
        "'sarif' is not one of 'table', 'json', 'markdown', 'html'."
    )
    run = _cli("inspect", "--no-such-flag", "x.pt")
    assert (
        run.returncode == 2
        and run.stderr.splitlines()[1] == "initdoctor: error: No such option: --no-such-flag"
    )
