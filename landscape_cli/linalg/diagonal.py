"""diag(A) by Hutchinson's estimator (Bekas, Kokiopoulou & Saad 2007): E[z ⊙ Az] = diag(A) for
Rademacher z, each entry's standard error from the spread of its probes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.probes import rademacher

#: probes pushed through the operator together
BLOCK = 16


@dataclass(frozen=True)
class DiagonalEstimate:
    """diag(A) ≈ ``values`` ± ``stderr`` (each entry's), from ``probes`` products."""

    values: torch.Tensor
    stderr: torch.Tensor
    probes: int


def hutchinson_diagonal(operator: LinearOperator, probes: int,
                        generator: torch.Generator) -> DiagonalEstimate:
    """The mean and standard error of z ⊙ Az over ``probes`` Rademacher z (float64)."""
    n = operator.size
    total = torch.zeros(n, dtype=torch.float64)
    squares = torch.zeros(n, dtype=torch.float64)
    for first in range(0, probes, BLOCK):
        z = rademacher(min(BLOCK, probes - first), n, generator)
        samples = z * operator(z.to(device=operator.device, dtype=operator.dtype)).to("cpu", torch.float64)
        total += samples.sum(dim=0)
        squares += (samples**2).sum(dim=0)
    mean = total / probes
    variance = (squares - probes * mean**2).clamp(min=0) / max(probes - 1, 1)
    return DiagonalEstimate(values=mean, stderr=(variance / probes).sqrt(), probes=probes)
