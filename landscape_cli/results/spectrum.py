"""``spectrum``'s result: extreme Hessian eigenvalues with residual bounds, and the density."""

from __future__ import annotations

from typing import Any, ClassVar

from landscape_cli.results.base import Result, internal, numbered, reported
from landscape_cli.results.blocks import BLOCK_ROWS, BlockSpectrum
from landscape_cli.results.density import DensityResult
from landscape_cli.results.rows import Ranked, Rows


def condition_number(lambda_max: float, r_max: float, lambda_min: float,
                     r_min: float) -> tuple[float, float]:
    """κ = λ_max/λ_min of a positive definite H, and its first-order error from the two Ritz
    residuals, δκ = κ·(r_max/λ_max + r_min/λ_min)."""
    kappa = lambda_max / lambda_min
    return kappa, kappa * (r_max / lambda_max + r_min / lambda_min)


def _eigenpairs(end: str) -> Ranked:
    """One row per eigenvalue at the ``top`` or ``bottom`` end of the spectrum."""
    return Ranked(fixed={"end": end}, lists={"eigenvalue": f"{end}_eigenvalues",
                                             "residual": f"{end}_residuals",
                                             "converged": f"{end}_converged"})


class SpectrumResult(Result):
    """Top-k (descending) and bottom-k (ascending) Hessian eigenvalues with residual bounds."""

    DERIVED_GATES: ClassVar[tuple[str, ...]] = ("lambda_max", "top_N", "lambda_min", "bottom_N",
                                                "condition_number")
    ROWS: ClassVar[tuple[Rows, ...]] = (_eigenpairs("top"), _eigenpairs("bottom"), BLOCK_ROWS)

    top_eigenvalues: list[float] = reported(required=True)
    top_residuals: list[float] = reported(required=True)
    top_converged: list[bool] = reported(required=True)
    bottom_eigenvalues: list[float] | None = reported(omit_none=True)
    bottom_residuals: list[float] | None = reported(omit_none=True)
    bottom_converged: list[bool] | None = reported(omit_none=True)
    lanczos_steps: int = reported()
    tol: float = reported()
    #: what the products' own error adds to every residual: their rounding, and in float32 their
    #: distance to float64 products (Lanczos._measured)
    residual_floor: float = reported()
    #: True when the step budget ran out; else the products' precision stopped convergence
    budget_spent: bool = internal()
    density: DensityResult | None = reported(omit_none=True, default=None)
    #: how the Lanczos basis was held (``linalg.memory.BasisLayout.describe``): ``storage``
    #: float64, float32 or host, ``restarted`` (bounded, thick restart), ``max_vectors``
    basis: dict[str, Any] | None = reported(omit_none=True, default=None)
    #: the file --save-vectors wrote the Ritz vectors to (the vectors stay out of the report)
    saved_vectors: str | None = reported(omit_none=True, default=None)
    #: with --bottom: λ_max/λ_min and its error where λ_min exceeds its residual (positive
    #: definite as far as measured), else the note that says why there is none
    condition_number: float | None = reported(omit_none=True, init=False)
    condition_number_error: float | None = reported(omit_none=True, init=False)
    condition_number_note: str | None = reported(omit_none=True, init=False)
    #: with --per-block: the spectrum of each diagonal block, grouped by type
    #: (``analyses/blocks.py``), how they were formed (``--blocks``), and with --density the
    #: Jensen–Shannon heterogeneity JS⁰ of their densities and the common σ it compares them at
    blocks: list[BlockSpectrum] | None = reported(omit_none=True, default=None)
    blocks_by: str | None = reported(omit_none=True, default=None)
    heterogeneity: float | None = reported(gate=True, omit_none=True, default=None)
    heterogeneity_sigma: float | None = reported(omit_none=True, default=None)
    #: --bootstrap: each top eigenvalue's interval over resampled data (the data's share of its
    #: uncertainty; its residual is the numerical share), and how it was resampled
    top_data_ci95: list[tuple[float, float]] | None = reported(omit_none=True, default=None)
    bootstrap: dict[str, Any] | None = reported(omit_none=True, default=None)
    #: the top Ritz vectors (never reported: a --bootstrap warm start)
    top_vectors: Any = internal(default=None)
    notes: list[str] = internal(default_factory=list)

    def __post_init__(self) -> None:
        self.condition_number = self.condition_number_error = self.condition_number_note = None
        if not self.bottom_eigenvalues:
            return
        low, r_low = self.bottom_eigenvalues[0], self.bottom_residuals[0]
        if low > r_low:
            self.condition_number, self.condition_number_error = condition_number(
                self.top_eigenvalues[0], self.top_residuals[0], low, r_low)
        else:
            self.condition_number_note = (
                f"λ_min = {low:.6g} is not above its residual {r_low:.2g}: the Hessian is not "
                "positive definite as far as measured, so λ_max/λ_min is no condition number")

    def derived_scalars(self) -> dict[str, float]:
        out = {"lambda_max": self.top_eigenvalues[0], **numbered("top", self.top_eigenvalues)}
        if self.bottom_eigenvalues:
            out.update(lambda_min=self.bottom_eigenvalues[0],
                       **numbered("bottom", self.bottom_eigenvalues),
                       condition_number=self.condition_number)  # None: a gate on it fails
        return out

    def warnings(self) -> list[str]:
        notes = [*self.notes, *(self.density.warnings() if self.density is not None else []),
                 *(f"block {block.name}: {note}" for block in self.blocks or []
                   for note in block.warnings())]
        unconverged = [block.name for block in self.blocks or [] if not all(block.top_converged)]
        if unconverged:
            notes.append(f"{len(unconverged)} block(s) have top eigenvalues that did not reach "
                         f"residual ≤ {self.tol:g}·|λ|max: {', '.join(unconverged[:8])}"
                         f"{' ...' if len(unconverged) > 8 else ''} (raise --max-hvps or loosen --tol)")
        missed = self.top_converged.count(False) + (self.bottom_converged or []).count(False)
        if missed:
            why = ("raise --max-hvps or loosen --tol" if self.budget_spent else
                   f"not for want of steps: the products' own error (in float32, their distance to "
                   f"float64 products) puts a floor of "
                   f"{self.residual_floor:.2g} under every residual; use --precision 64 or "
                   "loosen --tol")
            notes.append(f"{missed} requested eigenvalue(s) did not reach residual ≤ {self.tol:g}·"
                         f"|λ|max in {self.lanczos_steps} Lanczos steps; {why}")
        return notes
