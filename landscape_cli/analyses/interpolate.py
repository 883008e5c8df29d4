"""``interpolate``: the loss and accuracy along a line, a Bézier curve, every pair of several
checkpoints, or over a plane (the geometry: ``analyses.paths``), with permutation alignment
(``analyses.alignment``), the top-two Hessian plane, BatchNorm notes, and, when a signal stops
the run, the points finished so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from landscape_cli.analyses import paths
from landscape_cli.analyses.paths import End, Evaluator
from landscape_cli.engine.passes import Evaluation, Passes, batch_norms
from landscape_cli.engine.problem import Problem
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.report.output import Destination
from landscape_cli.results.interpolate import Curve, InterpolateResult, Plane

#: the most places a warning lists by name
LISTED = 6

#: (train evaluations, eval evaluations or None, notes) → the result they make
Build = Callable[[list[Evaluation], list[Evaluation] | None, list[str]], InterpolateResult]


@dataclass(frozen=True)
class Request:
    """What to evaluate (the command's options, checked)."""

    alphas: list[float]
    grid: list[float] | None = None
    curve: bool = False
    plane: bool = False
    directions: str = "random"
    normalize: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0
    align: bool = False
    recalibrate: bool = False
    load_directions: Path | None = None
    save_directions: Destination | None = None


@dataclass(frozen=True)
class Inputs:
    """The loaded checkpoints (``ends``: the checkpoints in order, then ``via``'s control
    point), the passes over the data (and the eval data), the BatchNorm policy, and the HVP of
    the first checkpoint (made when the Hessian plane asks for it)."""

    problem: Problem
    ends: list[End]
    checkpoints: list[str]
    passes: Passes
    eval_passes: Passes | None
    bn: str
    operator: Callable[[], LinearOperator]
    via: str | None = None


def interpolate(inputs: Inputs, request: Request, so_far: SoFar | None = None) -> InterpolateResult:
    """Evaluate the path or plane ``request`` asks for; ``so_far`` keeps the result of the
    points finished (an interrupted run reports them)."""
    model = inputs.problem.objective.model
    norms = batch_norms(model)
    notes = _bn_notes(request.recalibrate, bool(norms), inputs.bn)
    variances = [f"{name}.running_var" for name in norms] if inputs.bn == "eval" and \
        not request.recalibrate else []
    evaluator = Evaluator(inputs.passes, inputs.eval_passes, request.recalibrate and bool(norms))
    ends = inputs.ends
    run = _Measure(evaluator, so_far, variances)

    def endpoints():  # each end's own loss (and accuracy), once: what barriers are measured from
        return evaluator.at(torch.eye(len(ends), dtype=torch.float64), ends)

    alignment, unaligned = None, None
    if request.align:
        ends, alignment, unaligned = _aligned(inputs, request, evaluator, ends, endpoints()[0])
    common = {"checkpoints": inputs.checkpoints, "recalibrate_bn": request.recalibrate,
              "alignment": alignment}
    if request.plane and request.directions == "pca":
        return _plane_pca(run, inputs, request, ends, common, notes)
    if request.plane and len(ends) == 3:
        return _plane_through(run, request, ends, common, notes)
    if request.plane:
        return _plane_around(run, inputs, request, ends[0], common, notes)
    own, own_eval = endpoints()
    if len(ends) == 2 or inputs.via is not None:
        return _line(run, request, ends, own, own_eval, common, notes,
                     via=inputs.via, unaligned=unaligned)
    return _pairs(run, request, ends, own, common, notes)


def _bn_notes(recalibrate: bool, has_norms: bool, bn: str) -> list[str]:
    if recalibrate:
        return ["--recalibrate-bn: BatchNorm statistics were recomputed at every point, the "
                "endpoints included, so loss_a and loss_b are the recalibrated checkpoints'"
                if has_norms else "--recalibrate-bn: the model has no BatchNorm with running "
                "statistics; nothing was recalibrated"]
    if has_norms and bn == "eval":
        return ["the model has BatchNorm and its statistics are interpolated with the weights "
                "(each checkpoint keeps its own at its end); interpolated weights usually need "
                "their own statistics: --recalibrate-bn recomputes them at every point "
                "(Jordan et al. 2023)"]
    return []


@dataclass
class _Measure:
    """Evaluates the rows of a weight matrix and builds the result from them, keeping in
    ``so_far`` the result of the rows finished; notes where a loss is not finite."""

    evaluator: Evaluator
    so_far: SoFar | None
    #: the BatchNorm running-variance buffers whose interpolated values are used
    variances: list[str]

    def __call__(self, weights: torch.Tensor, ends: Sequence[End], labels: Sequence[str],
                 build: Build, notes: list[str]) -> InterpolateResult:
        total = len(weights)

        def step(train: list[Evaluation], held: list[Evaluation] | None) -> None:
            if self.so_far is not None:
                self.so_far.result = lambda: build(train, held, [
                    *notes, f"interrupted: {len(train)} of {total} points evaluated",
                    *self._not_finite(weights, ends, labels, train)])

        train, held = self.evaluator.at(weights, ends, step)
        return build(train, held, [*notes, *self._not_finite(weights, ends, labels, train)])

    def _not_finite(self, weights: torch.Tensor, ends: Sequence[End], labels: Sequence[str],
                    found: Sequence[Evaluation]) -> list[str]:
        """Where the loss is not finite, and why where the interpolated BatchNorm running
        variance is negative there."""
        bad = [i for i, e in enumerate(found) if not math.isfinite(e.loss)]
        if not bad:
            return []
        causes = paths.negative_variances(weights[bad], ends, self.variances) if self.variances \
            else [None] * len(bad)
        negative = [(labels[i], cause) for i, cause in zip(bad, causes) if cause is not None]
        other = [labels[i] for i, cause in zip(bad, causes) if cause is None]
        out = []
        if negative:
            out.append(f"the loss is not finite at {_listed([at for at, _ in negative])}, so "
                       "those points have no accuracy: the interpolated BatchNorm running variance "
                       f"is negative there ({negative[0][1]} first) and BatchNorm divides by its "
                       "square root; --recalibrate-bn recomputes the statistics at every point")
        if other:
            out.append(f"the loss is not finite at {_listed(other)}, so those points have no "
                       "accuracy")
        return out


def _listed(places: Sequence[str]) -> str:
    shown = ", ".join(places[:LISTED])
    return shown + (f" and {len(places) - LISTED} more" if len(places) > LISTED else "")


def _line(run: _Measure, request: Request, ends: Sequence[End], own, own_eval, common, notes,
          *, via: str | None, unaligned: float | None) -> InterpolateResult:
    """The path A → B (a Bézier curve through the third end with ``via``)."""
    alphas = request.alphas

    def build(path, held_out, notes_):
        eval_barrier = None
        if held_out is not None:
            eval_barrier = paths.barriers(alphas, held_out, own_eval[0], own_eval[1]).barrier
        return InterpolateResult(
            path="curve" if via is not None else "line", via=via,
            barriers=paths.barriers(alphas, path, own[0], own[1]),
            points=paths.points(alphas, path),
            eval_points=None if held_out is None else paths.points(alphas, held_out),
            eval_barrier=eval_barrier, barrier_unaligned=unaligned, notes=notes_, **common)

    return run(paths.grid(alphas, via is not None), ends, [f"α={a:g}" for a in alphas], build, notes)


def _pairs(run: _Measure, request: Request, ends: Sequence[End], own, common, notes
           ) -> InterpolateResult:
    """The line between every pair of ends (one evaluation pass for all of them), and the
    symmetric matrix of their barriers (0 on the diagonal; null for a pair not finished)."""
    alphas, m = request.alphas, len(ends)
    pair_list, weights = paths.pair_weights(m, alphas)

    def build(evaluated, _, notes_):
        curves, matrix = [], [[0.0 if i == j else None for j in range(m)] for i in range(m)]
        for p, (i, j) in enumerate(pair_list):
            path = evaluated[p * len(alphas):(p + 1) * len(alphas)]
            if len(path) < len(alphas):
                break
            b = paths.barriers(alphas, path, own[i], own[j])
            curves.append(Curve(a=i, b=j, barrier=b.barrier, barrier_mid_ends=b.barrier_mid_ends,
                                alpha_max=b.alpha_max, error_barrier=b.error_barrier,
                                points=paths.points(alphas, path)))
            matrix[i][j] = matrix[j][i] = b.barrier
        return InterpolateResult(path="pairs", curves=curves, barrier_matrix=matrix, notes=notes_,
                                 **common)

    labels = [f"α={a:g} between {i} and {j}" for i, j in pair_list for a in alphas]
    return run(weights, ends, labels, build, notes)


def _plane_through(run: _Measure, request: Request, ends: Sequence[End], common, notes
                   ) -> InterpolateResult:
    """The loss over the plane through three ends (Garipov et al.)."""
    from landscape_cli.analyses.directions import plane_through

    _, coordinates = plane_through(*(e.theta for e in ends), labels=[e.name for e in ends])
    xs = request.grid or paths.span([c[0] for c in coordinates.values()])
    ys = request.grid or paths.span([c[1] for c in coordinates.values()])
    weights = paths.plane_weights(xs, ys, coordinates[ends[2].name])
    return run(weights, ends, _nodes(xs, ys),
               _plane_builder(xs, ys, coordinates, "checkpoints", common), notes)


def _plane_pca(run: _Measure, inputs: Inputs, request: Request, ends: Sequence[End], common, notes
               ) -> InterpolateResult:
    """The loss over a run's PCA plane through its last checkpoint (Li et al. 2018), the
    trajectory in it, what the plane explains and how far each checkpoint lies off it."""
    from landscape_cli.analyses.directions import pca_plane

    problem = inputs.problem
    found = pca_plane([e.theta for e in ends], [e.name for e in ends], names=problem.names,
                      shapes=[tuple(s) for s in problem.shapes])
    xs = request.grid or paths.span([c[0] for c in found.coordinates.values()])
    ys = request.grid or paths.span([c[1] for c in found.coordinates.values()])
    center = ends[-1]
    corners = [center, center.direction("u", found.plane.u), center.direction("v", found.plane.v)]
    build = _plane_builder(xs, ys, found.coordinates, "pca", common,
                           explained_variance=found.explained_variance,
                           trajectory=list(found.coordinates.values()), off_plane=found.off_plane)
    return run(paths.plane_weights(xs, ys), corners, _nodes(xs, ys), build, notes)


def _plane_around(run: _Measure, inputs: Inputs, request: Request, center: End, common, notes
                  ) -> InterpolateResult:
    """The loss over the plane center + x·u + y·v: random directions, the top two Hessian
    eigenvectors, or those of a file; saved when asked."""
    from landscape_cli.analyses.directions import random_plane
    from landscape_cli.analyses.plane_file import load_plane, save_plane

    problem = inputs.problem
    names, shapes = problem.names, [tuple(s) for s in problem.shapes]
    eigenvalues = None
    if request.load_directions is not None:
        found = load_plane(request.load_directions, names, shapes, device=problem.device,
                           dtype=problem.dtype)
    elif request.directions == "hessian":
        found, eigenvalues = _hessian_plane(inputs, request.seed)
    else:
        found = random_plane(problem.theta0, names, shapes, request.seed, request.normalize,
                             request.ignore)
    if request.save_directions is not None:
        save_plane(found.around(problem.theta0), request.save_directions)
    xs = ys = request.grid or paths.AROUND
    ends = [center, center.direction("u", found.u.to(problem.theta0)),
            center.direction("v", found.v.to(problem.theta0))]
    build = _plane_builder(xs, ys, {inputs.checkpoints[0]: (0.0, 0.0)}, found.basis, common,
                           normalize=found.normalize, ignore=found.ignore, seed=found.seed,
                           eigenvalues=eigenvalues)
    return run(paths.plane_weights(xs, ys), ends, _nodes(xs, ys), build, notes)


def _nodes(xs: Sequence[float], ys: Sequence[float]) -> list[str]:
    return [f"(x, y) = ({x:g}, {y:g})" for y in ys for x in xs]


def _plane_builder(xs, ys, coordinates, directions: str, common, **extra) -> Build:
    """The plane's result from its nodes evaluated so far (null for the rest)."""

    def build(evaluated, _, notes_):
        accuracy = None
        if evaluated and any(e.accuracy is not None for e in evaluated):
            accuracy = paths.as_grid([e.accuracy for e in evaluated], len(xs), len(ys))
        plane = Plane(x=list(xs), y=list(ys),
                      loss=paths.as_grid([e.loss for e in evaluated], len(xs), len(ys)),
                      accuracy=accuracy, coordinates=coordinates, directions=directions, **extra)
        return InterpolateResult(path="plane", plane=plane, notes=notes_, **common)

    return build


def _hessian_plane(inputs: Inputs, seed: int):
    """The plane of the top two Hessian eigenvectors at the first checkpoint (Lanczos), and
    their eigenvalues."""
    from landscape_cli.analyses.directions import Plane as Directions
    from landscape_cli.linalg.lanczos import lanczos

    problem = inputs.problem
    found = lanczos(inputs.operator(), top=2, max_steps=problem.n,
                    generator=torch.Generator().manual_seed(seed))
    u, v = found.top.vectors.to(problem.theta0)
    return Directions(origin=problem.theta0, u=u, v=v, basis="hessian",
                      names=tuple(problem.names),
                      shapes=tuple(tuple(s) for s in problem.shapes)), found.top.values


def _aligned(inputs: Inputs, request: Request, evaluator: Evaluator, ends: list[End],
             own: Sequence[Evaluation]):
    """Every end after the first with its hidden units permuted to match the first's (weight
    matching), the alignment's summary (permutation groups, coordinate-descent sweeps), and
    the barrier of the unaligned line or curve (None for pairs)."""
    from landscape_cli.analyses.alignment import align

    problem = inputs.problem
    example = problem.batch(0)
    example_inputs = example[0] if isinstance(example, (tuple, list)) else example
    unaligned = None
    if len(ends) == 2 or request.curve:
        path, _ = evaluator.at(paths.grid(request.alphas, request.curve), ends)
        unaligned = paths.barriers(request.alphas, path, own[0], own[1]).barrier

    def state(end):
        return {**problem.unflatten(end.theta, prefix=""), **end.buffers}

    out, sweeps, groups = [ends[0]], 0, 0
    for end in ends[1:]:
        done = align(problem.objective.model, example_inputs, state(ends[0]), state(end),
                     seed=request.seed)
        theta = torch.cat([done.state[name].reshape(-1) for name in problem.names])
        out.append(End(end.name, theta.to(end.theta), {k: done.state[k] for k in end.buffers}))
        sweeps, groups = max(sweeps, done.sweeps), len(done.perms)
    return out, {"groups": groups, "sweeps": sweeps}, unaligned
