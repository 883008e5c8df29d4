"""``sharpness``: the standard sharpness and flatness measures (``results.sharpness.MEASURES``),
each with its error: residual-bounded eigenvalues, Hutch++ intervals, Monte Carlo standard
errors, ascent convergence, bisection tolerance.

Monte Carlo measures draw antithetic pairs ±δ (the odd terms of L(θ+δ) cancel in each pair,
so the gradient adds no variance) and evaluate many perturbed weight vectors per forward pass
(``Passes.evaluate_many``). Ascent measures search δ = s ⊙ u over a ball or box in u (s the
per-weight scale of the set: 1, |θ|, or ε(|θ|+1)), where the projection is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from landscape_cli.analyses import bootstrap
from landscape_cli.analyses.stability import (
    PreconditionedHessian,
    Preconditioner,
    learning_rates,
    next_update,
    preconditioner,
)
from landscape_cli.analyses.trace import trace
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.problem import Problem
from landscape_cli.errors import LandscapeError
from landscape_cli.estimate import PASSES_PER_GRADIENT, CostEstimate
from landscape_cli.linalg.lanczos import LanczosResult, lanczos
from landscape_cli.linalg.memory import ascent_bytes, no_memory
from landscape_cli.linalg.operator import LinearOperator, approximate, checked, rayleigh_error
from landscape_cli.linalg.shards import dot, norm
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.linalg.trace import t975
from landscape_cli.loading.optimizer_params import OptimizerState
from landscape_cli.results.sharpness import MEASURES, NEEDS, Measure, SharpnessResult
from landscape_cli.search.ascent import Ball, Box, Set, ascend
from landscape_cli.search.bisection import Bisection, largest_within

#: bytes of perturbed weight vectors held at once (rows of one ``evaluate_many`` call)
PERTURBATION_BYTES = 256 << 20
#: the std a weight of 0 keeps in the magnitude-aware PAC-Bayes search (Jiang et al. 2020)
MAGNITUDE_FLOOR = 1e-3
#: for the cost estimate alone: Lanczos steps to λ_max (it stops at convergence), and the
#: σ evaluations of the two PAC-Bayes searches
LANCZOS_STEPS_GUESS = 100
PAC_BAYES_EVALUATIONS_GUESS = 10
#: the PAC-Bayes searches first bracket σ on the first 1/PILOT_SHARE of the antithetic pairs (at
#: least PILOT_PAIRS of them), then on all of them from there (``pac_bayes_sigma``)
PILOT_SHARE, PILOT_PAIRS = 4, 4


@dataclass(frozen=True)
class SharpnessOptions:
    """The parameters of every measure (the command's options)."""

    measures: tuple[str, ...] = tuple(MEASURES)
    rho: float = 0.05
    rho_adaptive: float = 0.5
    epsilon: float = 1e-3
    sigma: float = 0.01
    sigma_adaptive: float = 0.1
    samples: int = 64
    steps: int = 20
    restarts: int = 1
    pac_bayes_target: str = "loss"
    pac_bayes_deviation: float = 0.1
    #: the bisection's tolerance: well under the Monte Carlo error of σ (5% at 64 samples on
    #: the samples), which more evaluations would not reduce
    pac_bayes_rtol: float = 1e-2
    lr: float | None = None
    tol: float = 1e-4
    rtol: float = 0.01
    max_hvps: int = 1000
    seed: int = 0
    #: resamples of the data for lambda_max's and trace_per_param's data_ci95 (0: none)
    bootstrap: int = 0
    bootstrap_unit: str = "batch"

    @property
    def pairs(self) -> int:
        """The Monte Carlo measures' antithetic pairs ±δ: ⌈samples / 2⌉."""
        return (self.samples + 1) // 2


def with_needs(names: tuple[str, ...]) -> list[str]:
    """The measures to compute for ``names``: those and what they are computed from, in
    ``MEASURES``' order."""
    wanted = set(names)
    for name in names:
        wanted.update(NEEDS.get(name, ()))
    return [name for name in MEASURES if name in wanted]


def planned(name: str, options: SharpnessOptions, n: int) -> tuple[int, int]:
    """About what the measure spends: (HVPs, data passes), a gradient counting
    ``PASSES_PER_GRADIENT`` passes and each perturbed weight vector one (for the estimate)."""
    o = options
    ascent = PASSES_PER_GRADIENT * o.steps * o.restarts + 1
    pairs = 2 * o.pairs
    return {
        "lambda_max": (min(n, LANCZOS_STEPS_GUESS), 0),
        "trace_per_param": (min(o.max_hvps, n), 0),
        "grad_norm": (0, PASSES_PER_GRADIENT),
        "eps_sharpness": (0, ascent),
        "worst_case": (0, ascent + PASSES_PER_GRADIENT * 2 * o.steps + 4),
        "worst_case_adaptive": (0, ascent),
        "average_case": (0, pairs),
        "average_case_adaptive": (0, pairs),
        "pac_bayes_sigma": (0, PAC_BAYES_EVALUATIONS_GUESS * pairs),
        "preconditioned_lambda_max": (min(n, LANCZOS_STEPS_GUESS), 0),
        "batch_sharpness": (0, 2 * PASSES_PER_GRADIENT),
        "gradient_curvature": (1, 0),
        "update_curvature": (1, 0),
    }.get(name, (0, 0))


@dataclass(frozen=True)
class _Sample:
    """A Monte Carlo mean with its standard error and 95% interval."""

    mean: float
    stderr: float
    ci95: tuple[float, float]


def _sample(values: torch.Tensor) -> _Sample:
    mean = float(values.mean())
    stderr = float(values.std(unbiased=True)) / math.sqrt(len(values))
    half = t975(len(values) - 1) * stderr
    return _Sample(mean, stderr, (mean - half, mean + half))


class _Measurer:
    """Computes the measures on one engine, sharing what several need (L(θ), λ_max, tr H)."""

    def __init__(self, engine: HVPEngine, options: SharpnessOptions,
                 estimate: CostEstimate | None, optimizer: OptimizerState | str,
                 operator_on: Callable[[Problem], LinearOperator] | None = None):
        self.engine, self.options = engine, options
        #: the same matrix on a resample of the data (``--bootstrap``)
        self.operator_on = operator_on
        #: the checkpoint's optimizer state, or why the measures that need it are null
        self.optimizer = optimizer
        self.passes = engine.passes
        self.problem = engine.problem
        self.theta = self.problem.theta0
        self.n = self.problem.n
        self.names = with_needs(options.measures)
        self.done: dict[str, Measure] = {}
        #: what the user should know about the measures (the report's warnings)
        self.notes: list[str] = []
        self.estimate = estimate
        #: the Hessian, as the algorithms take it (its products timed for the estimate)
        self.operator: LinearOperator = engine
        if estimate is None:
            self.base = self.passes.evaluate()
        else:
            self.base = estimate.timed_pass(self.passes.evaluate)
            self.operator = estimate.timed(engine, then=self.announce)

    def announce(self) -> None:
        """The estimate of the measures not done yet (the one under way included)."""
        if self.estimate is not None:
            self.estimate.announce({name: planned(name, self.options, self.n)
                                    for name in self.names if name not in self.done})

    def generator(self, name: str) -> torch.Generator:
        """Each measure's own random stream from the seed, so that asking for fewer measures
        does not change the others' numbers."""
        offset = list(MEASURES).index(name)
        return torch.Generator().manual_seed(self.options.seed * 1009 + offset)

    def measure(self, name: str, value: float | None, **fields: object) -> Measure:
        return Measure(value=value, scale_invariant=MEASURES[name].scale_invariant,
                       definition=MEASURES[name].text, **fields)

    # ------------------------------------------------------------------ curvature

    @functools.cached_property
    def top(self) -> LanczosResult:
        """The top Ritz pair by Lanczos (as ``spectrum --top 1``): λ_max and, for the ascent's
        warm starts, its vector."""
        o = self.options
        return lanczos(self.operator, top=1, tol=o.tol, max_steps=self.n,
                       generator=torch.Generator().manual_seed(o.seed))

    @functools.cached_property
    def resamples(self) -> bootstrap.Resamples | None:
        """``--bootstrap``'s resamples of the data (None: not asked for)."""
        o = self.options
        if not o.bootstrap or self.operator_on is None:
            return None
        return bootstrap.Resamples(self.problem, o.bootstrap, o.seed, o.bootstrap_unit)

    def lambda_max(self) -> Measure:
        top = self.top.top
        data = None if self.resamples is None else bootstrap.top_eigenvalues(
            self.resamples, self.operator_on, self.top.top.vectors, 1, self.options.tol)[0]
        return self.measure("lambda_max", top.values[0], residual=top.residuals[0],
                            converged=top.converged[0], data_ci95=data)

    def trace_per_param(self) -> Measure:
        o = self.options
        t = trace(self.operator, rtol=o.rtol, max_hvps=o.max_hvps, seed=o.seed)
        data = None if self.resamples is None else tuple(
            end / self.n for end in bootstrap.trace(self.resamples, self.operator_on, t.trace))
        return self.measure("trace_per_param", t.trace / self.n, stderr=t.stderr / self.n,
                            ci95=(t.ci95[0] / self.n, t.ci95[1] / self.n), converged=t.converged,
                            data_ci95=data)

    def grad_norm(self) -> Measure:
        return self.measure("grad_norm", float(norm(self.operator, self.engine.grad())))

    def stability_lr(self) -> Measure:
        lam = self.done["lambda_max"].value
        lr = self.options.lr
        return self.measure("stability_lr", 2 / lam if lam and lam > 0 else None, lr=lr,
                            eta_lambda_max=None if lr is None else lr * lam)

    # ------------------------------------------------------------------ the optimizer's view

    @functools.cached_property
    def preconditioner(self) -> Preconditioner | str:
        """How the optimizer's next update sees the curvature, or why it cannot be known."""
        if isinstance(self.optimizer, str):
            return self.optimizer
        return preconditioner(self.optimizer, self.problem, self.options.lr)

    def _unmeasured(self, name: str) -> Measure | None:
        """The measure as null, with the reason, where the optimizer state is missing."""
        found = self.preconditioner
        return self.measure(name, None, reason=found) if isinstance(found, str) else None

    def _about(self, pre: Preconditioner) -> dict[str, object]:
        return {"optimizer": pre.kind, "lr": pre.lr, "momentum": pre.momentum, "step": pre.step}

    def preconditioned_lambda_max(self) -> Measure:
        if (null := self._unmeasured("preconditioned_lambda_max")) is not None:
            return null
        pre, o = self.preconditioner, self.options
        top = lanczos(PreconditionedHessian(self.operator, pre.scale, pre.shift), top=1, tol=o.tol,
                      max_steps=self.n, generator=self.generator("preconditioned_lambda_max")).top
        return self.measure("preconditioned_lambda_max", top.values[0], residual=top.residuals[0],
                            converged=top.converged[0], **self._about(pre))

    def stability_threshold(self) -> Measure:
        if (null := self._unmeasured("stability_threshold")) is not None:
            return null
        pre = self.preconditioner
        return self.measure("stability_threshold", pre.threshold, **self._about(pre))

    def stability_ratio(self) -> Measure:
        if (null := self._unmeasured("stability_ratio")) is not None:
            return null
        pre, top = self.preconditioner, self.done["preconditioned_lambda_max"]
        return self.measure("stability_ratio", top.value / pre.threshold,
                            residual=top.residual / pre.threshold, converged=top.converged,
                            threshold=pre.threshold, **self._about(pre))

    def batch_sharpness(self) -> Measure:
        """The mean over the data's batches of g_Bᵀ H_B g_B/‖g_B‖², against 2/η where η is known
        (``--lr``, else the optimizer state's)."""
        quotients = self.engine.batch_curvatures()
        spread = _sample(quotients) if len(quotients) > 1 else None
        lr = self.preconditioner.lr if isinstance(self.preconditioner, Preconditioner) else self.options.lr
        largest = round(max(self.problem.weights) * self.problem.n_samples)
        trained = None if isinstance(self.optimizer, str) else self.optimizer.training.get("train_batch_size")
        if trained is not None and trained != largest:
            self.notes.append(f"batch_sharpness: the data's batches hold {largest} samples, but "
                              f"training took minibatches of {trained} (trainer_state.json); set "
                              f"data.batch_size: {trained}")
        return self.measure("batch_sharpness", float(quotients.mean()),
                            stderr=spread and spread.stderr, ci95=spread and spread.ci95,
                            batches=len(quotients), batch_size=largest, lr=lr,
                            threshold=None if lr is None else 2 / lr)

    def _quotient(self, name: str, v: torch.Tensor, **fields: object) -> Measure:
        """vᵀHv/‖v‖², by one product (checked, where products are finite differences)."""
        product = checked(self.operator, v.unsqueeze(0))[0]
        value = float(dot(self.operator, v, product) / dot(self.operator, v, v))
        error = rayleigh_error(self.operator) if approximate(self.operator) else None
        return self.measure(name, value, fd_error=error, **fields)

    def gradient_curvature(self) -> Measure:
        return self._quotient("gradient_curvature", self.engine.grad())

    def update_curvature(self) -> Measure:
        if (null := self._unmeasured("update_curvature")) is not None:
            return null
        pre = self.preconditioner
        etas = learning_rates(self.optimizer, pre.lr)  # the reference is the largest
        update = next_update(self.optimizer, self.problem, self.engine.grad(), etas)
        return self._quotient("update_curvature", update, **self._about(pre))

    # ------------------------------------------------------------------ ascent

    def _ascent(self, name: str, region: Set, scale: torch.Tensor | float,
                warm: Sequence[torch.Tensor] = (), **fields: object) -> tuple[float, Measure]:
        """max over the set of L(θ + s⊙u) − L(θ), the best of ``restarts`` ascents from random
        starts and of one ascent from each ``warm`` start, and the measure's fields. Gains are
        re-evaluated by ``evaluate``, as L(θ) is, at each ascent's best point and at the warm
        starts themselves, and the largest is the value: never below a warm start's."""
        o = self.options
        generator = self.generator(name)
        memory, needed = self.operator.memory_left(), ascent_bytes(self.n, self.theta.element_size())
        if memory is not None and 0 < memory < needed:
            raise no_memory(f"The {name} ascent over {self.n:,} parameters", needed, memory)

        def f(u: torch.Tensor) -> tuple[float, torch.Tensor]:
            loss, grad = self.passes.value_and_grad(self.theta + scale * u)
            return loss - self.base.loss, scale * grad  # the gain, whose rise says convergence

        def gain(u: torch.Tensor) -> float:
            return self.passes.evaluate(self.theta + scale * u).loss - self.base.loss

        runs = [ascend(f, region, self.n, steps=o.steps, generator=generator, like=self.theta)
                for _ in range(o.restarts)]
        best = max(runs, key=lambda run: run.value)
        value, converged = gain(best.best), best.converged
        extra: dict[str, object] = {}
        if warm:
            warmed = [ascend(f, region, self.n, steps=o.steps, like=self.theta, start=u) for u in warm]
            at_starts = [gain(u) for u in warm]
            candidates = [(value, converged), *((gain(r.best), r.converged) for r in warmed),
                          *zip(at_starts, (r.converged for r in warmed), strict=True)]
            extra = {"random_start_value": value, "warm_start_value": max(at_starts)}
            value, converged = max(candidates, key=lambda candidate: candidate[0])
            runs += warmed
        return value, self.measure(name, value, converged=converged, steps=o.steps,
                                   restarts=o.restarts, grad_evals=sum(r.grad_evals for r in runs),
                                   **extra, **fields)

    def worst_case(self) -> Measure:
        """The ascent from the random start(s) and from ±ρ·v_max (the top Ritz vector), beside
        the second-order model's bound ρ‖g‖ + ½ρ²λ_max."""
        rho = self.options.rho
        v = self.top.top.vectors[0].to(self.theta)
        lam, grad_norm = self.done["lambda_max"].value, self.done["grad_norm"].value
        return self._ascent("worst_case", Ball(rho, self.operator), 1.0, warm=(rho * v, -rho * v), rho=rho,
                            second_order_estimate=rho * grad_norm + 0.5 * rho**2 * lam)[1]

    def worst_case_adaptive(self) -> Measure:
        rho = self.options.rho_adaptive
        return self._ascent("worst_case_adaptive", Ball(rho, self.operator), self.theta.abs(), rho=rho)[1]

    def eps_sharpness(self) -> Measure:
        eps = self.options.epsilon
        gain, m = self._ascent("eps_sharpness", Box(self.operator), eps * (self.theta.abs() + 1), epsilon=eps)
        return dataclasses.replace(m, value=100 * gain / (1 + self.base.loss))

    # ------------------------------------------------------------------ Monte Carlo

    def _perturbed(self, name: str, scale: torch.Tensor | float, pairs: int | None = None
                   ) -> Callable[[float], tuple[torch.Tensor, torch.Tensor]]:
        """σ ↦ the losses and accuracies at θ ± σ·s⊙z for the measure's antithetic pairs of
        standard normal z (the same z for every σ: common random numbers), as (pairs, 2);
        ``pairs``: the first so many of them (all by default)."""
        pairs = self.options.pairs if pairs is None else pairs
        chunk = max(1, PERTURBATION_BYTES // (2 * self.n * self.theta.element_size()))

        def at(sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
            generator = self.generator(name)
            losses, accuracies = [], []
            for first in range(0, pairs, chunk):
                z = torch.stack([torch.randn(self.n, generator=generator, dtype=torch.float64)
                                 for _ in range(min(chunk, pairs - first))]).to(self.theta)
                delta = sigma * scale * z
                evaluated = self.passes.evaluate_many(torch.cat([self.theta + delta, self.theta - delta]))
                half = len(z)
                losses.append(torch.tensor([[e.loss for e in evaluated[i::half]] for i in range(half)]))
                accuracies.append(torch.tensor([[math.nan if e.accuracy is None else e.accuracy
                                                 for e in evaluated[i::half]] for i in range(half)]))
            return torch.cat(losses).double(), torch.cat(accuracies).double()

        return at

    def _average(self, name: str, sigma: float, scale: torch.Tensor | float) -> Measure:
        losses, _ = self._perturbed(name, scale)(sigma)
        s = _sample(losses.mean(dim=1) - self.base.loss)
        return self.measure(name, s.mean, stderr=s.stderr, ci95=s.ci95, sigma=sigma,
                            samples=2 * len(losses))

    def average_case(self) -> Measure:
        return self._average("average_case", self.options.sigma, 1.0)

    def average_case_adaptive(self) -> Measure:
        return self._average("average_case_adaptive", self.options.sigma_adaptive, self.theta.abs())

    def pac_bayes_sigma(self) -> Measure:
        o = self.options
        if o.pac_bayes_target == "accuracy" and self.base.accuracy is None:
            raise LandscapeError("--pac-bayes-target accuracy: the model is not a classifier "
                                 "(batches of inputs and integer classes, logits out); use loss")

        def deviation(perturbed: Callable[[float], tuple[torch.Tensor, torch.Tensor]]):
            def f(sigma: float) -> tuple[float, _Sample]:
                losses, accuracies = perturbed(sigma)
                if o.pac_bayes_target == "accuracy":
                    s = _sample(self.base.accuracy - accuracies.mean(dim=1))
                else:
                    s = _sample(losses.mean(dim=1) - self.base.loss)
                return s.mean, s

            return f

        pairs = o.pairs
        pilot = max(PILOT_PAIRS, pairs // PILOT_SHARE)

        def search(perturbed: Callable[[float, int], tuple[torch.Tensor, torch.Tensor]],
                   start: float) -> Bisection:
            """The bracket on all the pairs, from one on their first ``pilot`` (the same z:
            common random numbers, so the two differ by the Monte Carlo error of a few pairs):
            it starts the full search near the crossing, with the slope it measured there."""
            slope = None
            if pilot < pairs:
                rough = largest_within(deviation(lambda sigma: perturbed(sigma, pilot)),
                                       o.pac_bayes_deviation, start=start, rtol=o.pac_bayes_rtol)
                start, slope = rough.low or start, rough.slope
            return largest_within(deviation(lambda sigma: perturbed(sigma, pairs)),
                                  o.pac_bayes_deviation, start=start, rtol=o.pac_bayes_rtol,
                                  slope=slope)

        plain_start, magnitude_start = self._pac_bayes_starts()
        plain = search(lambda sigma, count: self._perturbed("pac_bayes_sigma", 1.0, count)(sigma),
                       plain_start)
        magnitude = search(self._perturbed_magnitude(), magnitude_start)
        return self.measure("pac_bayes_sigma", plain.low, flatness=_inverse_square(plain.low),
                            sigma_magnitude=magnitude.low,
                            flatness_magnitude=_inverse_square(magnitude.low),
                            target=o.pac_bayes_target, deviation=o.pac_bayes_deviation,
                            tolerance=plain.high - plain.low, samples=2 * pairs,
                            stderr=_sigma_stderr(plain.low, plain.at_low))

    def _pac_bayes_starts(self) -> tuple[float, float]:
        """First guesses of σ and σ': where the quadratic model E[L(θ+δ)] − L(θ) ≈ ½·Σ H_ii·s_i²
        (s_i the perturbation's std, H_ii taken as tr(H)/n) reaches d, from the suite's trace
        (Jiang et al. 2020's loss target; ``--sigma``/``--sigma-adaptive`` otherwise)."""
        o = self.options
        per_param = self.done.get("trace_per_param")
        curvature = None if per_param is None else per_param.value
        if o.pac_bayes_target != "loss" or curvature is None or not curvature > 0:
            return o.sigma, o.sigma_adaptive
        # ½·h·Σ(σ'|θ_i| + f)² = d, a quadratic a·σ'² + b·σ' + c = 0 in σ'
        magnitude = self.theta.abs().double()
        a = float((magnitude ** 2).sum())
        b = 2 * MAGNITUDE_FLOOR * float(magnitude.sum())
        c = self.n * MAGNITUDE_FLOOR ** 2 - 2 * o.pac_bayes_deviation / curvature
        root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) if a > 0 and c < 0 else o.sigma_adaptive
        return math.sqrt(2 * o.pac_bayes_deviation / (curvature * self.n)), root

    def _perturbed_magnitude(self) -> Callable[[float, int], tuple[torch.Tensor, torch.Tensor]]:
        """(σ', pairs) ↦ the losses at θ ± (σ'|θ_i| + 1e-3)·z_i: not a scaling of one z, so built
        per σ'."""
        magnitude = self.theta.abs()

        def at(sigma: float, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self._perturbed("pac_bayes_sigma", sigma * magnitude + MAGNITUDE_FLOOR, pairs)(1.0)

        return at

    def noise_consistency(self) -> Measure:
        average, per_param = self.done["average_case"], self.done["trace_per_param"]
        sigma = average.sigma
        predicted = sigma**2 / 2 * per_param.value * self.n
        ratio = average.value / predicted if predicted else None
        if ratio is None:
            return self.measure("noise_consistency", None, sigma=sigma)
        relative = math.hypot(average.stderr / average.value if average.value else math.inf,
                              per_param.stderr / per_param.value)
        stderr = abs(ratio) * relative
        return self.measure("noise_consistency", ratio, stderr=stderr,
                            ci95=(ratio - 1.96 * stderr, ratio + 1.96 * stderr), sigma=sigma)


def _sigma_stderr(sigma: float, at: _Sample | None) -> float | None:
    """The Monte Carlo standard error of σ itself: the deviation's, carried through
    deviation ∝ σ² (the second-order regime), dσ = σ·d(deviation)/(2·deviation)."""
    if at is None or not at.mean > 0:
        return None
    return sigma * at.stderr / (2 * at.mean)


def _inverse_square(sigma: float) -> float | None:
    return 1 / sigma**2 if sigma > 0 else None


def sharpness(engine: HVPEngine, options: SharpnessOptions,
              callback: Callable[[int, str], None] | None = None, *,
              so_far: SoFar | None = None, estimate: CostEstimate | None = None,
              optimizer: OptimizerState | str = "no optimizer state was given",
              operator_on: Callable[[Problem], LinearOperator] | None = None) -> SharpnessResult:
    """Every measure of ``options.measures`` (and those they are computed from). ``so_far``
    holds the measures finished so far, for an interrupted run's report; ``estimate`` tells
    the cost once the first product is timed (or at the start, where no measure needs one);
    ``optimizer``: the checkpoint's optimizer state, or why there is none; ``operator_on``: the
    Hessian of a resampled problem (``--bootstrap``)."""
    measurer = _Measurer(engine, options, estimate, optimizer, operator_on)
    names = measurer.names
    if not any(planned(name, options, measurer.n)[0] for name in names):
        measurer.announce()
    for i, name in enumerate(names):
        if so_far is not None:
            so_far.result = functools.partial(_interrupted, dict(measurer.done), names[i:])
        if callback is not None:
            callback(i, name)
        measurer.done[name] = getattr(measurer, name)()
    return SharpnessResult(measures=dict(measurer.done), notes=measurer.notes)


def _interrupted(done: dict[str, Measure], left: list[str]) -> SharpnessResult:
    return SharpnessResult(measures=done, notes=[
        f"interrupted: {len(done)} measure(s) finished; not computed: {', '.join(left)}"])
