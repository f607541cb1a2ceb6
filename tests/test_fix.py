"""Acceptance of `initdoctor fix`: exact rescales in every writable format, untouched bytes,
CI modes, LSUV, durability, and the in-memory API."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import initdoctor
from examples.models import plain_cnn, plain_mlp
from tests.conftest import ROOT, run_cli

# 30 layers; the CNN is 128 channels wide: at width 32 even exact Kaiming weights leave the measured
# depth ratio anywhere in 0.005–1.5 by seed (finite-width fluctuation, Hanin & Rolnick 2018).
NETS = {
    "mlp": (lambda init: plain_mlp(init=init), (1, 64), "plain_mlp(init='xavier')"),
    "cnn": (
        lambda init: plain_cnn(width=128, init=init),
        (2, 3, 16, 16),
        "plain_cnn(width=128, init='xavier')",
    ),
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(model, fmt: str, folder: Path, example_shape) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "pt":
        path = folder / "model.pt"
        torch.save(state, path)
    elif fmt == "safetensors":
        path = folder / "model.safetensors"
        save_file(state, str(path), metadata={"origin": "initdoctor-test", "format": "pt"})
    else:
        path = folder / "model.onnx"
        torch.onnx.export(model.eval(), (torch.randn(example_shape),), str(path), dynamo=False)
    return path


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".onnx":
        return {
            t.name: numpy_helper.to_array(t, str(path.parent)) for t in onnx.load(str(path)).graph.initializer
        }
    if path.suffix == ".safetensors":
        return {k: v.numpy() for k, v in load_file(str(path)).items()}
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "onnx"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_fix_xavier_gives_kaiming_in_the_same_format(tmp_path, net, fmt):
    build, example, factory_expr = NETS[net]
    src = write(build("xavier"), fmt, tmp_path, example)
    digest = sha(src)
    out = tmp_path / f"fixed{src.suffix}"
    proc = run_cli("fix", str(src), "-o", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["written"] and result["after"]["status"] != "error"
    assert len(result["changes"]) == 29  # every hidden layer; the logit layer was fine
    assert sha(src) == digest  # the input is untouched
    # inspect OUT: no error, and every fixed layer's std within 1% of the Kaiming std
    (tmp_path / "nets.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom examples.models import plain_cnn, plain_mlp\n"
        f"def build():\n    return {factory_expr}\n"
    )
    args = ["inspect", str(out), "--format", "json"]
    if fmt != "onnx":
        args += ["--model", "nets:build"]  # a state_dict has no graph: the factory supplies it
    if net == "cnn":
        args += ["--input-shape", ",".join(map(str, example)), "--batch-size", "2"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["error"] == 0 and report["summary"]["status"] != "error"
    fixed = {c["name"] for c in result["changes"]}
    for layer in report["layers"]:
        if layer["name"] in fixed:
            assert layer["weight_std"] == pytest.approx(layer["expected_std"], rel=0.01), layer["name"]
    assert 0.1 <= report["summary"]["depth_ratio"] <= 10
    # only the fixed weights changed: every other tensor is bit-identical
    before, after = tensors_of(src), tensors_of(out)
    assert set(before) == set(after)
    keys = {c["weight_key"] for c in result["changes"]}
    for key, value in before.items():
        if key in keys:
            assert not np.array_equal(value, after[key])
        else:
            assert value.tobytes() == after[key].tobytes(), key


def test_metadata_is_preserved(tmp_path):
    src = write(plain_mlp(depth=5, width=32, init="xavier"), "safetensors", tmp_path, None)
    out = tmp_path / "fixed.safetensors"
    initdoctor.fix_model(src, output=out)
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"origin": "initdoctor-test", "format": "pt"}
    onnx_src = write(plain_mlp(depth=5, width=32, init="xavier"), "onnx", tmp_path, (1, 64))
    proto = onnx.load(str(onnx_src))
    proto.doc_string = "my model"
    proto.producer_name, proto.producer_version = "someone", "9.9"
    onnx.save_model(proto, str(onnx_src))
    initdoctor.fix_model(onnx_src, output=tmp_path / "fixed.onnx")
    fixed = onnx.load(str(tmp_path / "fixed.onnx"))
    assert (fixed.doc_string, fixed.producer_name, fixed.producer_version) == ("my model", "someone", "9.9")
    assert [(o.domain, o.version) for o in fixed.opset_import] == [
        (o.domain, o.version) for o in proto.opset_import
    ]


def test_check_and_dry_run_write_nothing(tmp_path):
    xavier = write(plain_mlp(init="xavier"), "pt", tmp_path, None)
    kaiming = tmp_path / "kaiming.pt"
    torch.save(plain_mlp(init="kaiming").state_dict(), kaiming)
    before = sorted(os.listdir(tmp_path))
    proc = run_cli("fix", str(xavier), "--check")
    assert proc.returncode == 1 and "29 layers would change" in proc.stdout
    assert run_cli("fix", str(kaiming), "--check").returncode == 0
    proc = run_cli("fix", str(xavier), "--dry-run", "-o", str(tmp_path / "out.pt"))
    assert proc.returncode == 0 and "nothing written" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == before


def test_lsuv_brings_every_measured_ratio_within_tol():
    model = plain_cnn(init="kaiming", seed=0)  # width 32: measured depth ratio ≈ 0.006
    before = initdoctor.diagnose(model, probe=True, batch_size=8)
    assert before.summary.depth_ratio < 0.01
    assert max(abs(f.variance_ratio - 1) for f in before.layers if f.role == "hidden") > 0.2
    result = initdoctor.fix_model(model, method="lsuv", tol=0.05, batch_size=8)
    ratios = [f.variance_ratio for f in result.after.layers if f.role == "hidden"]
    assert len(ratios) == 29 and all(abs(r - 1) < 0.05 for r in ratios), ratios
    assert all(c.iterations <= 10 for c in result.changes)
    # the model itself was changed in place: a fresh probe sees the same
    again = initdoctor.diagnose(model, probe=True, batch_size=8)
    assert all(abs(f.variance_ratio - 1) < 0.05 for f in again.layers if f.role == "hidden")


def test_lsuv_needs_a_graph(tmp_path):
    src = write(plain_mlp(depth=4, width=16), "pt", tmp_path, None)
    proc = run_cli("fix", str(src), "--method", "lsuv", "-o", str(tmp_path / "o.pt"))
    assert proc.returncode == 2 and "needs a graph" in proc.stderr


def test_interrupted_write_leaves_no_output_and_the_input_intact(tmp_path, monkeypatch):
    import initdoctor.fileio as fileio

    for fmt in ("pt", "safetensors", "onnx"):
        src = write(plain_mlp(depth=6, width=32, init="xavier"), fmt, tmp_path, (1, 64))
        digest = sha(src)
        out = tmp_path / f"out{src.suffix}"

        def failing_replace(a, b):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(fileio.os, "replace", failing_replace)
        with pytest.raises(OSError):
            initdoctor.fix_model(src, output=out)
        monkeypatch.undo()
        assert not out.exists() and sha(src) == digest
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files
        src.unlink()


def test_in_place_keeps_a_backup_of_the_exact_bytes(tmp_path):
    src = write(plain_mlp(depth=6, width=32, init="xavier"), "pt", tmp_path, None)
    original = src.read_bytes()
    proc = run_cli("fix", str(src), "--in-place")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.pt.bak").read_bytes() == original and src.read_bytes() != original
    assert initdoctor.diagnose(src).summary.status == "ok"
    proc = run_cli("fix", str(src), "--in-place", "--all")
    assert proc.returncode == 2 and "backup already exists" in proc.stderr


def test_reinit_zero_bias_and_code_formats(tmp_path):
    x = torch.randn(2, 64)
    model = plain_mlp(depth=6, width=32, init="xavier")
    with torch.no_grad():
        model[2].weight.zero_()  # all zero: kaiming cannot rescale it, reinit redraws it
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.bias.fill_(0.3)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    torch.save(model, tmp_path / "full.pt")
    skipped = initdoctor.fix_model(tmp_path / "full.pt", output=tmp_path / "k.pt", trust=True).skipped
    assert [name for name, _ in skipped] == ["2"]
    for name in ("m.ts", "m.pt2", "full.pt"):
        out = tmp_path / f"fixed_{name}"
        result = initdoctor.fix_model(
            tmp_path / name, output=out, trust=True, method="reinit", zero_bias=True, seed=1
        )
        assert (
            result.after.model["format"]
            == {"m.ts": "torchscript", "m.pt2": "torch.export", "full.pt": "torch-module"}[name]
        )
        assert result.after.summary.status != "error", name
        layer2 = next(f for f in result.after.layers if f.name == "2")
        assert layer2.weight_std == pytest.approx(math.sqrt(2 / 32), rel=0.1)
        assert all(c.bias_zeroed for c in result.changes)
    fixed = torch.load(tmp_path / "fixed_full.pt", weights_only=False)
    assert torch.count_nonzero(fixed[2].bias) == 0 and torch.all(
        fixed[-1].bias == 0.3
    )  # logit layer untouched


def test_sharded_and_external_data_outputs(tmp_path):
    model = plain_mlp(depth=6, width=32, init="xavier")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = list(state)
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[:4], keys[4:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(shard_dir / name))
        weight_map.update({k: name for k in part})
    (shard_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    out_dir = tmp_path / "fixed_sharded"
    result = initdoctor.fix_model(shard_dir / "model.safetensors.index.json", output=out_dir)
    assert result.after.summary.status != "error" and sorted(p.name for p in out_dir.iterdir()) == sorted(
        p.name for p in shard_dir.iterdir()
    )
    torch.onnx.export(model.eval(), (torch.randn(1, 64),), str(tmp_path / "m.onnx"), dynamo=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(
        proto,
        str(ext / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    result = initdoctor.fix_model(ext / "m.onnx", output=tmp_path / "fixed.onnx")
    assert (tmp_path / "fixed.onnx.data").exists()  # the weights stay external
    assert result.after.summary.status != "error"
    assert initdoctor.diagnose(tmp_path / "fixed.onnx").layers[1].std_ratio == pytest.approx(1.0, rel=1e-3)


def test_fix_model_in_memory_is_the_pretraining_sanity_check():
    model = plain_mlp(init="default")
    result = initdoctor.fix_model(model)
    assert len(result.changes) == 29 and result.output is None
    assert all(c.factor == pytest.approx(math.sqrt(6), rel=0.03) for c in result.changes)
    assert initdoctor.diagnose(model).summary.status == "ok"


def test_durability_for_every_writable_format(tmp_path, monkeypatch):
    """A write that fails before os.replace leaves no output and the input as it was, for the
    code-executing formats and the sharded folder too; --in-place's backup restores the bytes."""
    import initdoctor.fileio as fileio

    model = plain_mlp(depth=4, width=16, init="xavier").eval()
    x = torch.randn(2, 64)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    torch.save(model, tmp_path / "full.pt")
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(shard_dir / "model-00001-of-00001.safetensors"))
    (shard_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in state}})
    )
    save_file(state, str(shard_dir.parent / "single.safetensors"))
    ext = tmp_path / "ext"
    ext.mkdir()
    torch.onnx.export(model, (x,), str(ext / "plain.onnx"), dynamo=False)
    onnx.save_model(
        onnx.load(str(ext / "plain.onnx")),
        str(ext / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    cases = [
        (tmp_path / "m.ts", tmp_path / "o.ts"),
        (tmp_path / "m.pt2", tmp_path / "o.pt2"),
        (tmp_path / "full.pt", tmp_path / "o.pt"),
        (shard_dir / "model.safetensors.index.json", tmp_path / "o_sharded"),
        (tmp_path / "single.safetensors", tmp_path / "o.safetensors"),  # streamed twin
        (ext / "m.onnx", tmp_path / "o.onnx"),  # streamed twin, writes o.onnx + o.onnx.data
        (tmp_path / "sd.pt", tmp_path / "o_sd.pt"),
    ]  # streamed zip twin (not trusted)
    torch.save(state, tmp_path / "sd.pt")
    for src, out in cases:
        digest = sha(src)

        def failing_replace(a, b):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(fileio.os, "replace", failing_replace)
        trust = src.name != "sd.pt"  # the state_dict goes through the untrusted, streamed path
        with pytest.raises(OSError):
            initdoctor.fix_model(src, output=out, trust=trust)
        monkeypatch.undo()
        assert not out.exists() and sha(src) == digest, src
        assert not out.with_name(out.name + ".data").exists(), src
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], src  # no temp files left
        result = initdoctor.fix_model(src, output=out, trust=trust)  # and it works once the disk is fine
        assert result.after.summary.status != "error", src


def test_killed_mid_write_leaves_no_partial_output(tmp_path):
    """SIGKILL while fix writes: OUT is either absent or complete; the input is untouched."""
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "big.pt"
    torch.save(plain_mlp(depth=12, width=1024, in_features=1024, init="xavier").state_dict(), src)  # ~48 MB
    digest = sha(src)
    out = tmp_path / "out.pt"
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5):
        out.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "initdoctor", "fix", str(src), "-o", str(out)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert sha(src) == digest
        if out.exists():  # complete: it loads and is fixed
            assert initdoctor.diagnose(out).summary.status == "ok"


