"""``classify-critical-point``: minimum, saddle, maximum, degenerate or not critical."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from landscape_cli.commands import Command
from landscape_cli.errors import LandscapeError
from landscape_cli.names import CURVATURES, HESSIAN
from landscape_cli.options import Option
from landscape_cli.results.critical import CriticalPointResult

if TYPE_CHECKING:
    from landscape_cli.commands.context import Run


def classify_critical_point(
    run: Run,
    grad_rtol: Annotated[float, Option(
        "Critical when ‖∇L‖ ≤ grad-rtol·|λ|max·max(‖θ‖, 1).")] = 1e-3,
    grad_tol: Annotated[float | None, Option(
        "Absolute gradient-norm tolerance instead of --grad-rtol.")] = None,
    eig_rtol: Annotated[float, Option(
        "Eigenvalues within eig-rtol·|λ|max of zero count as flat.")] = 1e-3,
    tol: Annotated[float, Option("Lanczos residual tolerance (relative).")] = 1e-4,
    max_hvps: Annotated[int | None, Option(
        "Most Lanczos steps (default: the parameter count).", min=2)] = None,
    density: Annotated[bool, Option("Estimate the negative fraction by SLQ.",
                                    flags=("--density/--no-density",))] = True,
    runs: Annotated[int, Option("SLQ runs.", min=1)] = 4,
    steps: Annotated[int, Option("SLQ Lanczos steps per run.")] = 60,
    curvature: Annotated[str, Option("The matrix: only hessian classifies (the others are "
                                     "positive semi-definite: no saddle shows in them).",
                                     choices=CURVATURES)] = HESSIAN,
):
    """Gradient norm, Lanczos λ_min/λ_max with residual bounds, SLQ negative fraction."""
    if curvature != HESSIAN:
        raise LandscapeError(f"--curvature {curvature}: classify-critical-point needs the Hessian; "
                             f"the {curvature} is positive semi-definite, so no saddle or maximum "
                             "shows in it")
    for name, value in (("--grad-rtol", grad_rtol), ("--eig-rtol", eig_rtol), ("--tol", tol)):
        if not value > 0:
            raise LandscapeError(f"{name} {value}: must be greater than 0")
    if grad_tol is not None and grad_tol < 0:
        raise LandscapeError(f"--grad-tol {grad_tol}: must not be negative")
    if steps < 2:
        raise LandscapeError(f"--steps {steps}: SLQ needs at least 2 Lanczos steps")
    from landscape_cli.analyses.critical import classify
    from landscape_cli.linalg.so_far import SoFar

    problem = run.loaded.problem
    budget = min(problem.n, max_hvps or problem.n)
    so_far = SoFar()
    with run.converging("Lanczos", total=None) as callback, run.partial_on_interrupt(so_far):
        return classify(run.engine, run.engine.grad(), problem.theta0, grad_rtol=grad_rtol,
                        grad_tol=grad_tol, eig_rtol=eig_rtol, tol=tol, max_hvps=budget,
                        density=density, runs=runs, steps=steps, seed=run.seed, callback=callback,
                        so_far=so_far)


COMMAND = Command(
    name="classify-critical-point",
    run=classify_critical_point,
    help="Decide whether the checkpoint sits at a minimum, a saddle, a maximum, a degenerate "
         "point, or is not critical, and say why.",
    epilog="""Examples:

  landscape classify-critical-point sample_checkpoints/mlp/seed0_epoch100.pt

  landscape classify-critical-point ckpt.pt --eig-rtol 1e-2 --json | jq .results.verdict

  landscape classify-critical-point ckpt.pt --no-density --fail-if 'lambda_min<-0.5'
""",
    result=CriticalPointResult,
)
