"""``trace``: tr(H) by Hutch++ (default) or Hutchinson, with standard error and 95% interval."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

from landscape_cli.commands import Command
from landscape_cli.errors import LandscapeError
from landscape_cli.names import CURVATURE_HELP, CURVATURES, HESSIAN
from landscape_cli.options import BOOTSTRAP, BOOTSTRAP_UNIT, Option
from landscape_cli.results.trace import Method, TraceResult

if TYPE_CHECKING:
    from landscape_cli.commands.context import Run

_DIAGONAL = "Diagonal"
#: the estimators of ``analyses.trace.ESTIMATORS`` (which imports torch; a test keeps them equal)
METHODS = get_args(Method)


def trace(
    run: Run,
    method: Annotated[str, Option("hutchpp (Meyer et al. 2021) or hutchinson.",
                                  choices=METHODS)] = "hutchpp",
    rtol: Annotated[float, Option("Stop when the standard error is at most rtol·|trace|.")] = 0.01,
    max_hvps: Annotated[int, Option("Most HVPs to spend (per layer with --per-layer).",
                                    min=1)] = 1000,
    sketch: Annotated[int | None, Option("Hutch++ sketch size (default min(24, max-hvps/3)).",
                                         min=0)] = None,
    per_layer: Annotated[bool, Option("Also estimate the trace of each module's diagonal block.",
                                      flags=("--per-layer",))] = False,
    curvature: Annotated[str, Option(CURVATURE_HELP, choices=CURVATURES)] = HESSIAN,
    diagonal: Annotated[Path | None, Option(
        "Also write an estimate of the matrix's diagonal to FILE (.safetensors, one tensor per "
        "parameter, named like the model's; each entry's standard error in FILE.stderr.safetensors), "
        "by Hutchinson's estimator.", metavar="FILE", panel=_DIAGONAL)] = None,
    diagonal_probes: Annotated[int, Option("Probes (products) for --diagonal.", min=2,
                                           panel=_DIAGONAL)] = 100,
    bootstrap: Annotated[int, BOOTSTRAP] = 0,
    bootstrap_unit: Annotated[str, BOOTSTRAP_UNIT] = "batch",
):
    """Hutch++ / Hutchinson with Rademacher probes pushed through the engine in blocks."""
    run.curvature = curvature
    files = None if diagonal is None else _diagonal_destinations(diagonal, run.inputs)
    if not rtol > 0:
        raise LandscapeError(f"--rtol {rtol}: must be greater than 0")
    from landscape_cli.analyses.trace import module_groups
    from landscape_cli.analyses.trace import trace as estimate_trace
    from landscape_cli.linalg.so_far import SoFar
    from landscape_cli.linalg.trace import TraceEstimate

    problem = run.loaded.problem
    groups = module_groups(problem.names, problem.groups) if per_layer else None
    so_far = SoFar()
    with run.progress("trace HVPs", total=max_hvps) as update, run.partial_on_interrupt(so_far):

        def step(spent: int, estimate: TraceEstimate) -> None:
            so_far.result = lambda: TraceResult(estimate, problem.n, rtol, notes=[
                f"interrupted: the estimate after {estimate.matvecs} HVPs"])
            update(spent, f"tr ≈ {estimate.trace:.5g} ± {estimate.stderr:.2g}")

        result = estimate_trace(run.operator, method=method, rtol=rtol, max_hvps=max_hvps,
                                sketch=sketch, seed=run.seed, groups=groups, callback=step)
    if bootstrap:
        from landscape_cli.analyses import bootstrap as resampled

        resamples = resampled.Resamples(problem, bootstrap, run.seed, bootstrap_unit)
        with run.progress(f"bootstrap ×{bootstrap}", total=None):
            interval = resampled.trace(resamples, run.operator_on, result.trace)
        result = dataclasses.replace(result, data_ci95=interval,
                                     bootstrap={"resamples": bootstrap, "unit": bootstrap_unit,
                                                "probes": resampled.TRACE_PROBES})
    if files is None:
        return result
    from landscape_cli.analyses.diagonal import write_diagonal

    with run.progress("diagonal probes", total=None):
        return dataclasses.replace(result, diagonal=write_diagonal(
            run.operator, problem, files, probes=diagonal_probes, seed=run.seed, curvature=curvature))


def _diagonal_destinations(path: Path, inputs: list[Path]):
    """``--diagonal``'s two files, checked before any loading: new or regular .safetensors files
    the run does not read."""
    from landscape_cli.report.output import destination

    if path.suffix.lower() != ".safetensors":
        raise LandscapeError(f"--diagonal {path}: the file name must end in .safetensors "
                             f"(got {path.suffix or 'no suffix'})")
    errors = path.with_name(path.stem + ".stderr.safetensors")
    return destination(path, "--diagonal", inputs), destination(errors, "--diagonal", inputs)


def sharded(options: dict[str, Any]) -> str | None:
    """What a sharded model cannot run: per-layer blocks, a diagonal, resamples or another
    matrix than the Hessian, all of whole vectors."""
    given = [flag for name, flag in (("per_layer", "--per-layer"), ("diagonal", "--diagonal"),
                                     ("bootstrap", "--bootstrap")) if options.get(name)]
    if options.get("curvature", HESSIAN) != HESSIAN:
        given.append(f"--curvature {options['curvature']}")
    return f"{', '.join(given)} do(es) not run on a sharded model" if given else None


COMMAND = Command(
    name="trace",
    run=trace,
    help="Trace of the Hessian (and per layer) by Hutch++ or Hutchinson, with a 95% interval.",
    epilog="""Examples:

  landscape trace sample_checkpoints/mlp/seed0_epoch100.pt

  landscape trace ckpt.pt --rtol 0.005 --max-hvps 5000 --json

  landscape trace ckpt.pt --per-layer --method hutchinson
""",
    result=TraceResult,
    sharded=sharded,
)
