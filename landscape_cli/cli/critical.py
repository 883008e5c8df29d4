"""``landscape classify-critical-point``: minimum, saddle, maximum, degenerate or not critical."""

from __future__ import annotations

from typing import Annotated

import typer

from landscape_cli.analyses.critical import CriticalPointResult, classify
from landscape_cli.cli.common import Run
from landscape_cli.errors import LandscapeError

HELP = ("Decide whether the checkpoint sits at a minimum, a saddle, a maximum, a degenerate "
        "point, or is not critical, and say why.")
EPILOG = """Examples:

  landscape classify-critical-point sample_checkpoints/mlp/seed0_epoch100.pt

  landscape classify-critical-point ckpt.pt --eig-rtol 1e-2 --json | jq .results.verdict

  landscape classify-critical-point ckpt.pt --no-density --fail-if 'lambda_min<-0.5'
"""


def classify_command(
    run: Run,
    grad_rtol: Annotated[float, typer.Option(
        help="Critical when ‖∇L‖ ≤ grad-rtol·|λ|max·max(‖θ‖, 1).")] = 1e-3,
    grad_tol: Annotated[float | None, typer.Option(
        help="Absolute gradient-norm tolerance instead of --grad-rtol.")] = None,
    eig_rtol: Annotated[float, typer.Option(
        help="Eigenvalues within eig-rtol·|λ|max of zero count as flat.")] = 1e-3,
    tol: Annotated[float, typer.Option(help="Lanczos residual tolerance (relative).")] = 1e-4,
    max_hvps: Annotated[int | None, typer.Option(
        min=2, help="Most Lanczos steps (default: the parameter count).")] = None,
    density: Annotated[bool, typer.Option(
        "--density/--no-density", help="Estimate the negative fraction by SLQ.")] = True,
    runs: Annotated[int, typer.Option(min=1, help="SLQ runs.")] = 4,
    steps: Annotated[int, typer.Option(help="SLQ Lanczos steps per run.")] = 60,
) -> CriticalPointResult:
    """Gradient norm, Lanczos λ_min/λ_max with residual bounds, SLQ negative fraction."""
    for name, value in (("--grad-rtol", grad_rtol), ("--eig-rtol", eig_rtol), ("--tol", tol)):
        if not value > 0:
            raise LandscapeError(f"{name} {value}: must be greater than 0")
    if grad_tol is not None and grad_tol < 0:
        raise LandscapeError(f"--grad-tol {grad_tol}: must not be negative")
    if steps < 2:
        raise LandscapeError(f"--steps {steps}: SLQ needs at least 2 Lanczos steps")
    problem = run.loaded.problem
    budget = min(problem.n, max_hvps or problem.n)
    with run.converging("Lanczos", total=None) as callback:
        return classify(run.engine.hvp, run.engine.grad(), problem.theta0, grad_rtol=grad_rtol,
                        grad_tol=grad_tol, eig_rtol=eig_rtol, tol=tol, max_hvps=budget,
                        density=density, runs=runs, steps=steps, seed=run.seed,
                        dtype=problem.dtype, device=problem.device, callback=callback,
                        memory_budget=run.engine.memory_left())
