"""``interpolate``: the loss along paths and over planes between checkpoints (mode
connectivity: Garipov et al. 2018, Draxler et al. 2018, Frankle et al. 2020; landscape pictures:
Li et al. 2018).

Every point of every shape is a weighted sum of a few *ends*, θ = Σ_j w_j θ_j: a line
(1−α, α) of A and B, a quadratic Bézier curve ((1−t)², t², 2t(1−t)) of A, B and the control C,
a plane through three checkpoints (its barycentric weights), or a plane around one checkpoint
(1, x, y) of θ_A and two directions. The BatchNorm statistics (and any floating buffer) are the
same sum of the ends' buffers, a direction's being zero, so each end is reproduced exactly with
its own statistics; ``--recalibrate-bn`` recomputes them at every point instead (REPAIR, Jordan
et al. 2023). Points go through ``Passes.evaluate_many``, many per forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from landscape_cli.engine.passes import Evaluation, Passes
from landscape_cli.results.interpolate import Barriers, Curve, Point

#: bytes of interpolated weight vectors held at once (rows of one ``evaluate_many`` call)
POINTS_BYTES = 256 << 20


@dataclass(frozen=True)
class End:
    """A weight vector the points are sums of, with its buffers by the model's names (a
    direction's are zero)."""

    name: str
    theta: torch.Tensor
    buffers: dict[str, torch.Tensor]

    def direction(self, name: str, vector: torch.Tensor) -> End:
        """A direction from this end: ``vector``, with zero buffers."""
        return End(name, vector, {k: torch.zeros_like(v) for k, v in self.buffers.items()})


