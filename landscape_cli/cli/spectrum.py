"""``landscape spectrum``: top/bottom Hessian eigenvalues by Lanczos."""

from __future__ import annotations

from typing import Annotated

import typer

from landscape_cli.analyses.spectrum import SpectrumResult, spectrum
from landscape_cli.cli.common import Run
from landscape_cli.errors import LandscapeError

HELP = "Top-k (and bottom-k) Hessian eigenvalues by Lanczos, each with its residual bound."
EPILOG = """Examples:

  landscape spectrum sample_checkpoints/mlp/seed0_epoch100.pt

  landscape spectrum ckpt.pt --top 10 --bottom 3 --dtype float64 --json

  landscape spectrum ckpt.pt --params 'layer3.*' --fail-if 'lambda_max>50'
"""


def spectrum_command(
    run: Run,
    top: Annotated[int, typer.Option(min=1, help="Number of largest eigenvalues.")] = 5,
    bottom: Annotated[int, typer.Option(min=0, help="Number of smallest eigenvalues.")] = 0,
    tol: Annotated[float, typer.Option(
        help="Converged when a Ritz residual ≤ tol·|λ|max.")] = 1e-4,
    max_hvps: Annotated[int | None, typer.Option(
        min=1, help="Most Lanczos steps (HVPs) to spend; default: the parameter count.")] = None,
) -> SpectrumResult:
    """Lanczos with full reorthogonalization on the exact dataset Hessian."""
    if not 0 < tol < 1:
        raise LandscapeError(f"--tol {tol}: must be between 0 and 1")
    problem = run.loaded.problem
    budget = min(problem.n, max_hvps or problem.n)
    with run.progress("Lanczos", total=budget) as callback:
        return spectrum(run.engine.hvp, problem.n, top=top, bottom=bottom, tol=tol,
                        max_hvps=budget, seed=run.seed, dtype=problem.dtype,
                        device=problem.device, callback=callback)
