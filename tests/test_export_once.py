"""One ``torch.export`` per diagnosis of a model only torch.export can read (a transformers LLaMA),
on the shapes the probe runs: the caller's example inputs, ``--input``/``--input-shape`` shapes,
else the small example (which the seeded batch copies). The exports are counted by wrapping
``torch.export.export`` (the export itself still runs)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import initdoctor
from initdoctor import api

transformers = pytest.importorskip("transformers")


def tiny_llama() -> Any:
    """A factory (``tests.test_export_once:tiny_llama``): hidden 32, 1 layer, vocab 64."""
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama()


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input_ids shape of every torch.export.export call, in order."""
    real = torch.export.export
    seen: list[tuple[int, ...]] = []

    def counting(module: Any, args: tuple, kwargs: Any = None, **rest: Any) -> Any:
        tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        seen.append(tuple(tensors[0].shape))
        return real(module, args, kwargs, **rest)

    monkeypatch.setattr(torch.export, "export", counting)
    return seen


def _ids(batch: int, tokens: int) -> Any:
    return torch.randint(0, 64, (batch, tokens), generator=torch.Generator().manual_seed(1))


def _probed(report: Any) -> list[Any]:
    return [i["shape"] for i in report.to_dict()["probe"]["inputs"]]


def test_example_inputs_are_the_export_example(model: Any, exports: list) -> None:
    report = initdoctor.diagnose(model, example_inputs=_ids(3, 24), seed=0)
    assert exports == [(3, 24)]
    assert _probed(report) == [[3, 24]]
    named = initdoctor.diagnose(model, example_inputs={"input_ids": _ids(3, 24)}, seed=0)
    assert exports == [(3, 24), (3, 24)]  # by name: the same single export
    assert named.to_dict()["layers"] == report.to_dict()["layers"]


def test_input_shapes_and_named_inputs_export_once(model: Any, exports: list) -> None:
    report = initdoctor.diagnose(model, input_shapes=[(3, 20)], seed=0)
    assert exports == [(3, 20)] and _probed(report) == [[3, 20]]
    report = initdoctor.diagnose(model, named_inputs=["input_ids=1,12:int64"], seed=0)
    assert exports == [(3, 20), (1, 12)] and _probed(report) == [[1, 12]]


def test_default_probe_and_static_export_once_on_the_small_example(model: Any, exports: list) -> None:
    probed = initdoctor.diagnose(model, seed=0)
    assert exports == [(2, 16)] and _probed(probed) == [[2, 16]]  # the seeded batch copies it
    static = initdoctor.diagnose(model, probe=False, input_shapes=[(3, 20)], example_inputs=_ids(3, 24))
    assert exports == [(2, 16), (2, 16)] and static.probe is None  # no probe: the small example


def test_assert_healthy_init_exports_once(model: Any, exports: list) -> None:
    report = initdoctor.assert_healthy_init(model, _ids(2, 8), fail_on="never")
    assert exports == [(2, 8)] and _probed(report) == [[2, 8]]


def test_fix_exports_once_per_diagnosis(monkeypatch: pytest.MonkeyPatch, exports: list) -> None:
    runs: list[int] = []
    real_run = api.run

    def counted_run(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(api, "run", counted_run)
    result = initdoctor.fix_model(tiny_llama(), input_shapes=[(2, 12)], all_layers=True)
    assert len(runs) >= 2 and result.after is not None  # before, after (and any settle re-check)
    assert exports == [(2, 12)] * len(runs)


def test_cli_factory_input_and_input_shape_export_once(exports: list) -> None:
    from typer.testing import CliRunner

    from initdoctor.cli import app

    spec = "tests.test_export_once:tiny_llama"
    for flags, shape in ((["--input", "input_ids=3,10:int64"], [3, 10]), (["--input-shape", "1,9"], [1, 9])):
        result = CliRunner().invoke(app, ["inspect", spec, *flags, "--format", "json"])
        assert result.exit_code in (0, 1, 2), result.output
        assert [i["shape"] for i in json.loads(result.stdout)["probe"]["inputs"]] == [shape]
    assert exports == [(3, 10), (1, 9)]


def test_inputs_the_model_refuses_still_report_its_error(model: Any, exports: list) -> None:
    """Too many inputs for the example: no planned export; the probe says what is wrong."""
    with pytest.raises(initdoctor.InitDoctorError, match="2 were given"):
        initdoctor.diagnose(model, example_inputs=(_ids(2, 8), _ids(2, 8)), seed=0)
    assert exports == [(2, 16)]


def test_a_bf16_model_is_exported_on_bf16_inputs(exports: list) -> None:
    """The seeded example is placed as the probe places its inputs (the model's device and floating
    dtype): a bf16 ViT's program takes the bf16 pixel_values the probe feeds it (before: exported
    on float32 ones, the probe failed with "Tensor dtype mismatch")."""
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
    )
    torch.manual_seed(0)
    model = transformers.ViTModel(config).to(torch.bfloat16).eval()
    report = initdoctor.diagnose(model, seed=0)
    assert exports == [(2, 3, 16, 16)]
    assert report.to_dict()["probe"]["inputs"] == [
        {"shape": [2, 3, 16, 16], "dtype": "bfloat16", "name": "pixel_values"}
    ]
    assert "graph read from torch.export (torch.fx could not trace the model)" in report.notes
    patch = {f.name: f for f in report.layers}["embeddings.patch_embeddings.projection"]
    assert patch.fan_in == 3 * 8 * 8  # a conv 3 → 32, 8×8 patches
