"""A session: what a config builds once (model from its factory, loss, data, device, dtype:
the ``Problem``) and the checkpoints applied to it one after another (read, match, load into
the same model: cheap and repeatable), so that many checkpoints cost one setup."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from landscape_cli.config import Config, resolve_device
from landscape_cli.engine import distributed
from landscape_cli.engine.passes import Evaluation, Passes
from landscape_cli.engine.plan import default_memory_budget
from landscape_cli.engine.problem import LossFn, Problem, build_problem, criterion_loss, exact_float32
from landscape_cli.errors import ConfigError, LandscapeError, NumericalError
from landscape_cli.loading.assemble import (
    DTYPES,
    LoadOptions,
    build_model,
    conversion_warnings,
    describe_checkpoint,
    key_warnings,
    load_weights,
    match_warnings,
)
from landscape_cli.loading.checkpoint import Checkpoint, read_checkpoint
from landscape_cli.loading.data import Batches, load_batches
from landscape_cli.loading.factory import add_python_path, call, resolve
from landscape_cli.loading.matching import Match, tied_groups
from landscape_cli.names import FSDP


@dataclass
class Loaded:
    """One checkpoint on the session's problem, and what the report says about where it came
    from. ``evaluation``: L(θ₀) and the accuracy, when the load already computed them."""

    problem: Problem
    checkpoint: Checkpoint
    match: Match
    n_model_params: int
    warnings: list[str] = field(default_factory=list)
    evaluation: Evaluation | None = None
    #: the model's buffers (BatchNorm statistics, ...) as this checkpoint left them, by name
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def describe(self) -> dict:
        """The report's ``checkpoint`` section."""
        return describe_checkpoint(self.checkpoint, self.match, self.n_model_params)


def host_memory_budget() -> int:
    """Bytes of data the host may hold before it is streamed instead: the CPU memory budget
    (40% of the RAM the machine has)."""
    return default_memory_budget(torch.device("cpu"))


def build_loss(config: Config) -> LossFn:
    spec = config.loss
    if spec.fn is not None:
        fn = resolve(spec.fn, config.source, "loss.fn")
        if not callable(fn):
            raise ConfigError(config.source, "loss.fn", f"'{spec.fn}' is not callable")
        return fn
    criterion = call(spec.factory, spec.kwargs, config.source, "loss.factory")
    if not callable(criterion):
        raise ConfigError(config.source, "loss.factory", "did not return a callable criterion")
    return criterion_loss(criterion)


def _loss_dtype_warnings(problem: Problem) -> list[str]:
    """A loss computed in lower precision than the analysis asks for carries that rounding
    into every HVP (Hugging Face models cast logits to float32, for one)."""
    lower = problem.loss_dtype is not None and problem.loss_dtype.is_floating_point and (
        torch.finfo(problem.loss_dtype).eps > torch.finfo(problem.dtype).eps)
    if not lower:
        return []
    name = str(problem.dtype).removeprefix("torch.")
    return [f"the loss comes out in {str(problem.loss_dtype).removeprefix('torch.')} although "
            f"the analysis runs in {name}: the model or the loss casts, so the numbers carry "
            "its rounding, not float64's"]


@dataclass
class _Built:
    """What the first checkpoint built: the model, the state its factory gave it, its tied
    parameters, and the problem (weights of the last checkpoint loaded)."""

    model: nn.Module
    factory_state: dict[str, torch.Tensor]
    tied: list[tuple[str, ...]]
    loss_fn: LossFn
    problem: Problem | None = None
    eval_problem: Problem | None = None


@dataclass(frozen=True)
class Given:
    """What a session takes as given instead of building it from the config's factories (a
    live model's analysis, ``integrations/live.py``): the model (a copy the session may
    change), and where given, the data and the loss ``fn(model, batch)``."""

    model: nn.Module
    batches: Batches | None = None
    loss_fn: LossFn | None = None


