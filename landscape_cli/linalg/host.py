"""The one way the algorithms read numbers back from the device.

Each call is one host-device synchronisation on a GPU; the algorithms make one per step, to
decide whether to stop (DESIGN §4: no other synchronisation). The numbers are checked on
the way: a non-finite product means the operator, not the algorithm, failed.
"""

from __future__ import annotations

import math

import torch


def read_finite(values: torch.Tensor) -> list[float]:
    """``values`` as float64 Python numbers, or ``FloatingPointError`` if any is NaN or Inf."""
    numbers = values.detach().double().cpu().reshape(-1).tolist()
    if not all(math.isfinite(x) for x in numbers):
        raise FloatingPointError("the operator returned a non-finite product (NaN or Inf)")
    return numbers
