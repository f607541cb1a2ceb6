"""One model, every format: the same layers in the same order with the same statistics."""

from __future__ import annotations

import json
import math
import warnings

import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import initdoctor
from examples.models import plain_cnn, plain_mlp
from tests.conftest import cli_json


def _rows(report):
    return [(f.name, f.kind, tuple(f.shape), f.fan_in, f.fan_out, f.weight_std) for f in report.layers]


def _save_all(model: nn.Module, example: torch.Tensor, folder) -> dict[str, tuple[str, ...]]:
    """Write ``model`` in every format; return {label: extra CLI args}."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "model.pt")
    save_file(state, str(folder / "model.safetensors"))
    torch.onnx.export(model, (example,), str(folder / "model.onnx"), dynamo=False)
    torch.jit.save(torch.jit.trace(model, example), str(folder / "model_ts.bin"))  # no telling extension
    torch.export.save(torch.export.export(model, (example,)), str(folder / "model.pt2"))
    torch.save({"epoch": 3, "state_dict": state, "optimizer_states": []}, folder / "lightning.ckpt")
    # sharded safetensors with an index, split in the middle
    keys = list(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    sharded = folder / "sharded"
    sharded.mkdir()
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(sharded / shard))
        weight_map.update({k: shard for k in shard_keys})
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    # ONNX with its weights in an external data file
    proto = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(
        proto,
        str(folder / "external.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="external.onnx.data",
        size_threshold=0,
    )
    return {
        "model.pt": (),
        "model.safetensors": (),
        "model.onnx": (),
        "model_ts.bin": ("--trust",),
        "model.pt2": ("--trust",),
        "lightning.ckpt": (),
        "sharded/model.safetensors.index.json": (),
        "external.onnx": (),
    }


@pytest.mark.parametrize(
    "build,example",
    [
        (lambda: plain_mlp(depth=12, width=64, init="xavier"), torch.randn(2, 64)),
        (lambda: plain_cnn(depth=12, width=16, init="kaiming"), torch.randn(2, 3, 8, 8)),
    ],
    ids=["mlp12", "cnn12"],
)
def test_every_format_gives_the_same_layers(tmp_path, build, example):
    model = build().eval()
    sources = _save_all(model, example, tmp_path)
    reference = initdoctor.diagnose(model, probe=False)  # the files hold weights only
    ref_rows = _rows(reference)
    assert len(ref_rows) == 12
    assert [r[0] for r in ref_rows[:3]] == ["0", "2", "4"]  # module paths, execution order
    formats = {}
    for rel, extra in sources.items():
        code, data = cli_json(str(tmp_path / rel), *extra, "--no-probe")
        formats[rel] = data["model"]["format"]
        rows = [
            (row["name"], row["kind"], tuple(row["shape"]), row["fan_in"], row["fan_out"], row["weight_std"])
            for row in data["layers"]
        ]
        assert [r[:5] for r in rows] == [r[:5] for r in ref_rows], rel
        for got, want in zip(rows, ref_rows, strict=False):
            assert got[5] == pytest.approx(want[5], rel=1e-6), (rel, got[0])
        assert [row["status"] for row in data["layers"]] == [f.status for f in reference.layers], rel
        assert data["summary"]["status"] == reference.summary.status, rel
        if not rel.endswith(".onnx"):  # the ONNX exporter stores identical (all-zero) biases once
            assert data["model"]["parameters"] == sum(p.numel() for p in model.parameters()), rel
    assert formats == {
        "model.pt": "state_dict",
        "model.safetensors": "safetensors",
        "model.onnx": "onnx",
        "model_ts.bin": "torchscript",
        "model.pt2": "torch.export",
        "lightning.ckpt": "state_dict",
        "sharded/model.safetensors.index.json": "safetensors-sharded",
        "external.onnx": "onnx",
    }


def test_graph_formats_read_the_nonlinearity(tmp_path):
    """tanh hidden layers: ONNX, TorchScript and torch.export see Tanh; a state_dict cannot."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64),
        nn.Tanh(),
        nn.Linear(64, 64),
        nn.LeakyReLU(0.2),
        nn.Dropout(0.1),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 5),
    ).eval()
    x = torch.randn(2, 32)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    want = ["tanh", "leaky_relu(0.2)", "relu", "linear"]
    for name, extra in [("m.onnx", ()), ("m.ts", ("--trust",)), ("m.pt2", ("--trust",))]:
        _, data = cli_json(str(tmp_path / name), *extra)
        assert [row["nonlinearity"] for row in data["layers"]] == want, name
        assert {row["nonlinearity_source"] for row in data["layers"]} == {"graph"}, name
        assert data["layers"][0]["gain"] == pytest.approx(5 / 3)
        assert data["layers"][1]["gain"] == pytest.approx(math.sqrt(2 / (1 + 0.2**2)))
        assert data["layers"][-1]["role"] == "output"
    _, data = cli_json(str(tmp_path / "m.pt"))
    assert [row["nonlinearity"] for row in data["layers"]] == ["relu", "relu", "relu", "linear"]
    assert [row["nonlinearity_source"] for row in data["layers"]] == ["flag", "flag", "flag", "rule"]


