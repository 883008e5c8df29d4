"""``classify-critical-point``: minimum, saddle, maximum, degenerate point, or not critical.

First order: θ is critical when ‖∇L‖ ≤ grad_rtol·|λ|max·max(‖θ‖, 1), i.e. the Newton step of
the local quadratic model, ‖H⁻¹∇L‖ ≥ ‖∇L‖/|λ|max, is a small fraction of ‖θ‖ (or ‖∇L‖ ≤
``grad_tol`` when that is given). Second order (Nocedal & Wright, Thm 2.3–2.4), with
τ = eig_rtol·|λ|max: every Ritz value is a Rayleigh quotient, so λ_min ≤ θ_min and
λ_max ≥ θ_max hold whatever Lanczos's convergence; θ_min < −τ thus *proves* a direction of
negative curvature and θ_max > τ one of positive curvature. A minimum needs all of H above τ,
λ_min ≥ θ_min − r_min > τ (r the measured residual), and a maximum the mirror image. No
clearly negative and no clearly positive end, or an end within τ of zero, is ``degenerate``:
second-order information cannot then separate a degenerate minimum from a degenerate saddle.
The SLQ spectral density adds the fraction of negative eigenvalues, an estimate of the index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from landscape_cli.analyses.density import spectral_density
from landscape_cli.linalg.lanczos import lanczos
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.results.critical import CriticalPointResult


def decide(grad_norm: float, grad_threshold: float, theta_min: float, r_min: float,
           theta_max: float, r_max: float, tau: float) -> tuple[str, str]:
    """The verdict and the one sentence of the test that decided it."""
    if grad_norm > grad_threshold:
        return "not_critical", (f"‖∇L‖ = {grad_norm:.3g} > {grad_threshold:.3g}: the gradient is "
                                "not small, so this is not a critical point")
    if theta_min - r_min > tau:
        return "minimum", (f"λ_min ≥ θ_min − r = {theta_min - r_min:.3g} > τ = {tau:.3g}: all "
                           "curvature is positive (a strict local minimum)")
    if theta_max + r_max < -tau:
        return "maximum", (f"λ_max ≤ θ_max + r = {theta_max + r_max:.3g} < −τ = {-tau:.3g}: all "
                           "curvature is negative (a strict local maximum)")
    if theta_min < -tau and theta_max > tau:
        return "saddle", (f"λ_min ≤ {theta_min:.3g} < −τ and λ_max ≥ {theta_max:.3g} > τ = "
                          f"{tau:.3g}: curvature of both signs (a saddle point)")
    side = ("no clearly negative curvature (λ_min" if theta_min >= -tau
            else "no clearly positive curvature (λ_max")
    value, residual = (theta_min, r_min) if theta_min >= -tau else (theta_max, r_max)
    return "degenerate", (f"{side} = {value:.3g} ± {residual:.2g}, within τ = {tau:.3g} of zero): "
                          "flat directions, so second-order information cannot tell a degenerate "
                          "minimum from a degenerate saddle")


def classify(operator: LinearOperator, grad: torch.Tensor, theta: torch.Tensor,
             *, grad_rtol: float = 1e-3, grad_tol: float | None = None, eig_rtol: float = 1e-3,
             tol: float = 1e-4, max_hvps: int | None = None, density: bool = True,
             runs: int = 4, steps: int = 60, seed: int = 0,
             callback: Callable[[int, int, int], None] | None = None,
             so_far: SoFar | None = None) -> CriticalPointResult:
    """Gradient norm, extreme eigenvalues by Lanczos, negative spectral mass by SLQ (within
    the operator's memory for its vectors, see :func:`spectral_density`). ``so_far`` holds
    the verdict without the density while SLQ runs, for an interrupted run's report."""
    n = theta.numel()
    run = lanczos(operator, top=1, bottom=1, tol=tol, max_steps=max_hvps,
                  generator=torch.Generator().manual_seed(seed), callback=callback)
    theta_max, r_max = run.top.values[0], run.top.residuals[0]
    theta_min, r_min = run.bottom.values[0], run.bottom.residuals[0]
    scale = max(abs(theta_max), abs(theta_min))
    tau = eig_rtol * scale
    grad_norm = float(torch.linalg.vector_norm(grad))
    theta_norm = float(torch.linalg.vector_norm(theta))
    grad_threshold = grad_tol if grad_tol is not None else grad_rtol * scale * max(theta_norm, 1.0)
    verdict, decisive = decide(grad_norm, grad_threshold, theta_min, r_min, theta_max, r_max, tau)
    evidence = [decisive]
    rule = (f"‖∇L‖ ≤ --grad-tol {grad_tol:g}" if grad_tol is not None else
            f"‖∇L‖ ≤ {grad_rtol:g}·|λ|max·max(‖θ‖, 1) = {grad_threshold:.3g} (‖θ‖ = {theta_norm:.3g})")
    evidence.append(f"first-order test: ‖∇L‖ = {grad_norm:.3g}; critical means {rule}")
    evidence.append(f"Lanczos ({run.products} HVPs): λ_max = {theta_max:.6g} (residual {r_max:.2g}), "
                    f"λ_min = {theta_min:.6g} (residual {r_min:.2g}); τ = {eig_rtol:g}·|λ|max = "
                    f"{tau:.3g}")
    result = functools.partial(
        CriticalPointResult, verdict=verdict, grad_norm=grad_norm, grad_threshold=grad_threshold,
        theta_norm=theta_norm, lambda_min=theta_min, lambda_min_residual=r_min,
        lambda_max=theta_max, lambda_max_residual=r_max, eig_threshold=tau,
        lanczos_converged=run.converged)
    if not density:
        return result(density=None, evidence=evidence)
    if so_far is not None:
        so_far.result = lambda: result(density=None, evidence=evidence, notes=[
            "interrupted during the SLQ density: the verdict is complete, negative_fraction "
            "was not measured"])
    result_density = spectral_density(operator, runs=runs, steps=min(steps, n), seed=seed)
    evidence.append(
        f"SLQ ({runs} runs × {min(steps, n)} steps): an estimated "
        f"{100 * result_density.negative_mass:.3g}% of eigenvalues lie below "
        f"−{result_density.negative_threshold:.3g} (index estimate), and negative eigenvalues "
        f"carry {100 * result_density.negative_weight_ratio:.3g}% of Σ|λ|")
    return result(density=result_density, evidence=evidence)
