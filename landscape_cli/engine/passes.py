"""Every pass over the data (DESIGN §4): the only code that loops over a ``Problem``'s batches.

A pass adds up sample-weighted terms, Σ_g w_g·f_g(θ) with w_g = n_g/N (n_g the samples of
group g, or the count its loss returns), and plain counts (correct predictions, batches), and
hands the totals to ``reduce``: the one place where the sums of separate processes would meet
(an all-reduce under torchrun). On top of that sum sit the primitives every analysis needs at
any weights θ, not only the checkpoint's: the loss and accuracy (one forward per batch), the
loss and gradient, many θ at once (``vmap`` over parameter sets), and BatchNorm statistics
recomputed for θ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from landscape_cli.data_batches import concat_batches, concatenates
from landscape_cli.engine import distributed
from landscape_cli.engine.distributed import all_sum
from landscape_cli.engine.leading_layer import LeadingLayer, leading_layer, traced
from landscape_cli.engine.problem import Problem, mean_loss
from landscape_cli.errors import first_line

#: (weight, batch indices): batches joined into one forward pass, weighted by their share of N
Group = tuple[float, list[int]]
#: a pass's term for one group: its (already weighted) contributions to each sum
Term = Callable[[float, Any], Sequence[torch.Tensor]]
#: rows of θ that go through one vmapped forward pass: about this many bytes of activations
MANY_BYTES = 64 << 20
#: on the CPU, many θ go through vmap only where this many rows fit ``MANY_BYTES`` (``_forward_plan``)
VMAP_ROWS = 32
#: the leading layer's output is mixed from the ends' where it costs at least this many times
#: the m multiply-adds per element of a weighted sum of m (memory-bound): a convolution from one
#: channel computes its output faster than the sum reads m of them (``benchmarks/README.md``)
MIXED_FAN_IN = 16


@dataclass(frozen=True)
class Evaluation:
    """The dataset loss at some θ, and the top-1 accuracy for a classifier (else None)."""

    loss: float
    accuracy: float | None


@dataclass
class Cost:
    """What the passes and the engine on top of them spent: HVPs (vectors), gradients, passes
    over the dataset (a pass stopped early counts) and, outside the HVP engine, forward passes
    of a batch at one weight vector (a vmapped forward at k vectors counts k)."""

    hvps: int = 0
    hvp_blocks: int = 0
    grads: int = 0
    data_passes: int = 0
    forwards: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hvps": self.hvps, "hvp_blocks": self.hvp_blocks, "grads": self.grads,
                "data_passes": self.data_passes, "forwards": self.forwards}


def reduce(sums: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The sums of every process, added up (an all-reduce under torchrun; the identity in a
    single process)."""
    return tuple(all_sum([s.contiguous() for s in sums]))


def _added(total: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """total + value, in place where no graph records it (the same sum, without a third copy
    of a sum as large as the model); every term returns fresh tensors."""
    if (total.requires_grad or value.requires_grad or total.shape != value.shape
            or total.dtype != value.dtype):
        return total + value
    return total.add_(value)


class SavedBytes:
    """Saved-tensor hooks that add up the distinct tensors autograd keeps for backward, each by
    the bytes its elements span in memory: a batch sliced from the whole dataset counts its
    own rows, not the dataset's storage (which the pass does not allocate), and an expanded
    tensor the storage it reads, not its virtual size."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[tuple[int, int]] = set()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        span = spanned_bytes(tensor)
        if (tensor.data_ptr(), span) not in self._seen:
            self._seen.add((tensor.data_ptr(), span))
            self.bytes += span
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def spanned_bytes(tensor: torch.Tensor) -> int:
    """The bytes from a tensor's first element to its last (1 + Σ (size − 1)·|stride| elements),
    at most its storage's."""
    if tensor.numel() == 0:
        return 0
    elements = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride()))
    return min(elements * tensor.element_size(), tensor.untyped_storage().nbytes())


def consecutive_runs(indices: Sequence[int], weights: Sequence[float], bytes_per_weight: float,
                     limit: float) -> list[list[int]]:
    """``indices`` cut into runs of consecutive batches whose weights, times
    ``bytes_per_weight``, add up to at most ``limit`` (a batch over it alone)."""
    runs: list[list[int]] = []
    run_weight = 0.0
    for i in indices:
        if runs and (run_weight + weights[i]) * bytes_per_weight <= limit:
            runs[-1].append(i)
            run_weight += weights[i]
        else:
            runs.append([i])
            run_weight = weights[i]
    return runs


