"""The Lightning callback (issue 30): training with it ends bit-identical to training without
it; what it logs at step k is what ``landscape`` says of the checkpoint saved at step k; the
optimizer-aware measures read the live optimizer."""

from __future__ import annotations

import csv

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch",
                         reason="lightning is not installed (pip install landscape-cli[lightning])")

from helpers.live_training import (  # noqa: E402
    assert_same_measures,
    make_module,
    probe_loader,
    train_loader,
    write_config,
)

import landscape_cli  # noqa: E402
from landscape_cli.integrations.lightning import LandscapeCallback  # noqa: E402

MEASURES = "stability_ratio,lambda_max,gradient_curvature,update_curvature"


class Saver(pl.Callback):
    """Saves the module and its optimizer state every 3 steps, as a training loop would."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % 3 == 0:
            torch.save({"model": module.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                        "global_step": trainer.global_step}, self.folder / f"step{trainer.global_step}.pt")


def fit(folder, callbacks):
    from lightning.pytorch.loggers import CSVLogger

    folder.mkdir()
    torch.manual_seed(0)
    module = make_module()
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", devices=1, logger=CSVLogger(folder / "logs"),
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, deterministic=True,
                         callbacks=[*callbacks, Saver(folder)])
    trainer.fit(module, train_loader())
    return module, trainer


def test_training_is_untouched_and_the_logged_numbers_are_landscapes(tmp_path):
    out = tmp_path / "live.jsonl"
    measured = LandscapeCallback("sharpness", measures=MEASURES, every_n_steps=3, probe=probe_loader(),
                                 output=out)
    module, trainer = fit(tmp_path / "with", [measured])
    plain, plain_trainer = fit(tmp_path / "without", [])

    for (name, a), (_, b) in zip(module.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name  # weights and BatchNorm buffers, bit for bit
    for a, b in zip(trainer.optimizers[0].state.values(), plain_trainer.optimizers[0].state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert module.training == plain.training

    assert [r.checkpoint["global_step"] for r in measured.reports] == [3, 6]
    config = write_config(tmp_path, "make_module", "module_loss")
    for report in measured.reports:
        step = report.checkpoint["global_step"]
        saved = landscape_cli.analyze("sharpness", tmp_path / "with" / f"step{step}.pt", config,
                                      measures=MEASURES)
        assert_same_measures(report, saved)
    live = measured.reports[-1].results["measures"]
    assert live["stability_ratio"]["optimizer"] == "AdamW" and live["stability_ratio"]["value"] > 0

    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all('"batch_key":null' in line for line in lines)
    with open(next((tmp_path / "with" / "logs").rglob("metrics.csv"))) as metrics:
        logged = list(csv.DictReader(metrics))
    ratios = {int(row["step"]): float(row["landscape/stability_ratio"]) for row in logged
              if row.get("landscape/stability_ratio")}
    expected = {r.checkpoint["global_step"]: r.results["measures"]["stability_ratio"]["value"]
                for r in measured.reports}
    assert ratios == pytest.approx(expected)


def test_a_bad_option_fails_at_construction():
    with pytest.raises(landscape_cli.runner.LandscapeError, match="--topp"):
        LandscapeCallback("spectrum", every_n_steps=3, probe=probe_loader(), topp=1)
    with pytest.raises(landscape_cli.runner.LandscapeError, match="probe="):
        LandscapeCallback("spectrum", every_n_steps=3)


def test_it_measures_at_each_validation_end_too(tmp_path):
    """``on_validation_end``: once per validation (not in the sanity check), at its step."""
    from lightning.pytorch.loggers import CSVLogger

    measured = LandscapeCallback("spectrum", on_validation_end=True, probe=probe_loader(), top=1)
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1, callbacks=[measured])
    trainer.fit(make_module(), train_loader(), probe_loader())
    assert [r.checkpoint["global_step"] for r in measured.reports] == [4, 8]  # 4 batches an epoch
    assert all(r.results["top_eigenvalues"][0] > 0 for r in measured.reports)
