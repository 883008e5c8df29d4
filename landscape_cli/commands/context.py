"""What a command's function receives (``fn(run, **options)``): the ``Run``, which loads the
checkpoint, builds the passes and the HVP engine when first asked, and carries the progress hook.
The runner makes one per analysis; the commands only use it (``commands/`` never imports the
runner)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from landscape_cli.config import Config
from landscape_cli.engine.hvp import HVPEngine
from landscape_cli.engine.passes import Passes
from landscape_cli.engine.problem import Problem
from landscape_cli.errors import Interrupted
from landscape_cli.linalg.operator import LinearOperator
from landscape_cli.linalg.so_far import SoFar
from landscape_cli.loading.optimizer_params import OptimizerState
from landscape_cli.names import HESSIAN
from landscape_cli.session import Loaded, Session

#: ``progress(label, total)`` → a context giving ``update(completed, note)``; total None: the
#: need is not known in advance (Lanczos stops at convergence)
ProgressFactory = Callable[[str, int | None], Any]


@contextmanager
def no_progress(label: str, total: int | None) -> Iterator[Callable[..., None]]:
    yield lambda completed, note="": None


@dataclass
class Run:
    """What a command's function gets: the loaded checkpoint, the passes over its data and the
    HVP engine (made when first asked for), more checkpoints on the same model (``load``), a
    progress hook, and the files the run reads (which no output of it may overwrite). The
    checkpoint, model and data are loaded when the function first asks for them, so that it
    checks its own options first: a bad option fails in a second, not after the loading."""

    session: Session
    #: paths, or a checkpoint held in memory (a live model's)
    checkpoints: list[Any]
    config: Config
    inputs: list[Path]
    progress_factory: ProgressFactory = no_progress
    #: a one-line note to the user before long work (stderr unless -q; never in the report)
    notify: Callable[[str], None] = lambda text: None
    #: the matrix the analysis measures (``--curvature``; ``operator``)
    curvature: str = HESSIAN

    @property
    def seed(self) -> int:
        return self.config.seed

    @cached_property
    def _opened(self) -> tuple[Loaded, float]:
        loaded = self.session.load(self.checkpoints[0])
        return loaded, time.perf_counter()

    @property
    def started(self) -> float:
        """When the analysis began: after the loading (``cost.wall_s`` counts from here)."""
        return self._opened[1]

    @property
    def loaded(self) -> Loaded:
        return self._opened[0]

    @cached_property
    def passes(self) -> Passes:
        return Passes(self.loaded.problem)

    @cached_property
    def engine(self) -> HVPEngine:
        engine = self.config.engine
        return HVPEngine(self.loaded.problem, strategy=engine.strategy,
                         memory_budget=engine.memory_budget, compile=engine.compile,
                         evaluation=self.loaded.evaluation, passes=self.passes)

    @cached_property
    def operator(self) -> LinearOperator:
        """The matrix measured, as the algorithms take it: the Hessian (the engine) or the
        ``curvature`` the command chose (``engine/curvature.py``)."""
        return self.engine if self.curvature == HESSIAN else self._curvature(self.loaded.problem, self.passes)

    def _curvature(self, problem: Problem, passes: Passes) -> LinearOperator:
        from landscape_cli.engine.curvature import CurvatureOperator

        return CurvatureOperator(problem, passes, self.curvature, seed=self.seed)

    def operator_on(self, problem: Problem) -> LinearOperator:
        """The same matrix as ``operator`` on another problem of the same model (a resample
        of the data: ``--bootstrap``), its passes' cost added to the run's."""
        passes = Passes(problem, cost=self.passes.cost, warnings=self.passes.warnings)
        if self.curvature != HESSIAN:
            return self._curvature(problem, passes)
        engine = self.config.engine
        return HVPEngine(problem, strategy=engine.strategy, memory_budget=engine.memory_budget,
                         compile=engine.compile, passes=passes)

    @cached_property
    def optimizer_state(self) -> OptimizerState | None:
        """The optimizer state the checkpoint holds (or ``--optimizer``'s), mapped to the model's
        parameters and checked for the analysed ones; None where there is none."""
        from landscape_cli.loading.optimizer_params import map_optimizer_state
        from landscape_cli.loading.optimizer_state import read_optimizer_state

        loaded, options, spec = self.loaded, self.session.options, self.config.optimizer
        checkpoint = loaded.checkpoint
        if not checkpoint.files:  # held in memory
            raw = None if checkpoint.optimizer is None else checkpoint.optimizer()
        else:
            raw = read_optimizer_state(checkpoint.path, options.optimizer, key=spec.key, told=spec.type,
                                       allow_globals=options.allow_globals, trust=options.trust_checkpoint)
        if raw is None:
            return None
        return map_optimizer_state(raw, loaded.problem.objective.model, loaded.match,
                                   loaded.problem.names, spec.param_order)

    def load(self, checkpoint: str | Path) -> Loaded:
        """Another checkpoint on the same model (its weights, buffers and checks); the model is
        left holding the first one's."""
        loaded = self.session.load(checkpoint)
        self.session.restore(self.loaded)
        return loaded

    def evaluation(self) -> tuple[float, float | None]:
        """L(θ₀) and the accuracy at the first checkpoint, from their one home
        (``Passes.at_theta0``: no pass runs twice for them)."""
        found = self.passes.at_theta0(self.loaded.evaluation)
        return found.loss, found.accuracy

    def progress(self, label: str, total: int | None):
        """A context giving a callback ``(completed, note)`` for the caller's progress display."""
        return self.progress_factory(label, total)

    @contextmanager
    def converging(self, label: str, total: int | None) -> Iterator[Callable[[int, int, int], None]]:
        """``progress`` for the Krylov algorithms' callback ``(step, converged, wanted)``."""
        with self.progress(label, total) as update:
            yield lambda step, done, wanted: update(step, f"{done}/{wanted} converged")

    @contextmanager
    def partial_on_interrupt(self, so_far: SoFar) -> Iterator[None]:
        """On SIGINT/SIGTERM inside the block, attach the result so far (marked not
        converged; None if there is none yet) to the interruption, so that the report is
        still written."""
        try:
            yield
        except Interrupted as stop:
            stop.partial = so_far.value()
            raise
