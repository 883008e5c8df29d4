"""``classify-critical-point``'s result: the verdict, the numbers behind it, its evidence."""

from __future__ import annotations

from typing import ClassVar, Literal

from landscape_cli.results.base import Result, internal, reported
from landscape_cli.results.density import DensityResult
from landscape_cli.results.rows import Row, Rows
from landscape_cli.results.spectrum import condition_number

Verdict = Literal["minimum", "saddle", "maximum", "degenerate", "not_critical"]


class CriticalPointResult(Result):
    """The verdict, the numbers behind it and the sentences that explain it. The negative
    spectral mass comes from the SLQ ``density`` (None without one)."""

    DERIVED_GATES: ClassVar[tuple[str, ...]] = ("condition_number",)
    ROWS: ClassVar[tuple[Rows, ...]] = (
        Row(("verdict", "grad_norm", "lambda_min", "lambda_max", "negative_fraction")),)

    verdict: Verdict = reported(required=True)
    grad_norm: float = reported(gate=True, required=True)
    lambda_min: float = reported(gate=True, required=True)
    lambda_max: float = reported(gate=True, required=True)
    #: the estimated index: the fraction of eigenvalues below −negative_threshold
    negative_fraction: float | None = reported(gate=True, required=True, init=False)
    evidence: list[str] = reported(required=True)
    #: λ_max/λ_min for a minimum (its first-order error from the two residuals beside it), else
    #: None with ``condition_number_note`` saying why
    condition_number: float | None = reported(required=True, init=False)
    condition_number_error: float | None = reported(init=False)
    condition_number_note: str | None = reported(init=False)
    lambda_min_residual: float = reported()
    lambda_max_residual: float = reported()
    grad_threshold: float = reported()
    eig_threshold: float = reported()
    theta_norm: float = reported()
    lanczos_converged: bool = reported()
    negative_weight_ratio: float | None = reported(omit_none=True, init=False)
    negative_threshold: float | None = reported(omit_none=True, init=False)
    density: DensityResult | None = internal()
    notes: list[str] = internal(default_factory=list)

    def __post_init__(self) -> None:
        d = self.density
        self.negative_fraction = None if d is None else d.negative_mass
        self.negative_weight_ratio = None if d is None else d.negative_weight_ratio
        self.negative_threshold = None if d is None else d.negative_threshold
        self.condition_number = self.condition_number_error = self.condition_number_note = None
        if self.verdict == "minimum":
            self.condition_number, self.condition_number_error = condition_number(
                self.lambda_max, self.lambda_max_residual, self.lambda_min,
                self.lambda_min_residual)
        else:
            self.condition_number_note = (f"the verdict is {self.verdict}, not a minimum: "
                                          "λ_max/λ_min is a condition number only where the "
                                          "Hessian is positive definite")

    def derived_scalars(self) -> dict[str, float]:
        return {"condition_number": self.condition_number}  # None: a gate on it fails

    def warnings(self) -> list[str]:
        notes = [*self.notes, *([] if self.density is None else self.density.warnings())]
        if self.lanczos_converged:
            return notes
        return ["Lanczos did not converge at both ends within the budget; the verdict rests on "
                "the residual bounds shown (raise --max-hvps for a firmer one)", *notes]
