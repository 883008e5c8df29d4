"""The geometry of ``interpolate``: points as weighted sums of a few *ends* and their loss
(mode connectivity: Garipov et al. 2018, Draxler et al. 2018, Frankle et al. 2020; landscape
pictures: Li et al. 2018).

Every point of every shape is a weighted sum of ends, θ = Σ_j w_j θ_j: a line (1−α, α) of A
and B, a quadratic Bézier curve ((1−t)², t², 2t(1−t)) of A, B and the control C, a plane
through three checkpoints (its barycentric weights), or a plane around one checkpoint
(1, x, y) of θ_A and two directions. The BatchNorm statistics (and any floating buffer) are the
same sum of the ends' buffers, a direction's being zero, so each end is reproduced exactly with
its own statistics; ``--recalibrate-bn`` recomputes them at every point instead (REPAIR, Jordan
et al. 2023). Points go through ``Passes.evaluate_many``, many per forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from landscape_cli.engine.passes import Evaluation, Passes
from landscape_cli.results.interpolate import Barriers, Point

#: bytes of interpolated weight vectors held at once (rows of one ``evaluate_many`` call)
POINTS_BYTES = 256 << 20
#: the default grid per axis of a plane around one checkpoint
AROUND = [i / 10 - 1 for i in range(21)]

#: called after each chunk of points with the evaluations so far (train, eval or None)
Step = Callable[[list[Evaluation], list[Evaluation] | None], None]


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


def scored(found: Evaluation) -> Evaluation:
    """``found`` without an accuracy where its loss is not finite: NaN logits score whatever
    class ``argmax`` picks first, which is no accuracy of the model's."""
    return found if math.isfinite(found.loss) else Evaluation(found.loss, None)


