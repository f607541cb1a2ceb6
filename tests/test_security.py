"""Regression tests for the hostile-input review (issue 13): one test per item, each failing on
0.7.0. Real files, real subprocesses: the CLI must give one clean line and never run code,
lose data or overwrite what it was not asked to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.test_hostile_inputs import RunsShell, assert_one_line_error, small_model


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


# --- 1. trust comes from the command line only -------------------------------------------------


def test_trust_in_a_config_file_is_an_error_and_runs_nothing(tmp_path):
    """A cloned repository's pyproject.toml with ``trust = true`` must not unpickle anything:
    0.7.0 ran the payload; now the key is an error naming the file, the payload never runs."""
    marker = tmp_path / "pwned"
    weights = {k: v.contiguous() for k, v in small_model().state_dict().items()}
    torch.save({**weights, "evil": RunsShell(marker)}, tmp_path / "model.pt")
    (tmp_path / "pyproject.toml").write_text("[tool.initdoctor]\ntrust = true\n")
    for command in (["inspect", "model.pt"], ["check", "model.pt"], ["fix", "model.pt", "--dry-run"]):
        line = assert_one_line_error(cli(*command, cwd=tmp_path))
        assert not marker.exists(), f"{command}: the pickle's payload ran"
        assert str(tmp_path / "pyproject.toml") in line and "trust" in line and "command line only" in line
    # --trust on the command line still works (and the file must not hold the key at all)
    (tmp_path / "pyproject.toml").write_text("[tool.initdoctor]\nwarn-threshold = 1.5\n")
    proc = cli("inspect", "model.pt", "--trust", "--no-probe", cwd=tmp_path)
    assert marker.exists(), proc.stderr  # the user asked for it: the pickle was loaded
    os.unlink(marker)
