"""The initialization check inside a training framework: before the first step.

``InitCheckCallback`` is a ``transformers.TrainerCallback``: at ``on_train_begin`` it runs
:func:`initdoctor.diagnose` on the Trainer's model as it sits (its device, its dtype; probed with
the inputs its config implies: token ids within ``vocab_size``, images of ``image_size``…, see
:mod:`initdoctor.formats.model_inputs`), logs the summary line on the ``initdoctor`` logger, and
when the verdict reaches ``fail_on`` either raises :class:`~initdoctor.errors.InitializationError`
(``action="raise"``, the default: training stops before its first step) or warns
(``action="warn"``)::

    from transformers import Trainer
    from initdoctor.integrations import InitCheckCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[InitCheckCallback()])
    trainer.train()  # raises InitializationError before step 1 on a broken init

transformers stays optional: importing this module imports it only when ``InitCheckCallback`` is
first used (a module ``__getattr__``), and ``import initdoctor`` never imports this module.
``InitCheckLightningCallback`` does the same for a Lightning ``Trainer`` at ``on_fit_start``
(``lightning`` likewise imported on first use).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from .api import diagnose
from .errors import InitializationError, SettingsError
from .options import FAIL_ON

logger = logging.getLogger("initdoctor")
ACTIONS = ("raise", "warn")


class InitCheck:
    """The framework-free part: check a model, log, then raise or warn. ``settings`` are
    :func:`initdoctor.diagnose`'s (``nonlinearity``, thresholds, ``batch_size``, ``ignore``…)."""

    def __init__(self, action: str = "raise", fail_on: str = "error", probe: bool = True, **settings: Any):
        if action not in ACTIONS:
            raise SettingsError(f"action {action!r}: choose one of {', '.join(ACTIONS)}")
        if fail_on not in FAIL_ON:
            raise SettingsError(f"fail_on {fail_on!r}: choose one of {', '.join(FAIL_ON)}")
        self.action, self.fail_on, self.probe, self.settings = action, fail_on, probe, settings
        self.report: Any = None  # the last report, for the caller to read

    def check(self, model: Any) -> Any:
        """Diagnose ``model`` (in eval mode for the probe; its mode is restored), log the summary,
        and raise or warn when it reaches ``fail_on``. Returns the report."""
        training = getattr(model, "training", None)
        try:
            if training:
                model.eval()  # no dropout in the probe's measurement
            report = diagnose(model, probe=self.probe, **self.settings)
        finally:
            if training:
                model.train()
        self.report = report
        s = report.summary
        line = f"initdoctor: {s.status.upper()}: {s.message}"
        if not report.exit_code(self.fail_on):
            logger.info(line)
            return report
        logger.warning(line)
        message = failure_message(report, self.fail_on)
        if self.action == "raise":
            raise InitializationError(message, report)
        warnings.warn(message, UserWarning, stacklevel=2)
        return report


def failure_message(report: Any, fail_on: str) -> str:
    """What failed, with rule codes: the model-level verdict, the blocks, then the layers."""
    s = report.summary
    rule = f" [{s.rule}]" if s.rule else ""
    lines = [f"initialization check failed (fail_on={fail_on}): {s.status.upper()}{rule}: {s.message}"]
    lines += [
        f"  {b.name} (residual block, {b.status} {b.rule}): {b.message}"
        for b in report.residual_blocks
        if b.status in ("warn", "error")
    ]
    failing = report.failing(fail_on)
    lines += [f"  {f.name} ({f.status} {f.rule}): {f.message}" for f in failing[:20]]
    if len(failing) > 20:
        lines.append(f"  … and {len(failing) - 20} more")
    return "\n".join(lines)


def _trainer_callback() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("InitCheckCallback needs transformers: pip install 'initdoctor[hf]'") from None

    class InitCheckCallback(TrainerCallback, InitCheck):
        """Run initdoctor's check on the Trainer's model before the first training step.

        ``action``: ``"raise"`` (default; :class:`~initdoctor.errors.InitializationError` stops the
        run) or ``"warn"``; ``fail_on``: ``unknown``, ``warn``, ``error`` (default) or ``never``;
        other keywords go to :func:`initdoctor.diagnose`. ``self.report`` holds the report."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            model = kwargs.get("model")
            if model is not None:  # on every process, so that each stops (not only rank 0)
                self.check(model)
            return control

    InitCheckCallback.__module__ = __name__
    return InitCheckCallback


def _lightning_callback() -> type:
    from importlib import import_module

    for name in ("lightning.pytorch", "pytorch_lightning"):  # by name: an optional, untyped-here import
        try:
            base: Any = import_module(name).Callback
            break
        except ImportError:
            continue
    else:
        raise ImportError("InitCheckLightningCallback needs lightning: pip install lightning")

    class InitCheckLightningCallback(base, InitCheck):
        """Run initdoctor's check at ``on_fit_start`` (the module on its device, before the sanity
        check and the first step). ``attribute``: check ``pl_module.<attribute>`` (e.g. ``"model"``,
        an HF model whose config gives the probe's inputs) instead of the LightningModule, which is
        probed with its ``example_input_array`` when it has one. Otherwise as
        :class:`InitCheck` (``action``, ``fail_on``, :func:`initdoctor.diagnose`'s keywords)."""

        def __init__(self, attribute: str | None = None, **kwargs: Any) -> None:
            InitCheck.__init__(self, **kwargs)
            self.attribute = attribute

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            if self.attribute is not None:
                self.check(getattr(pl_module, self.attribute))
                return
            example = getattr(pl_module, "example_input_array", None)
            if example is not None and "example_inputs" not in self.settings:
                self.settings["example_inputs"] = example
            self.check(pl_module)

    InitCheckLightningCallback.__module__ = __name__
    return InitCheckLightningCallback


_MAKERS = {"InitCheckCallback": _trainer_callback, "InitCheckLightningCallback": _lightning_callback}
_MADE: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in _MAKERS:
        if name not in _MADE:
            _MADE[name] = _MAKERS[name]()
        return _MADE[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