def test_streamed_safetensors_fix_rounds_like_torch_and_keeps_every_other_byte(tmp_path):
    """A safetensors file is fixed without loading it: the scaled tensors equal torch's
    ``(t.double() * f).to(dtype)`` bit for bit in every float dtype (across block edges), a
    replaced tensor holds its new values, and the header and untouched bytes are unchanged."""
    from initdoctor.formats.safetensors import StreamedSafetensors

    torch.manual_seed(0)
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    state = {
        f"l{i}.weight": (torch.randn(400, 400) * 0.05).to(dt) for i, dt in enumerate(dtypes)
    }  # > 1 block
    state["l0.bias"] = torch.randn(400)
    state["steps"] = torch.arange(7)
    src = tmp_path / "m.safetensors"
    save_file(state, str(src), metadata={"note": "kept"})
    original = src.read_bytes()
    editable = StreamedSafetensors(src)
    factor = 1.2345678901
    for i in range(4):
        editable.scale(f"l{i}.weight", factor)
    editable.assign("l0.bias", np.arange(400) * 0.25)
    out = editable.save(tmp_path / "fixed.safetensors")
    fixed = load_file(str(out))
    for i, dt in enumerate(dtypes):
        key = f"l{i}.weight"
        expected = (state[key].double() * factor).to(dt)
        assert torch.equal(fixed[key], expected), dt
        assert np.array_equal(editable.array(key), expected.double().numpy())
    assert torch.equal(fixed["l0.bias"], torch.arange(400, dtype=torch.float32) * 0.25)
    assert torch.equal(fixed["steps"], state["steps"])
    header = 8 + int.from_bytes(original[:8], "little")
    assert out.read_bytes()[:header] == original[:header]  # header (and metadata) byte-identical
    assert src.read_bytes() == original
    with pytest.raises(initdoctor.InputError, match="only float tensors"):
        editable.scale("steps", 2.0)
    assert editable.std("l2.weight") == pytest.approx(
        (state["l2.weight"].double() * factor).to(torch.bfloat16).double().std(unbiased=False).item(),
        rel=1e-12,
    )


