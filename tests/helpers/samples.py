"""The sample checkpoints, configs and digits, and a problem loaded through the real path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]

MLP_CKPT = ROOT / "sample_checkpoints" / "mlp" / "seed0_epoch100.pt"
CNN_CKPT = ROOT / "sample_checkpoints" / "cnn_bn" / "final.pt"
TRANSFORMER_CKPT = ROOT / "sample_checkpoints" / "char_transformer" / "final.pt"
MODELS = ROOT / "sample_checkpoints" / "models.py"
CONFIGS = ROOT / "configs"
DIGITS_FILE = ROOT / "sample_checkpoints" / "data" / "digits.npz"

DIGITS = np.load(DIGITS_FILE)


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n digits as float64 inputs and class targets."""
    return (torch.from_numpy(DIGITS["x"][:n]).double(), torch.from_numpy(DIGITS["y"][:n]).long())


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    """``steps`` full-batch Adam steps (lr 0.01) on cross-entropy, on one thread: tiny matrices
    run ~50× faster so on a busy machine."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model


def loaded(config: str, ckpt: Path, *overrides: str, **options):
    """A problem built through the real config and checkpoint loading path, in float64."""
    from landscape_cli.config import load_config
    from landscape_cli.loading.assemble import LoadOptions
    from landscape_cli.session import load

    cfg = load_config(CONFIGS / config, ["dtype=float64", "device=cpu", *overrides])
    return load(cfg, ckpt, LoadOptions(**options))
