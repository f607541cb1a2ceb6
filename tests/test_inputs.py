"""Probe inputs for any model: inferred from a transformers config (images of ``image_size``, token
ids within ``vocab_size``, decoder ids, text + image), several inputs by position or by name,
and real example tensors from a file (.npz, .pt, .safetensors) for the probe and the LSUV fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import initdoctor
from initdoctor.cli import app
from tests.conftest import cli_json

pytest.importorskip("transformers")

from tests import inputs_zoo  # noqa: E402  (needs transformers)


def _error_line(*args: str) -> str:
    """Run ``initdoctor ARGS`` in this process; it must exit 2 with one error line, no traceback."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("initdoctor: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _measured(report: dict, name: str) -> dict:
    return next(layer for layer in report["layers"] if layer["name"] == name)


def test_vit_is_probed_at_its_config_image_size():
    # image_size 64: 0.8.0 fed 32×32 inferred from the patch conv and crashed
    code, report = cli_json("tests.inputs_zoo:vit64", "--no-progress")
    assert code in (0, 1)
    assert report["probe"]["inputs"] == [
        {"shape": [2, 3, 64, 64], "dtype": "float32", "name": "pixel_values"}
    ]
    patch = _measured(report, "embeddings.patch_embeddings.projection")
    assert patch["activation_var"] > 0 and patch["variance_ratio"] is not None


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_token_models_run_at_the_given_batch(name):
    # 0.8.0: "Guard failed: input_ids.size()[0] == 2" (the graph was exported at batch 2)
    code, report = cli_json(
        f"tests.inputs_zoo:{name}",
        "--no-progress",
        "--input-shape",
        "8,16",
        "--input-dtype",
        "int64",
        "--vocab-size",
        "1000",
    )
    assert code in (0, 1)
    assert report["probe"]["inputs"] == [{"shape": [8, 16], "dtype": "int64"}]
    assert report["probe"]["backend"] == "torch.export"
    measured = [f for f in report["layers"] if f.get("activation_var") is not None]
    assert len(measured) >= 8 and all(np.isfinite(f["activation_var"]) for f in measured)


def test_a_new_batch_measures_what_the_model_computes():
    # the graph was exported at batch 2; at batch 8 the probe exports it again for these inputs
    model = inputs_zoo.llama()
    default = initdoctor.diagnose(model, probe=True)
    assert default.probe["inputs"] == [{"shape": [2, 16], "dtype": "int64", "name": "input_ids"}]
    report = initdoctor.diagnose(model, probe=True, named_inputs=("input_ids=8,16:int64",))
    ids = np.random.default_rng(0).integers(0, 1000, size=(8, 16))  # the seeded ids: config vocab 1000
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, y: seen.append(y))
    with torch.no_grad():
        model(torch.from_numpy(ids), use_cache=False)
    hook.remove()
    q = next(f for f in report.layers if f.name == "model.layers.0.self_attn.q_proj")
    assert q.activation_var == pytest.approx(seen[0].double().var(unbiased=False).item(), rel=1e-5)


def test_clip_text_and_image_inputs_from_its_two_configs():
    report = initdoctor.diagnose(inputs_zoo.clip(), probe=True)
    assert report.probe["inputs"] == [
        {"shape": [2, 16], "dtype": "int64", "name": "input_ids"},
        {"shape": [2, 3, 32, 32], "dtype": "float32", "name": "pixel_values"},
    ]
    text = next(f for f in report.layers if f.name == "text_model.encoder.layers.0.self_attn.q_proj")
    vision = next(f for f in report.layers if f.name == "vision_model.encoder.layers.0.self_attn.q_proj")
    assert text.activation_var > 0 and vision.activation_var > 0


def test_t5_gets_decoder_input_ids():
    report = initdoctor.diagnose(inputs_zoo.t5(), probe=True)
    names = [i.get("name") for i in report.probe["inputs"]]
    assert names == ["input_ids", "decoder_input_ids"]
    decoder = next(f for f in report.layers if f.name == "decoder.block.0.layer.0.SelfAttention.q")
    assert decoder.activation_var > 0


