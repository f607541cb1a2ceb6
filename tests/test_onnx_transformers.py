"""Issue 14: torch and ONNX agree on the zoo's transformers (tests/realzoo.py, healthy and broken
twins). Each model is exported once, the way docs/onnx-export.md says (``realzoo.export_onnx``:
the dynamo exporter, the legacy one for T5), and ``initdoctor.diagnose(file, probe=True)`` must
give the factory's verdict: the same status and deciding rule, a broken twin's error naming one
of its culprit blocks, no crash. The same table, with timings, comes from
``PYTHONPATH=$PWD python benchmarks/verdict_onnx.py`` (docs/accuracy.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import initdoctor
from tests.realzoo import BY_NAME, MATRIX, Entry, export_onnx, named_errors
from tests.realzoo import factory_report as torch_report

TRANSFORMERS = [e for e in MATRIX if e.inputs != "image"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_transformers")


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in TRANSFORMERS])
def test_onnx_verdict_equals_torch(entry: Entry, folder: Path) -> None:
    onnx_report = initdoctor.diagnose(export_onnx(entry, folder), probe=True)
    direct = torch_report(entry.name)
    o, t = onnx_report.summary, direct.summary
    assert onnx_report.probe is not None and onnx_report.probe["backend"].startswith("onnx")
    assert (o.status, o.rule) == (t.status, t.rule), (o.message, t.message)
    if entry.healthy:
        assert o.status != "error"
        return
    named = named_errors(onnx_report)
    assert o.status == "error" and any(n.startswith(c) for n in named for c in entry.culprits), named
    # the same blocks as torch, by name (the exporters keep the module paths)
    assert set(named_errors(direct)) & set(named), (named_errors(direct), named)


def test_onnx_and_torch_judge_the_same_layers(folder: Path) -> None:
    """Layer by layer on a healthy model: every layer both report has the same kind, fan_in and
    status, and the ONNX probe's measured variance ratio is torch's (GPT-2: gelu_new exported as a
    composite, a tied head, Conv1D weights)."""
    onnx_layers = {
        f.name: f for f in initdoctor.diagnose(export_onnx(BY_NAME["gpt2"], folder), probe=True).layers
    }
    both = [(f, onnx_layers[f.name]) for f in torch_report("gpt2").layers if f.name in onnx_layers]
    assert len(both) >= 16
    for t, o in both:
        assert (o.kind == "embedding") == (t.kind == "embedding"), t.name
        assert (o.fan_in, o.status) == (t.fan_in, t.status), t.name
        if t.variance_ratio is not None:
            assert o.variance_ratio == pytest.approx(t.variance_ratio, rel=0.15), t.name


def test_bert_mlm_transform_is_normalized_after_its_gelu(folder: Path) -> None:
    """BERT's MLM head: dense → GELU → LayerNorm. ONNX reads the activation → norm pattern as torch
    does (role ``normalized``, not a K101 warning against GELU's gain)."""
    report = initdoctor.diagnose(export_onnx(BY_NAME["bert"], folder), probe=True)
    dense = next(f for f in report.layers if f.name == "cls.predictions.transform.dense")
    assert (dense.role, dense.status, dense.nonlinearity) == ("normalized", "ok", "gelu")


def test_clip_projections_before_l2_normalisation_are_linear(folder: Path) -> None:
    """CLIP's projections feed ``x / ‖x‖`` (Pow, ReduceSum, Pow ½, Div) and a graph output: no
    nonlinearity (gain 1, as torch), not the default ReLU's gain √2."""
    report = initdoctor.diagnose(export_onnx(BY_NAME["clip"], folder), probe=True)
    for name in ("text_projection", "visual_projection"):
        layer = next(f for f in report.layers if f.name == name)
        assert (layer.nonlinearity, layer.nonlinearity_source, layer.gain) == ("linear", "graph", 1.0), name
        assert layer.expected_std == pytest.approx(1 / 8)  # fan_in 64


def test_t5_tied_head_copy_is_the_embedding(folder: Path) -> None:
    """The legacy exporter folds T5's ``shared.weight.T`` into a new constant for ``lm_head``: the
    copy is recognised by its values and reported as the tied embedding (skip), not as an output
    layer with std 1 = 8× Kaiming (a false K102 error)."""
    path = export_onnx(BY_NAME["t5"], folder)
    inits = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    report = initdoctor.diagnose(path, probe=True)
    head = next(f for f in report.layers if f.name == "lm_head")
    weight = onnx.numpy_helper.to_array(inits[head.weight_key])
    assert np.array_equal(weight.T, onnx.numpy_helper.to_array(inits["shared.weight"]))
    assert (head.kind, head.status, head.rule) == ("embedding", "skip", "S003")
    assert head.weight_std == pytest.approx(1.0, abs=0.01)  # T5's embedding: N(0, 1)
    assert any("lm_head: its weight is shared's" in n for n in report.notes)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_p207_measures_the_onnx_logits_as_torch(name: str, folder: Path) -> None:
    """P207 on the ONNX probe: the dynamo export's only output (``linear``, written by the tied or
    untied head's MatMul) is read as the logits; the expected initial loss equals torch's to 1e-3
    (measured: GPT-2 6.92072 vs 6.92077, LLaMA 6.92078 vs 6.92121; ln 1000 = 6.90776)."""
    onnx_loss = initdoctor.diagnose(export_onnx(BY_NAME[name], folder), probe=True).summary.init_loss
    torch_loss = torch_report(name).summary.init_loss
    assert onnx_loss is not None and torch_loss is not None
    assert onnx_loss["classes"] == torch_loss["classes"] == 1000
    assert onnx_loss["expected"] == pytest.approx(torch_loss["expected"], abs=1e-3)
    assert onnx_loss["status"] == torch_loss["status"] == "ok"


def test_p207_warns_on_the_onnx_logits_of_a_broken_llama(folder: Path) -> None:
    """LLaMA with N(0, 1) weights: logits std ≈ 8, expected initial loss ≈ 26 nats against
    ln 1000 = 6.9 (torch 25.9 on its own batch), a P207 warning from the ONNX probe too."""
    loss = initdoctor.diagnose(export_onnx(BY_NAME["llama_broken"], folder), probe=True).summary.init_loss
    assert loss is not None and loss["status"] == "warn" and loss["head"] == "lm_head"
    assert 7.5 < loss["logit_std"] < 8.5 and 24 < loss["expected"] < 28
