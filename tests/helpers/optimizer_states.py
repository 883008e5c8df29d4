"""Checkpoints that hold an optimizer state, in every layout training code writes (issue 29):
a tiny regression MLP with a LayerNorm (so that the Trainer's decay/no-decay order differs from
``model.parameters()``), its data, the config that names them (this file's factories), and
states from a few real torch.optim steps."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve()


def make_model(hidden: int = 8) -> nn.Module:
    """Linear(4, h) · LayerNorm(h) · tanh · Linear(h, 3), float64: parameters 0.weight, 0.bias,
    1.weight, 1.bias (the norm's), 3.weight, 3.bias."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Tanh(),
                         nn.Linear(hidden, 3)).double()


def make_data(n: int = 48):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return x, torch.tanh(x @ torch.randn(4, 3, generator=generator, dtype=torch.float64))


def write_config(folder: Path, batch_size: int = 16, extra: str = "") -> Path:
    path = folder / "landscape.yaml"
    path.write_text(f"model:\n  factory: {HERE}:make_model\n"
                    f"data:\n  factory: {HERE}:make_data\n  batch_size: {batch_size}\n"
                    "loss:\n  factory: torch.nn:MSELoss\n"
                    f"dtype: float64\ndevice: cpu\n{extra}")
    return path


def trainer_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """The Hugging Face Trainer's groups: weights outside a LayerNorm decayed, the rest not."""
    decayed = [p for n, p in model.named_parameters() if n in ("0.weight", "3.weight")]
    others = [p for n, p in model.named_parameters() if n not in ("0.weight", "3.weight")]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def trained(optimizer: str = "adam", steps: int = 3, named: bool = False, trainer: bool = False,
            **settings) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model after ``steps`` full-batch steps of ``optimizer`` (adam, adamw, sgd, rmsprop),
    its groups named (``named_parameters``: torch keeps ``param_names``) or the Trainer's."""
    model = make_model()
    x, y = make_data()
    if trainer:
        params = trainer_groups(model)
    elif named:
        params = list(model.named_parameters())
    else:
        params = model.parameters()
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
           "rmsprop": torch.optim.RMSprop}[optimizer]
    opt = cls(params, **{"lr": 0.01, **settings})
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt


def save_dict(path: Path, key: str = "optimizer", **training) -> Path:
    """A training loop's ``torch.save`` dict: the weights under ``model``, the state under ``key``."""
    model, opt = trained(**training)
    torch.save({"model": model.state_dict(), key: opt.state_dict(), "step": 3}, path)
    return path


def save_lightning(path: Path, **training) -> Path:
    """A Lightning checkpoint: ``state_dict`` with the module's ``model.`` prefix, the states in
    ``optimizer_states`` and a scheduler in ``lr_schedulers``."""
    model, opt = trained(**training)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    torch.save({"epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [scheduler.state_dict()]},
               path)
    return path


def save_trainer_folder(folder: Path, named: bool = False, weight_decay: float = 0.01) -> Path:
    """A Hugging Face Trainer ``checkpoint-N`` folder: safetensors weights, optimizer.pt
    (AdamW over the Trainer's groups, or built from named parameters), scheduler.pt,
    trainer_state.json, and a training_args.bin that must never be read (not even a pickle)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model, opt = trained("adamw", named=named, trainer=not named, weight_decay=weight_decay)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0).state_dict(),
               folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3, "train_batch_size": 16,
                                                           "log_history": []}))
    (folder / "training_args.bin").write_bytes(b"never read: not a pickle at all")
    return folder
