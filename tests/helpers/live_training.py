"""Short CPU training runs for the callbacks (issue 30): a tiny regression net, its data, a
Lightning module and a Hugging Face model around it, and the config that analyses the
checkpoints they save the way the callbacks analyse the live model (this file's factories)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

HERE = Path(__file__).resolve()
PROBE = 32


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))


def make_data(n: int = 64):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(n, 4, generator=generator)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


def probe_loader() -> DataLoader:
    """The fixed probe set: the first PROBE samples, in order, in batches of 16."""
    x, y = make_data()
    return DataLoader(TensorDataset(x[:PROBE], y[:PROBE]), batch_size=16)


def probe_data():
    x, y = make_data()
    return x[:PROBE], y[:PROBE]


def assert_same_measures(live, saved, rel: float = 1e-6) -> None:
    """Every measure of a callback's report equals the one ``landscape`` gives on the checkpoint
    saved at the same step (null where it is null)."""
    import pytest

    for name, measure in live.results["measures"].items():
        expected = saved.results["measures"][name]["value"]
        assert measure["value"] == (expected if expected is None else pytest.approx(expected, rel=rel)), name


def write_config(folder: Path, model: str, loss: str) -> Path:
    """A config whose model is ``model`` (a factory of this file) and whose loss is ``loss``
    (an ``fn(model, batch)`` of this file), on the probe set."""
    path = folder / "landscape.yaml"
    path.write_text(f"model:\n  factory: {HERE}:{model}\n"
                    f"data:\n  factory: {HERE}:probe_data\n  batch_size: 16\n"
                    f"loss:\n  fn: {HERE}:{loss}\ndevice: cpu\n")
    return path


# ----------------------------------------------------------------------------- Lightning


def make_module():
    import lightning.pytorch as pl

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)

    return Regressor()


def module_loss(module, batch):
    from landscape_cli.integrations.lightning import training_step_loss

    return training_step_loss(module, batch)


def train_loader() -> DataLoader:
    x, y = make_data()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- Hugging Face


class Pairs(Dataset):
    """(x, y) as the Trainer's dict batches: ``input`` and ``labels``."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input": self.x[i], "labels": self.y[i]}


def make_hf_model():
    from dataclasses import dataclass

    from transformers.modeling_outputs import ModelOutput

    @dataclass
    class Output(ModelOutput):
        loss: torch.Tensor | None = None
        predictions: torch.Tensor | None = None

    class HFRegressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_net()

        def forward(self, input, labels=None):
            predictions = self.net(input)
            loss = None if labels is None else nn.functional.mse_loss(predictions, labels)
            return Output(loss=loss, predictions=predictions)

    return HFRegressor()


def hf_probe_loader() -> DataLoader:
    return DataLoader(Pairs(*probe_data()), batch_size=16)


def hf_probe_data():
    return hf_probe_loader()


def hf_loss(model, batch):
    return model(**batch).loss


def write_hf_config(folder: Path) -> Path:
    path = folder / "landscape.yaml"
    path.write_text(f"model:\n  factory: {HERE}:make_hf_model\n"
                    f"data:\n  factory: {HERE}:hf_probe_data\n"
                    f"loss:\n  fn: {HERE}:hf_loss\ndevice: cpu\n")
    return path
