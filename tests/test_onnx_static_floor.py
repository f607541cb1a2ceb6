"""Issue 17, the static look at its floor: a stored tensor's values are read as views of a mapped
window (pages populated first) instead of being copied into a buffer, and zero-mean blocks skip the
centring pass. The numbers must not move: mapped and read paths agree bit for bit, both equal
float64 numpy to 1e-12, and a file that shrinks under the scan is an error line, not a SIGBUS."""

from __future__ import annotations

import numpy as np
import pytest

from initdoctor import file_blocks as fb
from initdoctor.errors import InputError
from initdoctor.stats import BLOCK, file_stats


@pytest.fixture
def blob(tmp_path):
    """13 bytes of header (an unaligned start), then 3.5 blocks of float32 N(0.5, 2)."""
    a = (np.random.default_rng(7).standard_normal(3 * BLOCK + BLOCK // 2) * 2 + 0.5).astype("<f4")
    path = tmp_path / "blob.bin"
    path.write_bytes(b"h" * 13 + a.tobytes())
    return path, a


def _stats(path, a):
    s = file_stats(path, 13, a.size, "<f4", "float32")
    return s.mean, s.std, s.max_abs


def test_mapped_and_read_blocks_give_the_same_numbers_as_float64_numpy(blob, monkeypatch):
    path, a = blob
    monkeypatch.setattr(fb, "WINDOW", BLOCK * 4)  # one window of 128K float32 values: four windows
    mapped = _stats(path, a)
    monkeypatch.setattr(fb, "_can_populate", False)
    read = _stats(path, a)
    assert mapped == read  # the same blocks, the same arithmetic: bit for bit
    wide = a.astype(np.float64)
    assert mapped[0] == pytest.approx(wide.mean(), rel=1e-12)  # 0.5
    assert mapped[1] == pytest.approx(wide.std(), rel=1e-12)  # 2.0
    assert mapped[2] == float(np.abs(wide).max())
    assert 0.49 < mapped[0] < 0.51 and 1.99 < mapped[1] < 2.01


def test_the_blocks_are_views_of_the_file_where_the_kernel_populates(blob):
    path, a = blob
    if not fb._can_populate:
        pytest.skip("this kernel cannot populate a mapping (MADV_POPULATE_READ): positioned reads")
    blocks = fb.file_blocks(path, 13, a.size, np.dtype("<f4"), 0, a.size)
    first = next(blocks)
    assert first.size == BLOCK and not first.flags.owndata and not first.flags.writeable
    assert np.array_equal(first, a[:BLOCK])
    assert sum(b.size for b in blocks) == a.size - BLOCK


@pytest.mark.parametrize("populate", [True, False])
def test_a_file_that_shrinks_under_the_scan_is_an_error_not_a_crash(blob, populate, monkeypatch):
    path, a = blob
    monkeypatch.setattr(fb, "_can_populate", populate and fb._can_populate)
    blocks = fb.file_blocks(path, 13, a.size, np.dtype("<f4"), 0, a.size)
    assert float(next(blocks)[0]) == float(a[0])
    with open(path, "r+b") as fh:  # cut after the second block: the third is gone
        fh.truncate(13 + 2 * BLOCK * 4)
    assert next(blocks).size == BLOCK
    with pytest.raises(InputError, match="file ends inside a tensor"):
        next(blocks)


def test_a_short_file_is_refused_before_any_block(blob):
    path, a = blob
    with pytest.raises(InputError, match=r"file ends inside a tensor \(offset 13, 458753 values\)"):
        file_stats(path, 13, a.size + 1, "<f4", "float32")


def test_a_block_just_under_the_centring_bound_keeps_float64_precision(tmp_path):
    """n·mean²/Σx² = 0.03²/(1 + 0.03²) ≈ 9.0e-4 ≤ 10⁻³: Σx² − n·mean² without a centring pass, and
    the std still equals float64 numpy's two-pass value to 1e-12 (its error is ≤ 1.002× Σx²'s)."""
    a = (np.random.default_rng(8).standard_normal(BLOCK) + 0.03).astype("<f4")
    wide = a.astype(np.float64)
    ratio = a.size * wide.mean() ** 2 / float(np.dot(wide, wide))
    assert 5e-4 < ratio < 1e-3
    path = tmp_path / "w.bin"
    path.write_bytes(a.tobytes())
    s = file_stats(path, 0, a.size, "<f4", "float32")
    assert s.std == pytest.approx(wide.std(), rel=1e-12)
    assert s.mean == pytest.approx(wide.mean(), rel=1e-12)


# The command line's start-up: typer ≥ 0.2x coerces every option through a pydantic TypeAdapter
# (~90 ms of CPU per run); initdoctor.cli_params converts the plain values itself.

SAMPLES = {
    "str": ["abc", "", "--x"],
    "Path": ["no/such/dir/out.json"],
    "int": ["3", "-2", "+4", "007"],
    "float": ["0.5", "1e-3", "2", ".5", "5.", "-0"],
    "list": [("a", "b"), ()],
}


def _params():
    import typer.main

    from initdoctor.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if getattr(param, "type_descriptor", None) is not None:
                yield name, param


def test_the_quick_coercion_gives_typers_values_for_every_option():
    coercion = pytest.importorskip("typer._coercion")
    from initdoctor.cli_params import _NO, _convert, _plain

    checked = 0
    for command, param in _params():
        annotation = _plain(param.type_descriptor.annotation)
        real = coercion.build_runtime_param(param.type_descriptor)
        kind = "list" if "list" in str(annotation) else getattr(annotation, "__name__", "")
        values = [param.default] + SAMPLES.get(kind, [])
        if isinstance(annotation, type) and hasattr(annotation, "__members__"):
            values += [m.value for m in annotation]
        for value in values:
            if value is None:
                continue
            quick = _convert(annotation, value)
            if quick is _NO:
                continue
            expected = real.coerce(value, param=param, ctx=None)
            assert (quick, type(quick)) == (expected, type(expected)), (command, param.name, value)
            checked += 1
    assert checked > 100  # every command's options, each with several values


def test_a_bad_value_still_gets_typers_own_message(tmp_path):
    from typer.testing import CliRunner

    from initdoctor.cli import app

    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "m.onnx"), "--format", "xml"])
    assert result.exit_code == 2
    assert (
        "Invalid value for '--format' / '-f': Value error, "
        "'xml' is not one of 'table', 'json', 'markdown', 'html'." in result.output
    )
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "m.onnx"), "--seed", "1.5"])
    assert result.exit_code == 2 and "valid integer" in result.output
