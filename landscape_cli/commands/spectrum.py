"""``spectrum``: top/bottom Hessian eigenvalues by Lanczos, and with ``--density`` the
eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from landscape_cli.commands import Command
from landscape_cli.errors import LandscapeError
from landscape_cli.names import CURVATURE_HELP, CURVATURES, HESSIAN
from landscape_cli.options import BOOTSTRAP, BOOTSTRAP_UNIT, Option
from landscape_cli.results.spectrum import SpectrumResult

if TYPE_CHECKING:
    from landscape_cli.analyses.blocks import BlockSpec
    from landscape_cli.commands.context import Run

_DENSITY = "Density (SLQ)"
_BLOCKS = "Per block"


def spectrum(
    run: Run,
    top: Annotated[int, Option("Number of largest eigenvalues.", min=1)] = 5,
    bottom: Annotated[int, Option("Number of smallest eigenvalues.", min=0)] = 0,
    tol: Annotated[float, Option("Converged when a Ritz residual ≤ tol·|λ|max.")] = 1e-4,
    max_hvps: Annotated[int | None, Option(
        "Most Lanczos steps (HVPs) to spend; default: the parameter count.", min=1)] = None,
    density: Annotated[bool, Option(
        "Also estimate the eigenvalue density by stochastic Lanczos quadrature (runs × steps "
        "HVPs, in blocks of runs).", flags=("--density",), panel=_DENSITY)] = False,
    runs: Annotated[int, Option("SLQ runs (independent Rademacher start vectors).",
                                panel=_DENSITY)] = 10,
    steps: Annotated[int, Option("Lanczos steps per SLQ run (capped at the parameter count).",
                                 panel=_DENSITY)] = 90,
    sigma: Annotated[float | None, Option(
        "Gaussian broadening width; default (λmax − λmin)/steps, the quadrature's resolution.",
        panel=_DENSITY)] = None,
    save_vectors: Annotated[Path | None, Option(
        "Write the Ritz vectors of the reported eigenvalues to FILE (.safetensors): one tensor "
        "per vector and parameter, top_1/<name> ... bottom_1/<name> (only the analysed ones "
        "under --params), eigenvalue and residual in the metadata; with --top 2 or more also "
        "the plane of the top two for interpolate --plane --load-directions.",
        metavar="FILE")] = None,
    plot: Annotated[Path | None, Option(
        "Write a log-scale density plot (.png, .svg or .pdf; needs matplotlib). Implies "
        "--density.", metavar="FILE", panel=_DENSITY)] = None,
    per_block: Annotated[bool, Option(
        "Also the top eigenvalues (--top, --tol, --max-hvps per block) of each diagonal block "
        "H_bb, and with --density each block's density and their Jensen–Shannon heterogeneity; "
        "the blocks' products are shared.", flags=("--per-block",), panel=_BLOCKS)] = False,
    blocks: Annotated[str | None, Option(
        "The blocks of --per-block (implies it): tensor (each parameter tensor, the default), "
        "module (each module's parameters together) or NAME=GLOB,... (named groups of "
        "parameter names; the rest form the block 'other').", metavar="SPEC",
        panel=_BLOCKS)] = None,
    curvature: Annotated[str, Option(CURVATURE_HELP, choices=CURVATURES)] = HESSIAN,
    bootstrap: Annotated[int, BOOTSTRAP] = 0,
    bootstrap_unit: Annotated[str, BOOTSTRAP_UNIT] = "batch",
):
    """Lanczos with full reorthogonalization on the exact dataset Hessian; SLQ for --density."""
    run.curvature = curvature
    if not 0 < tol < 1:
        raise LandscapeError(f"--tol {tol}: must be between 0 and 1")
    if steps < 2:
        raise LandscapeError(f"--steps {steps}: SLQ needs at least 2 Lanczos steps per run")
    if runs < 1:
        raise LandscapeError(f"--runs {runs}: SLQ needs at least 1 run")
    if sigma is not None and not sigma > 0:
        raise LandscapeError(f"--sigma {sigma}: the broadening width must be greater than 0")
    block_spec = None
    if per_block or blocks is not None:
        from landscape_cli.analyses.blocks import parse_blocks

        block_spec = parse_blocks("tensor" if blocks is None else blocks)
    from landscape_cli.analyses.spectrum import spectrum as lanczos_spectrum
    from landscape_cli.report import plot as density_plot
    from landscape_cli.report.document import sanitize

    plot_to = None if plot is None else density_plot.check_destination(plot, run.inputs)
    vectors_to = None if save_vectors is None else _vectors_destination(save_vectors, run.inputs)
    density = density or plot_to is not None
    problem = run.loaded.problem
    budget = min(problem.n, max_hvps or problem.n)
    vectors_file = None
    if vectors_to is not None:
        from landscape_cli.analyses.eigenvectors import VectorsFile

        vectors_file = VectorsFile.of(vectors_to, problem)
    with run.converging("Lanczos", total=None) as callback:
        result = lanczos_spectrum(run.operator, top=top, bottom=bottom, tol=tol,
                                  max_hvps=budget, seed=run.seed, callback=callback,
                                  save_vectors=vectors_file)
    if bootstrap:
        from landscape_cli.analyses import bootstrap as resampled

        resamples = resampled.Resamples(problem, bootstrap, run.seed, bootstrap_unit)
        with run.progress(f"bootstrap ×{bootstrap}", total=None):
            intervals = resampled.top_eigenvalues(resamples, run.operator_on, result.top_vectors,
                                                  len(result.top_eigenvalues), tol)
        result = dataclasses.replace(result, top_data_ci95=intervals,
                                     bootstrap={"resamples": bootstrap, "unit": bootstrap_unit})
    if density:
        result = _with_density(run, result, runs=runs, steps=steps, sigma=sigma)
    if block_spec is not None:
        result = _with_blocks(run, result, block_spec, top=top, tol=tol, max_hvps=max_hvps,
                              density=dict(runs=runs, steps=steps, sigma=sigma) if density else None)
    if plot_to is not None:
        # The plot draws what the report holds: the same results, NaN already made null.
        document = {"command": "spectrum", "checkpoint": {"path": str(run.loaded.checkpoint.path)},
                    "results": sanitize(result.results(), "results", [])}
        density_plot.write_density_plot(document, plot_to)
    return result


def _with_density(run: Run, result: SpectrumResult, *, runs: int, steps: int,
                  sigma: float | None) -> SpectrumResult:
    """``result`` with the SLQ density of the whole Hessian (an interruption keeps the steps
    taken)."""
    from landscape_cli.analyses.density import spectral_density
    from landscape_cli.linalg.so_far import SoFar

    problem = run.loaded.problem
    density_so_far, so_far = SoFar(), SoFar()
    so_far.result = lambda: (None if density_so_far.result is None
                             else dataclasses.replace(result, density=density_so_far.value()))
    with (run.converging(f"SLQ ×{runs}", total=min(steps, problem.n)) as callback,
          run.partial_on_interrupt(so_far)):
        estimate = spectral_density(run.operator, runs=runs, steps=steps, seed=run.seed,
                                    sigma=sigma, callback=callback, so_far=density_so_far)
    return dataclasses.replace(result, density=estimate)


def _with_blocks(run: Run, result: SpectrumResult, spec: BlockSpec, *, top: int, tol: float,
                 max_hvps: int | None, density: dict | None) -> SpectrumResult:
    """``result`` with the spectrum of every diagonal block (``analyses/blocks.py``); an
    interruption keeps the whole Hessian's numbers, with a note."""
    from landscape_cli.analyses.blocks import form_blocks, module_kinds, per_block
    from landscape_cli.linalg.so_far import SoFar

    problem = run.loaded.problem
    blocks = form_blocks(spec, problem.names)
    kinds = module_kinds(problem.objective.model, problem.names)
    so_far = SoFar()
    so_far.result = lambda: dataclasses.replace(result, notes=[
        *result.notes, "interrupted during the per-block spectra: none of them is reported"])
    with (run.progress(f"blocks ×{len(blocks)}", total=len(blocks)) as update,
          run.partial_on_interrupt(so_far)):
        found = per_block(run.operator, blocks, problem.groups, kinds, top=top, tol=tol,
                          max_hvps=max_hvps, seed=run.seed, density=density,
                          callback=lambda done, count: update(done, f"{done}/{count} blocks"))
    return dataclasses.replace(result, blocks=found.blocks, blocks_by=spec.text,
                               heterogeneity=found.heterogeneity,
                               heterogeneity_sigma=found.sigma, notes=[*result.notes, *found.notes])


