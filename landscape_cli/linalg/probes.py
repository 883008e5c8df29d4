"""Random probe vectors shared by the stochastic estimators (trace, SLQ)."""

from __future__ import annotations

import torch


def rademacher(k: int, n: int, generator: torch.Generator | None,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """k independent vectors of n random signs ±1 (E[zzᵀ] = I), drawn on the CPU."""
    signs = torch.randint(0, 2, (k, n), generator=generator, dtype=torch.int8)
    return (2 * signs - 1).to(dtype=dtype, device=device)