def test_streamed_onnx_fix_matches_the_in_memory_twin_and_runs(tmp_path):
    """ONNX with external data is fixed without loading its weights: for kaiming (scale), reinit
    (new values) and lsuv (probes the edited model), every initializer equals what the in-memory
    twin writes, onnxruntime runs the output, and the input files are untouched."""
    import onnxruntime as ort

    from initdoctor.formats.onnx_edit import Onnx, StreamedOnnx

    model = plain_mlp(depth=6, width=48, init="xavier").eval()
    x = torch.randn(4, 64)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(
        onnx.load(str(tmp_path / "m.onnx")),
        str(ext / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=1024,
    )
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ext.iterdir()}
    assert (
        StreamedOnnx(ext / "m.onnx").has_data_files and not StreamedOnnx(tmp_path / "m.onnx").has_data_files
    )
    for method in ("kaiming", "reinit", "lsuv"):
        streamed = initdoctor.fix_model(
            ext / "m.onnx", method=method, output=tmp_path / f"s_{method}.onnx", all_layers=True
        )
        plain = initdoctor.fix_model(
            tmp_path / "m.onnx", method=method, output=tmp_path / f"p_{method}.onnx", all_layers=True
        )
        assert [(c.factor, c.new_std) for c in streamed.changes] == [
            (c.factor, c.new_std) for c in plain.changes
        ]
        written = onnx.load(str(tmp_path / f"s_{method}.onnx")).graph.initializer
        got = {t.name: numpy_helper.to_array(t) for t in written}
        want = {
            t.name: numpy_helper.to_array(t)
            for t in onnx.load(str(tmp_path / f"p_{method}.onnx")).graph.initializer
        }
        assert got.keys() == want.keys()
        for name in want:
            assert np.array_equal(got[name], want[name]), (method, name)
        assert (tmp_path / f"s_{method}.onnx.data").exists()
        session = ort.InferenceSession(str(tmp_path / f"s_{method}.onnx"))
        reference = ort.InferenceSession(str(tmp_path / f"p_{method}.onnx"))
        feed = {session.get_inputs()[0].name: x.numpy()}
        assert np.array_equal(session.run(None, feed)[0], reference.run(None, feed)[0])
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ext.iterdir()} == before
    # the twins agree on array() after a scale, value for value
    a, b = StreamedOnnx(ext / "m.onnx"), Onnx(tmp_path / "m.onnx")
    key = next(t.name for t in a.model.graph.initializer if len(t.dims) == 2)
    a.scale(key, 1.37)
    b.scale(key, 1.37)
    assert np.array_equal(a.array(key), b.array(key))
    assert a.std(key) == pytest.approx(float(b.array(key).std()), rel=1e-12)


