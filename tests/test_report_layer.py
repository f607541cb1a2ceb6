"""The report layer: reports returned by the public API display themselves (rich, Markdown, HTML)
through the hooks initdoctor.render registers, and no initdoctor module imports another in a cycle
(lazy and TYPE_CHECKING imports included) — report never imports render."""

from __future__ import annotations

import ast
import io
import subprocess
import sys

import pytest
from rich.console import Console

import initdoctor
from examples.models import plain_mlp
from tests.conftest import ROOT

PACKAGE = ROOT / "initdoctor"


@pytest.fixture(scope="module")
def report():
    return initdoctor.diagnose(plain_mlp(depth=4, width=16, init="xavier"), probe=True)


def test_rich_print_renders_the_table(report):
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(report)
    text = console.export_text()
    assert "kaiming std" in text and "var ratio (meas.)" in text
    for layer in report.layers:
        assert f"│ {layer.name} " in text
    assert report.summary.status.upper() in text


def test_markdown_and_html_name_every_layer(report):
    markdown, html = report.to_markdown(), report._repr_html_()
    assert markdown.startswith("## initdoctor:") and ("<pre" in html or "<table" in html)
    for layer in report.layers:
        assert f"| {layer.name} |" in markdown
        assert f" {layer.name} " in html


def test_fix_model_reports_display_too():
    result = initdoctor.fix_model(plain_mlp(depth=3, width=8, init="xavier"), all_layers=True)
    assert result.changes and result.after is not None
    assert result.before.to_markdown().startswith("## initdoctor:")
    assert result.after.to_markdown().startswith("## initdoctor: ✅ ok")


def test_a_report_without_the_renderer_says_what_to_import():
    """The report layer alone (no initdoctor.render imported) cannot render; it says why."""
    probe = (
        "import sys\n"
        "from initdoctor.report import Report, Summary\n"
        "r = Report({}, {}, [], [], Summary('ok', 0, 0, 0, 0, None, None, ''))\n"
        "try:\n    r.to_markdown()\nexcept RuntimeError as e:\n    print(e)\n"
        "print('initdoctor.render' in sys.modules, 'rich' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.splitlines() == [
        "no markdown display registered for reports: import initdoctor.render (initdoctor.diagnose does)",
        "False False",
    ]


def _module(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """initdoctor module → the initdoctor modules it imports anywhere (module level, in functions,
    under TYPE_CHECKING); ``from . import x`` counts as importing ``x`` when ``x`` is a module."""
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(
                    (package[: len(package) - node.level + 1] if node.level else [])
                    + ([node.module] if node.module else [])
                )
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                names = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert "initdoctor.render" in graph["initdoctor.api"]  # registers the display hooks
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        seen[mod] = 1
        for dep in sorted(graph[mod]):
            assert seen.get(dep) != 1, "import cycle: " + " → ".join([*path, mod, dep])
            if dep not in seen:
                visit(dep, [*path, mod])
        seen[mod] = 2

    for mod in sorted(graph):
        if mod not in seen:
            visit(mod, [])


def test_report_layer_imports_only_itself_and_the_version():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("initdoctor.report"):
            assert all(d.startswith("initdoctor.report") or d == "initdoctor.version" for d in deps), mod
