"""The math against torch.nn.init: gains, fans, expected std, and the streaming statistics."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from initdoctor.gains import calculate_gain, expected_std, fans
from initdoctor.stats import CHUNK, array_stats


@pytest.mark.parametrize(
    "name,param",
    [
        ("linear", None),
        ("conv2d", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 0.2),
        ("selu", None),
    ],
)
def test_gain_matches_torch(name, param):
    assert calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param), rel=1e-12)


@pytest.mark.parametrize("name,fn", [("gelu", torch.nn.functional.gelu), ("silu", torch.nn.functional.silu)])
def test_numeric_gain_is_one_over_rms_of_f_of_gaussian(name, fn):
    # He et al. eq. 7 generalised: gain = 1 / sqrt(E[f(z)^2]), z ~ N(0,1); Monte Carlo with 4M samples
    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert calculate_gain(name) == pytest.approx(1 / math.sqrt(fn(z).pow(2).mean().item()), rel=2e-3)


@pytest.mark.parametrize(
    "shape",
    [(256, 64), (10, 256), (32, 3, 3, 3), (64, 32, 5), (8, 4, 3, 3, 3), (32, 1, 3, 3)],
)
def test_fans_match_torch_for_linear_and_conv(shape):
    kind = {2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}[len(shape)]
    assert fans(kind, shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def test_fans_of_grouped_and_transposed_conv():
    depthwise = torch.nn.Conv2d(32, 32, 3, groups=32)
    assert tuple(depthwise.weight.shape) == (32, 1, 3, 3)
    assert fans("conv2d", depthwise.weight.shape, groups=32) == (9, 288)  # fan_in = in/groups * k
    grouped = torch.nn.Conv2d(16, 32, 3, groups=4)  # weight [32, 4, 3, 3]
    assert fans("conv2d", grouped.weight.shape, groups=4) == (36, 288)
    # ConvTranspose stores [in, out/groups, k]: fan_in = in/groups * k, fan_out = out * k
    tconv = torch.nn.ConvTranspose2d(16, 8, 4, groups=2)  # weight [16, 4, 4, 4]
    assert tuple(tconv.weight.shape) == (16, 4, 4, 4)
    assert fans("conv_transpose2d", tconv.weight.shape, groups=2) == (8 * 16, 8 * 16)


def test_expected_std_is_gain_over_sqrt_fan():
    assert expected_std(math.sqrt(2), 256) == pytest.approx(0.0883883, rel=1e-6)
    w = torch.empty(4096, 512)
    torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    assert w.std().item() == pytest.approx(expected_std(calculate_gain("relu"), 512), rel=0.01)


def test_streaming_stats_match_numpy_and_count_bad_values():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(CHUNK + 12345) * 0.05 + 3.0).astype(np.float32)  # crosses a chunk edge
    st = array_stats(a)
    ref = a.astype(np.float64)
    assert st.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert st.std == pytest.approx(ref.std(), rel=1e-9)  # no E[x²]−E[x]² cancellation at mean/std=60
    b = np.array([1.0, np.nan, np.inf, -1.0, 0.0], dtype=np.float32)
    st = array_stats(b)
    assert (st.nan_count, st.inf_count, st.all_zero) == (1, 1, False)
    assert st.mean == pytest.approx(0.0) and st.std == pytest.approx(math.sqrt(2 / 3))


def test_parallel_blocked_scan_is_exact_across_threads_and_blocks():
    from initdoctor.stats import BLOCK, PARALLEL_MIN

    rng = np.random.default_rng(1)
    a = (rng.standard_normal(PARALLEL_MIN + BLOCK + 7) * 0.02 + 0.5).astype(np.float32)  # mean ≫ std: centred
    a[-3] = np.nan  # in the last thread's range, last block
    a[5] = -np.inf
    st = array_stats(a)
    ref = a[np.isfinite(a)].astype(np.float64)
    assert (st.nan_count, st.inf_count) == (1, 1)
    assert st.mean == pytest.approx(ref.mean(), rel=1e-12)
    assert st.std == pytest.approx(ref.std(), rel=1e-9)
    assert array_stats(np.zeros(PARALLEL_MIN, np.float16)).all_zero


def test_file_stats_stream_a_region_exactly_and_refuse_a_short_file(tmp_path):
    from initdoctor.errors import InputError
    from initdoctor.stats import BLOCK, PARALLEL_MIN, file_stats

    rng = np.random.default_rng(2)
    a = (rng.standard_normal(PARALLEL_MIN + 3 * BLOCK + 5) * 0.01 - 0.2).astype("<f4")  # threads + centring
    bf = (rng.standard_normal(BLOCK + 9).astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 13 + a.tobytes() + bf.tobytes())
    st = file_stats(path, 13, a.size, "<f4", "float32")
    assert (st.numel, st.dtype) == (a.size, "float32")
    assert st.mean == pytest.approx(a.astype(np.float64).mean(), rel=1e-12)
    assert st.std == pytest.approx(a.astype(np.float64).std(), rel=1e-9)
    widened = (bf.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # bfloat16 → float32 exactly
    st = file_stats(path, 13 + a.nbytes, bf.size, "<u2", "bfloat16", bfloat16=True)
    assert st.std == pytest.approx(widened.std(), rel=1e-9) and 0.99 < st.std < 1.01
    with pytest.raises(InputError, match="file ends inside a tensor"):
        file_stats(path, 13 + a.nbytes, bf.size + 1, "<u2", "bfloat16", bfloat16=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_threaded_scan_works_in_a_forked_child():
    """The scan's thread pool does not survive fork; a child (a DataLoader worker, say) gets a new one."""
    from initdoctor.stats import PARALLEL_MIN

    a = np.random.default_rng(3).standard_normal(PARALLEL_MIN * 2).astype(np.float32)
    parent = array_stats(a).std  # starts the pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: would hang on the parent's dead workers without the at-fork reset
        os.close(read)
        os.write(write, repr(array_stats(a).std).encode())
        os._exit(0)
    os.close(write)
    import signal
    import time

    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's thread pool")
    child = float(os.read(read, 100).decode())
    os.close(read)
    assert done[1] == 0 and child == parent
