"""Hostile inputs: files that would run code, and files that are truncated, empty or garbage.

The cases run the real CLI in a subprocess on a real file in ``tmp_path`` and check the contract
of ``initdoctor.cli``: exit code 2, exactly one line on stderr starting with
``initdoctor: error:``, nothing on stdout, no traceback, no "internal error". Files that execute
code when loaded must not be loaded without ``--trust``; the pickles here carry a payload that
creates a marker file, and the marker must not appear.

Sweeps over every truncation point, and a few cases that need no new CLI behaviour, call the
loaders in-process instead (the CLI turns any InputError into that one line; a subprocess that
imports torch costs ~2 s).
"""

from __future__ import annotations

import json
import os
import pickletools
import random
import shlex
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
safetensors_torch = pytest.importorskip("safetensors.torch")

from initdoctor.errors import InputError, UntrustedFormatError  # noqa: E402
from initdoctor.formats import describe  # noqa: E402

nn = torch.nn


# --- helpers ---------------------------------------------------------------------------------


def run_cli(path: Path | str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "initdoctor", "inspect", str(path), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI failed cleanly on bad input; returns the single error line."""
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both
    assert result.returncode == 2, both
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("initdoctor: error:"), line
    assert "internal error" not in line, line  # an exception the loaders did not turn into InputError
    assert result.stdout.strip() == "", result.stdout
    return line


def truncate_copy(src: Path, dst: Path, cut: int) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[:cut])
    return dst


def zip_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info.filename)) for info in archive.infolist()]


def write_zip(path: Path, members: list[tuple[str, bytes]], suffix: str, cut: int | None = None) -> Path:
    """A well-formed zip of ``members`` whose member ending in ``suffix`` keeps ``cut`` bytes
    (default: half)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            if name.endswith(suffix):
                data = data[: len(data) // 2 if cut is None else cut]
            archive.writestr(name, data)
    return path


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class RunsShell:
    """Unpickling this runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class RunsExec:
    """Unpickling this runs Python source through ``builtins.exec`` (no shell needed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# --- artifacts built once per module ---------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """One small model saved in every format (and the pieces needed to make bad variants)."""
    root = tmp_path_factory.mktemp("artifacts")
    model = small_model().eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    x = torch.randn(2, 8)
    out: dict[str, Path] = {}

    out["state_dict_zip"] = root / "state_dict.pt"
    torch.save(state, out["state_dict_zip"])
    out["state_dict_legacy"] = root / "state_dict_legacy.pt"
    torch.save(state, out["state_dict_legacy"], _use_new_zipfile_serialization=False)
    out["full_module"] = root / "full_module.pt"
    torch.save(model, out["full_module"])
    out["full_module_legacy"] = root / "full_module_legacy.pt"
    torch.save(model, out["full_module_legacy"], _use_new_zipfile_serialization=False)

    out["safetensors"] = root / "model.safetensors"
    safetensors_torch.save_file(state, str(out["safetensors"]))

    shard_dir = root / "sharded"
    shard_dir.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for prefix, name in zip(("0.", "2."), names, strict=False):
        shard = {k: v for k, v in state.items() if k.startswith(prefix)}
        safetensors_torch.save_file(shard, str(shard_dir / name))
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": {k: names[0] if k.startswith("0.") else names[1] for k in state},
    }
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    out["sharded_dir"] = shard_dir

    out["torchscript"] = root / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(out["torchscript"]))
    out["export"] = root / "exported.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(out["export"]))

    out["onnx"] = root / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), str(out["onnx"]), dynamo=False)
    ext_dir = root / "onnx_external"
    ext_dir.mkdir()
    out["onnx_external"] = ext_dir / "model.onnx"
    onnx.save_model(
        onnx.load(str(out["onnx"])),
        str(out["onnx_external"]),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (ext_dir / "weights.bin").stat().st_size > 0
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_artifacts_are_valid(artifacts, tmp_path):
    """The untouched files load, so every failure below is due to the damage done to them."""
    for key in ("state_dict_zip", "state_dict_legacy", "safetensors", "onnx", "onnx_external"):
        assert [layer.fan_in for layer in describe(artifacts[key]).layers] == [8, 16], key
    assert len(describe(artifacts["sharded_dir"] / "model.safetensors.index.json").layers) == 2
    assert len(describe(artifacts["torchscript"], trust=True).layers) == 2
    assert len(describe(artifacts["export"], trust=True).layers) == 2


# --- A. formats that run code are refused without --trust -----------------------------------


@pytest.mark.parametrize("container", ["zip-state-dict", "legacy-pickle", "lightning-ckpt"])
def test_malicious_pickle_is_not_executed_without_trust(tmp_path, container):
    marker = tmp_path / "pwned"
    weights = {k: v.contiguous() for k, v in small_model().state_dict().items()}
    if container == "zip-state-dict":
        path = tmp_path / "evil.pt"
        torch.save({**weights, "evil": RunsShell(marker)}, path)
    elif container == "legacy-pickle":
        path = tmp_path / "evil_legacy.pt"
        torch.save({**weights, "evil": RunsShell(marker)}, path, _use_new_zipfile_serialization=False)
    else:  # a PyTorch Lightning checkpoint: tensors under "state_dict", objects beside them
        path = tmp_path / "evil.ckpt"
        torch.save({"state_dict": weights, "epoch": 3, "callbacks": RunsExec(marker)}, path)

    # The payload is live: a plain torch.load runs it (in this process, on purpose).
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    line = assert_one_line_error(run_cli(path, cwd=tmp_path))
    assert not marker.exists(), "the pickle's payload ran"
    assert "--trust" in line
    assert "pickled Python objects" in line


def test_pickled_full_module_needs_trust(artifacts, tmp_path):
    line = assert_one_line_error(run_cli(artifacts["full_module"], cwd=tmp_path))
    assert "--trust" in line and "nn.Module" in line


def test_torchscript_needs_trust(artifacts, tmp_path):
    line = assert_one_line_error(run_cli(artifacts["torchscript"], cwd=tmp_path))
    assert "--trust" in line and "TorchScript" in line


def test_torch_export_needs_trust(artifacts, tmp_path):
    line = assert_one_line_error(run_cli(artifacts["export"], cwd=tmp_path))
    assert "--trust" in line and "torch.export" in line


def test_pickled_full_module_loads_with_trust(artifacts, tmp_path):
    result = run_cli(artifacts["full_module"], "--trust", "--format", "json", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["format"] == "torch-module"
    assert report["model"]["parameters"] == 8 * 16 + 16 + 16 * 4 + 4
    rows = [(r["name"], r["kind"], r["shape"], r["fan_in"], r["fan_out"]) for r in report["layers"]]
    assert rows == [("0", "linear", [16, 8], 8, 16), ("2", "linear", [4, 16], 16, 4)]


# --- B. truncated files of each format -------------------------------------------------------

CUTS = ("10", "half", "last")  # a few bytes in, half way, one byte short

TRUNCATABLE = {
    # artifact key: (extra CLI args, cut points). A legacy pickle is read by torch (a 2 s import
    # per run), so two points here; test_every_truncation_is_an_input_error covers every prefix.
    "state_dict_zip": ((), CUTS),
    "state_dict_legacy": ((), ("half", "last")),
    "safetensors": ((), CUTS),
    "onnx": ((), CUTS),
    "torchscript": (("--trust",), CUTS),
    "export": (("--trust",), CUTS),
}


def _cut(size: int, where: str) -> int:
    return {"10": 10, "half": size // 2, "last": size - 1}[where]


@pytest.mark.parametrize(
    "key, where", [(key, where) for key, (_, points) in TRUNCATABLE.items() for where in points]
)
def test_truncated_file(artifacts, tmp_path, key, where):
    src = artifacts[key]
    path = truncate_copy(src, tmp_path / src.name, _cut(src.stat().st_size, where))
    line = assert_one_line_error(run_cli(path, *TRUNCATABLE[key][0], cwd=tmp_path))
    assert src.name in line


@pytest.mark.parametrize("point_at, where", [("index", "half"), ("folder", "last")])
def test_truncated_safetensors_shard(artifacts, tmp_path, point_at, where):
    folder = copy_tree(artifacts["sharded_dir"], tmp_path / "sharded")
    shard = folder / "model-00002-of-00002.safetensors"
    truncate_copy(shard, shard, _cut(shard.stat().st_size, where))
    target = folder / "model.safetensors.index.json" if point_at == "index" else folder
    line = assert_one_line_error(run_cli(target, cwd=tmp_path))
    assert shard.name in line


def test_truncated_safetensors_index(artifacts, tmp_path):
    folder = copy_tree(artifacts["sharded_dir"], tmp_path / "sharded")
    index = folder / "model.safetensors.index.json"
    truncate_copy(index, index, index.stat().st_size // 2)
    assert "not a valid safetensors index" in assert_one_line_error(run_cli(index, cwd=tmp_path))


def test_safetensors_index_with_missing_or_outside_shard(artifacts, tmp_path):
    folder = copy_tree(artifacts["sharded_dir"], tmp_path / "sharded")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    (tmp_path / "outside.safetensors").write_bytes((folder / "model-00002-of-00002.safetensors").read_bytes())
    data["weight_map"] = {
        k: "../outside.safetensors" if k.startswith("2.") else v for k, v in data["weight_map"].items()
    }
    index.write_text(json.dumps(data))
    assert "outside" in assert_one_line_error(run_cli(index, cwd=tmp_path))
    (folder / "model-00002-of-00002.safetensors").unlink()
    data["weight_map"] = json.loads((artifacts["sharded_dir"] / index.name).read_text())["weight_map"]
    index.write_text(json.dumps(data))
    assert "missing" in assert_one_line_error(run_cli(index, cwd=tmp_path))


@pytest.mark.parametrize("where", CUTS)
def test_onnx_external_data_truncated(artifacts, tmp_path, where):
    folder = copy_tree(artifacts["onnx_external"].parent, tmp_path / "onnx")
    weights = folder / "weights.bin"
    truncate_copy(weights, weights, _cut(weights.stat().st_size, where))
    line = assert_one_line_error(run_cli(folder / "model.onnx", cwd=tmp_path))
    assert "truncated" in line and "weights.bin" in line


def test_onnx_external_data_missing(artifacts, tmp_path):
    folder = copy_tree(artifacts["onnx_external"].parent, tmp_path / "onnx")
    (folder / "weights.bin").unlink()
    assert "missing" in assert_one_line_error(run_cli(folder / "model.onnx", cwd=tmp_path))


@pytest.mark.parametrize("location", ["relative", "absolute", "symlink"])
def test_onnx_external_data_outside_the_model_folder_is_refused(artifacts, tmp_path, location):
    folder = copy_tree(artifacts["onnx_external"].parent, tmp_path / "onnx")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((folder / "weights.bin").read_bytes())  # a real, complete file: refused anyway
    if location == "relative":
        new_location = "../outside.bin"
    elif location == "absolute":
        new_location = str(outside)
    else:
        (folder / "link.bin").symlink_to(outside)
        new_location = "link.bin"
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = new_location
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    line = assert_one_line_error(run_cli(folder / "model.onnx", cwd=tmp_path))
    assert "outside" in line


def test_every_cut_of_the_pickle_inside_an_intact_zip(artifacts, tmp_path):
    """The zip is well formed but its data.pkl is cut short. This raised IndexError or
    struct.error (the CLI printed "internal error"), or, cut inside a GLOBAL opcode, claimed the
    file was untrusted. In-process, every cut: the CLI maps an InputError to its one line."""
    members = zip_members(artifacts["state_dict_zip"])
    size = len(next(data for name, data in members if name.endswith("data.pkl")))
    path = tmp_path / "inner.pt"
    for cut in range(size):
        write_zip(path, members, "data.pkl", cut)
        with pytest.raises(InputError) as caught:
            describe(path)
        assert not isinstance(caught.value, UntrustedFormatError), (cut, str(caught.value))
        assert "truncated or corrupt" in str(caught.value), (cut, str(caught.value))


def test_export_archive_with_a_short_weight_record_trusted(artifacts, tmp_path):
    """torch.export.load logs a traceback before failing; it must not reach stderr."""
    path = write_zip(tmp_path / "short.pt2", zip_members(artifacts["export"]), "weights/weight_0")
    line = assert_one_line_error(run_cli(path, "--trust", cwd=tmp_path))
    assert "torch.export" in line


# --- empty, missing, directories, garbage -----------------------------------------------------


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors", "model.onnx", "model.pt2", "model"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert "empty" in assert_one_line_error(run_cli(path, cwd=tmp_path))


def test_directory(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    assert "directory" in assert_one_line_error(run_cli(folder, cwd=tmp_path))


def test_nonexistent_path(tmp_path):
    assert "no such file" in assert_one_line_error(run_cli(tmp_path / "nope.pt", cwd=tmp_path))


RANDOM = random.Random(20150206).randbytes(4096)


@pytest.mark.parametrize(
    "name, head",
    [
        ("noise.pt", b"\x13"),  # no zip, no pickle header
        ("noise.pt", b"\x80"),  # a pickle PROTO opcode followed by garbage (legacy torch.save path)
        ("noise.pt", b"PK\x03\x04"),  # a zip signature followed by garbage
        ("noise.safetensors", b"\x13"),
        ("noise.onnx", b"\x13"),
        ("noise.weights", b"\x13"),  # unknown extension
        ("noise", b"\x13"),
    ],
    ids=["pt", "pt-pickle-header", "pt-zip-header", "safetensors", "onnx", "unknown-ext", "no-ext"],
)
def test_random_bytes(tmp_path, name, head):
    path = tmp_path / name
    path.write_bytes(head + RANDOM[len(head) :])
    line = assert_one_line_error(run_cli(path, cwd=tmp_path))
    assert "--trust" not in line  # garbage is corrupt, not "untrusted"


# --- every truncation point, in-process -------------------------------------------------------


def _sweep(src: Path, dst: Path, cut_points) -> dict[int, object]:
    """describe() prefixes of ``src``; each must raise InputError, but not UntrustedFormatError.
    Returns cut → description for the prefixes that were accepted."""
    data = src.read_bytes()
    accepted = {}
    for cut in cut_points:
        dst.write_bytes(data[:cut])
        try:
            accepted[cut] = describe(dst)
        except UntrustedFormatError as exc:
            pytest.fail(f"cut {cut}: a truncated file reported as untrusted: {exc}")
        except InputError:
            pass
    return accepted


@pytest.mark.parametrize("key", ["state_dict_legacy", "safetensors"])
def test_every_truncation_is_an_input_error(artifacts, tmp_path, key):
    """Every prefix: a cut-short legacy pickle is 'corrupt', never 'untrusted' (the restricted
    unpickler fails on a half-read GLOBAL) nor an IndexError/struct.error escaping the loader."""
    size = artifacts[key].stat().st_size
    assert _sweep(artifacts[key], tmp_path / artifacts[key].name, range(size)) == {}


def test_truncated_full_module_pickle_is_corrupt_not_untrusted(artifacts, tmp_path):
    """A legacy full-module pickle cut inside its object pickle is corrupt; complete, it is
    untrusted. (Cut later, in the raw tensor bytes, the pickle itself is intact and 'untrusted'
    is the first thing to say; --trust then reports the truncation.)"""
    src = artifacts["full_module_legacy"]
    with open(src, "rb") as fh:  # legacy torch.save: magic number, protocol, sys_info, object
        for _ in range(4):
            for _ in pickletools.genops(fh):
                pass
        end = fh.tell()
    cut_points = sorted(set(range(0, end, 37)) | set(range(end - 40, end)))
    assert _sweep(src, tmp_path / src.name, cut_points) == {}
    with pytest.raises(UntrustedFormatError):
        describe(src)
    dst = truncate_copy(src, tmp_path / "raw_bytes_cut.pt", (end + src.stat().st_size) // 2)
    with pytest.raises(InputError, match="cannot unpickle"):
        describe(dst, trust=True)


def test_every_truncation_of_onnx(artifacts, tmp_path):
    """Protobuf has no end marker: a cut exactly after the graph (dropping only the trailing
    opset_import) parses. That one is accepted with a note; every other cut is an InputError."""
    size = artifacts["onnx"].stat().st_size
    accepted = _sweep(artifacts["onnx"], tmp_path / "model.onnx", range(size))
    for desc in accepted.values():
        assert "the model declares no opset" in desc.notes
        assert [layer.fan_in for layer in desc.layers] == [8, 16]


# --- known gap --------------------------------------------------------------------------------


def test_short_tensor_record_inside_an_intact_zip_is_refused(artifacts, tmp_path):
    """torch.load(mmap=True) does not check a record's length in torch 2.13 (garbage stats): files
    under MMAP_ABOVE_BYTES are read without mmap, where torch does."""
    path = write_zip(tmp_path / "short_record.pt", zip_members(artifacts["state_dict_zip"]), "/data/0", 0)
    with pytest.raises(InputError):
        describe(path)