@dataclass
class Evaluator:
    """Evaluates weighted sums of ends on the data (and on the eval data, when given)."""

    passes: Passes
    eval_passes: Passes | None = None
    recalibrate: bool = False

    def at(self, weights: torch.Tensor, ends: Sequence[End], step: Step | None = None
           ) -> tuple[list[Evaluation], list[Evaluation] | None]:
        """The evaluations at the rows of ``weights`` (k×len(ends)), in chunks of about
        ``POINTS_BYTES`` of weight vectors; ``step`` sees them after each chunk."""
        thetas = torch.stack([e.theta for e in ends])
        rows = max(1, POINTS_BYTES // (thetas.shape[1] * thetas.element_size()))
        train: list[Evaluation] = []
        held_out: list[Evaluation] | None = [] if self.eval_passes is not None else None
        for chunk in weights.split(rows):
            w = chunk.to(thetas)
            points = w @ thetas
            buffers = self._buffers(w, ends, points)
            # one set shared by every row (a plane around one checkpoint): the model's own
            # kernels use it, where a stack of them would go through vmap's batched ones
            shared = all(torch.equal(v, v[:1].expand_as(v)) for v in buffers.values())
            if shared:
                buffers = {k: v[0] for k, v in buffers.items()}
            for passes, found in ((self.passes, train), (self.eval_passes, held_out)):
                if passes is not None:
                    found += map(scored, passes.evaluate_many(points, buffers, buffers_per_row=not shared,
                                                              mixing=(w, thetas)))
            if step is not None:
                step(list(train), None if held_out is None else list(held_out))
        return train, held_out

    def _buffers(self, w: torch.Tensor, ends: Sequence[End], points: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        """Each point's buffers: the weighted sum of the ends' floating ones (the first end's
        counters), or BatchNorm statistics recomputed at the point."""
        out = {}
        for name, first in ends[0].buffers.items():
            if first.is_floating_point():
                out[name] = mixed(w, ends, name)
            else:
                out[name] = first.expand(len(w), *first.shape)
        if self.recalibrate:
            fresh = [self.passes.recalibrate_bn(theta) for theta in points]
            for name in fresh[0]:
                out[name] = torch.stack([f[name] for f in fresh])
        return out


def mixed(weights: torch.Tensor, ends: Sequence[End], buffer: str) -> torch.Tensor:
    """The floating buffer ``buffer`` at each row of ``weights``: Σ_j w_j buffer_j."""
    first = ends[0].buffers[buffer]
    stack = torch.stack([e.buffers[buffer] for e in ends]).to(weights)
    return torch.tensordot(weights.to(stack), stack, dims=1).to(first.dtype)


def negative_variances(weights: torch.Tensor, ends: Sequence[End], names: Sequence[str]
                       ) -> list[str | None]:
    """For each row of ``weights``: the first of the BatchNorm running-variance buffers
    ``names`` whose interpolated value has a negative entry there (None where none has);
    BatchNorm divides by √(var + ε), which is NaN below −ε."""
    found: list[str | None] = [None] * len(weights)
    for name in names:
        negative = (mixed(weights, ends, name).flatten(1) < 0).any(dim=1)
        found = [f or (name if bad else None) for f, bad in zip(found, negative.tolist())]
    return found


def grid(alphas: Sequence[float], curve: bool = False) -> torch.Tensor:
    """Weights of a line (1−α, α) or a quadratic Bézier curve ((1−t)², t², 2t(1−t)) over
    A, B (and the control C)."""
    a = torch.tensor(alphas, dtype=torch.float64)
    if curve:
        return torch.stack([(1 - a) ** 2, a ** 2, 2 * a * (1 - a)], dim=1)
    return torch.stack([1 - a, a], dim=1)


def barriers(alphas: Sequence[float], path: Sequence[Evaluation], a: Evaluation,
             b: Evaluation) -> Barriers:
    """The barriers of a path over its points with α ∈ [0, 1] (``Barriers``); a point with a
    loss that is not finite counts in none of them."""
    inside = [(alpha, e) for alpha, e in zip(alphas, path) if 0 <= alpha <= 1 and math.isfinite(e.loss)]

    def worst(value, end_a: float, end_b: float) -> tuple[float | None, float | None]:
        gaps = [(value(e) - ((1 - alpha) * end_a + alpha * end_b), alpha) for alpha, e in inside]
        gaps = [(g, alpha) for g, alpha in gaps if math.isfinite(g)]
        return max(gaps) if gaps else (None, None)

    barrier, alpha_max = worst(lambda e: e.loss, a.loss, b.loss)
    mid = max(e.loss for _, e in inside) - (a.loss + b.loss) / 2 if inside else None
    error = None
    if a.accuracy is not None and b.accuracy is not None:
        error, _ = worst(lambda e: 1 - e.accuracy, 1 - a.accuracy, 1 - b.accuracy)
    return Barriers(loss_a=a.loss, loss_b=b.loss, barrier=barrier, barrier_mid_ends=mid,
                    alpha_max=alpha_max, error_barrier=error)


def points(alphas: Sequence[float], path: Sequence[Evaluation]) -> list[Point]:
    """The points evaluated so far (``path`` may be shorter than ``alphas``)."""
    return [Point(alpha=float(alpha), loss=e.loss, accuracy=e.accuracy)
            for alpha, e in zip(alphas, path)]


def pair_weights(count: int, alphas: Sequence[float]) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Every pair (i, j), i < j, of ``count`` ends, and the weights of the line between each,
    one pair's ``alphas`` after another."""
    line = grid(alphas)
    pair_list = [(i, j) for i in range(count) for j in range(i + 1, count)]
    weights = torch.zeros(len(pair_list) * len(alphas), count, dtype=torch.float64)
    for p, (i, j) in enumerate(pair_list):
        rows = slice(p * len(alphas), (p + 1) * len(alphas))
        weights[rows, i], weights[rows, j] = line[:, 0], line[:, 1]
    return pair_list, weights


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


def as_grid(values: Sequence[float | None], columns: int, rows: int) -> list[list[float | None]]:
    """``values`` (row-major, perhaps fewer than rows × columns: null for the rest) as rows."""
    padded = [*values, *([None] * (rows * columns - len(values)))]
    return [padded[i:i + columns] for i in range(0, rows * columns, columns)]


def span(values: Sequence[float], num: int = 21) -> list[float]:
    """``num`` points over the span of ``values`` with a quarter of it on either side."""
    low, high = min(values), max(values)
    margin = (high - low) / 4
    return [low - margin + (high - low + 2 * margin) * i / (num - 1) for i in range(num)]
