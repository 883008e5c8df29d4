"""``--bootstrap B``: how much of a number is the data. The batches (or, with
``--bootstrap-unit sample``, the samples) are resampled with replacement B times under the seed
(a batch drawn twice counts twice: its weight doubles), the
number is measured again on each resample, and its 2.5–97.5 percentiles are ``data_ci95``,
beside the numerical error each number carries already (residuals, standard errors). Cheap
where it can be: each resample's Lanczos starts from the whole data's top Ritz vectors, and a
trace's probes are the same on every resample (common random numbers)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from landscape_cli.data_batches import concat_batches, map_tensors
from landscape_cli.engine.problem import Problem
from landscape_cli.errors import LandscapeError
from landscape_cli.linalg.lanczos import lanczos
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.probes import rademacher

#: a fraction of a random vector added to a warm start, so that a start that is one Ritz vector
#: exactly still reaches the others
WARM_NOISE = 0.1
#: probes of each resample's trace (the same on every resample)
TRACE_PROBES = 32


#: what is resampled (``--bootstrap-unit``)
UNITS = ("batch", "sample")


@dataclass(frozen=True)
class Resamples:
    """B resampled problems of one problem, drawn under the seed: its batches (their weights:
    a batch drawn twice weighs twice) or its samples (drawn into batches of the same sizes)."""

    problem: Problem
    count: int
    seed: int
    unit: str = "batch"

    def __post_init__(self) -> None:
        if self.unit == "sample" and (self.problem.streamed or self.problem.owned is not None or
                                      concat_batches(list(self.problem.batches)) is None):
            raise LandscapeError("--bootstrap-unit sample needs the data held in this one process, "
                                 "in batches of tensors that join (use --bootstrap-unit batch)")

    def __iter__(self) -> Iterator[Problem]:
        generator = torch.Generator().manual_seed(self.seed + 7919)
        if self.unit == "sample":
            yield from self._samples(generator)
            return
        batches = len(self.problem.weights)
        weights = torch.tensor(self.problem.weights, dtype=torch.float64)
        for _ in range(self.count):
            drawn = torch.multinomial(torch.full((batches,), 1.0 / batches), batches, replacement=True,
                                      generator=generator)
            counts = torch.bincount(drawn, minlength=batches).double() * weights
            yield dataclasses.replace(self.problem, weights=(counts / counts.sum()).tolist())

    def _samples(self, generator: torch.Generator) -> Iterator[Problem]:
        joined = concat_batches(list(self.problem.batches))
        total = self.problem.n_samples
        sizes = [round(w * total) for w in self.problem.weights]
        edges = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        for _ in range(self.count):
            index = torch.randint(0, total, (total,), generator=generator)
            drawn = map_tensors(joined, lambda t, index=index: t[index])
            batches = [map_tensors(drawn, lambda t, a=a, b=b: t[a:b]) for a, b in itertools.pairwise(edges)]
            yield dataclasses.replace(self.problem, batches=batches)


def percentiles(values: list[float]) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles (linear interpolation between order statistics)."""
    found = torch.quantile(torch.tensor(values, dtype=torch.float64), torch.tensor([0.025, 0.975],
                                                                                  dtype=torch.float64))
    return float(found[0]), float(found[1])


def top_eigenvalues(resamples: Resamples, operator_of: Callable[[Problem], LinearOperator],
                    vectors: torch.Tensor, top: int, tol: float) -> list[tuple[float, float]]:
    """Each of the ``top`` eigenvalues' data interval: Lanczos on every resample, started from
    ``vectors`` (the whole data's top Ritz vectors) summed, plus a little noise."""
    generator = torch.Generator().manual_seed(resamples.seed + 104729)
    start = vectors.sum(dim=0).double()
    found: list[list[float]] = []
    for problem in resamples:
        noise = torch.randn(start.shape, generator=generator, dtype=torch.float64)
        warm = start / start.norm() + WARM_NOISE * noise / noise.norm()
        run = lanczos(operator_of(problem), top=top, tol=tol, max_steps=problem.n, start=warm)
        found.append(run.top.values)
    return [percentiles([values[i] for values in found]) for i in range(top)]


def trace(resamples: Resamples, operator_of: Callable[[Problem], LinearOperator],
          estimate: float) -> tuple[float, float]:
    """The trace's data interval around ``estimate``: Hutchinson with the same probes on the
    whole data and on every resample; the resamples' percentiles, shifted by the whole data's
    value with those probes, so that the probes' own noise stays out."""
    generator = torch.Generator().manual_seed(resamples.seed + 1)
    probes = rademacher(TRACE_PROBES, resamples.problem.n, generator)

    def hutchinson(problem: Problem) -> float:
        operator = operator_of(problem)
        products = operator(probes.to(device=operator.device, dtype=operator.dtype)).double().cpu()
        return float((probes * products).sum(dim=1).mean())

    center = hutchinson(resamples.problem)
    low, high = percentiles([hutchinson(problem) for problem in resamples])
    return estimate + low - center, estimate + high - center
