"""Regression tests for the hostile-input review (issue 13), torch checkpoints: shared (tied)
weights (item 3), memory bounded by the bytes a checkpoint stores (item 6), and one accurate line
for the torch files 0.7.0 called "internal error" or "truncated or corrupt" (Medium/Low lists).
Each test says what 0.7.0 did; real files in tmp dirs, the CLI in a subprocess."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_hostile_inputs import assert_one_line_error

torch = pytest.importorskip("torch")

#: Kaiming std of a hidden ReLU layer with fan_in 64
TARGET = math.sqrt(2) / 8


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def tied_state() -> dict:
    """``a`` and ``b`` are one tensor (std 0.5, 4× too wide); ``c`` the output layer."""
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(64, 64, generator=gen) * 0.5
    return {"a.weight": shared, "b.weight": shared, "c.weight": torch.randn(10, 64, generator=gen) * 0.1}


def assert_fixed_once(path: Path) -> None:
    assert zipfile.ZipFile(path).testzip() is None
    state = torch.load(path, weights_only=True)
    assert state["a.weight"].untyped_storage().data_ptr() == state["b.weight"].untyped_storage().data_ptr()
    assert state["a.weight"].std(correction=0).item() == pytest.approx(TARGET, rel=1e-4)


# --- 3. shared (tied) weights: judged once, fixed once, written once ----------------------------


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_tied_weights_in_a_state_dict_are_fixed_once(tmp_path, layout):
    """0.7.0: the zip (streamed) output was not a zip ("truncated or corrupt zip archive", and
    ``--in-place`` left that as the model); the legacy file's shared tensor was scaled once per
    name (std 0.044 instead of 0.177). Now: one layer judged (a note names the tie), the output
    a valid zip that torch loads, ``a`` and ``b`` still one storage, std at the target once."""
    torch.save(tied_state(), tmp_path / "model.pt", _use_new_zipfile_serialization=layout == "zip")
    report = cli("inspect", "model.pt", "--no-probe", "--format", "json", cwd=tmp_path).stdout
    assert '"b.weight shares its storage with a.weight (tied): judged and fixed once, as that"' in report
    result = cli("fix", "model.pt", "-o", "out.pt", "--no-probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_fixed_once(tmp_path / "out.pt")
    result = cli("fix", "model.pt", "--in-place", "--no-probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_fixed_once(tmp_path / "model.pt")


FACTORY = """
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(64, 64, bias=False)
        self.b = nn.Linear(64, 64, bias=False)
        self.c = nn.Linear(64, 10, bias=False)
        with torch.no_grad():
            self.a.weight.normal_(0, 0.5)
        self.b.weight = nn.Parameter(self.a.weight.data)  # another Parameter, the same storage

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 64)
        self.a = nn.Linear(64, 64)
        self.head = nn.Linear(64, 100, bias=False)
        self.head.weight = self.emb.weight  # tied, as transformers' tie_weights does
"""


def test_tied_weights_of_a_factory_are_fixed_once(tmp_path):
    """0.7.0 deduplicated tied layers by Parameter object only: two Parameters over one storage
    were both judged and the tensor scaled twice (std 0.087 instead of 0.177); a safetensors file
    saved without the tied copy (``save_model``, ``save_pretrained``) was refused by ``--weights``
    ("missing head.weight")."""
    from safetensors.torch import save_model

    (tmp_path / "tiedmodels.py").write_text(FACTORY)
    result = cli("fix", "tiedmodels:Tied", "-o", "out.pt", "--no-probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    assert state["a.weight"].untyped_storage().data_ptr() == state["b.weight"].untyped_storage().data_ptr()
    assert state["a.weight"].std(correction=0).item() == pytest.approx(TARGET, rel=1e-4)

    sys.path.insert(0, str(tmp_path))
    try:
        import tiedmodels  # type: ignore[import-not-found]  # written above
    finally:
        sys.path.remove(str(tmp_path))
    save_model(tiedmodels.LM(), str(tmp_path / "lm.safetensors"))  # drops head.weight
    result = cli("inspect", "tiedmodels:LM", "--weights", "lm.safetensors", "--no-probe", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert "missing" not in result.stderr


# --- 6. memory bounded by the bytes a checkpoint stores ------------------------------------------

BUDGET = "a checkpoint may expand by at most 268435456 bytes (256 MiB) beyond what it stores"
PEAK = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "initdoctor", *sys.argv[1:]], capture_output=True, text=True)
sys.stdout.write(proc.stdout)
sys.stderr.write(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)
sys.exit(proc.returncode)
"""


