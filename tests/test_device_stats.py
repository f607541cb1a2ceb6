"""Issue 17: statistics where the tensors are (torch on the tensor's device, only scalars to the
host), probe inputs on the model's device and in its dtype, ``--device``, meta weights.

No accelerator in CI: every check runs on the CPU, where the torch path is the one a CUDA model
takes (float64 accumulation; only the block size differs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import invoke
from torch import nn

import initdoctor
from examples.models import plain_cnn, plain_mlp
from initdoctor.errors import InitDoctorError
from initdoctor.formats.torch_module import describe_module
from initdoctor.formats.torch_moments import BLOCK, reduce, weight_stats
from initdoctor.probe.collector import logit_stats
from initdoctor.probe.torch_collect import torch_logit_stats
from initdoctor.stats import array_stats, scan
from tests import realzoo


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for this module's comparisons, put back after (a module-level call would
    change every later test's thread count, and with it the numerics of their training runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(a: float, b: float, scale: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(b), scale)


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    return {
        "llama": realzoo.llama(),
        "resnet": realzoo.resnet(),
        "mlp": plain_mlp(depth=4, width=64, in_features=32),
        "cnn": plain_cnn(depth=3, width=8),
    }


def test_weight_moments_equal_the_float64_numpy_path(zoo: dict[str, nn.Module]) -> None:
    """Every parameter of the zoo: torch on the device vs numpy float64 (array_stats), std and
    mean to 1e-5 relative (a mean relative to the std: weights are zero-mean)."""
    checked = 0
    for model in zoo.values():
        for p in model.parameters():
            ours = weight_stats(p)
            ref = array_stats(p.detach().double().numpy())
            assert ours.numel == ref.numel
            assert _close(ours.std, ref.std, 1e-30)
            assert _close(ours.mean, ref.mean, ref.std)
            assert _close(ours.max_abs, ref.max_abs, 1e-30)
            checked += 1
    assert checked > 50


def test_block_path_two_pass_and_non_finite() -> None:
    """A tensor over one CPU block, with a mean 300× its std (the two-pass branch), and one with
    NaN/Inf: the same numbers as numpy's float64 scan."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * BLOCK + 17, generator=g) * 0.01 + 3.0
    moments, nan, inf, _ = reduce(x)
    ref = scan(x.numpy()).moments
    assert (nan, inf, moments.count) == (0, 0, x.numel())
    assert _close(moments.var, ref.var, 0.0) and _close(moments.mean, ref.mean, 0.0)
    x[5], x[BLOCK + 1], x[-1] = math.nan, math.inf, -math.inf
    moments, nan, inf, peak = reduce(x, with_max=True)
    finite = x[torch.isfinite(x)].double()
    assert (nan, inf, moments.count) == (1, 2, x.numel() - 3)
    assert _close(moments.var, float(finite.var(correction=0)), 0.0)
    assert _close(peak, float(finite.abs().max()), 0.0)


def test_bf16_weights_widened_exactly() -> None:
    w = torch.randn(64, 48).to(torch.bfloat16)
    ours = weight_stats(w)
    ref = array_stats(w.float().numpy().astype(np.float64))
    assert ours.dtype == "bfloat16" and _close(ours.std, ref.std, 0.0)


