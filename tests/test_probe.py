"""Acceptance of the probe: measured variance ratios, depth and gradient ratios, both backends."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import initdoctor
from examples.models import plain_cnn, plain_mlp
from tests.conftest import cli_json, run_cli


def _hidden(report):
    return [f for f in report.layers if f.role == "hidden"]


def test_kaiming_mlp_measured_ratios_and_depth():
    report = initdoctor.diagnose(plain_mlp(init="kaiming"), probe=True)
    ratios = [f.variance_ratio for f in _hidden(report)]
    assert len(ratios) == 29
    assert all(0.7 <= r <= 1.4 for r in ratios), ratios
    assert 0.2 <= report.summary.depth_ratio <= 5
    assert report.summary.status != "error" and report.summary.error == 0
    first = report.layers[0]
    # the first layer sees the N(0,1) probe input: E[x²] ≈ 1, Var[y] ≈ 2 (gain² = 2)
    assert first.input_second_moment == pytest.approx(1.0, abs=0.05)
    assert first.activation_var == pytest.approx(2.0 * first.weight_variance_ratio, rel=0.1)


def test_kaiming_cnn20_width64_has_no_error():
    report = initdoctor.diagnose(plain_cnn(depth=20, width=64, init="kaiming"), probe=True, batch_size=8)
    assert report.summary.status != "error" and report.summary.error == 0
    assert report.probe["inputs"] == [{"shape": [8, 3, 32, 32], "dtype": "float32"}]


@pytest.mark.parametrize("build", [plain_mlp, plain_cnn], ids=["mlp30", "cnn30"])
def test_xavier_measured_depth_ratio_vanishes(build):
    report = initdoctor.diagnose(build(init="xavier"), probe=True, batch_size=8)
    assert report.summary.depth_ratio < 1e-5
    assert report.summary.status == "error"
    # the measured per-layer ratio matches the static one: xavier halves the variance per layer
    assert report.summary.measured_chain_ratio == pytest.approx(0.45, abs=0.08)


def test_kaiming_narrow_cnn_depth_drift_is_a_warning_not_an_error():
    """Exact Kaiming weights, width 32, 30 layers: the measured depth ratio drifts (finite width),
    which is fluctuation — at most a warning that names its cause."""
    report = initdoctor.diagnose(plain_cnn(init="kaiming", seed=0), probe=True, batch_size=8)
    assert report.summary.status == "warn" and report.summary.error == 0
    assert report.summary.depth_ratio < 1 / 16
    assert 0.85 <= report.summary.measured_chain_ratio <= 1.0
    assert "fluctuation" in report.summary.message and "LSUV" in report.summary.message


def test_torch_and_onnx_backends_agree(tmp_path):
    model = plain_cnn(depth=8, width=16, init="kaiming").eval()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        model,
        (torch.randn(4, 3, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    torch_report = initdoctor.diagnose(model, probe=True, input_shapes=((4, 3, 16, 16),), seed=7)
    onnx_report = initdoctor.diagnose(path, probe=True, input_shapes=((4, 3, 16, 16),), seed=7)
    assert onnx_report.probe["backend"] == "onnx" and torch_report.probe["backend"] == "torch"
    assert [f.name for f in onnx_report.layers] == [f.name for f in torch_report.layers]
    for a, b in zip(torch_report.layers, onnx_report.layers, strict=False):
        assert b.activation_var == pytest.approx(a.activation_var, rel=0.05), a.name
        assert b.variance_ratio == pytest.approx(a.variance_ratio, rel=0.05), a.name
    # a fixed batch of 1 in the graph: run 32 times on the same seeded stream as torch's batch of 32
    mlp = plain_mlp(depth=6, width=64, init="kaiming").eval()
    fixed = tmp_path / "mlp.onnx"
    torch.onnx.export(mlp, (torch.randn(1, 64),), str(fixed), dynamo=False)
    t = initdoctor.diagnose(mlp, probe=True, batch_size=32)
    o = initdoctor.diagnose(fixed, probe=True, batch_size=32)
    assert o.probe["runs"] == 32 and "fixed at 1" in o.probe["notes"][0]
    for a, b in zip(t.layers, o.layers, strict=False):
        assert b.activation_var == pytest.approx(a.activation_var, rel=1e-4), a.name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backward_gradient_depth_ratio(seed):
    kaiming = initdoctor.diagnose(plain_mlp(init="kaiming", seed=seed), probe=True, backward=True)
    xavier = initdoctor.diagnose(plain_mlp(init="xavier", seed=seed), probe=True, backward=True)
    assert 0.3 <= kaiming.summary.grad_depth_ratio <= 3
    assert xavier.summary.grad_depth_ratio < 1e-5
    # per layer, the backward ratio of a square Kaiming layer is ≈ 1 (He et al. eq. 14 with fan_out = fan_in)
    square = [f.grad_ratio for f in _hidden(kaiming) if f.shape == [256, 256] and f.grad_ratio is not None]
    assert len(square) >= 27
    geo = math.exp(sum(math.log(r) for r in square) / len(square))
    assert geo == pytest.approx(1.0, abs=0.15)


def test_backward_leaves_parameter_grads_and_state_alone():
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    model.train()
    model[0].weight.grad = torch.full_like(model[0].weight, 3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initdoctor.diagnose(model, probe=True, backward=True)
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 3.0))
    assert model[4].weight.grad is None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats, num_batches_tracked
    assert model.training and model[1].training and model[3].training
    assert not model[0]._forward_hooks


def test_nan_weights_are_reported_and_the_rest_is_printed(tmp_path):
    model = plain_mlp(depth=6, width=32, init="kaiming")
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    report = initdoctor.diagnose(model, probe=True)
    by = {f.name: f for f in report.layers}
    assert by["4"].status == "error" and by["4"].nan_count == 1
    assert by["0"].status == "ok" and by["2"].status == "ok"
    assert by["0"].variance_ratio == pytest.approx(1.0, abs=0.3)
    assert "earlier layer" in by["6"].message and by["6"].activation_var is None
    assert report.summary.worst_layer == "4"
    json.loads(report.to_json())
    torch.save(model, tmp_path / "full.pt")
    proc = run_cli("inspect", str(tmp_path / "full.pt"), "--trust")
    assert proc.returncode == 1 and "4" in proc.stdout and "ERROR" in proc.stdout and "10 " in proc.stdout


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        self.fc(x)
        raise RuntimeError("shape mismatch in my custom block\nsecond line")


def test_forward_that_raises_is_one_line_and_hooks_are_removed(tmp_path):
    model = Exploding()
    with pytest.raises(initdoctor.InitDoctorError, match="forward raised RuntimeError: shape mismatch"):
        initdoctor.diagnose(model, probe=True)
    assert not model.fc._forward_hooks and model.training  # restored after the failed forward
    (tmp_path / "explode.py").write_text(
        "from torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(8, 8)\n"
        "    def forward(self, x):\n        raise ValueError('boom')\n"
        "def build():\n    return M()\n"
    )
    proc = run_cli("inspect", "explode:build", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "initdoctor: error: the model's forward raised ValueError: boom"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_same_seed_same_report_bit_for_bit(tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(plain_mlp(depth=8, width=32), (torch.randn(1, 64),), str(path), dynamo=False)
    a = run_cli("inspect", str(path), "--format", "json", "--seed", "3")
    b = run_cli("inspect", str(path), "--format", "json", "--seed", "3")
    c = run_cli("inspect", str(path), "--format", "json", "--seed", "4")
    assert a.stdout == b.stdout and a.stdout != c.stdout
    m = initdoctor.diagnose(plain_mlp(depth=8, width=32), probe=True, seed=3).to_json()
    assert m == initdoctor.diagnose(plain_mlp(depth=8, width=32), probe=True, seed=3).to_json()


def test_state_dict_alone_is_static_with_a_note_and_a_factory_gives_it_a_graph(tmp_path):
    (tmp_path / "nets.py").write_text(
        "import sys\nsys.path.insert(0, {!r})\nfrom examples.models import plain_mlp\n"
        "def mlp():\n    return plain_mlp(depth=6, width=32)\n".format(
            str(__import__("tests.conftest").conftest.ROOT)
        )
    )
    torch.save(plain_mlp(depth=6, width=32, init="xavier").state_dict(), tmp_path / "w.pt")
    _, static = cli_json(str(tmp_path / "w.pt"))
    assert static["probe"] is None and "no graph to probe" in static["notes"][-1]
    assert static["layers"][0]["variance_ratio"] is None
    _, probed = cli_json("w.pt", "--model", "nets:mlp", cwd=tmp_path)
    assert probed["probe"]["backend"] == "torch"
    # the factory's own init was replaced by the file's xavier weights: measured ratio ≈ 0.5
    assert probed["layers"][2]["variance_ratio"] == pytest.approx(0.5, abs=0.15)


def test_onnx_dynamic_dimension_needs_a_shape(tmp_path):
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.fc = nn.Linear(16, 16)

        def forward(self, ids):
            return self.fc(self.emb(ids)).relu()

    path = tmp_path / "seq.onnx"
    torch.onnx.export(
        Seq(),
        (torch.randint(0, 50, (2, 5)),),
        str(path),
        dynamo=False,
        input_names=["ids"],
        dynamic_axes={"ids": {0: "batch", 1: "seq"}},
    )
    proc = run_cli("inspect", str(path))
    assert proc.returncode == 2
    assert "dynamic dimension 'seq' (axis 1)" in proc.stderr and "--input-shape" in proc.stderr
    code, data = cli_json(str(path), "--input-shape", "4,7")
    assert data["probe"]["inputs"] == [{"shape": [4, 7], "dtype": "int64"}]
    fc = next(row for row in data["layers"] if row["name"] == "fc")
    # token ids drawn inside the table: E[x²] of embedding rows ≈ Var of N(0,1) init = 1
    assert fc["input_second_moment"] == pytest.approx(1.0, abs=0.25)
    assert fc["activation_var"] > 0


def test_plot_png(tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        plain_mlp(depth=10, width=32, init="xavier"), (torch.randn(1, 64),), str(path), dynamo=False
    )
    png = tmp_path / "depth.png"
    proc = run_cli("inspect", str(path), "--plot", str(png))
    assert proc.returncode == 1
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 600)


def test_onnx_strategies_agree_and_groups_bound_what_is_fetched(tmp_path):
    """In-graph reductions (default), every tensor exposed at once, and one tensor pair per group
    measure the same numbers; the grouped run needs one session and run per group."""
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(plain_cnn(depth=6, width=8).eval(), (torch.randn(2, 3, 8, 8),), str(path), dynamo=False)
    reduce = initdoctor.diagnose(path, probe=True)
    exposed = initdoctor.diagnose(path, probe=True, onnx_strategy="expose")
    grouped = initdoctor.diagnose(path, probe=True, onnx_strategy="expose", group_bytes=1)
    batches = reduce.probe["runs"]
    assert batches == 16  # fixed batch 2 in the graph, --batch-size 32
    assert exposed.probe["runs"] == batches and grouped.probe["runs"] == 6 * batches
    assert "6 output groups" in grouped.probe["notes"][-1]
    for a, b, c in zip(reduce.layers, exposed.layers, grouped.layers, strict=False):
        assert a.activation_var == pytest.approx(b.activation_var, rel=1e-5)
        assert c.activation_var == b.activation_var and c.input_second_moment == b.input_second_moment
        assert a.dead_fraction == b.dead_fraction == c.dead_fraction


def test_progress_reaches_the_number_of_layer_calls(tmp_path):
    seen = []
    initdoctor.diagnose(plain_mlp(depth=5, width=16), probe=True, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]
    path = tmp_path / "m.onnx"
    torch.onnx.export(plain_mlp(depth=5, width=16), (torch.randn(1, 64),), str(path), dynamo=False)
    seen.clear()
    initdoctor.diagnose(path, probe=True, batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (20, 20) and len(seen) == 20  # 5 layers × 4 runs of the fixed batch of 1


def test_probe_timeout_and_input_cap(tmp_path):
    (tmp_path / "slow.py").write_text(
        "import time\nfrom torch import nn\n"
        "class Slow(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(8, 8)\n"
        "    def forward(self, x):\n        while True:\n            time.sleep(0.01)\n"
        "def build():\n    return Slow()\n"
    )
    proc = run_cli("inspect", "slow:build", "--timeout", "5", cwd=tmp_path)
    assert proc.returncode == 2
    # torch.fx calls the forward to trace it: that is what hangs (5 s: importing torch fits in it)
    assert proc.stderr.strip() == "initdoctor: error: tracing the model did not finish within 5 s (--timeout)"
    proc = run_cli(
        "inspect", "examples.models:kaiming_mlp", "--input-shape", "100000,64", "--max-input-mib", "8"
    )
    assert proc.returncode == 2 and "would take 24 MiB" in proc.stderr and "cap is 8 MiB" in proc.stderr


def test_inferred_input_for_a_first_layer_stored_in_out():
    """A first layer whose weight is stored [in, out] (ONNX MatMul, Hugging Face Conv1D) takes
    inputs of width ``in``: the probe infers [B, 128] for a 128 → 512 layer."""
    from initdoctor.model import infer_input_shape

    assert infer_input_shape("matmul", (128, 512), 1, 4) == (4, 128)
    assert infer_input_shape("linear", (512, 128), 1, 4) == (4, 128)
    assert infer_input_shape("conv2d", (16, 3, 3, 3), 1, 2) == (2, 3, 32, 32)
    assert infer_input_shape("embedding", (100, 8), 1, 2) == (2, 16)