def test_sequence_length_is_capped_by_the_position_table():
    from initdoctor.formats.model_inputs import config_inputs

    model = inputs_zoo.gpt2()
    model.config.n_positions = 8  # read only: a table of 8 positions takes at most 8 tokens
    (spec,) = config_inputs(model, 4)
    assert (spec.name, spec.shape, spec.dtype, spec.high) == ("input_ids", (4, 8), "int64", 1000)


def test_named_input_on_the_command_line():
    code, report = cli_json("tests.inputs_zoo:mlp", "--no-progress", "--input", "x=8,16:float32")
    assert report["probe"]["inputs"] == [{"shape": [8, 16], "dtype": "float32", "name": "x"}]
    assert _measured(report, "fc1")["activation_var"] > 0


def _by_hand(x: np.ndarray) -> float:
    """Var[x @ W.T + b] of the factory's first layer, over every element (population variance)."""
    fc1 = inputs_zoo.mlp().fc1
    y = x.astype(np.float64) @ fc1.weight.detach().double().numpy().T + fc1.bias.detach().double().numpy()
    return float(y.var())


def _write(kind: str, path, x: np.ndarray) -> None:
    if kind == "npz-named":
        np.savez(path, x=x)
    elif kind == "npz-unnamed":
        np.savez(path, x)
    elif kind == "pt-tensor":
        torch.save(torch.from_numpy(x), path)
    elif kind == "pt-dict":
        torch.save({"x": torch.from_numpy(x)}, path)
    else:
        from safetensors.numpy import save_file

        save_file({"x": x}, str(path))


@pytest.mark.parametrize(
    "kind, suffix",
    [("npz-named", ".npz"), ("npz-unnamed", ".npz"), ("pt-tensor", ".pt"), ("pt-dict", ".pt"),
     ("safetensors", ".safetensors")],
)  # fmt: skip
def test_inputs_file_is_what_the_probe_measures(tmp_path, kind, suffix):
    x = (np.random.default_rng(7).standard_normal((12, 16)) * 3 + 1).astype(np.float32)
    path = tmp_path / f"batch{suffix}"
    _write(kind, path, x)
    code, report = cli_json("tests.inputs_zoo:mlp", "--no-progress", "--inputs", str(path))
    shown = {
        "shape": [12, 16],
        "dtype": "float32",
        **({"name": "x"} if "unnamed" not in kind and kind != "pt-tensor" else {}),
    }
    assert report["probe"]["inputs"] == [shown]
    assert _measured(report, "fc1")["activation_var"] == pytest.approx(_by_hand(x), rel=1e-5)


def test_library_inputs_dict_and_path(tmp_path):
    x = np.random.default_rng(3).standard_normal((6, 16)).astype(np.float32) * 2
    by_dict = initdoctor.diagnose(inputs_zoo.mlp(), probe=True, inputs={"x": torch.from_numpy(x)})
    np.savez(tmp_path / "x.npz", x=x)
    by_path = initdoctor.diagnose(inputs_zoo.mlp(), probe=True, inputs=tmp_path / "x.npz")
    for report in (by_dict, by_path):
        fc1 = next(f for f in report.layers if f.name == "fc1")
        assert fc1.activation_var == pytest.approx(_by_hand(x), rel=1e-5)


