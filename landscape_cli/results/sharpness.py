"""``sharpness``'s result: every measure with its value, its definition, its parameters and its
error (DESIGN §5). The measures' names, definitions and scale invariance are declared here
once: the command's ``--measures`` choices, the README table and the report read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from landscape_cli.results.base import Result, internal, reported
from landscape_cli.results.rows import Keyed, Rows


@dataclass(frozen=True)
class Definition:
    """What a measure is: its formula in words, the paper, and whether it is scale-invariant
    (unchanged when one layer is scaled by c and the next by 1/c, the same function)."""

    text: str
    scale_invariant: bool


#: Every measure, in the order computed and reported.
MEASURES: dict[str, Definition] = {
    "lambda_max": Definition("largest Hessian eigenvalue (Lanczos, residual-bounded)", False),
    "trace_per_param": Definition("tr(H)/n (Hutch++, Meyer et al. 2021)", False),
    "grad_norm": Definition("‖∇L(θ)‖ over the dataset", False),
    "stability_lr": Definition("2/λ_max: the largest step size at which gradient descent is "
                               "stable near θ; η·λ_max ≈ 2 at the edge of stability (Cohen et "
                               "al. 2021)", False),
    "eps_sharpness": Definition("Keskar et al. 2017: (max over the box |δ_i| ≤ ε(|θ_i|+1) of "
                                "L(θ+δ) − L(θ)) / (1 + L(θ)) × 100 (the +1 makes the box "
                                "absolute for small weights: not scale-invariant)", False),
    "worst_case": Definition("max over ‖δ‖₂ ≤ ρ of L(θ+δ) − L(θ) (Auto-PGD ascent, "
                             "Andriushchenko et al. 2023), the best of the ascents from the "
                             "random start(s) and from ±ρ·v_max (v_max the top Hessian "
                             "eigenvector); converged: the best value rose by at most 0.1% over "
                             "Auto-PGD's last checkpoint interval; second_order_estimate = "
                             "ρ‖∇L‖ + ½ρ²λ_max, the most the second-order Taylor model can rise "
                             "on the ball", False),
    "worst_case_adaptive": Definition("max over ‖δ/|θ|‖₂ ≤ ρ of L(θ+δ) − L(θ) (Kwon et al. "
                                      "2021)", True),
    "average_case": Definition("E[L(θ+δ)] − L(θ), δ ~ N(0, σ²I) (Monte Carlo, antithetic "
                               "pairs)", False),
    "average_case_adaptive": Definition("E[L(θ+δ)] − L(θ), δ_i ~ N(0, σ²θ_i²)", True),
    "pac_bayes_sigma": Definition("Jiang et al. 2020: the largest σ with E[L(θ+N(0, σ²I))] − "
                                  "L(θ) ≤ d (or an accuracy drop ≤ d), by bisection with common "
                                  "random numbers; flatness = 1/σ²; sigma_magnitude: the same "
                                  "with std σ'|θ_i| + 1e-3", False),
    "noise_consistency": Definition("average_case ÷ (σ²/2·tr H), its second-order prediction: "
                                    "≈ 1 where L is quadratic at the scale σ", False),
}
#: the measures a measure is computed from
NEEDS: dict[str, tuple[str, ...]] = {"stability_lr": ("lambda_max",),
                                     "worst_case": ("lambda_max", "grad_norm"),
                                     "noise_consistency": ("average_case", "trace_per_param")}


class Measure(Result):
    """One measure: its value, definition and scale invariance, the parameters it was computed
    with, and its error: ``stderr`` and ``ci95`` for Monte Carlo, ``converged`` for ascent."""

    value: float | None = reported(required=True)
    scale_invariant: bool = reported(required=True)
    definition: str = reported(required=True)
    stderr: float | None = reported(omit_none=True, default=None)
    ci95: tuple[float, float] | None = reported(omit_none=True, default=None)
    converged: bool | None = reported(omit_none=True, default=None)
    rho: float | None = reported(omit_none=True, default=None)
    epsilon: float | None = reported(omit_none=True, default=None)
    sigma: float | None = reported(omit_none=True, default=None)
    samples: int | None = reported(omit_none=True, default=None)
    steps: int | None = reported(omit_none=True, default=None)
    restarts: int | None = reported(omit_none=True, default=None)
    grad_evals: int | None = reported(omit_none=True, default=None)
    target: str | None = reported(omit_none=True, default=None)
    deviation: float | None = reported(omit_none=True, default=None)
    tolerance: float | None = reported(omit_none=True, default=None)
    flatness: float | None = reported(omit_none=True, default=None)
    sigma_magnitude: float | None = reported(omit_none=True, default=None)
    flatness_magnitude: float | None = reported(omit_none=True, default=None)
    lr: float | None = reported(omit_none=True, default=None)
    eta_lambda_max: float | None = reported(omit_none=True, default=None)
    residual: float | None = reported(omit_none=True, default=None)
    #: worst_case: ρ‖∇L‖ + ½ρ²λ_max, and the values of the ascents' two kinds of start
    second_order_estimate: float | None = reported(omit_none=True, default=None)
    random_start_value: float | None = reported(omit_none=True, default=None)
    warm_start_value: float | None = reported(omit_none=True, default=None)


#: numbers besides the measures' values that gates may use
EXTRA_GATES = ("flatness", "sigma_magnitude", "flatness_magnitude", "eta_lambda_max")


class SharpnessResult(Result):
    """The measures asked for, by name, in ``MEASURES``' order."""

    DERIVED_GATES: ClassVar[tuple[str, ...]] = (*MEASURES, *EXTRA_GATES)
    ROWS: ClassVar[tuple[Rows, ...]] = (Keyed("measures", "measure", (
        "value", "stderr", "converged", "scale_invariant")),)

    measures: dict[str, Measure] = reported(required=True)
    notes: list[str] = internal(default_factory=list)

    def derived_scalars(self) -> dict[str, float]:
        out = {name: m.value for name, m in self.measures.items() if m.value is not None}
        for m in self.measures.values():
            out.update({key: v for key in EXTRA_GATES if (v := getattr(m, key)) is not None})
        return out

    def warnings(self) -> list[str]:
        notes = list(self.notes)
        for name, m in self.measures.items():
            if m.converged is False and m.steps is None:  # Lanczos (lambda_max)
                notes.append(f"{name}: its residual {m.residual:.3g} did not reach --tol times "
                             "|λ| (the products' own error puts a floor under it); the value is "
                             "within the residual of an eigenvalue of the exact Hessian")
            elif m.converged is False:
                notes.append(f"{name}: the ascent was still improving when its {m.steps} steps "
                             "ran out; the value is a lower bound (raise --steps)")
        return notes