def test_onnx_matmul_gemm_layouts_and_dynamo_export(tmp_path):
    """A 3-D input makes Linear a MatMul whose initializer is [in, out]; fans must still be right."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.fc1 = nn.Linear(32, 48)
            self.fc2 = nn.Linear(48, 8)

        def forward(self, ids):
            return self.fc2(torch.relu(self.fc1(self.emb(ids))))

    model = Tokens().eval()
    ids = torch.randint(0, 100, (2, 7))
    for dynamo in (False, True):
        path = tmp_path / f"tok_{dynamo}.onnx"
        torch.onnx.export(model, (ids,), str(path), dynamo=dynamo)
        _, data = cli_json(str(path))
        by = {row["name"]: row for row in data["layers"]}
        assert set(by) >= {"fc1", "fc2"}, (dynamo, list(by))
        assert (by["fc1"]["fan_in"], by["fc1"]["fan_out"]) == (32, 48), dynamo
        assert (by["fc2"]["fan_in"], by["fc2"]["fan_out"]) == (48, 8), dynamo
        assert by["fc1"]["weight_std"] == pytest.approx(model.fc1.weight.std(unbiased=False).item(), rel=1e-5)
        assert by["fc1"]["nonlinearity"] == "relu" and by["fc2"]["role"] == "output"
        emb = by.get("emb")
        assert emb is not None and emb["kind"] == "embedding" and emb["status"] == "skip", dynamo


def test_safetensors_order_is_natural_not_lexicographic(tmp_path):
    model = plain_mlp(depth=12, width=16, init="kaiming")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    _, data = cli_json(str(tmp_path / "m.safetensors"))
    assert [row["name"] for row in data["layers"]] == [str(i) for i in range(0, 24, 2)]
    assert data["model"]["layer_order"] == "natural"


def test_factory_with_weights(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))\n"
    )
    torch.manual_seed(1)
    trained = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        trained[0].weight.normal_(0, 0.5)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    _, plain = cli_json("mymodels:build", cwd=tmp_path)
    assert plain["model"]["format"] == "factory" and [row["name"] for row in plain["layers"]] == ["0", "2"]
    _, loaded = cli_json("mymodels:build", "--weights", "w.pt", cwd=tmp_path)
    assert loaded["layers"][0]["weight_std"] == pytest.approx(
        trained[0].weight.std(unbiased=False).item(), rel=1e-6
    )
    assert loaded["layers"][0]["std_ratio"] == pytest.approx(0.5 / math.sqrt(2 / 16), rel=0.1)


def test_safetensors_dtypes_read_without_torch(tmp_path):
    """bf16/fp16/fp32 safetensors are streamed with positioned reads, no torch import."""
    import subprocess
    import sys

    torch.manual_seed(0)
    weights = {"a.weight": torch.randn(64, 32) * 0.1, "b.weight": torch.randn(16, 64) * 0.3}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        path = tmp_path / f"m_{str(dtype)[6:]}.safetensors"
        save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(path))
        report = initdoctor.diagnose(path)
        for f in report.layers:
            expected = weights[f.name + ".weight"].to(dtype).double().std(unbiased=False).item()
            assert f.weight_std == pytest.approx(expected, rel=1e-9), (dtype, f.name)
            assert f.dtype == str(dtype)[6:]
    probe = (
        "import sys, initdoctor\n"
        f"r = initdoctor.diagnose({str(tmp_path / 'm_bfloat16.safetensors')!r})\n"
        "print(len(r.layers), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]


def test_zip_state_dict_is_streamed_from_the_file_with_records_checked(tmp_path):
    """A zip state_dict is unpickled on the meta device and each tensor streamed from its record:
    bf16/fp16/fp32, a transposed (dense) weight and a tied weight read exactly; a record cut short
    inside an otherwise valid archive is refused (torch's own mmap path would read past it)."""
    import zipfile

    from initdoctor.formats.torch_state_dict_stream import describe_streamed_state_dict

    torch.manual_seed(0)
    sd = {
        "a.weight": torch.randn(64, 32) * 0.1,
        "b.weight": (torch.randn(16, 64) * 0.3).to(torch.bfloat16),
        "c.weight": (torch.randn(8, 16) * 0.5).to(torch.float16),
        "d.weight": (torch.randn(16, 8) * 0.2).t(),  # a transposed view: strides (1, 8)
    }
    sd["e.weight"] = sd["a.weight"]  # tied: one storage
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    desc = describe_streamed_state_dict(path)
    assert desc is not None and desc.format == "state_dict"
    assert desc.parameters == 64 * 32 + 16 * 64 + 8 * 16 + 16 * 8
    for layer in desc.layers:
        expected = sd[layer.weight_key].double().std(unbiased=False).item()
        assert layer.stats.std == pytest.approx(expected, rel=1e-9), layer.name
    assert [(row.name, row.fan_in, row.stats.dtype) for row in desc.layers] == [
        ("a", 32, "float32"),
        ("b", 64, "bfloat16"),
        ("c", 16, "float16"),
        ("d", 16, "float32"),
    ]  # e is a's tensor: judged once, as a (issue 13)
    assert "e.weight shares its storage with a.weight (tied): judged and fixed once, as that" in desc.notes
    # the same archive with the first tensor's record cut to half its length
    cut = tmp_path / "cut.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(cut, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[: len(data) // 2] if info.filename.endswith("/data/0") else data)
    with pytest.raises(initdoctor.InputError, match="needs 8192 bytes"):
        describe_streamed_state_dict(cut)
    from tests.conftest import run_cli

    proc = run_cli("inspect", str(cut), "--no-probe")
    assert proc.returncode == 2 and "truncated or corrupt PyTorch checkpoint" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # compressed records (torch never writes them, but reads them): the normal load takes over
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=method)
    assert describe_streamed_state_dict(packed) is None
    report = initdoctor.diagnose(packed)
    assert report.layers[0].weight_std == pytest.approx(
        sd["a.weight"].double().std(unbiased=False).item(), rel=1e-9
    )
    # a tensor the meta device cannot hold (quantized) or a sparse one: the normal load reads it
    odd = tmp_path / "odd.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_per_tensor is deprecated, still written by old code
        torch.save(
            {
                "a.weight": sd["a.weight"],
                "s": torch.eye(3).to_sparse(),
                "q": torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8),
            },
            odd,
        )
    assert describe_streamed_state_dict(odd) is None
    report = initdoctor.diagnose(odd, probe=False)
    assert report.layers[0].weight_std == pytest.approx(
        sd["a.weight"].double().std(unbiased=False).item(), rel=1e-9
    )
