"""Fuzzing the loaders: mutated real files (truncated, bytes flipped, bytes inserted) must either
load or fail with an InitDoctorError — never another exception (a traceback at the CLI).

Fixed seed (hypothesis ``derandomize``) in CI: ``INITDOCTOR_FUZZ_EXAMPLES`` examples per format
(default 100; 6 real files and 6 crafted ones, issue 13's = 1,200 inputs). A longer run:
``INITDOCTOR_FUZZ_EXAMPLES=1000 pytest -q tests/test_fuzz.py`` (12,000 inputs).
"""

from __future__ import annotations

import contextlib
import json
import os

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import initdoctor
from examples.models import plain_mlp

EXAMPLES = int(os.environ.get("INITDOCTOR_FUZZ_EXAMPLES", "100"))
COUNT = {"inputs": 0}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    model = plain_mlp(depth=3, width=8, init="kaiming").eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "zip.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state, str(folder / "m.safetensors"))
    torch.onnx.export(model, (torch.randn(1, 64),), str(folder / "m.onnx"), dynamo=False)
    proto = onnx.load(str(folder / "m.onnx"))
    onnx.save_model(
        proto,
        str(folder / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    index = {"metadata": {}, "weight_map": {k: "m.safetensors" for k in state}}
    crafted = _crafted(folder)
    return {
        **crafted,
        "zip.pt": (folder / "zip.pt").read_bytes(),
        "legacy.pt": (folder / "legacy.pt").read_bytes(),
        "m.safetensors": (folder / "m.safetensors").read_bytes(),
        "m.onnx": (folder / "m.onnx").read_bytes(),
        "ext.onnx.data": (folder / "ext.onnx.data").read_bytes(),
        "model.safetensors.index.json": json.dumps(index).encode(),
        "_ext.onnx": (folder / "ext.onnx").read_bytes(),
    }


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(
        st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8)
    ),
    st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64))),
)


def mutate(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[: int(arg * len(data))]
    if kind == "flip":
        out = bytearray(data)
        for where, xor in arg:
            i = min(int(where * len(out)), len(out) - 1)
            out[i] ^= xor
        return bytes(out)
    where, extra = arg
    i = int(where * len(data))
    return data[:i] + extra + data[i:]


#: the crafted cases of the hostile-input review (issue 13), mutated like the real files
CRAFTED = ["tied.pt", "broadcast.pt", "loop.onnx", "cos.onnx", "residual.onnx", "overlap.safetensors"]


def _crafted(folder) -> dict[str, bytes]:
    """Tied weights, a stride-0 view within the budget, a 2⁶²-trip Loop, a ConstantOfShape, a
    residual chain, and a safetensors header with overlapping offsets."""
    import struct

    from tests.security.test_probe_bounds import constant_of_shape_graph, loop_graph, residual_chain
    from tests.security.test_torch_files import tied_state

    torch.save(tied_state(), folder / "tied.pt")
    broadcast = {"fc.weight": torch.randn(256).expand(64, 256), "out.weight": torch.randn(4, 256)}
    torch.save(broadcast, folder / "broadcast.pt")
    onnx.save(loop_graph(), str(folder / "loop.onnx"))
    onnx.save(constant_of_shape_graph([512, 1024, 1024], static=True), str(folder / "cos.onnx"))
    onnx.save(residual_chain(20, relus=4), str(folder / "residual.onnx"))
    entry = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    header = json.dumps({"a.weight": entry, "b.weight": entry}).encode()
    (folder / "overlap.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    return {name: (folder / name).read_bytes() for name in CRAFTED}


@pytest.mark.parametrize(
    "target",
    [
        "zip.pt",
        "legacy.pt",
        "m.safetensors",
        "m.onnx",
        "ext.onnx.data",
        "model.safetensors.index.json",
        *CRAFTED,
    ],
)
def test_mutated_files_fail_cleanly(seeds, tmp_path, target):
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(how=mutation)
    def check(how):
        folder = tmp_path / "case"
        folder.mkdir(exist_ok=True)
        for name, data in seeds.items():  # the companions of the mutated file, intact
            if not name.startswith("_"):
                (folder / name).write_bytes(data)
        (folder / "ext.onnx").write_bytes(seeds["_ext.onnx"])
        (folder / target).write_bytes(mutate(seeds[target], how))
        source = {"ext.onnx.data": "ext.onnx"}.get(target, target)
        COUNT["inputs"] += 1
        with contextlib.suppress(initdoctor.InitDoctorError):  # one clear line at the CLI
            initdoctor.describe(folder / source)

    check()


def test_fuzz_count_reported():
    """The number of generated bad inputs, printed for the record (pytest -s shows it)."""
    print(f"fuzzed inputs: {COUNT['inputs']}")
    assert COUNT["inputs"] >= (6 + len(CRAFTED)) * EXAMPLES or COUNT["inputs"] == 0  # 0 when run alone


def test_huge_declared_shape_is_refused_without_allocating(tmp_path):
    """A safetensors header declaring a 10^12-element tensor over a few bytes of data."""
    import struct

    header = json.dumps(
        {"w.weight": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 16]}}
    ).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(initdoctor.InputError, match="do not hold shape"):
        initdoctor.describe(path)
    overflow = json.dumps({"w.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**63]}}).encode()
    path.write_bytes(struct.pack("<Q", len(overflow)) + overflow + b"\0" * 16)
    with pytest.raises(initdoctor.InputError):
        initdoctor.describe(path)


def test_models_that_load_but_misbehave(tmp_path):
    from tests.conftest import run_cli

    # no weighted layer at all
    empty = initdoctor.diagnose(torch.nn.Sequential(torch.nn.ReLU()))
    assert empty.layers == [] and empty.summary.message == "no weighted layers found"
    # int8 (quantized-style) and empty weights are skipped, not crashed on
    save_file(
        {
            "q.weight": torch.randint(-128, 127, (8, 8), dtype=torch.int8),
            "e.weight": torch.zeros(0, 4),
            "f.weight": torch.randn(8, 8),
        },
        str(tmp_path / "m.safetensors"),
    )
    by = {f.name: f for f in initdoctor.diagnose(tmp_path / "m.safetensors").layers}
    assert by["q"].status == "skip" and "int8" in by["q"].message
    assert by["e"].status == "skip" and by["f"].status in ("ok", "warn", "error")
    # --debug shows the traceback a normal run hides
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    quiet, loud = (
        run_cli("inspect", str(tmp_path / "bad.pt")),
        run_cli("inspect", str(tmp_path / "bad.pt"), "--debug"),
    )
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr
