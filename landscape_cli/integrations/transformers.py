"""``LandscapeCallback`` for the Hugging Face Trainer (``pip install landscape-cli[transformers]``):
a command of the runner on the live model every N optimizer steps and/or after each evaluation,
its numbers logged through the Trainer's own reporting (``landscape/NAME`` in the log history
and every ``report_to`` integration) and its reports appended to a JSONL file as batch lines.
Training is left untouched (``integrations/live.py``)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

from landscape_cli.integrations.live import LiveCallback, scalars


def model_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The loss the Trainer trains on: the model's ``loss`` output on the batch (a dict with
    labels)."""
    return model(**batch).loss


def _handler() -> CallbackHandler | None:
    """The Trainer's callback handler that called this callback's event (the frame of its
    ``call_event``): the one way to reach the Trainer's loggers from a callback."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return None
        found = frame.f_locals.get("self")
        if isinstance(found, CallbackHandler):
            return found
        frame = frame.f_back
    return None


class LandscapeCallback(LiveCallback, TrainerCallback):
    """``LandscapeCallback("spectrum", top=1, every_n_steps=50, probe=loader)``: ``command``
    with its options (Python names, as ``landscape_cli.analyze`` takes them) every
    ``every_n_steps`` optimizer steps and/or after each evaluation (``on_validation_end``), on
    ``probe`` (a DataLoader of dict batches with labels, read once; None: ``config``'s data),
    with ``loss`` (default: the model's ``loss`` output), ``max_hvps`` products at most;
    reports appended to ``output``. ``reports`` keeps them."""

    def _measure(self, args: Any, state: TrainerState, control: TrainerControl,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> TrainerControl:
        if not self.first_at(state.global_step):
            return control
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        report = self.analysis.measure(model, step=state.global_step, epoch=state.epoch,
                                       optimizer=inner, default_loss=model_loss)
        self.reports.append(report)
        logs = scalars(report)
        handler = _handler()
        state.log_history.append({**logs, "step": state.global_step})
        if handler is not None:
            others = [c for c in handler.callbacks if c is not self]
            for callback in others:
                callback.on_log(args, state, control, logs=dict(logs), model=model)
        return control

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, model=None,
                    optimizer=None, **kwargs: Any) -> TrainerControl:
        if self.due(state.global_step):
            return self._measure(args, state, control, model, optimizer)
        return control

    def on_evaluate(self, args: Any, state: TrainerState, control: TrainerControl, model=None,
                    optimizer=None, **kwargs: Any) -> TrainerControl:
        if self.at_validation_end:
            return self._measure(args, state, control, model, optimizer)
        return control