@dataclass
class Evaluator:
    """Evaluates weighted sums of ends on the data (and on the eval data, when given)."""

    passes: Passes
    eval_passes: Passes | None = None
    recalibrate: bool = False

    def at(self, weights: torch.Tensor, ends: Sequence[End]
           ) -> tuple[list[Evaluation], list[Evaluation] | None]:
        """The evaluations at the rows of ``weights`` (k×len(ends)), in chunks of about
        ``POINTS_BYTES`` of weight vectors."""
        thetas = torch.stack([e.theta for e in ends])
        rows = max(1, POINTS_BYTES // (thetas.shape[1] * thetas.element_size()))
        train, held_out = [], []
        for chunk in weights.split(rows):
            w = chunk.to(thetas)
            points = w @ thetas
            buffers = self._buffers(w, ends, points)
            train += self.passes.evaluate_many(points, buffers, buffers_per_row=True)
            if self.eval_passes is not None:
                held_out += self.eval_passes.evaluate_many(points, buffers, buffers_per_row=True)
        return train, (held_out if self.eval_passes is not None else None)

    def _buffers(self, w: torch.Tensor, ends: Sequence[End], points: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        """Each point's buffers: the weighted sum of the ends' floating ones (the first end's
        counters), or BatchNorm statistics recomputed at the point."""
        out = {}
        for name, first in ends[0].buffers.items():
            if first.is_floating_point():
                stack = torch.stack([e.buffers[name] for e in ends]).to(w)
                out[name] = torch.tensordot(w, stack, dims=1).to(first.dtype)
            else:
                out[name] = first.expand(len(w), *first.shape)
        if self.recalibrate:
            fresh = [self.passes.recalibrate_bn(theta) for theta in points]
            for name in fresh[0]:
                out[name] = torch.stack([f[name] for f in fresh])
        return out


def grid(alphas: Sequence[float], curve: bool = False) -> torch.Tensor:
    """Weights of a line (1−α, α) or a quadratic Bézier curve ((1−t)², t², 2t(1−t)) over
    A, B (and the control C)."""
    a = torch.tensor(alphas, dtype=torch.float64)
    if curve:
        return torch.stack([(1 - a) ** 2, a ** 2, 2 * a * (1 - a)], dim=1)
    return torch.stack([1 - a, a], dim=1)


def barriers(alphas: Sequence[float], path: Sequence[Evaluation], a: Evaluation,
             b: Evaluation) -> Barriers:
    """The barriers of a path over its points with α ∈ [0, 1] (``Barriers``)."""
    inside = [(alpha, e) for alpha, e in zip(alphas, path) if 0 <= alpha <= 1]

    def worst(value, end_a: float, end_b: float) -> tuple[float | None, float | None]:
        gaps = [(value(e) - ((1 - alpha) * end_a + alpha * end_b), alpha) for alpha, e in inside]
        gaps = [(g, alpha) for g, alpha in gaps if math.isfinite(g)]
        return max(gaps) if gaps else (None, None)

    barrier, alpha_max = worst(lambda e: e.loss, a.loss, b.loss)
    finite = [e.loss for _, e in inside if math.isfinite(e.loss)]
    mid = max(finite) - (a.loss + b.loss) / 2 if finite else None
    error = None
    if a.accuracy is not None and b.accuracy is not None:
        error, _ = worst(lambda e: 1 - e.accuracy, 1 - a.accuracy, 1 - b.accuracy)
    return Barriers(loss_a=a.loss, loss_b=b.loss, barrier=barrier, barrier_mid_ends=mid,
                    alpha_max=alpha_max, error_barrier=error)


def points(alphas: Sequence[float], path: Sequence[Evaluation]) -> list[Point]:
    return [Point(alpha=float(alpha), loss=e.loss, accuracy=e.accuracy)
            for alpha, e in zip(alphas, path)]


def pairs(evaluator: Evaluator, ends: Sequence[End], own: Sequence[Evaluation],
          alphas: Sequence[float]) -> tuple[list[Curve], list[list[float | None]]]:
    """The line between every pair of ends (one evaluation pass for all of them), and the
    symmetric matrix of their barriers (0 on the diagonal)."""
    m = len(ends)
    line = grid(alphas)
    pair_list = [(i, j) for i in range(m) for j in range(i + 1, m)]
    weights = torch.zeros(len(pair_list) * len(alphas), m, dtype=torch.float64)
    for p, (i, j) in enumerate(pair_list):
        rows = slice(p * len(alphas), (p + 1) * len(alphas))
        weights[rows, i], weights[rows, j] = line[:, 0], line[:, 1]
    evaluated, _ = evaluator.at(weights, ends)
    curves, matrix = [], [[0.0 if i == j else None for j in range(m)] for i in range(m)]
    for p, (i, j) in enumerate(pair_list):
        path = evaluated[p * len(alphas):(p + 1) * len(alphas)]
        b = barriers(alphas, path, own[i], own[j])
        curves.append(Curve(a=i, b=j, barrier=b.barrier, barrier_mid_ends=b.barrier_mid_ends,
                            alpha_max=b.alpha_max, error_barrier=b.error_barrier,
                            points=points(alphas, path)))
        matrix[i][j] = matrix[j][i] = b.barrier
    return curves, matrix


def plane_weights(xs: Sequence[float], ys: Sequence[float],
                  through: tuple[float, float] | None = None) -> torch.Tensor:
    """Weights of the grid's points, row-major over y then x: over (θ_A, u, v), (1, x, y);
    or, for the plane through A, B and C with C at ``through`` = (x_C, y_C), the barycentric
    weights over (A, B, C): w_C = y/y_C, w_B = x − w_C·x_C, w_A = 1 − w_B − w_C."""
    x = torch.tensor(xs, dtype=torch.float64).repeat(len(ys))
    y = torch.tensor(ys, dtype=torch.float64).repeat_interleave(len(xs))
    if through is None:
        return torch.stack([torch.ones_like(x), x, y], dim=1)
    w_c = y / through[1]
    w_b = x - w_c * through[0]
    return torch.stack([1 - w_b - w_c, w_b, w_c], dim=1)


def as_grid(values: Sequence[float | None], columns: int) -> list[list[float | None]]:
    return [list(values[i:i + columns]) for i in range(0, len(values), columns)]


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


#: the default grid per axis of a plane around one checkpoint
AROUND = [i / 10 - 1 for i in range(21)]


def _span(values: Sequence[float], num: int = 21) -> list[float]:
    """``num`` points over the span of ``values`` with a quarter of it on either side."""
    low, high = min(values), max(values)
    margin = (high - low) / 4
    return [low - margin + (high - low + 2 * margin) * i / (num - 1) for i in range(num)]


def line_or_curve(request: Request, evaluator: Evaluator, ends: Sequence[End],
                  own: Sequence[Evaluation]) -> tuple[list[Evaluation], list[Evaluation] | None,
                                                      Barriers]:
    """The path A → B (a Bézier curve through the third end for ``request.curve``), its
    evaluations (train, eval) and its barriers."""
    path, held_out = evaluator.at(grid(request.alphas, request.curve), ends)
    return path, held_out, barriers(request.alphas, path, own[0], own[1])


def plane_through_ends(request: Request, evaluator: Evaluator, ends: Sequence[End]):
    """The loss over the plane through three ends, the grid and the ends' coordinates."""
    from landscape_cli.analyses.directions import plane_through

    _, coordinates = plane_through(*(e.theta for e in ends), labels=[e.name for e in ends])
    xs = request.grid or _span([c[0] for c in coordinates.values()])
    ys = request.grid or _span([c[1] for c in coordinates.values()])
    evaluated, _ = evaluator.at(plane_weights(xs, ys, coordinates[ends[2].name]), ends)
    return xs, ys, evaluated, coordinates


def plane_around(request: Request, evaluator: Evaluator, center: End, u: torch.Tensor,
                 v: torch.Tensor):
    """The loss over the plane center + x·u + y·v."""
    xs = ys = request.grid or AROUND
    ends = [center, center.direction("u", u), center.direction("v", v)]
    evaluated, _ = evaluator.at(plane_weights(xs, ys), ends)
    return xs, ys, evaluated
