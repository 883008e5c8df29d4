"""The SLQ eigenvalue density (``spectrum --density``) as the report holds it (DESIGN §6)."""

from __future__ import annotations

from landscape_cli.results.base import Result, internal, reported


class DensityResult(Result):
    """The SLQ density on a grid, its quadrature, and the negative spectral mass."""

    grid: list[float] = reported(required=True)
    values: list[float] = reported(required=True)
    #: the raw quadrature, one list per run
    nodes: list[list[float]] = reported(required=True)
    weights: list[list[float]] = reported(required=True)
    negative_mass: float = reported(gate=True, required=True)
    negative_threshold: float = reported(required=True)
    negative_weight_ratio: float = reported(gate=True, required=True)
    #: the run-to-run spread of ``negative_mass`` (None for a single run)
    negative_mass_stderr: float | None = reported()
    sigma: float = reported()
    runs: int = reported()
    steps: int = reported()
    lambda_min: float = reported()
    lambda_max: float = reported()
    reorthogonalized: bool = reported()
    notes: list[str] = internal()

    def warnings(self) -> list[str]:
        return list(self.notes)
