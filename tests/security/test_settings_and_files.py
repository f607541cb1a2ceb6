"""Issue 13, Medium/Low: settings and config files that gave "internal error", an unrelated broken
pyproject.toml that broke every command, outputs made 0600, a SIGTERM that left a model-sized
temp file, ``--in-place -o`` ignoring ``-o``. Each was seen on 0.7.0."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.test_hostile_inputs import assert_one_line_error, small_model


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "seed must be an integer in [0, 2^63), got -1"),
        (["--timeout", "inf"], "timeout must be finite seconds ≥ 0 (0: no limit), got inf"),
        (["--timeout", "nan"], "timeout must be finite seconds ≥ 0 (0: no limit), got nan"),
        (["--timeout", "-1"], "timeout must be finite seconds ≥ 0 (0: no limit), got -1.0"),
        (["--vocab-size", "-3"], "vocab size must be at least 1, got -3"),
        (["--max-input-mib", "nan"], "max_input_mib must be a finite number > 0, got nan"),
        (["--negative-slope", "nan"], "negative_slope must be a finite number, got nan"),
    ],
)
def test_out_of_range_settings_are_one_clear_line(args, message):
    """0.7.0: ``--seed -1`` and ``--timeout inf`` gave "internal error"; ``--timeout nan|-1`` and
    ``--vocab-size -3`` were accepted silently."""
    line = assert_one_line_error(cli("inspect", "examples.models:kaiming_mlp", "--no-progress", *args))
    assert line == f"initdoctor: error: {message}"


def test_fix_fail_on_never_and_in_place_with_output(tmp_path):
    torch.save(small_model().state_dict(), tmp_path / "m.pt")
    line = assert_one_line_error(cli("fix", str(tmp_path / "m.pt"), "--select-from", "never", "--dry-run"))
    assert line == "initdoctor: error: --select-from never would fix nothing; use warn, error or --all"
    line = assert_one_line_error(
        cli("fix", str(tmp_path / "m.pt"), "--in-place", "-o", str(tmp_path / "x.pt"))
    )
    assert line == "initdoctor: error: --in-place writes over MODEL (keeping MODEL.bak); it takes no --output"
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "m.pt.bak").exists()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("ignore = [1, 2]", "ignore: every entry must be a string (a code or a glob)"),
        ('negative-slope = "a"', "negative-slope has the wrong type (str)"),
        ('overrides = { "fc*" = { negative-slope = "a" } }', "'fc*': negative-slope must be a number"),
        ("input-shape = [true]", 'input-shape: True is not a shape like "8,3,32,32"'),
    ],
)
def test_bad_config_values_name_the_file_and_key(tmp_path, table, message):
    torch.save(small_model().state_dict(), tmp_path / "m.pt")
    (tmp_path / "pyproject.toml").write_text(f"[tool.initdoctor]\n{table}\n")
    line = assert_one_line_error(cli("inspect", "m.pt", cwd=tmp_path))
    assert line.startswith(f"initdoctor: error: {tmp_path / 'pyproject.toml'}: ") and line.endswith(message)


def test_config_files_that_are_not_ours_are_skipped_and_ours_must_parse(tmp_path):
    """0.7.0: an unrelated broken (or non-UTF-8) pyproject.toml up the tree, or ``tool = 5``,
    broke every command. Now a file without ``[tool.initdoctor]`` is skipped; ours must parse."""
    torch.save(small_model().state_dict(), tmp_path / "m.pt")
    for content in (b"[project\nname = ", b"tool = 5\n", b"[project]\nname = '\xff\xfe'\n"):
        (tmp_path / "pyproject.toml").write_bytes(content)
        proc = cli("inspect", "m.pt", "-f", "json", cwd=tmp_path)
        assert proc.returncode in (0, 1) and proc.stderr == "", (content, proc.stderr)
    (tmp_path / "pyproject.toml").write_bytes(b"[tool.initdoctor]\nwarn-threshold = \n")
    line = assert_one_line_error(cli("inspect", "m.pt", cwd=tmp_path))
    assert "pyproject.toml: cannot read (" in line
    (tmp_path / "pyproject.toml").write_bytes(b"[tool.initdoctor]\nignore = ['\xff']\n")
    line = assert_one_line_error(cli("inspect", "m.pt", cwd=tmp_path))
    assert line.endswith("pyproject.toml: cannot read (not UTF-8)")
    (tmp_path / "pyproject.toml").write_text("[tool]\ninitdoctor = 5\n")
    line = assert_one_line_error(cli("inspect", "m.pt", cwd=tmp_path))
    assert line.endswith("[tool.initdoctor] must be a table, got int")


def test_outputs_get_the_usual_permissions_and_in_place_keeps_the_models(tmp_path):
    """0.7.0 wrote every output 0600 (mkstemp's mode) and turned a 0644 model into 0600 with
    ``--in-place``. Now a new output gets 0666 less the umask; ``--in-place`` keeps MODEL's mode."""
    from examples.models import plain_mlp

    model = tmp_path / "m.pt"
    torch.save(plain_mlp(depth=4, width=32, init="xavier").state_dict(), model)
    os.chmod(model, 0o640)
    umask = os.umask(0o022)
    try:
        assert cli("fix", str(model), "-o", str(tmp_path / "out.pt"), "--no-probe").returncode in (0, 1)
        assert cli("inspect", str(model), "-o", str(tmp_path / "r.txt")).returncode in (0, 1)
        assert cli("fix", str(model), "--in-place", "--no-probe").returncode in (0, 1)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "r.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(model.stat().st_mode) == 0o640


def test_sigterm_during_a_fix_leaves_no_temp_file(tmp_path):
    """0.7.0 cleaned up after Ctrl-C but a SIGTERM (or SIGHUP) left a model-sized ``.OUT.*.tmp``."""
    from examples.models import plain_mlp

    torch.save(plain_mlp(depth=12, width=1024, init="xavier").state_dict(), tmp_path / "m.pt")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        out = tmp_path / f"out{sig}.pt"
        command = [sys.executable, "-m", "initdoctor", "fix", "m.pt", "--all", "-o", out.name, "--no-probe"]
        proc = subprocess.Popen([*command, "--no-progress"], cwd=tmp_path, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline and not any(tmp_path.glob(f".{out.name}.*")) and proc.poll() is None
        ):
            time.sleep(0.005)
        proc.send_signal(sig)
        proc.wait(60)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert leftovers == [], (sig, leftovers)
        assert proc.returncode == 128 + sig, proc.returncode  # stopped mid-write, cleaned up


def test_a_factory_that_exits_or_warns(tmp_path):
    """0.7.0: a factory calling ``sys.exit(0)`` made initdoctor exit 0 with no output, and library
    warnings printed lines of noise. Now the exit is an error naming it, and warnings appear only
    under ``--debug``."""
    (tmp_path / "nets.py").write_text(
        "import sys, warnings\nfrom torch import nn\n"
        "def exits():\n    sys.exit(0)\n"
        "class Noisy(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(8, 8)\n"
        "    def forward(self, x):\n        warnings.warn('something deprecated', UserWarning)\n"
        "        return self.fc(x)\n"
        "def noisy():\n    return Noisy()\n"
    )
    line = assert_one_line_error(cli("inspect", "nets:exits", cwd=tmp_path))
    assert line == "initdoctor: error: the model's code called sys.exit(0) while it was loaded or run"
    quiet = cli("inspect", "nets:noisy", "--no-progress", "-f", "json", cwd=tmp_path)
    assert quiet.returncode in (0, 1) and quiet.stderr == ""
    loud = cli("inspect", "nets:noisy", "--no-progress", "-f", "json", "--debug", cwd=tmp_path)
    assert "something deprecated" in loud.stderr
