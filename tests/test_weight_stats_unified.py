"""One implementation of a torch tensor's weight statistics (review leftover of issue 17):
:func:`initdoctor.formats.torch_moments.weight_stats` serves in-memory modules, loaded state_dicts,
Editable and DTensor shards. Every tensor of the zoo (tests/realzoo.py but its ``_broken`` twins,
tests/zoo.py, examples/models.py), in float32, float64, bfloat16 and float16, against numpy's float64
``mean``/``std``/``max(|x|)`` of the same values: 1e-12 relative for float32/float64, 1e-6 for the
half types (a mean near zero is a difference of large sums: compared relative to |mean| + std);
then the same numbers through the readers that used the removed numpy path (a legacy
``torch.save`` state_dict, its Editable) and an in-memory factory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from examples import models as examples
from initdoctor.formats import load, open_editable
from initdoctor.formats.torch_moments import one_thread, weight_stats
from tests import realzoo, zoo

FLOAT = {torch.float32: 1e-12, torch.float64: 1e-12, torch.bfloat16: 1e-6, torch.float16: 1e-6}
BUILDERS = {
    # the ``_broken`` twins are their healthy model with one block ×10 (same tensors, scaled)
    **{e.name: getattr(realzoo, e.name) for e in realzoo.MATRIX if not e.name.endswith("_broken")},
    "zoo.embed_mlp": zoo.embed_mlp,
    "zoo.tanh_mlp": zoo.tanh_mlp,
    "zoo.small_cnn": zoo.small_cnn,
    "examples.xavier_mlp": examples.xavier_mlp,
    "examples.kaiming_mlp": examples.kaiming_mlp,
}


def _assert_equal_float64(got, tensor: torch.Tensor, rel: float, where: str) -> None:
    values = tensor.detach().to(torch.float64).numpy().reshape(-1)
    assert got.numel == values.size, where
    assert got.nan_count == 0 and got.inf_count == 0, where
    if values.size == 0:
        assert math.isnan(got.std), where
        return
    std, mean = float(values.std()), float(values.mean())
    assert math.isclose(got.std, std, rel_tol=rel, abs_tol=0.0 if std else 1e-300), (where, got.std, std)
    assert abs(got.mean - mean) <= rel * (abs(mean) + std), (where, got.mean, mean)
    assert got.max_abs == float(np.abs(values).max()), (where, got.max_abs)


@pytest.fixture
def single_thread():
    """torch on one thread for the test's casts (two threads waiting at each small op's barrier on
    a busy machine cost more than the casts), put back after it."""
    with one_thread():
        yield


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_zoo_tensor_equals_float64_numpy(name: str, single_thread) -> None:
    state = BUILDERS[name]().state_dict()
    checked = 0
    for key, tensor in state.items():
        if not tensor.is_floating_point():  # integer buffers (position ids, BN counters): as float64
            _assert_equal_float64(weight_stats(tensor), tensor, 1e-12, f"{name}:{key}")
            assert weight_stats(tensor).dtype == str(tensor.dtype).replace("torch.", "")
            continue
        for dtype, rel in FLOAT.items():
            cast = tensor.to(dtype)
            got = weight_stats(cast)
            assert got.dtype == str(dtype).replace("torch.", "")
            _assert_equal_float64(got, cast, rel, f"{name}:{key}:{dtype}")
            checked += 1
    assert checked >= 4 * 4, name


@pytest.fixture(scope="module")
def legacy_bf16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``tests.realzoo:bert`` in bfloat16, saved by ``torch.save`` in the legacy (non-zip) format:
    read through ``torch.load``, so every tensor's statistics come from :func:`weight_stats`."""
    state = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in realzoo.bert().state_dict().items()
    }
    path = tmp_path_factory.mktemp("unified") / "bert_bf16.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path, state


def test_legacy_state_dict_layers_equal_float64_numpy(legacy_bf16) -> None:
    path, state = legacy_bf16
    desc = load(path).description
    layers = [*desc.layers, *desc.norms]
    assert len(layers) >= 20  # 4 blocks × (4 attention + 2 MLP linears + 2 LayerNorms), embeddings, head
    for layer in layers:
        assert layer.stats.dtype == "bfloat16"
        _assert_equal_float64(layer.stats, state[layer.weight_key], 1e-6, layer.weight_key)


def test_editable_std_equals_float64_numpy(legacy_bf16) -> None:
    path, state = legacy_bf16
    editable = open_editable(load(path), str(path), trust=False)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    want = float(state[key].double().numpy().std())
    assert math.isclose(editable.std(key), want, rel_tol=1e-12)
    assert 0.015 < want < 0.025  # transformers' initializer_range 0.02


def test_in_memory_factory_layers_equal_float64_numpy() -> None:
    desc = load("tests.realzoo:resnet").description
    state = realzoo.resnet().state_dict()  # seeded: the same values
    for layer in [*desc.layers, *desc.norms]:
        _assert_equal_float64(layer.stats, state[layer.weight_key], 1e-12, layer.weight_key)
    conv = next(layer for layer in desc.layers if layer.kind == "conv2d")
    # torchvision's kaiming_normal_(mode="fan_out", relu): std = sqrt(2 / fan_out)
    assert math.isclose(conv.stats.std, math.sqrt(2 / conv.fan_out), rel_tol=0.1)


def test_edge_dtypes_read_as_the_numpy_path_did() -> None:
    """A quantized tensor by its integer representation (reported ``int8``), bool as 0/1, float8
    widened exactly, NaN/Inf counted and left out — the numbers numpy float64 gives."""
    torch.manual_seed(0)
    quantized = torch.quantize_per_tensor(torch.randn(300), 0.1, 3, torch.qint8)
    got = weight_stats(quantized)
    assert got.dtype == "int8"
    _assert_equal_float64(got, quantized.int_repr(), 1e-12, "qint8")
    flags = torch.tensor([True, False, True, True])
    got = weight_stats(flags)
    assert (got.dtype, got.mean, got.max_abs) == ("bool", 0.75, 1.0)
    assert math.isclose(got.std, math.sqrt(0.75 * 0.25), rel_tol=1e-12)
    f8 = (torch.randn(500) * 0.02).to(torch.float8_e4m3fn)
    got = weight_stats(f8)
    assert got.dtype == "float8_e4m3fn"
    _assert_equal_float64(got, f8.float(), 1e-12, "float8")
    bad = torch.tensor([1.0, float("nan"), float("inf"), -3.0, float("-inf")])
    got = weight_stats(bad)
    assert (got.numel, got.nan_count, got.inf_count, got.mean, got.std, got.max_abs) == (
        5,
        1,
        2,
        -1.0,
        2.0,
        3.0,
    )
