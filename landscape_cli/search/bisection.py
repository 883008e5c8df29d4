"""The largest σ whose perturbation costs at most a limit (Jiang et al. 2020's PAC-Bayes
flatness search), for a cost f(σ) that increases with σ: a bracket [low, high] with
f(low) ≤ limit < f(high), narrowed until high − low ≤ rtol·high.

Each round predicts the crossing from a power law through the points known so far (f ∝ σ² from
one point, the second-order regime, or the slope a cheaper search measured; the line through the
bracket's ends in log-log once both exist) and evaluates f there while only one side is known,
then just below and just above it, at (1 ∓ rtol/4) times the prediction: where the prediction is
right, one round closes the bracket. A prediction outside the bracket falls
back to its geometric middle, so the bracket shrinks every round. Each evaluation of a Monte
Carlo cost is many forward passes, so fewer of them matter more than a simple bisection's
robustness (measured: ``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Bisection:
    """σ known to satisfy f(σ) ≤ limit (``low``; 0 if none was found), the least σ seen to
    exceed it (``high``; inf if none), what f returned with its value at ``low``, and how many
    times f was evaluated."""

    low: float
    high: float
    at_low: object
    evaluations: int
    #: d log f / d log σ across the bracket (the ``slope`` given where it has no two ends)
    slope: float = 2.0


@dataclass
class _Point:
    sigma: float
    value: float
    extra: object


#: the most a prediction from one point may move σ (by this factor, up or down)
MAX_JUMP = 16.0


def _slope(low: _Point, high: _Point) -> float | None:
    """d log f / d log σ between the bracket's ends (None where f does not rise from a positive
    value)."""
    if not (low.value > 0 and high.value > low.value):
        return None
    rise = math.log(high.value) - math.log(low.value)
    return rise / (math.log(high.sigma) - math.log(low.sigma))


def _predict(low: _Point | None, high: _Point | None, limit: float, slope: float) -> float:
    """Where a power law through the known points reaches ``limit`` (f ∝ σ^slope from one)."""
    if low is not None and high is not None:
        if (slope := _slope(low, high)) is not None:
            guess = low.sigma * math.exp((math.log(limit) - math.log(low.value)) / slope)
            if low.sigma < guess < high.sigma:
                return guess
        return math.sqrt(low.sigma * high.sigma)
    point = low or high
    ratio = (limit / point.value) ** (1 / slope) if point.value > 0 else MAX_JUMP
    return point.sigma * min(max(ratio, 1 / MAX_JUMP), MAX_JUMP)


def largest_within(f: Callable[[float], tuple[float, object]], limit: float, *, start: float,
                   rtol: float = 1e-3, max_evaluations: int = 60,
                   slope: float | None = None) -> Bisection:
    """The bracket of the largest σ with ``f(σ)[0] ≤ limit``, from a first guess ``start``.
    ``f(σ)`` returns (the number compared, anything to keep for ``low``, such as its standard
    error); ``slope``: the power of σ that f grows as near ``start``, measured by a cheaper
    search (``Bisection.slope``), so that its prediction is bracketed at once; None: 2, the
    second-order regime, taken on trust only once a bracket confirms it."""
    measured = slope is not None
    slope = 2.0 if slope is None else slope
    low: _Point | None = None
    high: _Point | None = None
    count = 0

    def probe(sigma: float) -> None:
        nonlocal low, high, count
        count += 1
        value, extra = f(sigma)
        if value <= limit and (low is None or sigma > low.sigma):
            low = _Point(sigma, value, extra)
        elif value > limit and (high is None or sigma < high.sigma):
            high = _Point(sigma, value, extra)

    probe(start)
    while count < max_evaluations and not (low and high and high.sigma - low.sigma <= rtol * high.sigma):
        guess = _predict(low, high, limit, slope)
        # a pair either side of the guess once it is bracketed; one point while f is known on
        # one side only, where the guess is a power law's reach and the pair's second point
        # would rarely close the bracket
        pair = (guess * (1 - rtol / 4), guess * (1 + rtol / 4)) if (low and high) or measured else ()
        inside = [sigma for sigma in pair
                  if (low is None or sigma > low.sigma) and (high is None or sigma < high.sigma)]
        for sigma in inside or [guess]:  # the guess itself where the bracket is that narrow
            probe(sigma)
    if low is not None and high is not None:
        slope = _slope(low, high) or slope
    return Bisection(low=low.sigma if low else 0.0, high=high.sigma if high else math.inf,
                     at_low=low.extra if low else None, evaluations=count, slope=slope)
