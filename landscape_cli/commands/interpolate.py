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
    from landscape_cli.runner import Run

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
        "two Hessian eigenvectors).", choices=("random", "hessian"), panel=_PLANE)] = "random",
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
    from landscape_cli.analyses import directions as planes
    from landscape_cli.analyses.interpolate import Request
    from landscape_cli.report import plot as plots
    from landscape_cli.report.output import destination

    count = len(run.checkpoints)
    if plane and count not in (1, 3):
        raise LandscapeError(f"--plane needs one checkpoint (a plane around it) or three (the "
                             f"plane through them); got {count}")
    if not plane and count == 1:
        raise LandscapeError("interpolate needs two checkpoints for a line (or more for every "
                             "pair), or --plane for a plane around one")
    if via is not None and (count != 2 or plane):
        raise LandscapeError("--via draws the curve between two checkpoints (no --plane)")
    around = plane and count == 1
    if not around and (load_directions or save_directions or directions != "random"):
        raise LandscapeError("--directions, --load-directions and --save-directions are for a "
                             "plane around one checkpoint (--plane with one checkpoint)")
    if plane and align != "none":
        raise LandscapeError("--align is for lines, curves and pairs, not planes")
    request = Request(alphas=planes.parse_grid(alphas, "--alphas"),
                      grid=None if grid is None else planes.parse_grid(grid, "--grid"),
                      curve=via is not None, plane=plane, directions=directions,
                      normalize=normalize, ignore=ignore, seed=run.seed)
    save_to = None if save_directions is None else destination(save_directions,
                                                               "--save-directions", run.inputs)
    plot_to = None if plot is None else plots.check_destination(plot, run.inputs)
    result = _run(run, request, via=via, align=align == "weights", recalibrate=recalibrate_bn,
                  load_from=load_directions, save_to=save_to)
    if plot_to is not None:
        from landscape_cli.report.document import sanitize

        document = {"command": "interpolate", "checkpoint": {"path": run.checkpoints[0]},
                    "results": sanitize(result.results(), "results", [])}
        plots.write_interpolate_plot(document, plot_to)
    return result


def _run(run: Run, request, *, via: Path | None, align: bool, recalibrate: bool,
         load_from: Path | None, save_to) -> InterpolateResult:
    """Load the checkpoints onto one model, then evaluate the path or plane asked for."""
    import torch

    from landscape_cli.analyses import interpolate as paths
    from landscape_cli.analyses.directions import Plane, load_plane, random_plane, save_plane
    from landscape_cli.engine.passes import Passes, batch_norms

    first = run.loaded
    problem = first.problem
    model = problem.objective.model
    if problem.n != sum(p.numel() for p in model.parameters() if p.requires_grad):
        raise LandscapeError("--params: interpolate moves every parameter; leave --params out")
    loads = [first, *(run.load(path) for path in run.checkpoints[1:])]
    if via is not None:
        loads.append(run.load(via))
    names = [*run.checkpoints, *([str(via)] if via is not None else [])]
    ends = [paths.End(name, loaded.problem.theta0, loaded.buffers) for name, loaded in zip(names, loads)]
    notes = []
    has_norms = bool(batch_norms(model))
    if recalibrate and run.config.bn != "eval":
        raise LandscapeError("--recalibrate-bn recomputes running statistics; with bn: "
                             f"{run.config.bn} the model uses batch statistics and keeps none")
    if recalibrate:
        notes.append("--recalibrate-bn: BatchNorm statistics were recomputed at every point, the "
                     "endpoints included, so loss_a and loss_b are the recalibrated checkpoints'"
                     if has_norms else "--recalibrate-bn: the model has no BatchNorm with running "
                     "statistics; nothing was recalibrated")
    elif has_norms and run.config.bn == "eval":
        notes.append("the model has BatchNorm and its statistics are interpolated with the weights "
                     "(each checkpoint keeps its own at its end); interpolated weights usually need "
                     "their own statistics: --recalibrate-bn recomputes them at every point "
                     "(Jordan et al. 2023)")
    eval_passes = None
    if run.config.eval_data is not None:
        eval_passes = Passes(run.session.eval_problem(first), cost=run.passes.cost,
                             warnings=run.passes.warnings)
    evaluator = paths.Evaluator(run.passes, eval_passes, recalibrate and has_norms)

    def endpoints():  # each end's own loss (and accuracy), once: what barriers are measured from
        return evaluator.at(torch.eye(len(ends), dtype=torch.float64), ends)

    alignment, unaligned = None, None
    if align:
        ends, alignment, unaligned = _aligned(run, request, evaluator, ends, endpoints()[0])
    common = {"checkpoints": names[:len(run.checkpoints)], "recalibrate_bn": recalibrate,
              "alignment": alignment, "notes": notes}
    if request.plane and len(ends) == 3:
        xs, ys, evaluated, coordinates = paths.plane_through_ends(request, evaluator, ends)
        plane = _plane_result(xs, ys, evaluated, coordinates, "checkpoints")
        return InterpolateResult(path="plane", plane=plane, **common)
    if request.plane:
        names_, shapes = problem.names, [tuple(s) for s in problem.shapes]
        eigenvalues = None
        if load_from is not None:
            found = load_plane(load_from, names_, shapes, device=problem.device, dtype=problem.dtype)
        elif request.directions == "hessian":
            found, eigenvalues = _hessian_plane(run, names_, shapes)
        else:
            found = random_plane(problem.theta0, names_, shapes, request.seed, request.normalize,
                                 request.ignore)
        if save_to is not None:
            save_plane(Plane(origin=problem.theta0, u=found.u, v=found.v, basis=found.basis,
                             seed=found.seed, normalize=found.normalize, ignore=found.ignore,
                             names=tuple(names_), shapes=tuple(shapes)), save_to)
        xs, ys, evaluated = paths.plane_around(request, evaluator, ends[0], found.u.to(problem.theta0),
                                               found.v.to(problem.theta0))
        plane = _plane_result(xs, ys, evaluated, {names[0]: (0.0, 0.0)}, found.basis,
                              normalize=found.normalize, ignore=found.ignore, seed=found.seed,
                              eigenvalues=eigenvalues)
        return InterpolateResult(path="plane", plane=plane, **common)
    own, own_eval = endpoints()
    if len(ends) == 2 or via is not None:
        path, held_out, barriers = paths.line_or_curve(request, evaluator, ends, own)
        eval_barrier = None
        if held_out is not None:
            eval_barrier = paths.barriers(request.alphas, held_out, own_eval[0], own_eval[1]).barrier
        return InterpolateResult(
            path="curve" if via is not None else "line", via=None if via is None else str(via),
            barriers=barriers, points=paths.points(request.alphas, path),
            eval_points=None if held_out is None else paths.points(request.alphas, held_out),
            eval_barrier=eval_barrier,
            barrier_unaligned=unaligned, **common)
    curves, matrix = paths.pairs(evaluator, ends, own, request.alphas)
    return InterpolateResult(path="pairs", curves=curves, barrier_matrix=matrix, **common)