@contextmanager
def _first_output(model: nn.Module) -> Iterator[list[Any]]:
    """The model's output in its first call inside the block: what the loss computed its value
    from, so that the accuracy needs no second forward pass."""
    seen: list[Any] = []
    handle = model.register_forward_hook(lambda module, args, out: seen.append(out) if not seen else None)
    try:
        yield seen
    finally:
        handle.remove()


def _hits(outputs: Any, targets: torch.Tensor) -> torch.Tensor | None:
    """Rows whose arg-max logit is the target; None if the outputs are not (N, C) logits."""
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and len(outputs) == len(targets):
        return (outputs.argmax(dim=1) == targets).sum()
    return None


def batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules that keep running statistics, by name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and module.running_mean is not None}


@contextmanager
def _accumulating(norms: dict[str, nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """BatchNorms in train mode with momentum 1: each forward pass writes its batch's mean and
    unbiased variance into the running buffers it is given; other modules stay as they are."""
    saved = {name: (m.training, m.momentum) for name, m in norms.items()}
    try:
        for m in norms.values():
            m.train()
            m.momentum = 1.0
        yield
    finally:
        for name, m in norms.items():
            m.training, m.momentum = saved[name]


@dataclass(frozen=True)
class _ForwardPlan:
    """How passes over many θ go through the data (``Passes._forward_plan``)."""

    #: consecutive batches joined (None: each batch alone)
    groups: list[Group] | None
    #: whether many θ go through one vmapped forward pass rather than one at a time
    vectorized: bool
    #: the tensors a forward and backward pass of the largest group saves
    group_bytes: int


@dataclass
class Passes:
    """The passes over a problem's data."""

    problem: Problem
    cost: Cost = field(default_factory=Cost)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._forwards: _ForwardPlan | None = None  # how passes over many θ go (_forward_plan)
        # vmap over parameter sets computes in float32 under autocast (torch 2.13: a batched
        # weight is not cast), so a mixed precision evaluates many θ one at a time
        self._vmap_many = self.problem.objective.autocast is None
        self._logits = False  # whether the model's outputs are (N, C) logits, seen on a forward
        # L(θ₀), from the first pass at θ₀ that computed it, and the evaluation there (at_theta0)
        self._loss_at_theta0: float | None = None
        self._evaluation_at_theta0: Evaluation | None = None
        self._padded: list[Group] | None = None  # a sharded model's batches, as many as any rank's
        self._leading: LeadingLayer | bool | None = None  # the leading linear layer (False: none)
        self._static: fx.Graph | bool | None = None  # the model's static graph (False: none)

    def _pieces(self, index: int) -> tuple[int, ...]:
        """``sum_over``'s ``pieces``: the term at ``index`` where the model is sharded."""
        return () if self.problem.shards is None else (index,)

    @property
    def data_passes(self) -> int:
        return self.cost.data_passes

    # ------------------------------------------------------------------ the one loop

    def per_batch(self) -> list[Group]:
        """This process's batches, each alone. With a sharded model every rank goes through as
        many as the rank with the most (FSDP2's gathers and reductions are collectives), a
        missing one as a batch of weight 0."""
        own = [(self.problem.weights[i], [i]) for i in self.problem.own]
        if self.problem.shards is None:
            return own
        if self._padded is None:
            missing = distributed.all_max(len(own)) - len(own)
            self._padded = own + [(0.0, [own[0][1][0] if own else 0])] * missing
        return self._padded

    def batch_of(self, indices: list[int]) -> Any:
        """The batches ``indices`` as one batch on the device (moved one by one, then joined,
        so the host holds no second copy of the data)."""
        if len(indices) == 1:
            return self.problem.batch(indices[0])
        return concat_batches([self.problem.batch(i) for i in indices])

    def sum_over(self, term: Term, groups: Sequence[Group] | None = None, *,
                 reduced: bool = True, pieces: Sequence[int] = ()) -> tuple[torch.Tensor, ...]:
        """Σ_g term(w_g, batch_g) over ``groups`` (each batch alone by default), term by term,
        then ``reduce``d (``reduced=False`` keeps a process's own sums, for a kept graph whose
        products are reduced later); the terms at ``pieces`` are this rank's pieces of vectors
        whose sum over the ranks the term already took (a sharded model's gradients: FSDP2
        reduce-scatters them), never reduced."""
        total: list[torch.Tensor] | None = None
        self.cost.data_passes += 1
        for weight, indices in self.per_batch() if groups is None else groups:
            values = term(weight, self.batch_of(indices))
            total = list(values) if total is None else [_added(a, b) for a, b in zip(total, values)]
        if total is None:  # a process without batches adds zeros of the sums' shapes
            total = [torch.zeros_like(v) for v in term(0.0, self.batch_of([0]))]
        if not reduced:
            return tuple(total)
        summed = iter(reduce([t for i, t in enumerate(total) if i not in pieces]))
        return tuple(t if i in pieces else next(summed) for i, t in enumerate(total))

    def each_batch(self, term: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """``term(batch)``, a number, for every batch of the data in order (float64), wherever
        the batches are: each process fills in its own, and the sum over the ranks has all."""
        values = torch.zeros(len(self.problem.batches), dtype=torch.float64, device=self.problem.device)
        self.cost.data_passes += 1
        for index in self.problem.own:
            values[index] = term(self.problem.batch(index))
        out, = reduce([values])
        return out

    # ------------------------------------------------------------------ L(θ₀), one home

    def keep_loss(self, loss: float) -> None:
        """L(θ₀) as a pass computed it on the way (the engine's kept graph), unless an earlier
        pass did."""
        if self._loss_at_theta0 is None:
            self._loss_at_theta0 = loss

    def at_theta0(self, known: Evaluation | None = None) -> Evaluation:
        """L(θ₀) and the accuracy at θ₀: the loss from the first pass at θ₀ that computed it
        (an evaluation, a gradient pass or the engine's kept graph), the accuracy from an
        evaluation: ``known`` (one the load ran) or, where none ran, one now."""
        if self._evaluation_at_theta0 is None:
            self._evaluation_at_theta0 = known or self.evaluate()
            self.keep_loss(self._evaluation_at_theta0.loss)
        return Evaluation(self._loss_at_theta0, self._evaluation_at_theta0.accuracy)

    # ------------------------------------------------------------------ primitives

    def _loss_and_hits(self, forward: Callable[[], Any], batch: Any
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_b and, for a classifier whose model returns logits, its correct predictions (else
        0), from one forward pass, ``forward()`` (the objective's output on ``batch``)."""
        with _first_output(self.problem.objective.model) as outputs:
            loss = mean_loss(forward())
        hits = _hits(outputs[0], batch[1]) if self.problem.classification and outputs else None
        self._logits = hits is not None  # fixed by the model's output shape
        return loss, torch.zeros((), dtype=torch.long, device=loss.device) if hits is None else hits

    def _evaluation(self, loss: torch.Tensor, hits: torch.Tensor) -> Evaluation:
        accuracy = int(hits) / self.problem.n_samples if self._logits else None
        return Evaluation(float(loss), accuracy)

    def evaluate(self, theta: torch.Tensor | None = None,
                 buffers: dict[str, torch.Tensor] | None = None) -> Evaluation:
        """L(θ) and the accuracy at θ (θ₀ by default), without gradients, in one forward pass
        per batch; ``buffers`` replace the model's (``recalibrate_bn``). At θ₀ with the model's
        buffers, once: the evaluation is kept (``at_theta0``)."""
        at_theta0 = theta is None and buffers is None
        if at_theta0 and self._evaluation_at_theta0 is not None:
            return self._evaluation_at_theta0
        theta = self.problem.theta0 if theta is None else theta

        def term(weight: float, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            loss, hits = self._loss_and_hits(lambda: self.problem.output(theta, batch, buffers), batch)
            return (weight * loss).double(), hits

        with torch.no_grad():
            evaluation = self._evaluation(*self.sum_over(term))
        self.cost.forwards += len(self.problem.own)
        if at_theta0:
            self._evaluation_at_theta0 = evaluation
            self.keep_loss(evaluation.loss)
        return evaluation

    def value_and_grad(self, theta: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """(L(θ), ∇L(θ)) by one backward pass per batch; no graph is kept. At θ₀ the loss is
        kept (``at_theta0``) unless an earlier pass computed it."""
        at_theta0 = theta is None
        theta = self.problem.theta0 if theta is None else theta

        def term(weight: float, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return self.problem.weighted_gradient(theta, weight, batch)

        loss, grad = self.sum_over(term, pieces=self._pieces(1))
        self.cost.grads += 1
        self.cost.forwards += len(self.problem.own)
        if at_theta0:
            self.keep_loss(float(loss))
        return float(loss), grad

    def gradient_combinations(self, directions: torch.Tensor,
                              outputs: Sequence[Sequence[tuple[int, float, float]]],
                              groups: Sequence[Group] | None = None) -> torch.Tensor:
        """For each output, Σ c·(∇L(θ₀ + s·dⱼ) − ∇L(θ₀ − s·dⱼ)) over its terms (j, s, c), dⱼ a
        row of ``directions`` (k×n): the finite differences of ``engine/hvp.py``. One pass over
        the data (each batch, or group, moved to the device once), two ordinary backward passes
        per distinct (j, s) and batch, each point formed in the model's dtype only while its
        gradient is taken, no graph kept past it. Holds the outputs and 3 vectors of n, and the
        outputs again for a sum over groups."""
        theta0 = self.problem.theta0
        rows = directions.detach().to(device=theta0.device, dtype=theta0.dtype)
        pairs = list(dict.fromkeys((j, s) for terms in outputs for j, s, _ in terms))

        def gradient(weight: float, batch: Any, row: torch.Tensor, step: float) -> torch.Tensor:
            return self.problem.weighted_gradient(torch.add(theta0, row, alpha=step), weight, batch)[1]

        def term(weight: float, batch: Any) -> tuple[torch.Tensor]:
            out = rows.new_zeros(len(outputs), rows.shape[1])
            for j, step in pairs:
                difference = gradient(weight, batch, rows[j], step)
                difference.sub_(gradient(weight, batch, rows[j], -step))
                for r, terms in enumerate(outputs):
                    for c in (c for jj, s, c in terms if (jj, s) == (j, step)):
                        out[r].add_(difference, alpha=c)
            return (out,)

        combined, = self.sum_over(term, groups, pieces=self._pieces(0))
        self.cost.grads += 2 * len(pairs)
        self.cost.forwards += 2 * len(pairs) * len(self.problem.own)
        return combined

    def evaluate_many(self, thetas: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None,
                      *, buffers_per_row: bool = False,
                      mixing: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Evaluation]:
        """``evaluate`` at each row of ``thetas`` (k×n), in one pass over the data: each batch
        goes through ``vmap`` over parameter sets, in chunks of rows of about ``MANY_BYTES`` of
        activations, or, for a model ``vmap`` cannot run, through a loop over the rows.
        ``buffers``: one set for every row, or with ``buffers_per_row`` a (k, ...) stack of
        each buffer, row i's own (interpolated or recalibrated statistics). ``mixing``: (W, E)
        with ``thetas`` = W·E, the rows weighted sums of a few weight vectors E (m×n): where they
        are fewer than the rows, the model's leading linear layer computes its output once per
        batch for each of them, and each row takes their weighted sum (``leading_layer.py``),
        if that layer's fan-in is at least ``MIXED_FAN_IN`` times m."""
        thetas = thetas.to(device=self.problem.device, dtype=self.problem.dtype)
        if mixing is not None:
            mixing = tuple(t.to(thetas) for t in mixing)
        if self._vmap_many and self._forward_plan().vectorized:
            try:
                return self._many(thetas, buffers, buffers_per_row, mixing, vectorized=True)
            except RuntimeError as exc:
                if isinstance(exc, torch.OutOfMemoryError):
                    raise
                self._vmap_many = False
                self.warnings.append(f"evaluating many weight vectors at once failed for this model "
                                     f"({first_line(exc)}); evaluated them one at a time")
        return self._many(thetas, buffers, buffers_per_row, mixing, vectorized=False)

    def _many(self, thetas: torch.Tensor, buffers: dict[str, torch.Tensor] | None,
              per_row: bool, mixing: tuple[torch.Tensor, torch.Tensor] | None,
              vectorized: bool) -> list[Evaluation]:
        extra = {"model." + name: value for name, value in (buffers or {}).items()}
        shared = {} if per_row else extra
        rows_of = extra if per_row else {}
        layer = None
        if mixing is not None and len(mixing[1]) < len(thetas):
            layer = self._leading_layer()
            if layer is not None and layer.fan_in < MIXED_FAN_IN * len(mixing[1]):
                layer = None
        weights = None if layer is None else mixing[0]

        def one(theta: torch.Tensor, own: dict[str, torch.Tensor], mixed: torch.Tensor | None,
                batch: Any, leading: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            state = {**self.problem.unflatten(theta), **shared, **own}

            def forward() -> Any:
                return torch.func.functional_call(self.problem.objective, state, (batch,))

            if mixed is None or leading is None:
                return self._loss_and_hits(forward, batch)
            with layer.replaced(lambda: torch.tensordot(mixed, leading, dims=1)):
                return self._loss_and_hits(forward, batch)

        rows = self._rows_per_forward() if vectorized else 1
        starts = range(0, len(thetas), rows)

        def own(i: int) -> dict[str, torch.Tensor]:
            return {k: v[i] for k, v in rows_of.items()}

        def term(weight: float, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            leading = None if layer is None else self._leading_outputs(layer, mixing[1], batch)
            if vectorized:
                mixed_in = None if weights is None else 0
                parts = [torch.func.vmap(one, in_dims=(0, 0, mixed_in, None, None))(
                    thetas[i:i + rows], {k: v[i:i + rows] for k, v in rows_of.items()},
                    None if weights is None else weights[i:i + rows], batch, leading)
                    for i in starts]
            else:
                parts = [tuple(t.unsqueeze(0) for t in one(
                    thetas[i], own(i), None if weights is None else weights[i], batch, leading))
                         for i in range(len(thetas))]
            losses = torch.cat([loss for loss, _ in parts])
            hits = torch.cat([h for _, h in parts])
            return (weight * losses).double(), hits

        with torch.no_grad():
            losses, hits = self.sum_over(term, self._forward_groups())
        self.cost.forwards += len(thetas) * len(self.problem.own)
        return [self._evaluation(loss, hit) for loss, hit in zip(losses, hits)]

    def _leading_layer(self) -> LeadingLayer | None:
        """The model's leading linear layer (``leading_layer.py``) where all its parameters are
        analysed (the rows' own), no autocast chooses its output's dtype and the model is not
        sharded (its weights are gathered by FSDP2's hooks), found once."""
        if self._leading is None:
            problem = self.problem
            plain = problem.objective.autocast is None and problem.shards is None
            found = leading_layer(problem.objective.model, self._graph()) if plain else None
            analysed = found is not None and set(found.parameters) <= set(problem.names)
            self._leading = found if analysed else False
        return self._leading or None

    def _graph(self) -> fx.Graph | None:
        """The model's forward pass as a static graph (``leading_layer.traced``), traced once."""
        if self._static is None:
            self._static = traced(self.problem.objective.model) or False
        return self._static or None

    def _leading_outputs(self, layer: LeadingLayer, ends: torch.Tensor, batch: Any
                         ) -> torch.Tensor | None:
        """The leading layer's output on ``batch`` at each row of ``ends`` (stacked); None where
        the objective does not call it once on the batch."""
        state = self.problem.unflatten(ends[0])
        inputs = layer.inputs(lambda: torch.func.functional_call(self.problem.objective, state, (batch,)))
        if inputs is None:
            return None
        local = len(layer.path) + 1
        return layer.outputs(inputs, [{name[local:]: self.problem.unflatten(end, prefix="")[name]
                                       for name in layer.parameters} for end in ends])

    def _rows_per_forward(self) -> int:
        """Rows of θ per vmapped forward pass: ``MANY_BYTES`` over the tensors one forward and
        backward pass of the largest group saves (more than a forward alone holds)."""
        return max(1, MANY_BYTES // max(self._forward_plan().group_bytes, 1))

    def _forward_groups(self) -> list[Group] | None:
        """The groups a pass over many θ goes through (None: each batch alone)."""
        return self._forward_plan().groups

    def _forward_plan(self) -> _ForwardPlan:
        """How passes over many θ go through the data, worked out once.

        Vectorized (vmap over θ): on a GPU always (one θ rarely fills it), on the CPU where at
        least ``VMAP_ROWS`` of them fit ``MANY_BYTES`` on the first batch. A forward pass whose
        activations are larger already fills the cores, and vmap's batched kernels (BatchNorm
        with each row's own weights, pooling) cost more than the loop saves (issue 32 §4).
        Consecutive batches are joined into groups (fewer, larger forward passes: the
        per-operator cost is paid once per group) of up to ``MANY_BYTES`` of saved tensors where
        each θ goes alone, a ``VMAP_ROWS``-th of it where they go together, if the model keeps
        its statistics (``bn: eval``), its forward pass is one static graph (no control flow on
        the data that could make another θ's loss depend on the batching), the batches
        concatenate, and the first group's loss at θ₀ is its batches' weighted sum to √ε (a loss
        that depends on the batching keeps them)."""
        if self._forwards is not None:
            return self._forwards
        problem, own, weights = self.problem, self.problem.own, self.problem.weights
        theta = problem.theta0.detach().clone().requires_grad_(True)
        saved = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            problem.mean_batch_loss(theta, problem.batch(own[0] if own else 0))
        vectorized = (problem.device.type != "cpu"
                      or MANY_BYTES // max(saved.bytes, 1) >= VMAP_ROWS)
        self._forwards = _ForwardPlan(None, vectorized, saved.bytes)
        if (problem.bn != "eval" or problem.shards is not None or problem.streamed or len(own) < 2
                or not weights[own[0]] > 0 or self._graph() is None
                or not concatenates([problem.batches[i] for i in own])):
            return self._forwards
        per_weight = max(saved.bytes, 1) / weights[own[0]]
        limit = MANY_BYTES // VMAP_ROWS if vectorized else MANY_BYTES
        runs = consecutive_runs(own, weights, per_weight, limit)
        if len(runs) == len(own) or not self._joined_loss_agrees(runs[0]):
            return self._forwards
        groups = [(sum(weights[i] for i in run), run) for run in runs]
        self._forwards = _ForwardPlan(groups, vectorized,
                                      int(max(weight for weight, _ in groups) * per_weight))
        return self._forwards

    def _joined_loss_agrees(self, run: list[int]) -> bool:
        """Whether the batches ``run`` joined give their weighted loss at θ₀ to √ε of its size."""
        problem, weights = self.problem, self.problem.weights
        with torch.no_grad():
            apart = [weights[i] * float(problem.mean_batch_loss(problem.theta0, problem.batch(i)))
                     for i in run]
            joined = sum(weights[i] for i in run) * float(
                problem.mean_batch_loss(problem.theta0, self.batch_of(run)))
        self.cost.forwards += 2 * len(run)
        return abs(joined - sum(apart)) <= torch.finfo(problem.dtype).eps ** 0.5 * sum(map(abs, apart))

    def recalibrate_bn(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """BatchNorm running statistics recomputed at θ with one no-grad pass: each batch's mean
        and unbiased variance, averaged over the batches with equal weights, the cumulative
        average that ``momentum=None`` accumulates (Garipov et al. 2018; PyTorch's
        ``swa_utils.update_bn``). Returned by the model's buffer names, for ``evaluate``; the
        model's own buffers are untouched. Empty for a model without such BatchNorms."""
        norms = batch_norms(self.problem.objective.model)
        if not norms:
            return {}
        params = self.problem.unflatten(self.problem.theta0 if theta is None else theta)

        def term(weight: float, batch: Any) -> list[torch.Tensor]:
            fresh = {}
            for name, m in norms.items():
                fresh[f"model.{name}.running_mean"] = torch.zeros_like(m.running_mean)
                fresh[f"model.{name}.running_var"] = torch.zeros_like(m.running_var)
                fresh[f"model.{name}.num_batches_tracked"] = torch.zeros_like(m.num_batches_tracked)
            torch.func.functional_call(self.problem.objective, {**params, **fresh}, (batch,))
            return [*(fresh[f"model.{name}.running_{stat}"] for name in norms
                      for stat in ("mean", "var")), torch.ones((), dtype=torch.long)]

        with torch.no_grad(), _accumulating(norms):
            *sums, count = self.sum_over(term)
        self.cost.forwards += len(self.problem.own)
        out: dict[str, torch.Tensor] = {}
        for i, name in enumerate(norms):
            out[f"{name}.running_mean"] = sums[2 * i] / count
            out[f"{name}.running_var"] = sums[2 * i + 1] / count
            out[f"{name}.num_batches_tracked"] = count.clone()
        return out