class Session:
    """A config's model, loss and data, built at the first ``load`` and kept for the next (or
    ``given``)."""

    def __init__(self, config: Config, options: LoadOptions | None = None, given: Given | None = None):
        self.config = config
        self.options = options or LoadOptions()
        self.given = given
        self._built: _Built | None = None

    def load(self, checkpoint_path: str | Path | Checkpoint) -> Loaded:
        """Read a checkpoint (or take one held in memory) and put its weights in the model. The
        first one builds the model, loss and data and checks the loss on every batch; a later
        one is checked by one pass that evaluates it (kept for the report)."""
        config, options, given = self.config, self.options, self.given
        checkpoint = checkpoint_path if isinstance(checkpoint_path, Checkpoint) else read_checkpoint(
            checkpoint_path, config.checkpoint.key, options.allow_globals, options.trust_checkpoint)
        first = self._built is None
        if first:
            add_python_path(config.python_path)
            torch.manual_seed(config.seed)
            model = build_model(config) if given is None else given.model
            loss_fn = given.loss_fn if given is not None and given.loss_fn is not None else build_loss(config)
            self._built = _Built(model, {k: v.detach().clone() for k, v in model.state_dict().items()},
                                 tied_groups(model), loss_fn)
        built = self._built
        match = load_weights(built.model, checkpoint, config, None if first else built.factory_state,
                             built.tied)
        dtype = DTYPES[config.dtype]
        evaluation = None
        if first:
            data = (given.batches if given is not None and given.batches is not None
                    else load_batches(config, options.max_batches, host_budget=host_memory_budget()))
            device = distributed.initialize(resolve_device(config.device), options.dist_timeout)
            exact_float32(device)
            built.problem = build_problem(built.model, built.loss_fn, data, bn=config.bn,
                                          params=options.params, device=device, dtype=dtype,
                                          precision=config.precision)
            if config.engine.shard == FSDP:
                from landscape_cli.engine.sharding import shard

                built.problem = shard(built.problem, config.engine.shard_modules)
        elif config.engine.shard == FSDP:
            raise LandscapeError("--shard-model analyses one checkpoint per run (its model is "
                                 "sharded once it is loaded)")
        else:
            theta0 = torch.cat([built.model.get_parameter(n).detach().reshape(-1)
                                for n in built.problem.names]).clone()
            built.problem = dataclasses.replace(built.problem, theta0=theta0)
            evaluation = Passes(built.problem).evaluate()
            if not torch.isfinite(torch.tensor(evaluation.loss)):
                raise NumericalError(f"the loss is not finite ({evaluation.loss}) at the "
                                     "checkpoint's weights; check the weights and the data")
        problem = built.problem
        warnings = [*match_warnings(match), *conversion_warnings(match, dtype),
                    *key_warnings(checkpoint), *_loss_dtype_warnings(problem)]
        return Loaded(problem=problem, checkpoint=checkpoint, match=match,
                      n_model_params=sum(p.numel() for p in built.model.parameters()),
                      warnings=warnings, evaluation=evaluation,
                      buffers={k: v.detach().clone() for k, v in built.model.named_buffers()})

    def restore(self, loaded: Loaded) -> None:
        """Put back in the model the weights and buffers of a checkpoint loaded before (the
        analysed parameters from its θ₀), after others were loaded onto it."""
        model = self._built.model
        with torch.no_grad():
            for name, value in loaded.problem.unflatten(loaded.problem.theta0, prefix="").items():
                model.get_parameter(name).copy_(value)
            for name, value in loaded.buffers.items():
                model.get_buffer(name).copy_(value)
        self._built.problem = loaded.problem

    def eval_problem(self, like: Loaded) -> Problem:
        """The problem on the config's ``eval_data`` (built once), at ``like``'s weights."""
        built = self._built
        if built.eval_problem is None:
            data = load_batches(self.config, self.options.max_batches, section="eval_data",
                                host_budget=host_memory_budget())
            built.eval_problem = build_problem(built.model, built.loss_fn, data, bn=self.config.bn,
                                               params=self.options.params,
                                               device=like.problem.device, dtype=like.problem.dtype,
                                               precision=self.config.precision)
        return dataclasses.replace(built.eval_problem, theta0=like.problem.theta0)


def load(config: Config, checkpoint_path: str | Path, options: LoadOptions | None = None) -> Loaded:
    """Build the model, load the checkpoint into it, read the data, assemble the problem."""
    return Session(config, options).load(checkpoint_path)
