"""The package's layout habits, read from the source (AST and comments only: nothing is imported,
so this runs in a fraction of a second without torch).

* no module over :data:`MAX_LINES` lines;
* no module uses another module's ``_private`` name (``from .x import _y``, ``from ..x import _y``,
  ``x._y`` on an imported initdoctor module): a name that is shared is public;
* every ``# type: ignore`` names its error code and says why, on the same line.

Which module may import which is checked by ``lint-imports`` (``[tool.importlinter]`` in
pyproject.toml, see docs/architecture.md).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "initdoctor"
MAX_LINES = 400

#: Known violations that another branch removes; each entry names its follow-up. Drop an entry
#: when that branch is merged (the test fails for an entry that no longer occurs).
KNOWN_PRIVATE_USES: dict[tuple[str, str], str] = {}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(path: Path, module: str | None, level: int) -> str:
    """The absolute module a ``from ... import`` in ``path`` names."""
    if level == 0:
        return module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _private_uses(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, ``module._name``) for each private name of another initdoctor module used in
    ``path`` (or in ``source``, read as if it were ``path``)."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    modules = {_module_name(p) for p in _modules()}
    bound: dict[str, str] = {}  # local name → the initdoctor module it is bound to
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(path, node.module, node.level)
            if not source.startswith("initdoctor"):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:  # a submodule: ``from . import render``
                    bound[alias.asname or alias.name] = full
                if _is_private(alias.name):
                    found.append((node.lineno, full))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("initdoctor"):
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    if any(_is_private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, alias.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            value = node.value
            chain = []
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if not isinstance(value, ast.Name):
                continue
            if value.id in bound:
                target = ".".join([bound[value.id], *reversed(chain)])
            elif value.id == "initdoctor":
                target = ".".join(["initdoctor", *reversed(chain)])
            else:
                continue
            if target in modules:
                found.append((node.lineno, f"{target}.{node.attr}"))
    own = _module_name(path)
    return [(line, name) for line, name in found if name.rsplit(".", 1)[0] != own]


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_module_is_at_most_400_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines (at most {MAX_LINES}): split it"


def test_no_module_uses_another_modules_private_names() -> None:
    seen: set[tuple[str, str]] = set()
    problems = []
    for path in _modules():
        for line, name in _private_uses(path):
            if (_rel(path), name) in KNOWN_PRIVATE_USES:
                seen.add((_rel(path), name))
                continue
            problems.append(f"{_rel(path)}:{line} uses {name}")
    assert not problems, "make a shared name public:\n" + "\n".join(problems)
    fixed = set(KNOWN_PRIVATE_USES) - seen
    assert not fixed, f"fixed, drop from KNOWN_PRIVATE_USES: {fixed}"


# ``# type: ignore[code]`` followed by a comment that says why
_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<code>\[[a-z0-9-]+(,\s*[a-z0-9-]+)*\])?(?P<rest>.*)")


def test_every_type_ignore_has_a_code_and_a_reason() -> None:
    problems = []
    for path in _modules():
        source = path.read_text(encoding="utf-8")
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            match = _IGNORE.search(token.string)
            if match is None:
                continue
            reason = match["rest"].strip().lstrip("#").strip()
            if not match["code"] or not reason:
                problems.append(f"{_rel(path)}:{token.start[0]}: {token.string}")
    assert not problems, "write # type: ignore[code]  # why:\n" + "\n".join(problems)


def test_the_checks_see_a_violation() -> None:
    """The private-name scan itself: each form it must catch."""
    sample = PACKAGE / "checks" / "sample.py"  # not written: the text is parsed as if it were there
    cases = {
        "from ..report import _clean\n": "initdoctor.report._clean",
        "from . import registry\nregistry._x\n": "initdoctor.checks.registry._x",
        "import initdoctor.report as r\nr._clean\n": "initdoctor.report._clean",
        "from initdoctor.formats.base import _y\n": "initdoctor.formats.base._y",
    }
    for text, expected in cases.items():
        assert [name for _, name in _private_uses(sample, text)] == [expected], text
    harmless = "from ..report import __version__\nfrom ._own import x\n_own = 1\n_own._x\n"
    assert _private_uses(sample, harmless) == []


def test_the_package_root_only_re_exports_its_public_names():
    """``initdoctor/__init__.py`` re-exports lazily: ``dir(initdoctor)`` is ``__all__``, and a
    fresh ``import initdoctor`` imports no torch, numpy, onnx or onnxruntime (issue 12)."""
    import subprocess
    import sys

    code = (
        "import sys, initdoctor; print(sorted(dir(initdoctor)) == sorted(initdoctor.__all__));"
        "print([m for m in ('torch', 'numpy', 'onnx', 'onnxruntime') if m in sys.modules]);"
        "print(initdoctor.diagnose.__module__, initdoctor.Report.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["True", "[]", "initdoctor.api initdoctor.report.model"]