def test_onnx_inputs_by_name(tmp_path):
    onnx_path = tmp_path / "mlp.onnx"
    torch.onnx.export(
        inputs_zoo.mlp(), (torch.randn(2, 16),), str(onnx_path), input_names=["x"],
        dynamic_axes={"x": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    code, report = cli_json(str(onnx_path), "--no-progress", "--input", "x=5,16")
    assert report["probe"]["inputs"] == [{"shape": [5, 16], "dtype": "float32", "name": "x"}]
    x = np.random.default_rng(1).standard_normal((9, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    code, report = cli_json(str(onnx_path), "--no-progress", "--inputs", str(tmp_path / "x.npz"))
    assert report["probe"]["inputs"] == [{"shape": [9, 16], "dtype": "float32", "name": "x"}]
    fc1 = next(f for f in report["layers"] if f["activation_var"] is not None and f["fan_in"] == 16)
    assert fc1["activation_var"] == pytest.approx(_by_hand(x), rel=1e-5)
    line = _error_line("inspect", str(onnx_path), "--no-progress", "--input", "y=5,16")
    assert "no input named 'y'" in line and "x" in line


def test_lsuv_fix_on_real_data(tmp_path):
    # lsuv on the file's batch: afterwards fc1's measured ratio on that batch is 1 within tol
    x = (np.random.default_rng(5).standard_normal((64, 16)) * 4).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = (
        initdoctor.fix_model(
            "tests.inputs_zoo:mlp",
            method="lsuv",
            output=tmp_path / "fixed.pt",
            inputs=tmp_path / "x.npz",
            quiet=None,
        )
        if False
        else initdoctor.fix_model(
            "tests.inputs_zoo:mlp", method="lsuv", output=tmp_path / "fixed.pt", inputs=tmp_path / "x.npz"
        )
    )
    assert [c.name for c in result.changes] == ["fc1"]
    fixed = inputs_zoo.mlp()
    fixed.load_state_dict(torch.load(tmp_path / "fixed.pt", weights_only=True))
    with torch.no_grad():
        y = fixed.fc1(torch.from_numpy(x))
    ratio = y.var(unbiased=False).item() / (2.0 * float((x.astype(np.float64) ** 2).mean()))
    assert ratio == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--input", "x=8,a:float32"], "expected name=shape:dtype"),
        (["--input", "x=8,16:float7"], "unknown dtype 'float7'"),
        (["--input", "x=8,0"], "must be positive"),
        (["--input", "x=8,16", "--input-shape", "8,16"], "not both"),
        (["--inputs", "missing.npz"], "no such file"),
        (["--inputs", "batch.csv"], "expected a .npz, .pt, .pth, .safetensors file"),
        (["--input", "y=8,16"], "no input named 'y'"),
    ],
)
def test_bad_input_specs_are_one_line_exit_2(tmp_path, args, words):
    (tmp_path / "batch.csv").write_text("1,2\n")
    args = [a if not a.endswith((".csv", ".npz")) else str(tmp_path / a) for a in args]
    assert words in _error_line("inspect", "tests.inputs_zoo:mlp", "--no-progress", *args)


def test_a_damaged_inputs_file_is_one_line(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert "cannot read it" in _error_line(
        "inspect", "tests.inputs_zoo:mlp", "--no-progress", "--inputs", str(tmp_path / "bad.pt")
    )
    np.savez(tmp_path / "big.npz", x=np.zeros((4, 16), np.float32))
    line = _error_line(
        "inspect",
        "tests.inputs_zoo:mlp",
        "--no-progress",
        "--inputs",
        str(tmp_path / "big.npz"),
        "--max-input-mib",
        "0.0001",
    )
    assert "cap" in line


def test_config_keys_input_and_inputs(tmp_path):
    x = np.random.default_rng(11).standard_normal((10, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    (tmp_path / "pyproject.toml").write_text('[tool.initdoctor]\ninput = ["x=3,16"]\n')
    code, report = cli_json("tests.inputs_zoo:mlp", "--no-progress", cwd=tmp_path)
    assert report["probe"]["inputs"] == [{"shape": [3, 16], "dtype": "float32", "name": "x"}]
    (tmp_path / "pyproject.toml").write_text('[tool.initdoctor]\ninputs = "x.npz"\n')
    code, report = cli_json("tests.inputs_zoo:mlp", "--no-progress", cwd=tmp_path)
    assert report["probe"]["inputs"] == [{"shape": [10, 16], "dtype": "float32", "name": "x"}]
    assert _measured(report, "fc1")["activation_var"] == pytest.approx(_by_hand(x), rel=1e-5)
