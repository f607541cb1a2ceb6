"""``initdoctor.integrations.InitCheckCallback`` (issue 16, "CI and integrations"): a tiny
transformers Trainer run on CPU. The healthy tiny LLaMA (tests/realzoo.py) trains its one step;
the N(0, 1) one (``llama_broken``) stops before step 1 with the R302 message, or warns and trains
with ``action="warn"``.

The Trainer needs ``accelerate`` (transformers' own requirement for ``Trainer`` with torch; in
the ``test`` extra).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from initdoctor.errors import InitializationError, SettingsError
from tests.conftest import ROOT
from tests.realzoo import llama, llama_broken

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (the test extra has it)")

from initdoctor.integrations import InitCheck, InitCheckCallback  # noqa: E402


def _dataset(vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(4):
        ids = torch.randint(0, vocab, (16,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def _trainer(model, callback, tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    return transformers.Trainer(
        model=model, args=args, train_dataset=_dataset(model.config.vocab_size), callbacks=[callback]
    )


def test_is_a_trainer_callback_and_import_initdoctor_stays_free_of_transformers():
    assert issubclass(InitCheckCallback, transformers.TrainerCallback)
    code = "import sys, initdoctor, initdoctor.integrations; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_healthy_llama_trains_one_step(tmp_path, caplog):
    torch.manual_seed(0)
    callback = InitCheckCallback()
    trainer = _trainer(llama(), callback, tmp_path)
    with caplog.at_level("INFO", logger="initdoctor"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert callback.report.summary.status == "ok" and callback.report.probe is not None
    assert any(r.getMessage().startswith("initdoctor: OK: ") for r in caplog.records)
    # the model's mode is restored: Trainer set it to train, the probe ran in eval
    assert trainer.model.training
    # the one step's loss is the uniform baseline ln 1000 = 6.91 within 0.2: a healthy start
    loss = trainer.state.log_history[-1]["train_loss"]
    assert abs(loss - math.log(1000)) < 0.2


def test_broken_llama_raises_before_step_one_with_the_r302_message(tmp_path):
    torch.manual_seed(0)
    model = llama_broken()
    before = model.lm_head.weight.detach().clone()
    trainer = _trainer(model, InitCheckCallback(), tmp_path)
    with pytest.raises(InitializationError) as info:
        trainer.train()
    assert trainer.state.global_step == 0
    assert torch.equal(model.lm_head.weight.detach(), before)  # no optimizer step ran
    message = str(info.value)
    assert message.startswith("initialization check failed (fail_on=error): ERROR [R302]: residual blocks")
    assert "model.layers.0.self_attn (residual block, error R302): Var[out]/Var[skip] = 4.31e+03" in message
    assert info.value.report.summary.rule == "R302"


def test_warn_action_trains_and_fail_on_never_is_silent(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"ERROR \[R302\]"):
        trainer = _trainer(llama_broken(), InitCheckCallback(action="warn"), tmp_path / "warn")
        trainer.train()
    assert trainer.state.global_step == 1
    # fail_on="never": neither raises nor warns (the report is still there)
    check = InitCheck(fail_on="never")
    report = check.check(llama_broken())
    assert report.summary.status == "error" and check.report is report


def test_bad_action_or_fail_on_is_one_clear_error():
    with pytest.raises(SettingsError, match="action 'stop': choose one of raise, warn"):
        InitCheckCallback(action="stop")
    with pytest.raises(SettingsError, match="fail_on 'warning': choose one of unknown, warn, error, never"):
        InitCheckCallback(fail_on="warning")


# --- Lightning -----------------------------------------------------------------------------------
def _lightning_module(std: float | None):
    lightning = pytest.importorskip("lightning", reason="lightning is in the test extra")

    class Net(lightning.pytorch.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers = []
            for _ in range(8):  # 8 ReLU layers of width 64: N(0, 1) grows ×32 (fan_in 64 / 2) per layer
                linear = torch.nn.Linear(64, 64)
                torch.nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
                if std is not None:
                    torch.nn.init.normal_(linear.weight, std=std)
                layers += [linear, torch.nn.ReLU()]
            self.net = torch.nn.Sequential(*layers, torch.nn.Linear(64, 4))
            self.example_input_array = torch.randn(16, 64)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return lightning, Net()


def _fit(lightning, module, callback, tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(8, 64), torch.randint(0, 4, (8,)))
    trainer = lightning.pytorch.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[callback],
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    return trainer


def test_lightning_healthy_fits_one_step_and_broken_stops_before_it(tmp_path):
    from initdoctor.integrations import InitCheckLightningCallback

    torch.manual_seed(0)
    lightning, healthy = _lightning_module(std=None)
    callback = InitCheckLightningCallback()
    assert isinstance(callback, lightning.pytorch.Callback)
    trainer = _fit(lightning, healthy, callback, tmp_path / "ok")
    assert trainer.global_step == 1 and callback.report.summary.status == "ok"
    assert callback.report.probe["inputs"][0]["shape"] == [16, 64]  # its example_input_array
    _, broken = _lightning_module(std=1.0)
    before = broken.net[0].weight.detach().clone()
    with pytest.raises(
        InitializationError, match=r"initialization check failed \(fail_on=error\): ERROR"
    ) as info:
        _fit(lightning, broken, InitCheckLightningCallback(), tmp_path / "broken")
    assert torch.equal(broken.net[0].weight.detach(), before)  # no step ran
    # N(0, 1) on fan_in 64 is √32 = 5.66× the Kaiming std √(2/64) = 0.177 on every hidden layer
    ratios = [f.std_ratio for f in info.value.report.layers if f.role == "hidden"]
    assert len(ratios) == 8 and all(abs(r - 32**0.5) < 0.3 for r in ratios)
    assert info.value.report.summary.rule == "C501"  # the chain's variance ×(32)^8 ≈ 1e12