def _vectors_destination(path: Path, inputs: list[Path]):
    """``--save-vectors``' file, checked before any loading: a new or regular .safetensors file
    that the run does not read, in a folder it may write."""
    from landscape_cli.report.output import destination

    if path.suffix.lower() != ".safetensors":
        raise LandscapeError(f"--save-vectors {path}: the file name must end in .safetensors "
                             f"(got {path.suffix or 'no suffix'})")
    dest = destination(path, "--save-vectors", inputs)
    if not dest.atomic:
        raise dest.error("is not a regular file; give a file name")
    return dest


def sharded(options: dict[str, Any]) -> str | None:
    """What a sharded model cannot run: the options that need whole vectors or SLQ."""
    given = [flag for name, flag in (("per_block", "--per-block"), ("density", "--density"),
                                     ("save_vectors", "--save-vectors"), ("bootstrap", "--bootstrap"))
             if options.get(name)]
    if options.get("curvature", HESSIAN) != HESSIAN:
        given.append(f"--curvature {options['curvature']}")
    return f"{', '.join(given)} do(es) not run on a sharded model" if given else None


COMMAND = Command(
    name="spectrum",
    run=spectrum,
    help="Top-k (and bottom-k) Hessian eigenvalues by Lanczos, each with its residual bound; "
         "with --density, the eigenvalue density by stochastic Lanczos quadrature.",
    epilog="""Examples:

  landscape spectrum sample_checkpoints/mlp/seed0_epoch100.pt

  landscape spectrum ckpt.pt --top 10 --bottom 3 --dtype float64 --json

  landscape spectrum ckpt.pt --params 'layer3.*' --fail-if 'lambda_max>50'

  landscape spectrum ckpt.pt --density --plot density.png --fail-if 'negative_mass>0.01'

  landscape spectrum ckpt.pt --top 2 --save-vectors top2.safetensors
""",
    result=SpectrumResult,
    sharded=sharded,
)