def test_activation_moments_and_logits_equal_numpy(zoo: dict[str, nn.Module]) -> None:
    """Every leaf module's output during one forward of the zoo's llama and resnet: var to 1e-5."""
    seen: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(
            lambda _m, _a, out: seen.append(out.detach()) if torch.is_tensor(out) else None
        )
        for name in ("llama", "resnet")
        for m in zoo[name].modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            zoo["llama"](input_ids=torch.randint(0, 100, (2, 16)))
            zoo["resnet"](torch.randn(2, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    floats = [t for t in seen if t.is_floating_point() and t.numel() > 1]
    assert len(floats) > 40
    for t in floats:
        ours = reduce(t)[0]
        ref = scan(t.numpy()).moments
        assert _close(ours.var, ref.var, 1e-30) and _close(ours.mean, ref.mean, math.sqrt(ref.var))
    z = torch.randn(3, 5, 11) * 2 + torch.arange(11.0)
    a, b = torch_logit_stats(z, "output"), logit_stats(z.numpy(), "output")
    assert a is not None and b is not None
    for f in ("lse_minus_mean", "logit_var", "offset_var"):
        assert _close(getattr(a, f), getattr(b, f), 0.0)


class _HostCopies:
    """Counts ``Tensor.cpu`` / ``Tensor.numpy`` calls on tensors of more than one element."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        for name in ("cpu", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(
                t: torch.Tensor, *a: object, _o: object = original, _n: str = name, **k: object
            ) -> object:
                if t.numel() > 1:
                    self.calls.append((_n, tuple(t.shape)))
                return _o(t, *a, **k)  # type: ignore[operator]

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_no_full_tensor_crosses_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """diagnose(probe=True) — forward and --backward — and the static pass: 0 host copies."""
    model = plain_mlp(depth=4, width=64, in_features=32)
    copies = _HostCopies(monkeypatch)
    describe_module(model, path="mlp", fmt="factory")
    assert copies.calls == []
    report = initdoctor.diagnose(model, probe=True, backward=True, input_shapes=((16, 32),))
    assert copies.calls == []
    assert report.layers[0].activation_var is not None and report.layers[0].activation_var > 0


def test_bf16_model_gets_bf16_inputs_and_the_fp32_report() -> None:
    """A bf16 model is probed with bf16 inputs; its per-layer weight std and activation variance
    equal the fp32 report of the same (bf16-representable) weights within 5 %: bf16 keeps 8
    significant bits (relative rounding 2⁻⁸ ≈ 0.4 % per op), and 4 layers of rounded matmul
    outputs and inputs compound that to a few %; weight std is exact (the same values)."""
    fp32 = plain_mlp(depth=4, width=64, in_features=32)
    bf16 = plain_mlp(depth=4, width=64, in_features=32).to(torch.bfloat16)
    with torch.no_grad():
        for a, b in zip(fp32.parameters(), bf16.parameters(), strict=True):
            a.copy_(b.float())
    r16 = initdoctor.diagnose(bf16, probe=True, input_shapes=((64, 32),))
    r32 = initdoctor.diagnose(fp32, probe=True, input_shapes=((64, 32),))
    assert r16.probe is not None and [i["dtype"] for i in r16.probe["inputs"]] == ["bfloat16"]
    for a, b in zip(r16.layers, r32.layers, strict=True):
        assert a.weight_std == pytest.approx(b.weight_std, rel=1e-6)
        assert a.activation_var == pytest.approx(b.activation_var, rel=0.05)
    assert r16.summary.status == r32.summary.status


def test_meta_model_is_one_clear_error() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(InitDoctorError, match="'meta' device"):
        initdoctor.diagnose(model, probe=True)


def test_example_inputs_keep_their_device_and_model_dtype() -> None:
    from initdoctor.probe.torch_inputs import ProbeInputs, on_model

    model = nn.Linear(4, 3).to(torch.float64)
    given = on_model(ProbeInputs([torch.ones(2, 4)]), model, keep_device=True)
    assert given.args[0].dtype == torch.float64 and given.args[0].device.type == "cpu"


def test_cli_device() -> None:
    code, out, err = invoke("inspect", "examples.models:kaiming_mlp", "--device", "cuda", "--no-probe")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert code == 2 and "--device cuda: no CUDA device" in out + err
    assert "Traceback" not in out + err and len((out + err).strip().splitlines()) == 1
    code, out, err = invoke("inspect", "examples.models:kaiming_mlp", "--device", "tpu9")
    assert code == 2 and "unknown device 'tpu9'" in out + err
    code, _, _ = invoke("inspect", "examples.models:kaiming_mlp", "--device", "cpu", "--no-probe")
    assert code in (0, 1)


def test_input_dtype_given_is_kept() -> None:
    """--input-dtype overrides the model's dtype: float64 inputs into a float64 model stay float64,
    float32 inputs into a bf16 model reach it as float32 (and its forward refuses them: one error)."""
    model64 = plain_mlp(depth=2, width=8, in_features=4).double()
    report = initdoctor.diagnose(model64, probe=True, input_dtype="float64", input_shapes=((4, 4),))
    assert report.probe is not None and report.probe["inputs"][0]["dtype"] == "float64"
    bf16 = plain_mlp(depth=2, width=8, in_features=4).to(torch.bfloat16)
    with pytest.raises(InitDoctorError, match="forward raised"):
        initdoctor.diagnose(bf16, probe=True, input_dtype="float32", input_shapes=((4, 4),))


def test_finite_activations_whose_float32_squares_overflow() -> None:
    """Activations of 1e20–1e21 (a deep net without BatchNorm whose branches are N(0, 1)) are
    finite in float32, but their squares (1e40+) overflow float32's 3.4e38: the moments come from
    ``x / max|x|`` scaled back in float64 — equal to numpy's float64 scan (0.11 recursed forever)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * BLOCK + 5, generator=g) * 3e20 + 1e20
    moments, nan, inf, peak = reduce(x, with_max=True)
    ref = scan(x.numpy()).moments
    assert (nan, inf, moments.count) == (0, 0, x.numel())
    assert _close(moments.var, ref.var, 0.0) and _close(moments.mean, ref.mean, 0.0)
    assert peak == float(x.abs().max())
    x[7] = math.nan  # and with a NaN among them: the finite ones, the same way
    moments, nan, inf, _ = reduce(x)
    assert (nan, inf, moments.count) == (1, 0, x.numel() - 1)
    assert _close(moments.var, float(x[~torch.isnan(x)].double().var(correction=0)), 0.0)
