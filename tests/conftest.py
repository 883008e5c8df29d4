"""Shared test helpers: exact dense Hessians, sample paths, a CLI runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

MLP_CKPT = ROOT / "sample_checkpoints" / "mlp" / "seed0_epoch100.pt"
CNN_CKPT = ROOT / "sample_checkpoints" / "cnn_bn" / "final.pt"
TRANSFORMER_CKPT = ROOT / "sample_checkpoints" / "char_transformer" / "final.pt"
CONFIGS = ROOT / "configs"


DIGITS = np.load(ROOT / "sample_checkpoints" / "data" / "digits.npz")


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


def full_batch_loss(model: nn.Module, problem, x, y):
    """The dataset mean loss in one pass over all samples: no batching, no weights."""

    def loss(theta):
        out = torch.func.functional_call(model, problem.unflatten(theta, prefix=""), (x,))
        return nn.functional.cross_entropy(out, y)

    return loss


def loaded(config: str, ckpt: Path, *overrides: str, **options):
    """A problem built through the real config and checkpoint loading path, in float64."""
    from landscape_cli.config import load_config
    from landscape_cli.loading.assemble import LoadOptions
    from landscape_cli.session import load

    cfg = load_config(CONFIGS / config, ["dtype=float64", "device=cpu", *overrides])
    return load(cfg, ckpt, LoadOptions(**options))


@pytest.fixture(scope="session")
def mlp_exact():
    """The real MLP on 600 real digits (uneven last batch of 88) and its dense Hessian."""
    run = loaded("mlp.yaml", MLP_CKPT, "data.max_samples=600")
    x, y = digits(600)
    reference = full_batch_loss(run.problem.objective.model, run.problem, x, y)
    return run.problem, dense_hessian(reference, run.problem.theta0), reference


def dense_hessian(loss_of_theta, theta: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of a scalar function of a flat vector (torch.func, float64)."""
    return torch.func.hessian(loss_of_theta)(theta.detach().to(torch.float64))


def relative_error(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


@pytest.fixture
def cli():
    """Run the real CLI in-process; returns (exit code, parsed JSON or None, result)."""
    from landscape_cli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        try:
            doc = json.loads(result.stdout)
        except ValueError:
            doc = None
        return result.exit_code, doc, result

    return invoke


def write_quadratic_config(folder: Path, eigenvalues, seed: int = 0, gradient_scale: float = 1.0) -> Path:
    """A config whose model is tests/quadratic.py's quadratic with the given spectrum."""
    here = Path(__file__).resolve().parent / "quadratic.py"
    path = folder / "quadratic.yaml"
    path.write_text(
        f"model:\n  factory: {here}:make_quadratic\n"
        f"  kwargs: {{eigenvalues: {list(map(float, eigenvalues))}, seed: {seed}, "
        f"gradient_scale: {gradient_scale}}}\n"
        f"data:\n  factory: {here}:make_data\n  batch_size: 4\n"
        f"loss:\n  fn: {here}:quadratic_loss\n"
        "dtype: float64\ndevice: cpu\n"
    )
    return path


def save_quadratic_checkpoint(folder: Path, eigenvalues, seed: int = 0, gradient_scale: float = 1.0) -> Path:
    from quadratic import make_quadratic

    path = folder / "quadratic.pt"
    torch.save(make_quadratic(eigenvalues, seed, gradient_scale).state_dict(), path)
    return path
