"""Trained checkpoints and fine-tuning (issue 14 item 7): a checkpoint whose norm layers' γ/β vary
across channels is ``trained`` — judged by measured propagation only, no rescale suggested, ``fix``
refuses it without ``--force``; a trained backbone with a new head (a ``BertModel`` checkpoint
loaded as ``BertForSequenceClassification``) is ``mixed`` and its head is judged against the
backbone's measured output scale. Tiny real BERTs (seed 0, hidden 32, 2 layers), trained briefly
with Adam on a synthetic task (is the first token id below 500), saved by ``save_pretrained``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import initdoctor
from initdoctor.errors import InitDoctorError

transformers = pytest.importorskip("transformers")

CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 1000,
    "pad_token_id": 0,
}
STEPS = 40


def fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def trained_bert(tmp_path_factory) -> tuple[Path, float, float]:
    """A BertModel backbone trained 40 Adam steps (lr 3e-3, batch 16 × 8 tokens) through a
    classification head; the backbone alone saved. Returns (folder, mean loss of the first 5
    steps, of the last 5)."""
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2, **CONFIG))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(STEPS):
        ids = torch.randint(1, 1000, (16, 8), generator=gen)
        loss = model(input_ids=ids, labels=(ids[:, 0] < 500).long()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    folder = tmp_path_factory.mktemp("trained") / "bert"
    model.bert.eval().save_pretrained(folder)
    return folder, sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def as_classifier(src: Path, dst: Path) -> Path:
    """The backbone's folder with config.architectures = BertForSequenceClassification."""
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_a_fresh_folder_is_init_with_the_usual_verdict(tmp_path):
    folder = tmp_path / "fresh"
    fresh().save_pretrained(folder)
    report = initdoctor.diagnose(folder, probe=True)
    assert report.summary.weights == "init"
    assert report.summary.status == "ok"
    assert report.summary.message.endswith("layers within Kaiming bands")
    assert not any(n.startswith("weights:") for n in report.notes)


def test_a_trained_folder_is_judged_by_measured_propagation_only(trained_bert):
    folder, first, last = trained_bert
    assert last < first  # it learned something
    report = initdoctor.diagnose(folder, probe=True)
    assert report.summary.weights == "trained"
    assert report.summary.status == "ok"  # post-LN stream, measured: no growth
    assert report.summary.message.startswith("trained weights: measured propagation within bounds")
    note = next(n for n in report.notes if n.startswith("weights: trained"))
    assert "5 of 5 norm layers have γ/β varying across channels" in note
    judged = [f for f in report.layers if f.status != "skip"]
    assert len(judged) == 13  # 2 × (q, k, v, attn out, ffn in, ffn out) + pooler
    assert all(f.suggested_scale is None for f in report.layers)
    assert all("a rescale would destroy what was learned" in f.message for f in judged)
    query = next(f for f in judged if f.name == "encoder.layer.0.attention.self.query")
    assert query.expected_std == pytest.approx(1 / math.sqrt(32))  # the fact stays: Kaiming, linear
    assert query.weight_std == pytest.approx(query.std_ratio * query.expected_std)


def test_fix_refuses_a_trained_folder_without_force(trained_bert, tmp_path):
    folder = trained_bert[0]
    with pytest.raises(InitDoctorError, match="the weights are trained"):
        initdoctor.fix_model(folder, output=tmp_path / "out", all_layers=True)
    forced = initdoctor.fix_model(folder, all_layers=True, dry_run=True, force=True)
    assert len(forced.changes) == 13  # --force: judged (and planned) as an initialization


def test_cli_fix_of_a_trained_folder_exits_2_with_one_line(trained_bert, tmp_path):
    from typer.testing import CliRunner

    from initdoctor.cli import app

    result = CliRunner().invoke(app, ["fix", str(trained_bert[0]), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "the weights are trained" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_bert_checkpoint_as_a_classifier_is_mixed_and_its_head_judged_on_the_backbone(
    trained_bert, tmp_path
):
    folder = as_classifier(trained_bert[0], tmp_path / "cls")
    loaded = initdoctor.load(folder)
    assert loaded.description.new_layers == ["classifier.bias", "classifier.weight"]
    report = initdoctor.diagnose(folder, probe=True)
    assert report.summary.weights == "mixed"
    assert any(n.startswith("weights: mixed") for n in report.notes)
    head = next(f for f in report.layers if f.name == "classifier")
    assert head.role == "output" and head.fan_in == 32
    # the backbone's measured output scale: the pooler's tanh output, E[x²] well below 1
    moment = head.input_second_moment
    assert moment is not None and 0.05 < moment < 0.9
    expected = 1 / math.sqrt(32 * moment)  # gain 1 / sqrt(fan_in · E[x²]): unit-variance logits
    assert head.expected_std == pytest.approx(expected)
    assert head.weight_std == pytest.approx(0.02, rel=0.3)  # transformers' N(0, 0.02)
    assert head.suggested_scale == pytest.approx(expected / head.weight_std)
    assert head.status == "ok"  # an output layer is flagged only when too large
    assert head.message.startswith("new layer (not in the checkpoint)")
    pooler = next(f for f in report.layers if f.name == "bert.pooler.dense")
    assert pooler.suggested_scale is None  # trained: facts only


def test_fix_of_a_mixed_checkpoint_touches_only_the_new_layers(trained_bert, tmp_path):
    folder = as_classifier(trained_bert[0], tmp_path / "cls")
    result = initdoctor.fix_model(folder, all_layers=True, dry_run=True)
    assert [c.weight_key for c in result.changes] == ["classifier.weight"]
    change = result.changes[0]
    assert change.factor == pytest.approx(change.expected_std / change.old_std)
    assert len([s for s in result.skipped if "trained weights" in s[1]]) == 13


def test_a_large_new_head_is_flagged_against_the_backbone(trained_bert, tmp_path):
    """A head drawn at std 2 (variance ×32 the backbone-matched 0.368²): P206 error, the rescale."""
    folder = as_classifier(trained_bert[0], tmp_path / "cls")
    config = json.loads((folder / "config.json").read_text())
    config["initializer_range"] = 2.0
    (folder / "config.json").write_text(json.dumps(config))
    report = initdoctor.diagnose(folder, probe=True)
    head = next(f for f in report.layers if f.name == "classifier")
    assert head.rule == "P206" and head.status == "error"
    assert head.weight_variance_ratio == pytest.approx(32, rel=0.1)  # beyond 2 · T_error = 8
    assert head.suggested_scale == pytest.approx(head.expected_std / head.weight_std)
