"""A tiny full-batch Adam run that reaches the adaptive edge of stability fast (Cohen et al. 2022,
Fig. 1): a 5-16-16-1 tanh MLP (385 parameters, float32) regressing a random tanh teacher on 256
points, Adam at η = 0.04, β = (0.9, 0.99). Its preconditioned sharpness rises to
38/η = 950 in ~250 steps and stays there, while λ_max stays near 1.4% of it. The config names
this file's factories."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve()
LR, BETAS = 0.04, (0.9, 0.99)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


def make_data(n: int = 256):
    generator = torch.Generator().manual_seed(1000)
    x = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    hidden = torch.randn(5, 64, generator=generator, dtype=torch.float64) / 5**0.5
    out = torch.randn(64, 1, generator=generator, dtype=torch.float64) / 8
    return x.float(), (3 * torch.tanh(2 * x @ hidden) @ out).float()


def train(folder: Path, steps: int = 500, every: int = 20) -> list[Path]:
    """Full-batch Adam, a training loop's dict (``model``, ``optimizer``, ``step``) saved every
    ``every`` steps as step_NNNNN.pt, with the config beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "landscape.yaml").write_text(
        f"model:\n  factory: {HERE}:make_model\n"
        f"data:\n  factory: {HERE}:make_data\n  batch_size: 256\n"
        "loss:\n  factory: torch.nn:MSELoss\ndevice: cpu\n")
    model, (x, y) = make_model(), make_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
    saved = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if step % every == 0:
            saved.append(folder / f"step_{step:05d}.pt")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                       saved[-1])
    return saved