def peak_mib(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI under a fresh parent; its peak RSS in MiB (the last line of stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    *lines, peak = result.stderr.strip().splitlines()
    result.stderr = "\n".join(lines) + "\n"
    return result, int(peak)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_broadcast_view_is_refused_past_the_budget_in_bounded_memory(tmp_path, layout):
    """A 16 KiB row saved as a stride-0 view declared 65536×4096 (a 20 KB file): 0.7.0 reduced it
    through a 1 GiB copy (1263 MiB peak) and ``fix`` reached 4.4 GB before an internal error.
    Now one line naming the tensor and the sizes, under 600 MiB (about 232 of it import torch)."""
    row = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.02
    torch.save(
        {"fc.weight": row.expand(65536, 4096)},
        tmp_path / "m.pt",
        _use_new_zipfile_serialization=layout == "zip",
    )
    want = (
        f"initdoctor: error: m.pt: tensor 'fc.weight' (65536×4096 float32, strides (0, 1)) repeats its 16384 "
        f"stored bytes as 1073741824 bytes; {BUDGET} (repeating views and compressed records together)"
    )
    for command in (
        ["inspect", "m.pt", "--no-probe"],
        ["fix", "m.pt", "-o", "out.pt", "--all", "--no-probe"],
    ):
        result, peak = peak_mib(*command, cwd=tmp_path)
        assert assert_one_line_error(result) == want
        assert peak < 600, (command, peak)
    assert not (tmp_path / "out.pt").exists()


def test_a_deflated_record_is_refused_past_the_budget_in_bounded_memory(tmp_path):
    """1 GiB of zeros in a deflated zip record (a 1 MB file): 0.7.0 unpacked it whole (about
    1.3 GB peak). Now one line naming the tensor, the record's two sizes and the budget."""
    torch.save({"fc.weight": torch.zeros(1 << 14, 1 << 14)}, tmp_path / "big.pt")
    with (
        zipfile.ZipFile(tmp_path / "big.pt") as src,
        zipfile.ZipFile(tmp_path / "m.pt", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:
        packed = next(i.compress_size for i in archive.infolist() if i.filename.endswith("/data/0"))
    want = (
        f"initdoctor: error: m.pt: tensor 'fc.weight' is a compressed record of {packed} bytes that unpacks "
        f"to 1073741824 bytes; {BUDGET} (repeating views and compressed records together)"
    )
    for command in (
        ["inspect", "m.pt", "--no-probe"],
        ["fix", "m.pt", "-o", "out.pt", "--all", "--no-probe"],
    ):
        result, peak = peak_mib(*command, cwd=tmp_path)
        assert assert_one_line_error(result) == want
        assert peak < 600, (command, peak)


def test_a_broadcast_within_the_budget_is_read_and_rescaled_once_per_stored_value(tmp_path):
    """Within the budget a broadcast is judged like its values and rescaled in place (each
    stored value once); redrawing it value by value is refused in one line. 0.7.0: internal
    error (torch refuses to write a stride-0 view)."""
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(64, generator=gen) * 0.5
    torch.save(
        {"a.weight": row.expand(64, 64), "b.weight": torch.randn(10, 64, generator=gen) * 0.1},
        tmp_path / "m.pt",
    )
    result = cli("fix", "m.pt", "-o", "out.pt", "--no-probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fixed = torch.load(tmp_path / "out.pt", weights_only=True)["a.weight"]
    assert fixed.stride() == (0, 1)
    assert fixed.std(correction=0).item() == pytest.approx(TARGET, rel=1e-4)
    line = assert_one_line_error(
        cli("fix", "m.pt", "-o", "out2.pt", "--method", "reinit", "--no-probe", cwd=tmp_path)
    )
    assert line == (
        "initdoctor: error: tensor 'a.weight' is a view whose positions share stored values (a broadcast "
        "or overlapping strides): it cannot be given values one by one"
    )


# --- Medium/Low: torch files that got "internal error" or "truncated or corrupt" ----------------


def test_each_odd_torch_file_gets_its_own_line(tmp_path):
    """0.7.0: a plain pickle, a legacy-format float8 checkpoint and a tar archive were all
    "truncated or corrupt"; a non-string key was an internal error (AttributeError)."""
    import io
    import tarfile

    weights = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    with open(tmp_path / "raw.bin", "wb") as fh:
        pickle.dump({"fc.weight": weights.numpy()}, fh)
    torch.save(
        {"fc.weight": weights.to(torch.float8_e4m3fn)},
        tmp_path / "f8.pt",
        _use_new_zipfile_serialization=False,
    )
    with tarfile.open(tmp_path / "old.pt", "w") as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"\x80\x02"))
    torch.save({1: weights, "fc.weight": weights}, tmp_path / "intkey.pt")
    expected = {
        "raw.bin": "raw.bin: a Python pickle, not a torch.save checkpoint (it does not start with torch's "
        "magic number); save the weights with torch.save or as safetensors",
        "f8.pt": "f8.pt: a legacy-format (non-zip) checkpoint holding float8 tensors, which torch cannot "
        "load (its legacy format has no float8 storages); re-save it with torch.save's default zip format",
        "old.pt": "old.pt: a tar archive: torch's oldest checkpoint format, which only the full unpickler "
        "reads (it can run code from the file); re-run with --trust only if you trust where the file "
        "comes from, or re-save it with a current torch.save",
        "intkey.pt": "intkey.pt: the state_dict has a tensor under the key 1 (int, not a string): not a "
        "state_dict initdoctor can read",
    }
    for name, message in expected.items():
        assert (
            assert_one_line_error(cli("inspect", name, "--no-probe", cwd=tmp_path))
            == f"initdoctor: error: {message}"
        )


def test_float8_sparse_and_meta_tensors_are_reported_not_internal_errors(tmp_path):
    """0.7.0: internal error for each (numpy has no float8; a sparse tensor has no reshape; a meta
    tensor has no data). Now float8 weights are skipped as quantized (README: integer/quantized
    weights are not judged) and fix leaves them bit for bit; sparse and meta tensors are noted."""
    import json

    weights = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    f8 = weights.to(torch.float8_e4m3fn)
    torch.save({"fc.weight": f8, "out.weight": weights}, tmp_path / "f8.pt")
    report = json.loads(cli("inspect", "f8.pt", "--no-probe", "--format", "json", cwd=tmp_path).stdout)
    fc = next(layer for layer in report["layers"] if layer["name"] == "fc")
    assert (fc["status"], fc["dtype"]) == ("skip", "float8_e4m3fn")
    result = cli("fix", "f8.pt", "-o", "out.pt", "--all", "--no-probe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert torch.equal(
        torch.load(tmp_path / "out.pt", weights_only=True)["fc.weight"].view(torch.uint8),
        f8.view(torch.uint8),
    )

    torch.save(
        {
            "fc.weight": weights.to_sparse(),
            "emb.weight": torch.empty(8, 4, device="meta"),
            "out.weight": weights,
        },
        tmp_path / "odd.pt",
    )
    report = json.loads(cli("inspect", "odd.pt", "--no-probe", "--format", "json", cwd=tmp_path).stdout)
    assert [layer["name"] for layer in report["layers"]] == ["out"]
    assert "fc.weight: a sparse_coo tensor, not read" in report["notes"]
    assert "emb.weight: a meta-device tensor (no data), not read" in report["notes"]
