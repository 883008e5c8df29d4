"""A model sharded over the ranks of a torchrun launch with FSDP2 (``engine.shard: fsdp``,
``--shard-model``; issue 28).

Each repeated block (a module class that occurs more than once, such as a transformer layer,
or the classes named in ``engine.shard_modules``) is wrapped with
``torch.distributed.fsdp.fully_shard``, then the root: each rank keeps its dim-0 shard of every
parameter and gathers a block's whole parameters only while the block runs. θ is then this
rank's pieces of the whole flat vector of parameters (``linalg/shards.py``), and so is every
vector the algorithms hold; their dot products and norms are summed over the ranks.

A pass writes θ into the parameters' local shards and runs the model as FSDP2 runs it; a
gradient is the local shard FSDP2 reduce-scatters, summed over the ranks (divide factor 1),
each rank's loss weighted by its batches' share of the dataset, so that it is the whole data's
gradient, uneven shares included. Double backward does not run under FSDP2 (pytorch issue
172543), so products are finite differences of gradients (``--hvp-strategy fd``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape_cli.engine import distributed
from landscape_cli.engine.problem import Problem, mean_loss
from landscape_cli.errors import ConfigError, LandscapeError
from landscape_cli.linalg.shards import Shards


@contextmanager
def collectives() -> Iterator[None]:
    """A pass through the sharded model: FSDP2's gathers and reductions are collectives, so a
    rank that stopped fails them, which is a ``DistributedError`` (one line, as for the
    sums of ``engine/distributed.py``). FSDP2 warns of every view a module returns (an in-place
    change of one would skip its gather); the objective only reads the model's outputs, and the
    loss is user code checked before the model was sharded."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        try:
            yield
        except RuntimeError as exc:
            if isinstance(exc, torch.OutOfMemoryError) or not distributed.collective_failed(exc):
                raise
            raise distributed.lost(exc) from None


def repeated_blocks(model: nn.Module, classes: Sequence[str] = ()) -> list[nn.Module]:
    """The modules sharded one by one before the root: those of the ``classes`` named, else
    those of every class defined outside ``torch.nn`` that occurs more than once and holds
    parameters, the outermost ones (a block inside a sharded block stays with it)."""
    modules = [m for m in model.modules() if m is not model]
    if classes:
        chosen = [m for m in modules if type(m).__name__ in classes]
        missing = set(classes) - {type(m).__name__ for m in chosen}
        if missing:
            present = sorted({type(m).__name__ for m in modules})
            raise ConfigError("<config>", "engine.shard_modules",
                              f"no module of class {', '.join(sorted(missing))} in the model "
                              f"(its classes: {', '.join(present[:12])}"
                              f"{' ...' if len(present) > 12 else ''})")
    else:
        counts = Counter(type(m) for m in modules)
        chosen = [m for m in modules if counts[type(m)] > 1
                  and not type(m).__module__.startswith("torch.nn")
                  and any(True for _ in m.parameters())]
    inner = {id(sub) for m in chosen for sub in m.modules() if sub is not m}
    return [m for m in chosen if id(m) not in inner]


@dataclass
class ShardedProblem(Problem):
    """A ``Problem`` whose θ is this rank's pieces of the whole parameter vector: the model's
    parameters are FSDP2-sharded, and a pass writes θ into their local shards."""

    #: the sharded parameters, in the order of ``names``, and the modules FSDP2 wraps
    params: list[nn.Parameter] = field(default_factory=list)
    wrapped: list[nn.Module] = field(default_factory=list)

    @property
    def n(self) -> int:
        """The number of parameters analysed: the whole vector's (θ holds this rank's share)."""
        return self.shards.size

    def unflatten(self, theta: torch.Tensor, prefix: str = "model.") -> dict[str, torch.Tensor]:
        raise LandscapeError("a sharded model's θ holds this rank's pieces, not whole parameters")

    def _write(self, theta: torch.Tensor) -> None:
        """Put θ's pieces into the parameters' local shards, every module resharded first: the
        root keeps its gathered parameters after a forward pass (FSDP2 expects the backward
        next), and a pass without one (an evaluation) would leave the next pass reading them
        instead of θ."""
        for module in self.wrapped:
            module.reshard()
        offset = 0
        with torch.no_grad():
            for param in self.params:
                local = param.to_local()
                local.copy_(theta[offset:offset + local.numel()].view_as(local))
                offset += local.numel()

    def output(self, theta: torch.Tensor, batch: Any,
               buffers: dict[str, torch.Tensor] | None = None) -> Any:
        if buffers:
            raise LandscapeError("a sharded model keeps its own buffers")
        self._write(theta)
        with collectives():
            return self.objective(batch)

    def weighted_gradient(self, theta: torch.Tensor, weight: float,
                          batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(w·L_b(θ), this rank's shard of Σ_ranks w·∇L_b(θ)): one backward pass as FSDP2 runs
        it, every rank at once."""
        self._write(theta)
        for param in self.params:
            param.grad = None
        with collectives():
            loss = weight * mean_loss(self.objective(batch))
            loss.backward()
        grad = torch.cat([torch.zeros(p.to_local().numel(), dtype=theta.dtype, device=theta.device)
                          if p.grad is None else p.grad.to_local().reshape(-1)
                          for p in self.params])
        for param in self.params:
            param.grad = None
        return loss.detach(), grad


def shard(problem: Problem, classes: Sequence[str] = ()) -> ShardedProblem:
    """``problem`` with its model sharded over the ranks (module docstring). Every parameter
    must be analysed (no ``--params``)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    model = problem.objective.model
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if names != problem.names:
        raise LandscapeError("--shard-model analyses every parameter; leave out --params")
    for block in repeated_blocks(model, classes):
        fully_shard(block)
    fully_shard(model)
    wrapped = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for module in wrapped:  # sums over the ranks, each rank's loss already weighted
        module.set_gradient_divide_factor(1.0)
        # a plain SUM: FSDP2 would otherwise pre-multiply (PREMUL_SUM), which gloo lacks
        module.set_force_sum_reduction_for_comms(True)
    params = [model.get_parameter(name) for name in names]
    pieces, offset = [], 0
    world, rank = distributed.world_size(), distributed.rank()
    for param in params:
        local = param.to_local()
        rows = param.shape[0] if param.dim() else 1
        per_row = param.numel() // max(rows, 1)
        first = rank * -(-rows // world)  # torch.chunk's: ceil(rows / world) each
        count = local.shape[0] if local.dim() else local.numel()
        pieces.append(slice(offset + first * per_row, offset + (first + count) * per_row))
        offset += param.numel()
    theta0 = torch.cat([p.to_local().detach().reshape(-1) for p in params]).clone()
    shards = Shards(offset, tuple(pieces), lambda t: distributed.all_sum([t])[0])
    fields = {f: getattr(problem, f) for f in problem.__dataclass_fields__}
    return ShardedProblem(**{**fields, "theta0": theta0, "shards": shards, "params": params,
                             "wrapped": wrapped})
