"""``landscape trace``: tr(H) by Hutch++ (default) or Hutchinson, with standard error."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from landscape_cli.analyses.trace import TraceResult, module_groups, trace
from landscape_cli.cli.common import Run
from landscape_cli.errors import LandscapeError
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.linalg.trace import METHODS, TraceEstimate

Method = Enum("Method", {m: m for m in METHODS}, type=str)

HELP = "Trace of the Hessian (and per layer) by Hutch++ or Hutchinson, with a 95% interval."
EPILOG = """Examples:

  landscape trace sample_checkpoints/mlp/seed0_epoch100.pt

  landscape trace ckpt.pt --rtol 0.005 --max-hvps 5000 --json

  landscape trace ckpt.pt --per-layer --method hutchinson
"""


def trace_command(
    run: Run,
    method: Annotated[Method, typer.Option(help="hutchpp (Meyer et al. 2021) or hutchinson.")]
    = Method.hutchpp,
    rtol: Annotated[float, typer.Option(
        help="Stop when the standard error is at most rtol·|trace|.")] = 0.01,
    max_hvps: Annotated[int, typer.Option(min=1, help="Most HVPs to spend (per layer with "
                                                      "--per-layer).")] = 1000,
    sketch: Annotated[int | None, typer.Option(
        min=0, help="Hutch++ sketch size (default min(24, max-hvps/3)).")] = None,
    per_layer: Annotated[bool, typer.Option(
        "--per-layer", help="Also estimate the trace of each module's diagonal block.")] = False,
) -> TraceResult:
    """Hutch++ / Hutchinson with Rademacher probes pushed through the engine in blocks."""
    if not rtol > 0:
        raise LandscapeError(f"--rtol {rtol}: must be greater than 0")
    problem = run.loaded.problem
    groups = module_groups(problem.names, problem.groups) if per_layer else None
    so_far = SoFar()
    with run.progress("trace HVPs", total=max_hvps) as update, run.partial_on_interrupt(so_far):

        def step(spent: int, estimate: TraceEstimate) -> None:
            so_far.result = lambda: TraceResult(estimate, problem.n, rtol, notes=[
                f"interrupted: the estimate after {estimate.matvecs} HVPs"])
            update(spent, f"tr ≈ {estimate.trace:.5g} ± {estimate.stderr:.2g}")

        return trace(run.engine.hvp, problem.n, method=method.value, rtol=rtol, max_hvps=max_hvps,
                     sketch=sketch, seed=run.seed, dtype=problem.dtype, device=problem.device,
                     groups=groups, callback=step)
