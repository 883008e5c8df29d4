"""``trace``: tr(H) and tr(H)/n by Hutch++ or Hutchinson, optionally per layer.

Per-layer traces are the traces of the diagonal blocks H_gg, one per module (its weight and
bias together), each estimated by the same method on the block operator v ↦ (H·[v]_g)_g.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from landscape_cli.linalg.trace import Callback, hutchinson, hutchpp
from landscape_cli.results.trace import LayerTrace, TraceResult

ESTIMATORS = {"hutchpp": hutchpp, "hutchinson": hutchinson}


def module_groups(names: list[str], slices: dict[str, slice]) -> dict[str, list[slice]]:
    """Parameter slices grouped by module (``layer.weight`` and ``layer.bias`` together)."""
    groups: dict[str, list[slice]] = {}
    for name in names:
        groups.setdefault(name.rpartition(".")[0] or name, []).append(slices[name])
    return groups


def block_operator(hvp: Callable[[torch.Tensor], torch.Tensor], n: int,
                   index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ (H·[v]_g)_g: the diagonal block of H on the coordinates ``index``."""

    def matvec(vectors: torch.Tensor) -> torch.Tensor:
        full = vectors.new_zeros(vectors.shape[0], n)
        full[:, index] = vectors
        return hvp(full)[:, index]

    return matvec


def trace(hvp: Callable[[torch.Tensor], torch.Tensor], n: int, *, method: str = "hutchpp",
          rtol: float = 0.01, max_hvps: int = 1000, sketch: int | None = None, seed: int = 0,
          dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
          groups: dict[str, list[slice]] | None = None,
          callback: Callback | None = None) -> TraceResult:
    """Estimate tr(H) (and, with ``groups``, tr(H_gg) per group) to relative error ``rtol``."""
    estimator = ESTIMATORS[method]
    options = {"rtol": rtol, "max_matvecs": max_hvps, "dtype": dtype, "device": device}
    if method == "hutchpp":
        options["sketch"] = sketch
    generator = torch.Generator().manual_seed(seed)
    total = estimator(hvp, n, generator=generator, callback=callback, **options)
    per_layer = None
    if groups is not None:
        per_layer = []
        for name, slices in groups.items():
            index = torch.cat([torch.arange(s.start, s.stop) for s in slices]).to(device)
            size = len(index)
            est = estimator(block_operator(hvp, n, index), size, generator=generator, **options)
            per_layer.append(LayerTrace(name=name, n_params=size, trace=est.trace,
                                        stderr=est.stderr, ci95=est.ci95,
                                        trace_per_param=est.trace / size, hvps=est.matvecs))
    return TraceResult(estimate=total, n_params=n, rtol=rtol, per_layer=per_layer)
