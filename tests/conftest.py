"""Shared helpers: the example nets (examples/models.py) and a CLI runner in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m initdoctor ARGS`` and return the completed process (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=300,
    )


def cli_json(*args: str, cwd: Path | None = None) -> tuple[int, dict]:
    """``initdoctor inspect ARGS --format json`` in this process (typer's runner): (exit code, report)."""
    from typer.testing import CliRunner

    from initdoctor.cli import app

    old = os.getcwd()
    os.chdir(cwd or ROOT)
    try:
        result = CliRunner().invoke(app, ["inspect", *args, "--format", "json"])
    finally:
        os.chdir(old)
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    return result.exit_code, json.loads(result.stdout)


def invoke(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``initdoctor ARGS`` in this process, in ``cwd`` (default: the
    repository)."""
    from typer.testing import CliRunner

    from initdoctor.cli import app

    old = os.getcwd()
    os.chdir(cwd or ROOT)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)
    assert result.exit_code in (0, 1, 2), (args, result.output, result.exception)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cli():
    return run_cli
