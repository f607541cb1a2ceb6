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


# --- 10. a FIFO as MODEL (or as external data) is refused before it is opened --------------------


def test_fifo_as_model_or_external_data_is_refused_at_once(tmp_path):
    """0.7.0 opened the FIFO and blocked forever; now: one line, exit 2, in well under the
    subprocess timeout (no writer ever opens the FIFO)."""
    import onnx

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    line = assert_one_line_error(cli("inspect", str(fifo), cwd=tmp_path))
    assert (
        line
        == f"initdoctor: error: {fifo}: not a regular file (a FIFO, socket or device); point at a model file"
    )
    # an ONNX graph whose external data file is a FIFO
    model = small_model()
    torch.onnx.export(model, (torch.randn(1, 8),), str(tmp_path / "plain.onnx"), dynamo=False)
    proto = onnx.load(str(tmp_path / "plain.onnx"))
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(proto, str(folder / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)  # fmt: skip
    (folder / "m.onnx.data").unlink()
    os.mkfifo(folder / "m.onnx.data")
    line = assert_one_line_error(cli("inspect", str(folder / "m.onnx"), "--no-probe", cwd=tmp_path))
    assert "is not a regular file" in line and "m.onnx.data" in line


# --- 2. fix --in-place on ONNX with external data backs up every file ----------------------------


def _external_onnx(folder: Path) -> Path:
    import onnx

    from examples.models import plain_mlp

    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(plain_mlp(depth=4, width=32, init="xavier"), (torch.randn(1, 64),),
                      str(folder / "plain.onnx"), dynamo=False)  # fmt: skip
    proto = onnx.load(str(folder / "plain.onnx"))
    (folder / "plain.onnx").unlink()
    onnx.save_model(
        proto,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )  # the exporters' default name
    return folder / "model.onnx"


def test_in_place_onnx_with_external_data_keeps_the_original_weights(tmp_path):
    """0.7.0 overwrote model.onnx.data and backed up only the graph. Now both files get a .bak,
    and restoring the .bak files gives the original bytes (and onnxruntime runs them)."""
    model = _external_onnx(tmp_path / "m")
    data = model.with_name("model.onnx.data")
    original = {model: model.read_bytes(), data: data.read_bytes()}
    proc = cli("fix", str(model), "--in-place", "--no-probe", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    # the fixed weights went to a name the old graph did not use, then the graph was replaced
    # (the pair is committed through the graph: tests/security/test_onnx_and_safetensors_files.py)
    assert model.with_name("model.onnx.initdoctor.data").stat().st_size == len(original[data])
    assert not data.exists()
    for path, content in original.items():
        assert path.with_name(path.name + ".bak").read_bytes() == content, path
        os.replace(path.with_name(path.name + ".bak"), path)  # the restore
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model))
    assert session.run(None, {session.get_inputs()[0].name: torch.ones(1, 64).numpy()})[0].shape == (1, 10)
    assert {p: p.read_bytes() for p in original} == original
    # a second --in-place refuses before touching anything when one backup already exists
    data.with_name("model.onnx.data.bak").write_bytes(b"old")
    line = assert_one_line_error(cli("fix", str(model), "--in-place", "--no-probe", cwd=tmp_path))
    assert "model.onnx.data.bak: a backup already exists" in line
    assert not model.with_name("model.onnx.bak").exists() and model.read_bytes() == original[model]


# --- 4. -o on something that is not a regular file; symlinks refused -----------------------------


def test_output_that_is_not_a_regular_file_or_is_a_link_is_refused(tmp_path):
    """0.7.0 replaced a FIFO (or the null device, as root) given as -o by a regular file."""
    torch.save(small_model().state_dict(), tmp_path / "m.pt")
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    target = tmp_path / "elsewhere.pt"
    target.write_bytes(b"keep")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    for command in (["fix", "m.pt", "--all", "-o"], ["inspect", "m.pt", "-o"], ["inspect", "m.pt", "--plot"]):
        line = assert_one_line_error(cli(*command, str(fifo), cwd=tmp_path))
        want = "is not a regular file (a FIFO, socket or device); refusing to replace it with the output"
        assert line.endswith(want), line
        assert fifo.exists() and not fifo.is_file()
        line = assert_one_line_error(cli(*command, str(link), cwd=tmp_path))
        assert "is a symbolic link" in line and link.is_symlink() and target.read_bytes() == b"keep"
    if os.geteuid() == 0:  # only root can write to a device node at all
        line = assert_one_line_error(cli("fix", "m.pt", "--all", "-o", os.devnull, cwd=tmp_path))
        assert "not a regular file" in line and Path(os.devnull).is_char_device()


# --- 5. an output that is an input is refused (same inode) --------------------------------------


def test_output_that_is_an_input_is_refused(tmp_path):
    """0.7.0: ``fix MODEL -o MODEL``, ``inspect MODEL -o MODEL`` and ``--plot MODEL`` overwrote
    the model without a backup. Compared by inode: a hard link or another spelling is caught too."""
    torch.save(small_model().state_dict(), tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()
    os.link(tmp_path / "m.pt", tmp_path / "hard.pt")
    for command in (["fix", "m.pt", "--all", "-o"], ["inspect", "m.pt", "-o"], ["inspect", "m.pt", "--plot"]):
        for out in ("m.pt", "./m.pt", str(tmp_path / "hard.pt")):
            line = assert_one_line_error(cli(*command, out, cwd=tmp_path))
            assert "is an input of this run" in line, line
    model = _external_onnx(tmp_path / "e")  # its data file is an input too
    line = assert_one_line_error(cli("inspect", str(model), "-o", str(model.with_name("model.onnx.data")),
                                     cwd=tmp_path))  # fmt: skip
    assert "is an input of this run" in line
    assert (tmp_path / "m.pt").read_bytes() == before
