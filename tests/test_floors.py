"""Issue 17's CPU floors: the fast paths of the static pass give the numbers of a plain float64
reduction. Per-layer mean and std of real zoo models read from files (zip state_dict, safetensors,
ONNX with external data) against numpy's float64 ``mean``/``std`` of the same values, to 1e-12
relative; the fused sum of squares against a squared-and-summed float64 array; a zip state_dict's
tensors located without torch (:mod:`initdoctor.formats.torch_zip_plan`) exactly where torch's
meta-device load puts them. No timing here: the timings are benchmarks/static_inspect.py's."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

from initdoctor.formats import load
from initdoctor.formats.torch_state_dict_stream import zip_tensor_plan
from initdoctor.formats.torch_zip_plan import plain_state
from initdoctor.stats import ROW, file_stats, sum_squares
from tests import realzoo

ROOT = Path(__file__).resolve().parents[1]
REL = 1e-12


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two zoo CNNs (``tests.realzoo:resnet`` with BN, ``mobilenet``) as a zip state_dict and
    safetensors; the resnet also as ONNX with its weights in an external data file."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("floors")
    out: dict[str, Path] = {}
    for name in ("resnet", "mobilenet"):
        model = getattr(realzoo, name)().eval()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, folder / f"{name}.pt")
        save_file(state, str(folder / f"{name}.safetensors"))
        out[f"{name}.pt"], out[f"{name}.safetensors"] = folder / f"{name}.pt", folder / f"{name}.safetensors"
        if name == "resnet":
            torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(folder / "inline.onnx"), dynamo=False)
            proto = onnx.load(str(folder / "inline.onnx"))
            onnx.save_model(
                proto,
                str(folder / "resnet.onnx"),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="resnet.onnx.data",
                size_threshold=0,
            )
            out["resnet.onnx"] = folder / "resnet.onnx"
    return out


def _reference(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the file as float64, read by the format's own library."""
    if path.suffix == ".onnx":
        proto = onnx.load(str(path))  # external data loaded by onnx itself
        return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    if path.suffix == ".pt":
        state = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(str(path))
    return {k: v.double().numpy() for k, v in state.items()}


@pytest.mark.parametrize(
    "name", ["resnet.pt", "resnet.safetensors", "resnet.onnx", "mobilenet.pt", "mobilenet.safetensors"]
)
def test_layer_moments_equal_float64_numpy(files: dict[str, Path], name: str) -> None:
    desc = load(files[name]).description
    ref = _reference(files[name])
    checked = 0
    for layer in [*desc.layers, *desc.norms]:
        values = ref[layer.weight_key]
        std, mean = float(values.std()), float(values.mean())
        assert layer.stats.numel == values.size
        assert math.isclose(layer.stats.std, std, rel_tol=REL), (layer.name, layer.stats.std, std)
        # a mean near zero is a difference of large sums: relative to |mean| + std
        assert abs(layer.stats.mean - mean) <= REL * (abs(mean) + std), (layer.name, layer.stats.mean, mean)
        assert layer.stats.max_abs == float(np.abs(values).max())
        checked += 1
    assert checked >= 8


