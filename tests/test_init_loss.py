"""The loss at init (rule P207, ``summary.init_loss``): the expected cross-entropy for uniformly
random labels, measured from the model's own logits, against ln(classes); real models, tiny
configs, numbers checked against a hand computation from the logits."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import initdoctor
from initdoctor.checks import initloss
from initdoctor.probe import logit_stats
from tests import realzoo

pytest.importorskip("transformers")
warnings.filterwarnings("ignore")


def by_hand(logits: torch.Tensor) -> tuple[float, float]:
    """(mean over positions of logsumexp(z) − mean_j z_j, mean over positions of Var_j z_j)."""
    z = logits.detach().double().reshape(-1, logits.shape[-1])
    lse = torch.logsumexp(z, dim=1) - z.mean(dim=1)
    return float(lse.mean()), float(z.var(dim=1, unbiased=False).mean())


def bn_logits(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits as the probe (and the first training step) sees them: BatchNorm on batch
    statistics, everything else in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.train()
    with torch.no_grad():
        out = model(**x)
    for m in bns:
        m.eval()
    return out


def ids(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, realzoo.VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))


def diagnose(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> initdoctor.Report:
    return initdoctor.diagnose(model, probe=True, inputs=inputs)


def test_logit_stats_by_hand() -> None:
    # two positions, three classes: uniform logits cost ln 3; [0, 0, ln 4] costs ln 6 − ln(4)/3
    z = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, math.log(4.0)]])
    s = logit_stats(z, "output")
    assert s is not None and (s.classes, s.positions) == (3, 2)
    assert s.lse_minus_mean == pytest.approx((math.log(3) + math.log(6) - math.log(4) / 3) / 2)
    assert s.logit_var == pytest.approx(np.var(z[1]) / 2)
    assert logit_stats(np.zeros((4, 1)), "output") is None  # one output unit: not a classifier


def test_llama_healthy_expects_ln_vocab() -> None:
    model, x = realzoo.llama(), ids()
    r = diagnose(model, {"input_ids": x})
    i = r.summary.init_loss
    expected, var = by_hand(model(input_ids=x).logits)
    assert i is not None and i["classes"] == 1000 and i["head"] == "lm_head"
    assert i["baseline"] == pytest.approx(math.log(1000))  # 6.908
    assert i["expected"] == pytest.approx(expected, rel=1e-5)  # 6.921 by hand
    assert i["expected"] == pytest.approx(6.92, abs=0.01)
    assert i["logit_std"] == pytest.approx(math.sqrt(var), rel=1e-4)  # 0.164
    assert i["approx"] == pytest.approx(math.log(1000) + var / 2, rel=1e-6)
    assert i["status"] == "ok" and i["suggested_scale"] is None
    assert r.summary.status == "ok" and all(f.rule != "P207" for f in r.layers)
    assert "initial loss (uniform labels): 6.92" in r.to_markdown()


def test_llama_head_times_30_warns_with_the_rescale() -> None:
    model, x = realzoo.llama(), ids()
    healthy_var = by_hand(model(input_ids=x).logits)[1]
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    r = diagnose(model, {"input_ids": x})
    i = r.summary.init_loss
    expected, var = by_hand(model(input_ids=x).logits)
    assert i is not None and i["expected"] == pytest.approx(expected, rel=1e-5)
    assert i["expected"] - i["baseline"] > initloss.MARGIN  # 16.1 against 6.91
    assert i["logit_std"] == pytest.approx(math.sqrt(var), rel=1e-4)  # 4.79
    assert var == pytest.approx(30**2 * healthy_var, rel=1e-3)  # σ scales with the head
    assert i["suggested_scale"] == pytest.approx(0.5 / math.sqrt(var), rel=1e-4)  # 0.104
    head = next(f for f in r.layers if f.name == "lm_head")  # K102 (static) superseded by P207
    assert head.rule == "P207" and head.status == "warn" and "rescale lm_head by 0.1" in head.message
    assert r.summary.status == "warn" and r.summary.rule == "P207"
    assert r.exit_code() == 0 and r.exit_code("warn") == 1
    with torch.no_grad():  # the rescale brings the loss back: ln C + 0.5²/2
        model.lm_head.weight.mul_(i["suggested_scale"])
    after = diagnose(model, {"input_ids": x}).summary
    assert after.status == "ok" and after.init_loss is not None
    assert after.init_loss["logit_std"] == pytest.approx(0.5, rel=1e-3)
    assert after.init_loss["expected"] == pytest.approx(math.log(1000) + 0.125, abs=0.01)


def test_cnn_head_times_20_warns() -> None:
    model = realzoo.resnet()
    x = realzoo.probe_inputs(realzoo.BY_NAME["resnet"], batch=8)
    healthy = diagnose(model, x).summary.init_loss
    assert healthy is not None and healthy["head"] == "fc" and healthy["source"] == "output"
    assert healthy["status"] == "ok" and healthy["expected"] == pytest.approx(
        by_hand(bn_logits(model, x))[0], rel=1e-5
    )
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        model.fc.bias.mul_(20.0)
    r = diagnose(model, x)
    i = r.summary.init_loss
    expected, var = by_hand(bn_logits(model, x))
    assert i is not None and i["classes"] == 10 and i["baseline"] == pytest.approx(math.log(10))
    assert i["expected"] == pytest.approx(expected, rel=1e-5) and i["expected"] > math.log(10) + 1
    assert i["logit_std"] == pytest.approx(20 * healthy["logit_std"], rel=1e-3)
    assert i["suggested_scale"] == pytest.approx(0.5 / math.sqrt(var), rel=1e-4)
    fc = next(f for f in r.layers if f.name == "fc")
    assert fc.rule == "P207" and "rescale fc by" in fc.message


def test_backbone_without_head_gets_no_init_loss() -> None:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=realzoo.VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64,
    )  # fmt: skip
    r = diagnose(transformers.BertModel(cfg).eval(), {"input_ids": ids()})
    assert r.summary.init_loss is None
    assert all(f.rule != "P207" for f in r.layers) and r.summary.rule != "P207"
    assert r.to_dict()["summary"]["init_loss"] is None


def test_tied_head_is_measured_from_the_output() -> None:
    # GPT-2's lm_head is tied to the embedding (no layer of its own): the logits still say the loss
    model, x = realzoo.gpt2(), ids()
    i = diagnose(model, {"input_ids": x}).summary.init_loss
    assert i is not None and i["head"] is None and i["source"] == "output.logits"
    assert i["expected"] == pytest.approx(by_hand(model(input_ids=x).logits)[0], rel=1e-5)
