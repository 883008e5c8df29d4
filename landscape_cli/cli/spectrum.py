"""``landscape spectrum``: top/bottom Hessian eigenvalues by Lanczos, and with ``--density``
the eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from landscape_cli.analyses.density import spectral_density
from landscape_cli.analyses.spectrum import SpectrumResult, spectrum
from landscape_cli.cli.common import Run
from landscape_cli.errors import LandscapeError
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.report import plot as density_plot
from landscape_cli.report.document import sanitize

HELP = ("Top-k (and bottom-k) Hessian eigenvalues by Lanczos, each with its residual bound; "
        "with --density, the eigenvalue density by stochastic Lanczos quadrature.")
EPILOG = """Examples:

  landscape spectrum sample_checkpoints/mlp/seed0_epoch100.pt

  landscape spectrum ckpt.pt --top 10 --bottom 3 --dtype float64 --json

  landscape spectrum ckpt.pt --params 'layer3.*' --fail-if 'lambda_max>50'

  landscape spectrum ckpt.pt --density --plot density.png --fail-if 'negative_mass>0.01'
"""

_DENSITY = "Density (SLQ)"


def spectrum_command(
    run: Run,
    top: Annotated[int, typer.Option(min=1, help="Number of largest eigenvalues.")] = 5,
    bottom: Annotated[int, typer.Option(min=0, help="Number of smallest eigenvalues.")] = 0,
    tol: Annotated[float, typer.Option(
        help="Converged when a Ritz residual ≤ tol·|λ|max.")] = 1e-4,
    max_hvps: Annotated[int | None, typer.Option(
        min=1, help="Most Lanczos steps (HVPs) to spend; default: the parameter count.")] = None,
    density: Annotated[bool, typer.Option(
        "--density", help="Also estimate the eigenvalue density by stochastic Lanczos "
        "quadrature (runs × steps HVPs, in blocks of runs).", rich_help_panel=_DENSITY)] = False,
    runs: Annotated[int, typer.Option(
        help="SLQ runs (independent Rademacher start vectors).", rich_help_panel=_DENSITY)] = 10,
    steps: Annotated[int, typer.Option(
        help="Lanczos steps per SLQ run (capped at the parameter count).",
        rich_help_panel=_DENSITY)] = 90,
    sigma: Annotated[float | None, typer.Option(
        help="Gaussian broadening width; default (λmax − λmin)/steps, the quadrature's "
        "resolution.", rich_help_panel=_DENSITY)] = None,
    plot: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Write a log-scale density plot (.png, .svg or .pdf; needs "
        "matplotlib). Implies --density.", rich_help_panel=_DENSITY)] = None,
) -> SpectrumResult:
    """Lanczos with full reorthogonalization on the exact dataset Hessian; SLQ for --density."""
    if not 0 < tol < 1:
        raise LandscapeError(f"--tol {tol}: must be between 0 and 1")
    if steps < 2:
        raise LandscapeError(f"--steps {steps}: SLQ needs at least 2 Lanczos steps per run")
    if runs < 1:
        raise LandscapeError(f"--runs {runs}: SLQ needs at least 1 run")
    if sigma is not None and not sigma > 0:
        raise LandscapeError(f"--sigma {sigma}: the broadening width must be greater than 0")
    plot_to = None if plot is None else density_plot.check_destination(plot, run.inputs)
    density = density or plot_to is not None
    problem = run.loaded.problem
    budget = min(problem.n, max_hvps or problem.n)
    with run.converging("Lanczos", total=None) as callback:
        result = spectrum(run.engine.hvp, problem.n, top=top, bottom=bottom, tol=tol,
                          max_hvps=budget, seed=run.seed, dtype=problem.dtype,
                          device=problem.device, callback=callback)
    if not density:
        return result
    density_so_far, so_far = SoFar(), SoFar()
    so_far.result = lambda: (None if density_so_far.result is None
                             else dataclasses.replace(result, density=density_so_far.value()))
    with (run.converging(f"SLQ ×{runs}", total=min(steps, problem.n)) as callback,
          run.partial_on_interrupt(so_far)):
        estimate = spectral_density(run.engine.hvp, problem.n, runs=runs, steps=steps,
                                    seed=run.seed, sigma=sigma, dtype=problem.dtype,
                                    device=problem.device, callback=callback,
                                    memory_budget=run.engine.memory_left(), so_far=density_so_far)
    result = dataclasses.replace(result, density=estimate)
    if plot_to is not None:
        # The plot draws what the report holds: the same results, NaN already made null.
        document = {"command": "spectrum", "checkpoint": {"path": str(run.loaded.checkpoint.path)},
                    "results": sanitize(result.results(), "results", [])}
        density_plot.write_density_plot(document, plot_to)
    return result
