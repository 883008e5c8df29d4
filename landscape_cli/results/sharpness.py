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
    "preconditioned_lambda_max": Definition(
        "λ_max(P^-½ (H + λ_c) P^-½ + λ̃_d): the curvature the optimizer's next update sees (Cohen "
        "et al. 2022), P from the checkpoint's optimizer state (Adam: (1 − β₁ᵗ)(diag √v̂ + ε); "
        "SGD: I), other groups' learning rates folded into P, coupled weight decay λ_c added to "
        "H, AdamW's decoupled λ_d as λ̃_d = λ_d(1 + β₁)/(1 − β₁) (Lanczos, residual-bounded)", False),
    "stability_threshold": Definition(
        "the largest preconditioned_lambda_max at which the update is stable on a quadratic: "
        "2/η (SGD), (2 + 2μ)/((1 − τ)η) (heavy ball, dampening τ), (2 + 2μ)/((1 + 2μ)η) "
        "(Nesterov), (2 + 2β₁)/((1 − β₁)η) = 38/η at β₁ = 0.9 (Adam)", False),
    "stability_ratio": Definition(
        "preconditioned_lambda_max / stability_threshold: ≥ 1 is past the edge of stability", False),
    "batch_sharpness": Definition(
        "E_B[g_Bᵀ H_B g_B / ‖g_B‖²] over the data's minibatches (Andreyev & Beneventano 2024, "
        "the curvature SGD equilibrates at 2/η), mean ± stderr over the batches", False),
    "gradient_curvature": Definition("gᵀHg/‖g‖², g = ∇L(θ): the curvature along the gradient", False),
    "update_curvature": Definition(
        "uᵀHu/‖u‖², u the step the checkpoint's optimizer would take next (torch.optim on its "
        "state with the current gradient folded in)", False),
}
#: the measures read from the checkpoint's optimizer state (null with the reason where it has none)
OPTIMIZER_MEASURES = ("preconditioned_lambda_max", "stability_threshold", "stability_ratio",
                      "update_curvature")
#: the measures a measure is computed from
NEEDS: dict[str, tuple[str, ...]] = {"stability_lr": ("lambda_max",),
                                     "worst_case": ("lambda_max", "grad_norm"),
                                     "noise_consistency": ("average_case", "trace_per_param"),
                                     "stability_ratio": ("preconditioned_lambda_max",
                                                         "stability_threshold")}


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
    #: why the value is null (no optimizer state, an unsupported optimizer)
    reason: str | None = reported(omit_none=True, default=None)
    #: the optimizer measures: its kind, step count, β₁ or μ, what stability is measured against
    optimizer: str | None = reported(omit_none=True, default=None)
    step: int | None = reported(omit_none=True, default=None)
    momentum: float | None = reported(omit_none=True, default=None)
    threshold: float | None = reported(omit_none=True, default=None)
    #: batch_sharpness: the minibatches and the most samples one holds
    batches: int | None = reported(omit_none=True, default=None)
    batch_size: int | None = reported(omit_none=True, default=None)
    #: the measured error finite-difference products put into a Rayleigh quotient
    fd_error: float | None = reported(omit_none=True, default=None)
    #: --bootstrap: the value's interval over resampled data (lambda_max, trace_per_param)
    data_ci95: tuple[float, float] | None = reported(omit_none=True, default=None)


#: the measures whose edge of stability is a fixed number (a sweep names the step where it is
#: first reached, and its plot draws it)
EDGES = {"stability_ratio": 1.0}
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
        unmeasured: dict[str, list[str]] = {}
        for name, m in self.measures.items():
            if m.value is None and m.reason:
                unmeasured.setdefault(m.reason, []).append(name)
        notes += [f"{', '.join(names)}: null, {reason}" for reason, names in unmeasured.items()]
        for name, m in self.measures.items():
            if m.converged is False and m.residual is not None:  # Lanczos
                notes.append(f"{name}: its residual {m.residual:.3g} did not reach --tol times "
                             "|λ| (the products' own error puts a floor under it); the value is "
                             "within the residual of an eigenvalue of the exact Hessian")
            elif m.converged is False and m.steps is None:  # Hutch++
                notes.append(f"{name}: its standard error did not reach --rtol within --max-hvps; "
                             "its interval is the one to trust")
            elif m.converged is False:
                notes.append(f"{name}: the ascent was still improving when its {m.steps} steps "
                             "ran out; the value is a lower bound (raise --steps)")
        return notes
