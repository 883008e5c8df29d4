"""``LandscapeCallback`` for Lightning (``pip install landscape-cli[lightning]``): a command of
the runner on the live LightningModule every N optimizer steps and/or at the end of each
validation, its numbers logged through the trainer's loggers (``landscape/NAME``) and its
reports appended to a JSONL file as batch lines. Training is left untouched
(``integrations/live.py``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from landscape_cli.integrations.live import LiveCallback, scalars


def training_step_loss(module: pl.LightningModule, batch: Any) -> torch.Tensor:
    """The loss the module trains on: its ``training_step`` output (or its ``loss``). The
    copy it runs on is attached to no trainer, so its ``self.log`` calls only warn: silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.training_step(batch, 0)
    return out["loss"] if isinstance(out, Mapping) else out


class LandscapeCallback(LiveCallback, pl.Callback):
    """``LandscapeCallback("sharpness", measures="stability_ratio,lambda_max",
    every_n_steps=100, probe=loader)``: ``command`` with its options (Python names, as
    ``landscape_cli.analyze`` takes them) every ``every_n_steps`` optimizer steps and/or at
    each validation end, on ``probe`` (a DataLoader, read once; None: ``config``'s data), with
    ``loss`` (a criterion or ``fn(model, batch)``; default: the module's ``training_step``),
    ``max_hvps`` products at most; reports appended to ``output``. ``reports`` keeps them."""

    def _measure(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        step = trainer.global_step
        if not self.first_at(step):
            return
        optimizers = trainer.optimizers
        report = self.analysis.measure(
            module, step=step, epoch=trainer.current_epoch,
            optimizer=optimizers[0] if len(optimizers) == 1 else None,
            default_loss=training_step_loss, shared=(module._trainer,))
        self.reports.append(report)
        for logger in trainer.loggers:
            logger.log_metrics(scalars(report), step=step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.due(trainer.global_step):
            self._measure(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_validation_end and not trainer.sanity_checking:
            self._measure(trainer, pl_module)
