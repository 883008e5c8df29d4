"""Exact references: the dense Hessian, the full-batch loss, the relative error."""

from __future__ import annotations

import torch
from torch import nn


def full_batch_loss(model: nn.Module, problem, x, y):
    """The dataset mean loss in one pass over all samples: no batching, no weights."""

    def loss(theta):
        out = torch.func.functional_call(model, problem.unflatten(theta, prefix=""), (x,))
        return nn.functional.cross_entropy(out, y)

    return loss


def dense_hessian(loss_of_theta, theta: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of a scalar function of a flat vector (torch.func, float64)."""
    return torch.func.hessian(loss_of_theta)(theta.detach().to(torch.float64))


def relative_error(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())
