"""``trace``: tr(H) and tr(H)/n by Hutch++ or Hutchinson, optionally per layer.

Per-layer traces are the traces of the diagonal blocks H_gg, one per module (its weight and
bias together), each estimated by the same method on the block operator v ↦ (H·[v]_g)_g.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from landscape_cli.linalg.trace import Callback, TraceEstimate, hutchinson, hutchpp

ESTIMATORS = {"hutchpp": hutchpp, "hutchinson": hutchinson}


@dataclass
class LayerTrace:
    name: str
    n_params: int
    trace: float
    stderr: float
    ci95: tuple[float, float]
    trace_per_param: float
    hvps: int


@dataclass
class TraceResult:
    """tr(H) with standard error and 95% interval; per-layer rows when asked for."""

    #: The names ``scalars`` can hold, checked before the run (``report.gates.check_names``).
    GATES: ClassVar[tuple[str, ...]] = ("trace", "trace_per_param", "stderr", "relative_stderr")

    estimate: TraceEstimate
    n: int
    rtol: float
    per_layer: list[LayerTrace] | None = None
    notes: list[str] = field(default_factory=list)

    def results(self) -> dict:
        e = self.estimate
        out = {"trace": e.trace, "stderr": e.stderr, "ci95": list(e.ci95),
               "trace_per_param": e.trace / self.n, "n_params": self.n, "method": e.method,
               "probes": e.probes, "sketch": e.sketch, "hvps": e.matvecs, "converged": e.converged,
               "rtol": self.rtol}
        if self.per_layer is not None:
            out["per_layer"] = [{**asdict(row), "ci95": list(row.ci95)} for row in self.per_layer]
        return out

    def scalars(self) -> dict[str, float]:
        e = self.estimate
        return {"trace": e.trace, "trace_per_param": e.trace / self.n, "stderr": e.stderr,
                "relative_stderr": e.stderr / abs(e.trace) if e.trace else float("inf")}

    def warnings(self) -> list[str]:
        e = self.estimate
        if e.converged:
            return list(self.notes)
        return [*self.notes, f"relative standard error {e.stderr / max(abs(e.trace), 1e-300):.3g} "
                f"did not reach --rtol {self.rtol:g} within {e.matvecs} HVPs; raise --max-hvps"]


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
    return TraceResult(estimate=total, n=n, rtol=rtol, per_layer=per_layer)
