"""The Hugging Face Trainer callback (issue 30): training with it ends bit-identical to training
without it; what it logs at step k (in the log history and every ``report_to`` integration) is
what ``landscape`` says of the checkpoint saved at step k, the live optimizer included."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install landscape-cli[transformers])")
pytest.importorskip("accelerate",
                    reason="the Trainer needs accelerate (pip install landscape-cli[transformers])")

from helpers.live_training import (  # noqa: E402
    Pairs,
    assert_same_measures,
    hf_probe_loader,
    make_data,
    make_hf_model,
    write_hf_config,
)

import landscape_cli  # noqa: E402
from landscape_cli.integrations.transformers import LandscapeCallback  # noqa: E402

MEASURES = "stability_ratio,lambda_max,update_curvature"


class Saver(transformers.TrainerCallback):
    def __init__(self, folder):
        self.folder = folder

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step % 2 == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.optimizer.state_dict()
                        if hasattr(optimizer, "optimizer") else optimizer.state_dict()},
                       self.folder / f"step{state.global_step}.pt")


class Seen(transformers.TrainerCallback):
    """A stand-in for a ``report_to`` integration: what reaches the loggers."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def fit(folder, callbacks):
    folder.mkdir()
    torch.manual_seed(0)
    model = make_hf_model()
    args = transformers.TrainingArguments(output_dir=str(folder), max_steps=4, per_device_train_batch_size=16,
                                          learning_rate=0.01, weight_decay=0.1, report_to=[],
                                          use_cpu=True, save_strategy="no", logging_steps=100,
                                          seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(*make_data()),
                                   callbacks=[*callbacks, Saver(folder)])
    trainer.train()
    return model, trainer


def test_training_is_untouched_and_the_logged_numbers_are_landscapes(tmp_path):
    seen = Seen()
    measured = LandscapeCallback("sharpness", measures=MEASURES, every_n_steps=2, probe=hf_probe_loader())
    model, trainer = fit(tmp_path / "with", [seen, measured])
    plain, _ = fit(tmp_path / "without", [])
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name

    assert [r.checkpoint["global_step"] for r in measured.reports] == [2, 4]
    config = write_hf_config(tmp_path)
    for report in measured.reports:
        step = report.checkpoint["global_step"]
        saved = landscape_cli.analyze("sharpness", tmp_path / "with" / f"step{step}.pt", config,
                                      measures=MEASURES)
        assert_same_measures(report, saved)
    first, last = (r.results["measures"]["stability_ratio"] for r in measured.reports)
    assert first["optimizer"] == "AdamW" and first["value"] > 0
    assert last["value"] is None and "learning rate is 0" in last["reason"]  # the schedule's end

    history = [h for h in trainer.state.log_history if "landscape/lambda_max" in h]
    assert [h["step"] for h in history] == [2, 4]
    reached = [log for log in seen.logs if "landscape/lambda_max" in log]
    assert [log["landscape/lambda_max"] for log in reached] == pytest.approx(
        [r.results["measures"]["lambda_max"]["value"] for r in measured.reports])
