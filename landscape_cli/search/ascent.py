"""Projected gradient ascent with Auto-PGD's step-size rule (Croce & Hein 2020), as
Andriushchenko et al. 2023 use it for worst-case sharpness: maximise f(u) over a convex set.

    z = P(x_k + η·d(∇f(x_k))),   x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})),  α = 0.75

where d is the steepest-ascent direction of the set's norm (∇f/‖∇f‖₂ on a ball, sign(∇f) on a
box) and P the exact projection. At checkpoints w_j (after 22%, then shrinking intervals of at
least 6% of the steps) η is halved and the search restarts from the best point when fewer than
75% of the steps since the last checkpoint improved f, or when neither η nor the best value
changed across the interval.

Memory: a few vectors of n (x, the previous x, the best, z, the gradient, a step), declared as
``linalg.memory.ascent_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape_cli.linalg.shards import drawn, norm, shards_of

#: f(u) and ∇f(u)
ValueAndGrad = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


@dataclass(frozen=True)
class Ball:
    """{u : ‖u‖₂ ≤ radius}; steps along ∇f/‖∇f‖, first of length 2·radius. ``space``: the
    operator whose vectors u are (its ``shards``, where they are sharded: ``linalg/shards.py``)."""

    radius: float
    space: object = None

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        length = norm(self.space, grad)
        return grad / length if length > 0 else grad

    def project(self, u: torch.Tensor) -> torch.Tensor:
        length = float(norm(self.space, u))
        return u * (self.radius / length) if length > self.radius else u

    def start(self, n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """A random point at half the radius (a start at 0 sits on a stationary point when θ
        is a minimum)."""
        u = _drawn(self.space, n, lambda size: torch.randn(size, generator=generator,
                                                           dtype=torch.float64)).to(like)
        return u * (0.5 * self.radius / float(norm(self.space, u)))

    @property
    def step(self) -> float:
        return 2 * self.radius


@dataclass(frozen=True)
class Box:
    """{u : |u_i| ≤ 1}; sign steps, first of 2 (corner to corner). ``space`` as ``Ball``'s."""

    space: object = None

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, u: torch.Tensor) -> torch.Tensor:
        return u.clamp(-1.0, 1.0)

    def start(self, n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        return (2 * _drawn(self.space, n, lambda size: torch.rand(size, generator=generator,
                                                                  dtype=torch.float64)) - 1).to(like)

    step = 2.0


Set = Ball | Box


def _drawn(space: object, n: int, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``draw(n)``, or, in a sharded space, this rank's pieces of the whole draw."""
    return draw(n) if shards_of(space) is None else drawn(space, draw)



@dataclass(frozen=True)
class Ascent:
    """The best point found, f there, whether the search settled (the best f rose by at most
    ``rtol`` of itself over the last checkpoint interval), and the gradient evaluations
    spent."""

    best: torch.Tensor
    value: float
    converged: bool
    grad_evals: int


def checkpoints(steps: int) -> list[int]:
    """Auto-PGD's checkpoints w_j = ⌈p_j·steps⌉: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p if 0 < q < 1} | {steps})


def ascend(f: ValueAndGrad, region: Set, n: int, *, steps: int,
           generator: torch.Generator | None = None, like: torch.Tensor,
           start: torch.Tensor | None = None, momentum: float = 0.75,
           rtol: float = 1e-3) -> Ascent:
    """Maximise ``f`` over ``region`` in ``steps`` gradient evaluations, from ``start`` (a point
    of the region) or else from a random start drawn from ``generator``."""
    x = region.start(n, generator, like) if start is None else start
    previous = x
    eta = region.step
    best, best_value = x, -math.inf
    marks = set(checkpoints(steps))
    improved_steps, last_value = 0, -math.inf
    value_at_mark, eta_at_mark = -math.inf, eta
    best_at_marks: list[float] = []
    for k in range(steps):
        value, grad = f(x)
        improved_steps += value > last_value
        last_value = value
        if value > best_value:
            best, best_value = x, value
        if k + 1 in marks:
            interval = k + 1 - max((m for m in marks if m < k + 1), default=0)
            stalled = eta == eta_at_mark and best_value <= value_at_mark
            if improved_steps < 0.75 * interval or stalled:
                eta /= 2
                x, previous = best, best
            value_at_mark, eta_at_mark, improved_steps = best_value, eta, 0
            best_at_marks.append(best_value)
        if k + 1 == steps:
            break
        z = region.project(x + eta * region.direction(grad))
        step = z - x if k == 0 else momentum * (z - x) + (1 - momentum) * (x - previous)
        previous, x = x, region.project(x + step)
    settled = len(best_at_marks) > 1 and best_value - best_at_marks[-2] <= rtol * abs(best_value)
    return Ascent(best=best, value=best_value, converged=settled, grad_evals=steps)