def test_fix_no_probe_checks_the_output_statically(tmp_path):
    model = plain_mlp(depth=5, width=32, init="xavier").eval()
    torch.onnx.export(model, (torch.randn(1, 64),), str(tmp_path / "m.onnx"), dynamo=False)
    probed = initdoctor.fix_model(tmp_path / "m.onnx", output=tmp_path / "a.onnx")
    static = initdoctor.fix_model(tmp_path / "m.onnx", output=tmp_path / "b.onnx", probe=False)
    assert probed.after.probe is not None and static.after.probe is None
    assert [f.std_ratio for f in static.after.layers] == pytest.approx(
        [f.std_ratio for f in probed.after.layers]
    )
    assert all(f.activation_var is None for f in static.after.layers)
    proc = run_cli(
        "fix", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c.onnx"), "--method", "lsuv", "--no-probe"
    )
    assert proc.returncode == 2 and "cannot run with --no-probe" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.onnx").exists()


def test_streamed_fix_refuses_a_source_that_shrank_meanwhile(tmp_path):
    from initdoctor.formats.safetensors import StreamedSafetensors

    src = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(300, 500)}, str(src))
    editable = StreamedSafetensors(src)
    editable.scale("a.weight", 2.0)
    with open(src, "r+b") as fh:  # another process cuts the file after it was read
        fh.truncate(src.stat().st_size - 4000)
    with pytest.raises(initdoctor.InputError, match="file ended"):
        editable.save(tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no output, no temp file


def test_streamed_checkpoint_fix_equals_torch_and_is_a_valid_zip(tmp_path):
    """A zip state_dict (plain and Lightning-wrapped) is fixed without loading it: every tensor
    equals what the in-memory twin (torch.save) writes, the output passes zipfile's CRC check,
    and data.pkl plus every untouched record keep their bytes."""
    import zipfile

    from initdoctor.formats.torch_pickle import load_torch_object
    from initdoctor.formats.torch_state_dict import TorchCheckpoint
    from initdoctor.formats.torch_state_dict_stream import StreamedCheckpoint, zip_tensor_plan

    torch.manual_seed(0)
    state = plain_mlp(depth=5, width=48, init="xavier").state_dict()
    state["2.weight"] = state["2.weight"].to(torch.bfloat16)  # a bf16 layer among fp32 ones
    state["4.weight"] = state["4.weight"].t().contiguous().t()  # stored transposed: a dense view
    for name, obj in (
        ("plain.pt", state),
        ("lightning.ckpt", {"state_dict": state, "epoch": 3, "hparams": {"lr": 0.1}}),
    ):
        src = tmp_path / name
        torch.save(obj, src)
        plan = zip_tensor_plan(src)
        assert plan is not None
        streamed, memory = (
            StreamedCheckpoint(src, plan),
            TorchCheckpoint(load_torch_object(src, trust=False), src),
        )
        weights = [k for k in plan if k.endswith("weight")]
        for i, key in enumerate(weights):
            streamed.scale(key, 1.1 + i / 7)
            memory.scale(key, 1.1 + i / 7)
        streamed.assign("0.bias", np.linspace(-1, 1, 48))
        memory.assign("0.bias", np.linspace(-1, 1, 48))
        pattern = np.arange(48 * 48, dtype=np.float64).reshape(48, 48) / 1000  # order matters here
        streamed.assign("4.weight", pattern)  # the weight stored transposed
        memory.assign("4.weight", pattern)
        assert np.array_equal(streamed.array("4.weight"), memory.array("4.weight"))
        for key in weights:
            assert streamed.std(key) == pytest.approx(float(memory.array(key).std()), rel=1e-12)
        out_s, out_m = streamed.save(tmp_path / f"s_{name}"), memory.save(tmp_path / f"m_{name}")
        got, want = load_torch_object(out_s, trust=False), load_torch_object(out_m, trust=False)
        got_sd = got.get("state_dict", got)
        want_sd = want.get("state_dict", want)
        assert got_sd.keys() == want_sd.keys()
        for key in want_sd:
            assert got_sd[key].dtype == want_sd[key].dtype and torch.equal(got_sd[key], want_sd[key]), (
                name,
                key,
            )
        if "epoch" in got:
            assert (got["epoch"], got["hparams"]) == (3, {"lr": 0.1})
        with zipfile.ZipFile(out_s) as z_out, zipfile.ZipFile(src) as z_in:
            assert z_out.testzip() is None  # every CRC-32 is right
            changed = {
                info.filename for info in z_in.infolist() if z_in.read(info) != z_out.read(info.filename)
            }
        edited = {plan[k].record.filename for k in [*weights, "0.bias"]}
        assert changed == edited  # data.pkl and the untouched records keep their bytes


def test_fix_reports_progress_per_phase(tmp_path):
    """The CLI's bar gets a line per phase: reading the weights, fixing each layer, checking the output."""

    class Recorder:
        def __init__(self):
            self.seen: dict[str, tuple[int, int]] = {}

        def __call__(self, done, total, label="probing layers"):
            self.seen[label] = (done, total)

        def phase(self, label):
            return lambda done, total: self(done, total, label)

    src = tmp_path / "m.safetensors"
    save_file(
        {k: v.contiguous() for k, v in plain_mlp(depth=6, width=32, init="xavier").state_dict().items()},
        str(src),
    )
    recorder = Recorder()
    result = initdoctor.fix_model(src, output=tmp_path / "o.safetensors", progress=recorder)
    n = len(result.changes)
    assert n > 0 and recorder.seen["fixing layers"] == (n, n)
    assert recorder.seen["reading weights"][0] == recorder.seen["reading weights"][1] > 0
    proc = run_cli("fix", str(src), "-o", str(tmp_path / "q.safetensors"), "--quiet", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["written"] is True


def test_fix_timeout_bounds_loading_and_probing(tmp_path):
    """``fix --timeout`` bounds the factory's own code (building, tracing) and the probe, as
    ``inspect --timeout`` does (0.7.0 ran fix's load and probe without the limit)."""
    (tmp_path / "slow.py").write_text(
        "import time\nfrom torch import nn\n"
        "def hangs_when_built():\n    while True:\n        time.sleep(0.01)\n"
        "class Slow(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(8, 8)\n"
        "    def forward(self, x):\n        while True:\n            time.sleep(0.01)\n"
        "def hangs_in_forward():\n    return Slow()\n"
    )
    cases = (
        ("slow:hangs_when_built", (), "the model's factory"),
        ("slow:hangs_in_forward", ("--method", "lsuv"), "tracing the model"),  # torch.fx runs the forward
    )
    for factory, extra, doing in cases:  # 5 s: importing torch fits in it on a busy machine
        started = time.monotonic()
        proc = run_cli("fix", factory, "--timeout", "5", "--dry-run", *extra, cwd=tmp_path)
        assert proc.returncode == 2, (factory, proc.stderr)
        assert proc.stderr.strip() == f"initdoctor: error: {doing} did not finish within 5 s (--timeout)"
        assert time.monotonic() - started < 60, factory