def _plane_result(xs, ys, evaluated, coordinates, directions, **extra):
    from landscape_cli.analyses.interpolate import as_grid
    from landscape_cli.results.interpolate import Plane

    accuracy = None
    if evaluated and evaluated[0].accuracy is not None:
        accuracy = as_grid([e.accuracy for e in evaluated], len(xs))
    return Plane(x=list(xs), y=list(ys), loss=as_grid([e.loss for e in evaluated], len(xs)),
                 accuracy=accuracy, coordinates=coordinates, directions=directions, **extra)


def _hessian_plane(run: Run, names, shapes):
    """The plane of the top two Hessian eigenvectors at the first checkpoint (Lanczos), and
    their eigenvalues."""
    import torch

    from landscape_cli.analyses.directions import Plane
    from landscape_cli.linalg.lanczos import lanczos

    problem = run.loaded.problem
    found = lanczos(run.engine, top=2, max_steps=problem.n,
                    generator=torch.Generator().manual_seed(run.seed))
    u, v = found.top_vectors.to(problem.theta0)
    return Plane(origin=problem.theta0, u=u, v=v, basis="hessian", names=tuple(names),
                 shapes=tuple(shapes)), found.top.values


def _aligned(run: Run, request, evaluator, ends, own):
    """Every end after the first with its hidden units permuted to match the first's (weight
    matching), the alignment's summary (permutation groups, coordinate-descent sweeps), and
    the barrier of the unaligned line or curve (None for pairs)."""
    import torch

    from landscape_cli.analyses import interpolate as paths
    from landscape_cli.analyses.alignment import align

    problem = run.loaded.problem
    example = problem.batch(0)
    inputs = example[0] if isinstance(example, (tuple, list)) else example
    unaligned = None
    if len(ends) == 2 or request.curve:
        unaligned = paths.line_or_curve(request, evaluator, ends, own)[2].barrier

    def state(end):
        return {**problem.unflatten(end.theta, prefix=""), **end.buffers}

    out, sweeps, groups = [ends[0]], 0, 0
    for end in ends[1:]:
        done = align(problem.objective.model, inputs, state(ends[0]), state(end), seed=run.seed)
        theta = torch.cat([done.state[name].reshape(-1) for name in problem.names])
        out.append(paths.End(end.name, theta.to(end.theta),
                             {k: done.state[k] for k in end.buffers}))
        sweeps, groups = max(sweeps, done.sweeps), len(done.perms)
    return out, {"groups": groups, "sweeps": sweeps}, unaligned


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
