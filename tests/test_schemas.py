"""Every command's JSON validates against its JSON Schema (docs/schemas/, draft 2020-12), and the
schema files agree with the code: the enums, the always-present fields, the schema names."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from initdoctor.cli import app
from initdoctor.gains import NONLINEARITIES
from initdoctor.options import METHODS, MODES
from initdoctor.report import (
    COMPARE_SCHEMA,
    FIX_SCHEMA,
    REPORT_SCHEMA,
    Change,
    LayerFinding,
    NormFinding,
    Role,
    Source,
    Status,
    Summary,
)
from initdoctor.report.model import BlockFinding
from tests import zoo
from tests.conftest import ROOT

SCHEMAS = ROOT / "docs" / "schemas"
NAMES = {"report": REPORT_SCHEMA, "fix": FIX_SCHEMA, "compare": COMPARE_SCHEMA}


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validate(name: str, data: dict) -> None:
    errors = sorted(Draft202012Validator(schema(name)).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    zoo.write_fixtures(folder)
    return folder


def run(*args: str) -> tuple[int, dict]:
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)
    assert result.exit_code in (0, 1), (args, result.exit_code, result.output, result.exception)
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("name", list(NAMES))
def test_schema_files_are_valid_draft_2020_12(name):
    Draft202012Validator.check_schema(schema(name))
    assert schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema(name)["properties"]["schema"] == {"const": NAMES[name]}
    assert schema(name)["title"] == NAMES[name]


# inspect: static and probed, torch and ONNX, residual blocks, embeddings, norms, settings, sharded
INSPECT = [
    "pt",
    "safetensors_sharded",
    "onnx_xavier",
    "onnx_static",
    "onnx_resnet_plain",
    "factory_resnet_plain",
    "factory_resnet_bn",
    "factory_embed",
    "factory_kaiming_mlp_backward",
    "settings_leaky",
    "settings_tanh_fan_out",
]


@pytest.mark.parametrize("case", INSPECT + [c for c in zoo.CASES if c.startswith(("fix_", "compare_"))])
def test_zoo_outputs_match_their_schema(fixtures, case):
    _, data = zoo.run_case(case, fixtures)
    validate(zoo.CASES[case][0].replace("inspect", "report"), data)


def test_inspect_probe_and_residual_cases_fill_what_the_schema_allows(fixtures):
    _, probed = zoo.run_case("factory_resnet_plain", fixtures)
    assert probed["probe"] is not None and probed["residual_blocks"]
    _, static = zoo.run_case("onnx_static", fixtures)
    assert static["probe"] is None


def test_fix_that_writes_matches_the_schema(fixtures, tmp_path):
    code, data = run(
        "fix",
        str(fixtures / "xavier.safetensors"),
        "-o",
        str(tmp_path / "out.safetensors"),
        "--format",
        "json",
    )
    assert code == 0 and data["written"] and data["after"] is not None and data["output"]
    validate("fix", data)
    model = tmp_path / "m.pt"
    shutil.copy(fixtures / "xavier.pt", model)
    code, data = run("fix", str(model), "--in-place", "--method", "reinit", "--zero-bias", "--format", "json")
    assert data["backup"] and data["changes"][0]["bias_zeroed"] and data["changes"][0]["factor"] is None
    validate("fix", data)
    code, data = run(
        "fix",
        "examples.models:xavier_mlp",
        "--method",
        "lsuv",
        "-o",
        str(tmp_path / "l.pt"),
        "--format",
        "json",
    )
    assert data["changes"][0]["iterations"] >= 1
    validate("fix", data)


def test_compare_with_layers_on_one_side_only(fixtures):
    """A layer that only one side has: its other side is null, and so is the delta."""
    _, data = run(
        "compare", str(fixtures / "xavier.pt"), str(fixtures / "resnet_plain.pt"), "--format", "json"
    )
    assert any(row["status_a"] is None for row in data["layers"])
    assert any(row["status_b"] is None for row in data["layers"])
    validate("compare", data)


def _props(name: str, *path: str) -> dict:
    node = schema(name)
    for key in path:
        node = node[key]
    return node


def _fields(cls: type, drop: tuple[str, ...] = ()) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in drop]


def test_schemas_list_every_field_the_code_writes():
    layer = _props("report", "properties", "layers", "items")
    assert layer["required"] == _fields(LayerFinding, ("weight_key", "bias_key"))
    assert _props("report", "properties", "norm_layers", "items")["required"] == _fields(NormFinding)
    assert _props("report", "properties", "residual_blocks", "items")["required"] == _fields(BlockFinding)
    assert _props("report", "$defs", "summary")["required"] == _fields(Summary)
    change = _props("fix", "properties", "changes", "items")
    assert change["required"] == _fields(Change, ("bias_key", "shape"))
    # the definitions the files share are the same
    assert _props("fix", "$defs", "summary") == _props("report", "$defs", "summary")
    assert _props("compare", "$defs", "model") == _props("report", "$defs", "model")


def test_schema_enums_are_the_code_s():
    statuses = [s.value for s in Status]
    layer = _props("report", "properties", "layers", "items", "properties")
    assert layer["status"]["enum"] == statuses
    assert layer["role"]["enum"] == [r.value for r in Role]
    assert layer["nonlinearity_source"]["enum"] == [s.value for s in Source]
    assert _props("report", "$defs", "summary", "properties", "status")["enum"] == statuses
    settings = _props("report", "properties", "settings", "properties")
    # the report records the mode judged: "auto" is resolved to the one the weights follow
    assert settings["mode"]["enum"] == [m for m in MODES if m != "auto"]
    assert _props("report", "$defs", "summary", "properties", "kaiming_mode")["enum"] == [
        *settings["mode"]["enum"],
        None,
    ]
    assert settings["nonlinearity"]["enum"] == list(NONLINEARITIES)
    change = _props("fix", "properties", "changes", "items", "properties")
    assert change["method"]["enum"] == list(METHODS) and change["status_before"]["enum"] == statuses
    row = _props("compare", "properties", "layers", "items", "properties")
    assert row["status_a"]["enum"] == row["status_b"]["enum"] == [*statuses, None]
