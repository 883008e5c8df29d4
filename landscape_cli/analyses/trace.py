"""``trace``: tr(H) and tr(H)/n by Hutch++ or Hutchinson, optionally per layer.

Per-layer traces are the traces of the diagonal blocks H_gg, one per module (its weight and
bias together), each estimated by the same method on the operator restricted to the block,
v ↦ (H·[v]_g)_g (``linalg.operator.restrict``).
"""

from __future__ import annotations

import torch

from landscape_cli.linalg.operator import LinearOperator, restrict
from landscape_cli.linalg.trace import Callback, hutchinson, hutchpp
from landscape_cli.results.trace import LayerTrace, TraceResult

ESTIMATORS = {"hutchpp": hutchpp, "hutchinson": hutchinson}


def module_groups(names: list[str], slices: dict[str, slice]) -> dict[str, list[slice]]:
    """Parameter slices grouped by module (``layer.weight`` and ``layer.bias`` together)."""
    groups: dict[str, list[slice]] = {}
    for name in names:
        groups.setdefault(name.rpartition(".")[0] or name, []).append(slices[name])
    return groups


def trace(operator: LinearOperator, *, method: str = "hutchpp",
          rtol: float = 0.01, max_hvps: int = 1000, sketch: int | None = None, seed: int = 0,
          groups: dict[str, list[slice]] | None = None,
          callback: Callback | None = None) -> TraceResult:
    """Estimate tr(H) (and, with ``groups``, tr(H_gg) per group) to relative error ``rtol``."""
    estimator = ESTIMATORS[method]
    options = {"rtol": rtol, "max_matvecs": max_hvps}
    if method == "hutchpp":
        options["sketch"] = sketch
    generator = torch.Generator().manual_seed(seed)
    total = estimator(operator, generator=generator, callback=callback, **options)
    per_layer = None
    if groups is not None:
        per_layer = []
        for name, slices in groups.items():
            block = restrict(operator, slices)
            size = block.size
            est = estimator(block, generator=generator, **options)
            per_layer.append(LayerTrace(name=name, n_params=size, trace=est.trace,
                                        stderr=est.stderr, ci95=est.ci95,
                                        trace_per_param=est.trace / size, hvps=est.matvecs))
    return TraceResult(estimate=total, n_params=operator.size, rtol=rtol, per_layer=per_layer)
