"""Issue 14's acceptance matrix: the models people have (tests/realzoo.py: Hugging Face transformers
from tiny configs, torchvision-equivalent CNNs in torch.nn), each healthy with its library's own
init and a deliberately broken twin, through every entry point that applies: factory (probe on,
default flags), state_dict + ``--model``, bare state_dict, Hugging Face folder, ONNX export.

What must hold: no crash anywhere; a healthy model is never ``error``; a broken twin is ``error``
with an error-level finding (layer or residual block) whose name starts with one of its culprits;
the same model gives the same verdict from every entry that has its graph; a file without a graph
gives ``unknown`` rather than an alarm built on a guess. ``KNOWN_GAPS`` lists the rows that do not
hold yet, each with what was measured (``xfail(strict=True)``: a row that starts to pass fails the
suite until it is taken off the list).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import initdoctor
from initdoctor.report import Report
from tests.realzoo import BY_NAME, MATRIX, Entry, factory_report

#: rows that do not hold yet (name → what happens); see docs/accuracy.md
KNOWN_GAPS: dict[str, str] = {}
# densenet_nobn (BatchNorm removed) was a gap here until session 3: nothing at init separates it
# from the BN model and it trains as well (SGD lr 0.01/0.03, AdamW; it diverges only at SGD lr 0.1,
# where healthy models diverge too): the matrix counts it healthy, and densenet_broken (std ×10 in one
# dense block, no BN) is the DenseNet's broken twin (docs/rules-evidence.md).
#: ONNX rows whose verdict differs from torch's
ONNX_GAPS: dict[str, str] = {}

HF = [e for e in MATRIX if e.hf]


def _errors(report: Report) -> list[str]:
    layers = [f.name for f in report.layers if f.status == "error"]
    return layers + [b.name for b in report.residual_blocks if b.status == "error"]


def check_verdict(entry: Entry, report: Report) -> None:
    """A healthy model is not ``error``; a broken one is, naming a culprit."""
    status = report.summary.status
    if entry.healthy:
        assert status != "error", f"{entry.name}: false alarm: {report.summary.message}"
        return
    named = _errors(report)
    assert status == "error", f"{entry.name}: missed ({status}): {report.summary.message}"
    assert any(n.startswith(c) for n in named for c in entry.culprits), (
        entry.name,
        named[:8],
        entry.culprits,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    """``saved(entry)``: a folder with the model's ``w.pt`` (its state_dict) and, for a Hugging Face
    model, ``m/`` (``save_pretrained``), built once per model for the three tests that read them."""
    root = tmp_path_factory.mktemp("matrix")

    @functools.cache
    def get(name: str) -> Path:
        entry, folder = BY_NAME[name], root / name
        folder.mkdir()
        model = entry.build()
        torch.save(model.state_dict(), folder / "w.pt")
        if entry.hf:
            model.save_pretrained(folder / "m")
        return folder

    return lambda entry: get(entry.name)


def _gap(entry: Entry) -> list:
    reason = KNOWN_GAPS.get(entry.name)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


ROWS = [pytest.param(e, id=e.name, marks=_gap(e)) for e in MATRIX]


@pytest.mark.parametrize("entry", ROWS)
def test_factory_verdict(entry: Entry) -> None:
    report = factory_report(entry.name)
    assert report.probe is not None and report.probe["backend"].startswith("torch")
    assert report.summary.unknown_reason is None  # probed: the verdict is a measured one
    check_verdict(entry, report)


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in MATRIX])
def test_state_dict_with_model_gives_the_factory_verdict(entry: Entry, saved) -> None:
    """The same weights loaded into the factory's model (``--model F --weights W``): the same
    verdict, rule and residual growth as the factory itself."""
    direct = factory_report(entry.name)
    loaded = initdoctor.diagnose(entry.factory, weights=saved(entry) / "w.pt", probe=True)
    assert (loaded.summary.status, loaded.summary.rule) == (direct.summary.status, direct.summary.rule)
    if direct.summary.residual_growth is not None:
        assert loaded.summary.residual_growth == pytest.approx(direct.summary.residual_growth, rel=1e-5)


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in MATRIX])
def test_bare_state_dict_raises_no_alarm_on_a_guess(entry: Entry, saved) -> None:
    """No graph: a transformer's or a normalized/residual CNN's checkpoint is ``unknown`` (what
    would give a verdict is named), never an error built on an assumed chain; a healthy model is
    never ``error``."""
    report = initdoctor.diagnose(saved(entry) / "w.pt")
    s = report.summary
    if entry.inputs != "image":  # every transformer: norms and repeated blocks in the names
        assert s.status == "unknown" and s.unknown_reason == "no-graph", s.message
        assert "config.json" in s.message and "--model" in s.message
        assert all(f.suggested_scale is None for f in report.layers)
    if entry.healthy:
        assert s.status != "error", s.message


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name, marks=_gap(e)) for e in HF])
def test_hugging_face_folder_gives_the_factory_verdict(entry: Entry, saved) -> None:
    direct = factory_report(entry.name)
    folder = initdoctor.diagnose(saved(entry) / "m", probe=True)
    assert folder.model["format"] == "hf-folder"
    assert (folder.summary.status, folder.summary.rule) == (direct.summary.status, direct.summary.rule)
    check_verdict(entry, folder)


CNN_ONNX = [e for e in MATRIX if e.inputs == "image"]


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(e, id=e.name, marks=[pytest.mark.xfail(strict=True, reason=ONNX_GAPS[e.name])])
        if e.name in ONNX_GAPS
        else pytest.param(e, id=e.name)
        for e in CNN_ONNX
    ],
)
def test_bn_faithful_onnx_export_agrees_with_torch(entry: Entry, tmp_path: Path) -> None:
    """``dynamo=False`` in training mode keeps BatchNorm (on batch statistics, as the torch probe
    runs it): the ONNX verdict is the torch verdict and the measured growth is the same."""
    import copy

    model = copy.deepcopy(entry.build())  # the training-mode export runs the model once
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the probe's batch
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.TRAINING)
    onnx_report = initdoctor.diagnose(path, probe=True)
    torch_report = factory_report(entry.name)
    assert onnx_report.summary.status == torch_report.summary.status, (
        onnx_report.summary.message,
        torch_report.summary.message,
    )
    if torch_report.summary.residual_growth is not None and onnx_report.summary.residual_growth:
        assert onnx_report.summary.residual_growth == pytest.approx(
            torch_report.summary.residual_growth, rel=1e-3
        )
