"""Behaviour pinned: every zoo case's JSON equals the golden file written by initdoctor 0.7.0
(ignoring only ``rule``, the schema version and the tmp folder; floats to 1e-6 relative)."""

from __future__ import annotations

import json
import os

import pytest

from tests import zoo

REGEN = os.environ.get("INITDOCTOR_REGEN_GOLDEN") == "1"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    zoo.write_fixtures(folder)
    return folder


@pytest.mark.parametrize("case", list(zoo.CASES))
def test_golden(fixtures, case):
    code, data = zoo.run_case(case, fixtures)
    got = {"exit_code": code, "output": zoo.normalize(data, fixtures)}
    path = zoo.golden_path(case)
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("regenerated")
    want = json.loads(path.read_text())
    differences = zoo.same(want, got)
    assert not differences, "\n".join(differences[:20])


def test_every_golden_has_a_case():
    assert sorted(p.stem for p in zoo.GOLDEN.glob("*.json")) == sorted(zoo.CASES)