def test_sum_squares_rows_and_remainder() -> None:
    """Σx² by dot products of ROW elements (plus the remainder) = squared-and-summed float64."""
    rng = np.random.default_rng(1)
    for n in (1, ROW - 1, ROW, ROW + 3, 5 * ROW + 77):
        x = rng.standard_normal(n) * 0.02 + 0.5
        assert math.isclose(sum_squares(x), float(np.square(x).sum()), rel_tol=1e-13)
    assert sum_squares(np.zeros(0)) == 0.0
    assert math.isnan(sum_squares(np.array([1.0, np.nan] * ROW)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_file_stats_max_abs_from_max_and_min(tmp_path: Path, dtype: torch.dtype) -> None:
    """max|x| from the stored block's max and min equals numpy's max of |x| (negative extreme)."""
    values = torch.linspace(-3, 2, 3 * ROW + 5).to(dtype)
    raw = values.view(torch.int16) if dtype == torch.bfloat16 else values
    (tmp_path / "t.bin").write_bytes(raw.numpy().tobytes())
    stored = "<u2" if dtype == torch.bfloat16 else raw.numpy().dtype
    st = file_stats(
        tmp_path / "t.bin", 0, values.numel(), stored, str(dtype), bfloat16=dtype == torch.bfloat16
    )
    ref = values.double().numpy()
    assert st.max_abs == 3.0 == float(np.abs(ref).max())
    assert math.isclose(st.std, float(ref.std()), rel_tol=REL)


def test_zip_plan_without_torch_matches_meta_load(tmp_path: Path) -> None:
    """Tied weights, a transposed view, a Parameter, bf16/fp16 and an int buffer: located by the
    plain unpickler at the offsets torch's meta-device load gives."""
    torch.manual_seed(0)
    w = torch.randn(6, 4)
    state = {
        "emb.weight": torch.nn.Parameter(w),
        "head.weight": w,  # tied: one storage
        "proj.weight": torch.randn(4, 5).t(),  # stored transposed
        "half.weight": torch.randn(3, 3).half(),
        "bf.weight": torch.randn(3, 3).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    torch.save(state, tmp_path / "sd.pt")
    plain = plain_state(tmp_path / "sd.pt")
    assert plain is not None and len(plain[1]) == 5  # five storages for six names
    plan = zip_tensor_plan(tmp_path / "sd.pt")
    assert plan is not None
    meta = torch.load(tmp_path / "sd.pt", map_location="meta", weights_only=True)
    for key, t in meta.items():
        got = plan[key]
        item = t.element_size()
        assert got.offset == t.untyped_storage()._checkpoint_offset + t.storage_offset() * item
        assert (got.shape, got.stride, got.count) == (tuple(t.shape), tuple(t.stride()), t.numel())
    assert plan["proj.weight"].stride == (1, 5)
    assert plan["emb.weight"].offset == plan["head.weight"].offset


def test_zip_plan_falls_back_to_torch_for_other_globals(tmp_path: Path) -> None:
    """A global beyond a plain state_dict (here a dtype object) leaves the plain reader out; the
    meta-device load still plans the file."""
    torch.save({"w": torch.ones(4, 4), "dtype": torch.float32}, tmp_path / "odd.pt")
    assert plain_state(tmp_path / "odd.pt") is None
    plan = zip_tensor_plan(tmp_path / "odd.pt")
    assert plan is not None and plan["w"].count == 16


def test_state_dict_inspection_does_not_import_torch(files: dict[str, Path]) -> None:
    code = (
        "import sys, initdoctor.api as api; d = api.describe(sys.argv[1]); "
        "print(len(d.layers), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(files["resnet.pt"])], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    layers, imported = out.stdout.split()
    assert int(layers) >= 8 and imported == "False"


def test_onnx_reduce_fetches_the_logits_in_its_own_runs(tmp_path: Path) -> None:
    """The reduce probe reads the logits from its runs (no second session): the same LogitStats
    as the expose strategy, which runs a session of its own for them."""
    from examples.models import plain_mlp
    from initdoctor.formats.onnx import describe_onnx
    from initdoctor.probe.onnx_backend import probe_onnx
    from initdoctor.settings import ProbeSettings

    torch.manual_seed(0)
    model = plain_mlp(depth=3, width=32, in_features=16, init="kaiming").eval()
    torch.onnx.export(model, (torch.randn(8, 16),), str(tmp_path / "mlp.onnx"), dynamo=False)
    desc = describe_onnx(tmp_path / "mlp.onnx")
    got = {
        strategy: probe_onnx(
            tmp_path / "mlp.onnx", desc, ProbeSettings(input_shapes=((8, 16),), onnx_strategy=strategy)
        ).logits
        for strategy in ("reduce", "expose")
    }
    reduce, expose = got["reduce"], got["expose"]
    assert reduce is not None and expose is not None
    assert (reduce.positions, reduce.classes) == (expose.positions, expose.classes) == (8, 10)
    for field in ("lse_minus_mean", "logit_var", "offset_var"):
        assert math.isclose(getattr(reduce, field), getattr(expose, field), rel_tol=1e-12), field
