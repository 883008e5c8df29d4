"""``interpolate``: loss and accuracy along lines, curves and planes between checkpoints, with
barriers, permutation alignment and BatchNorm recalibration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from landscape_cli.commands import Command
from landscape_cli.errors import LandscapeError
from landscape_cli.options import Option
from landscape_cli.results.interpolate import IGNORES, NORMALIZATIONS, InterpolateResult

if TYPE_CHECKING:
    from landscape_cli.commands.context import Run

_PLANE, _PATH = "Plane", "Path"


def interpolate(
    run: Run,
    alphas: Annotated[str, Option("Points along a line or curve, start:stop:num (α = 0 is the "
                                  "first checkpoint, 1 the second).", metavar="GRID",
                                  panel=_PATH)] = "-0.25:1.25:31",
    via: Annotated[Path | None, Option(
        "A control checkpoint: the quadratic Bézier curve (1−t)²A + 2t(1−t)C + t²B (the form "
        "of Garipov et al.'s trained curves) instead of the line.", metavar="CKPT",
        panel=_PATH)] = None,
    align: Annotated[str, Option(
        "weights: permute the hidden units of each other checkpoint to match the first "
        "(Ainsworth et al. 2023 weight matching) before interpolating; the report gives the "
        "barrier before and after.", choices=("none", "weights"), panel=_PATH)] = "none",
    recalibrate_bn: Annotated[bool, Option(
        "Recompute BatchNorm statistics at every point (the endpoints too) with one pass over "
        "the data (Jordan et al. 2023).", flags=("--recalibrate-bn",))] = False,
    plane: Annotated[bool, Option(
        "A 2-D grid: through three checkpoints (Garipov et al.), or around one along two "
        "directions (--directions).", flags=("--plane",), panel=_PLANE)] = False,
    grid: Annotated[str | None, Option(
        "The plane's grid per axis, start:stop:num (default -1:1:21 around one checkpoint; "
        "through three, the checkpoints' span with a quarter of it around).", metavar="GRID",
        panel=_PLANE)] = None,
    directions: Annotated[str, Option(
        "Around one checkpoint: random (seeded, normalised per --normalize) or hessian (the top "
        "two Hessian eigenvectors); through three or more of one run: pca (the top two principal "
        "directions of their differences from the last, Li et al. 2018).",
        choices=("random", "hessian", "pca"), panel=_PLANE)] = "random",
    normalize: Annotated[str, Option(
        "Random directions: filter (Li et al. 2018: each filter to its weight filter's norm), "
        "layer, or none.", choices=NORMALIZATIONS, panel=_PLANE)] = "filter",
    ignore: Annotated[str, Option(
        "Random directions: biasbn zeroes biases and normalisation parameters (Li et al.), none "
        "keeps them.", choices=IGNORES, panel=_PLANE)] = "biasbn",
    save_directions: Annotated[Path | None, Option(
        "Write the plane's directions to FILE (safetensors) to redraw or compare it later.",
        metavar="FILE", panel=_PLANE)] = None,
    load_directions: Annotated[Path | None, Option(
        "Use the directions of FILE (from --save-directions) around this checkpoint.",
        metavar="FILE", panel=_PLANE)] = None,
    plot: Annotated[Path | None, Option(
        "Write a plot (.png, .svg or .pdf; needs matplotlib): the curve, the plane's contour or "
        "the barrier matrix.", metavar="FILE")] = None,
):
    """Exact evaluation at every point, many points per forward pass."""
    from landscape_cli.grids import parse_grid
    from landscape_cli.report import plot as plots
    from landscape_cli.report.output import destination

    count = len(run.checkpoints)
    pca = directions == "pca"
    if pca and (not plane or count < 3):
        raise LandscapeError(f"--directions pca is a plane (--plane) through three or more "
                             f"checkpoints of one run; got {count}")
    if plane and not pca and count not in (1, 3):
        raise LandscapeError(f"--plane needs one checkpoint (a plane around it) or three (the "
                             f"plane through them), or --directions pca for three or more; "
                             f"got {count}")
    if not plane and count == 1:
        raise LandscapeError("interpolate needs two checkpoints for a line (or more for every "
                             "pair), or --plane for a plane around one")
    if via is not None and (count != 2 or plane):
        raise LandscapeError("--via draws the curve between two checkpoints (no --plane)")
    around = plane and count == 1
    if not around and (load_directions or save_directions or directions not in ("random", "pca")):
        raise LandscapeError("--directions, --load-directions and --save-directions are for a "
                             "plane around one checkpoint (--plane with one checkpoint)")
    if plane and align != "none":
        raise LandscapeError("--align is for lines, curves and pairs, not planes")
    if recalibrate_bn and run.config.bn != "eval":
        raise LandscapeError("--recalibrate-bn recomputes running statistics; with bn: "
                             f"{run.config.bn} the model uses batch statistics and keeps none")
    alphas_, grid_ = parse_grid(alphas, "--alphas"), None if grid is None else parse_grid(grid, "--grid")
    save_to = None if save_directions is None else destination(save_directions,
                                                               "--save-directions", run.inputs)
    plot_to = None if plot is None else plots.check_destination(plot, run.inputs)
    from landscape_cli.analyses.interpolate import Request
    from landscape_cli.analyses.interpolate import interpolate as measure
    from landscape_cli.linalg.so_far import SoFar

    request = Request(alphas=alphas_, grid=grid_, curve=via is not None, plane=plane,
                      directions=directions, normalize=normalize, ignore=ignore, seed=run.seed,
                      align=align == "weights", recalibrate=recalibrate_bn,
                      load_directions=load_directions, save_directions=save_to)
    so_far = SoFar()
    with run.partial_on_interrupt(so_far):
        result = measure(_inputs(run, via), request, so_far)
    if plot_to is not None:
        from landscape_cli.report.document import sanitize

        document = {"command": "interpolate", "checkpoint": {"path": run.checkpoints[0]},
                    "results": sanitize(result.results(), "results", [])}
        plots.write_interpolate_plot(document, plot_to)
    return result


def _inputs(run: Run, via: Path | None):
    """The checkpoints (and ``via``'s control point) loaded onto one model, and the passes."""
    from landscape_cli.analyses.interpolate import Inputs
    from landscape_cli.analyses.paths import End
    from landscape_cli.engine.passes import Passes

    first = run.loaded
    problem = first.problem
    model = problem.objective.model
    if problem.n != sum(p.numel() for p in model.parameters() if p.requires_grad):
        raise LandscapeError("--params: interpolate moves every parameter; leave --params out")
    loads = [first, *(run.load(path) for path in run.checkpoints[1:])]
    if via is not None:
        loads.append(run.load(via))
    names = [*run.checkpoints, *([str(via)] if via is not None else [])]
    eval_passes = None
    if run.config.eval_data is not None:
        eval_passes = Passes(run.session.eval_problem(first), cost=run.passes.cost,
                             warnings=run.passes.warnings)
    return Inputs(problem=problem, checkpoints=list(run.checkpoints),
                  ends=[End(name, loaded.problem.theta0, loaded.buffers)
                        for name, loaded in zip(names, loads)],
                  passes=run.passes, eval_passes=eval_passes, bn=run.config.bn,
                  operator=lambda: run.engine, via=None if via is None else str(via))


COMMAND = Command(
    name="interpolate",
    run=interpolate,
    help="Loss and accuracy along the line, a Bézier curve or a plane between checkpoints, "
         "with barriers (mode connectivity), permutation alignment and BatchNorm "
         "recalibration.",
    epilog="""Examples:

  landscape interpolate runs/seed0.pt runs/seed1.pt

  landscape interpolate a.pt b.pt --align weights --recalibrate-bn --plot line.png

  landscape interpolate a.pt b.pt --via curve_mid.pt --json

  landscape interpolate 'runs/seed*.pt' --fail-if 'max_barrier>0.1'

  landscape interpolate ckpt.pt --plane --grid -1:1:51 --save-directions dirs.safetensors
""",
    result=InterpolateResult,
    many=True,
)
