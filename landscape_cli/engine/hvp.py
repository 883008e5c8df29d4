"""The HVP engine: loss, gradient and H·V for a block V (k×n) of the dataset loss (DESIGN §4).

H·v is the directional derivative of the gradient, ∇²L(θ)v = d/dε ∇L(θ+εv) (Pearlmutter 1994).
How products go (kept graph or streamed groups, batched or row by row, forward-over-reverse or
double backward, compiled or eager) is the engine's ``Plan`` (``engine/plan.py``); the engine
multiplies by it:

* ``cached``: the first-order graph of the *whole dataset*, ∇L(θ₀) built once with
  ``create_graph=True``, is kept; each block H·V is then a batched backward pass through it
  (``is_grads_batched``: vmap over the k rows), or one pass per row. No forward pass or first
  backward is repeated. Chosen by ``auto`` when the tensors that graph saves (counted with
  saved-tensor hooks while building it) fit the memory budget.
* ``stream``: group by group, with one group on the device at a time, so memory stops growing
  once the data fills a group. A product goes through forward-over-reverse
  (``torch.func.jvp`` of ``torch.func.grad``, vmapped over the k vectors) or double backward
  (one first-order graph per group, then a backward pass per row).
* ``fd``: finite differences of ordinary gradients (``_hvp_fd``), for models whose exact
  products fail (no double backward: custom operators, a sharded model) or where the user asks;
  each product carries a measured error (``product_error``) that the algorithms add to their
  residuals. Attention keeps SDPA's fused kernels (``Objective.fused_attention``).
* ``compile`` (an option of ``stream``): forward-over-reverse through ``torch.compile``, in
  chunks of ``COMPILED_ROWS`` rows, so a run compiles once per batch shape for single vectors
  and once for blocks. ``auto`` then streams, since a kept graph has nothing left to compile.

Engines keep freed host memory in the process (``host_memory.py``): glibc would otherwise give
the activation buffers back to the OS after every HVP and fault them in again at the next.

Every path falls back automatically: a model that ``vmap`` or ``torch.compile`` cannot handle
is run eagerly one vector at a time, and a kept graph that runs out of GPU memory streams, with
a warning in the report. Nothing here reads a value back from the device (no host-device
synchronisation per HVP); the algorithms check that the numbers they read are finite and raise
``FloatingPointError`` otherwise (see ``NONFINITE``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch

from landscape_cli.engine import distributed
from landscape_cli.engine.host_memory import keep_freed_memory
from landscape_cli.engine.passes import Cost, Evaluation, Group, Passes, SavedBytes, reduce
from landscape_cli.engine.plan import CACHED_SHARE, COMPILED_ROWS, Plan, join_batches, start, weighted_terms
from landscape_cli.engine.problem import Problem
from landscape_cli.errors import LandscapeError, first_line
from landscape_cli.linalg.memory import in_units
from landscape_cli.linalg.shards import dimension, norm, summed
from landscape_cli.names import AUTO, CACHED, FD, STRATEGIES, STREAM

NONFINITE = ("a Hessian-vector product is not finite (NaN or Inf) at the checkpoint's weights; "
             "the loss is not twice differentiable there or overflows in this dtype "
             "(try dtype: float64)")
#: the fd step: the perturbation h·v has length ε^FD_STEP_POWER·max(1, rms θ₀), ε of the dtype
#: the passes compute in: a central difference's rounding (~ε/h) and truncation (~h²) balance
#: at h ~ ε^(1/3) (``_hvp_fd``)
FD_STEP_POWER = 1 / 3
#: fd products measure their error (a second step, two more gradients) on the first product and
#: then on one in every FD_CHECK_EVERY, so that a product costs about two gradients
FD_CHECK_EVERY = 16
#: the measured error is FD_MARGIN·‖D(h) − D(2h)‖ per unit vector (``_hvp_fd``)
FD_MARGIN = 2
#: vectors of n (the model's dtype) an fd product of one row holds: a measured product's two
#: rows (and the sum of them over groups, where there are several), a point and its two
#: gradients (``Passes.gradient_combinations``)
FD_ROWS, FD_POINT_VECTORS = 2, 3


class _OverBudget(Exception):
    """The kept graph outgrew the memory budget: stream instead."""


@dataclass
class _FirstOrderGraph:
    """Σ_g w_g ∇L_g(θ₀) with its graph and Σ_g w_g L_g(θ₀) over this process's groups, the
    bytes the graph saved, and the most any one group saved."""

    theta: torch.Tensor
    graph: torch.Tensor
    loss: torch.Tensor
    bytes: int
    largest_group: int


@dataclass
class HVPEngine:
    """Exact loss, gradient and Hessian-vector products of a ``Problem`` at its θ₀."""

    problem: Problem
    strategy: str = AUTO
    memory_budget: int | None = None
    compile: bool = False
    #: L(θ₀) and the accuracy there when already known (a pass that checked the weights)
    evaluation: Evaluation | None = None
    #: the passes to go through (their cost and warnings become the engine's); new by default
    passes: Passes | None = None
    cost: Cost = field(default_factory=Cost)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        keep_freed_memory()
        # the operator's shape (``linalg.operator.LinearOperator``): vectors of θ's size and dtype
        # the vectors' length here (this rank's pieces of them where the model is sharded)
        self.size, self.dtype, self.device = (self.problem.theta0.numel(), self.problem.dtype,
                                              self.problem.device)
        self.shards = self.problem.shards
        if self.passes is None:
            self.passes = Passes(self.problem, cost=self.cost, warnings=self.warnings)
        self.cost, self.warnings = self.passes.cost, self.passes.warnings
        self._theta: torch.Tensor | None = None
        self._grad_graph: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None
        #: exact(): the float64 engine, made when first asked (False: it could not be made)
        self._exact: HVPEngine | bool | None = None
        #: the bytes a kept graph had saved when it outgrew its share of the budget (auto)
        self._graph_at_least = 0
        self._compiled = None
        #: fd: the length of the perturbation h·v, the largest measured error so far, and the
        #: products since the last measurement (None: none measured yet)
        self._fd_length = 0.0
        self._fd_error = self._fd_rayleigh_error = 0.0
        self._fd_unchecked: int | None = None
        if self.compile and self.strategy != FD:
            # Dynamo keeps its graphs, and its limit of 8 recompilations, per code object: shared
            # by every engine of the process, so once 8 graphs were spent (two or three models)
            # the next engine's "compiled" HVPs would silently run eagerly.
            torch.compiler.reset()
            self._compiled = torch.compile(self._forward_over_reverse, dynamic=False)
        self.plan: Plan = start(self.problem, self.memory_budget, self.compile)
        self.memory_budget = self.plan.memory_budget
        if self.shards is not None:
            if self.strategy not in (AUTO, FD):
                raise LandscapeError(f"--hvp-strategy {self.strategy}: a sharded model's products "
                                     "are finite differences (FSDP2 has no double backward); "
                                     "use --hvp-strategy fd or auto")
            self._finite_differences(f"{self.strategy}: the model is sharded (--shard-model), and "
                                     "FSDP2 has no double backward")
        elif self.strategy == FD:
            self._finite_differences("asked (--hvp-strategy fd)")
        elif self.strategy == CACHED:
            self._build_cache(None)
        elif self.strategy == AUTO and not self.compile and self.memory_budget > 0:
            self._cache_or_stream()

    @property
    def mode(self) -> str:
        """``cached``, ``stream`` or ``fd``: how products go (``plan.mode``)."""
        return self.plan.mode

    # ------------------------------------------------------------------ the operator (linalg)

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        """H·vᵢ for each row of ``block``: the engine as a ``linalg.operator.LinearOperator``."""
        return self.hvp(block)

    def exact(self) -> HVPEngine | None:
        """The same Hessian with float64 products where this engine's are float32 (None where
        they are float64): a float64 copy of the model on the same data (the batches cast as
        they go to the device), streamed batch by batch, its products counted in ``cost``. The
        algorithms measure the float32 products' distance to it (``linalg/lanczos.py``). None for
        an ``fd`` engine too: the error its products measure (``product_error``) is their
        distance to the exact products, the float32 gradients' rounding included."""
        if self.problem.dtype == torch.float64 or self.mode == FD:
            return None
        if self._exact is None:
            needed = self._float64_bytes()
            if needed > self.memory_budget > 0:
                return self._no_reference(f"it needs at least {in_units(needed)}, over the "
                                          f"memory budget of {in_units(self.memory_budget)}")
            try:
                objective = copy.deepcopy(self.problem.objective).double()
                objective.autocast = None  # the reference runs in float64 alone
            except (RuntimeError, TypeError, torch.OutOfMemoryError) as exc:
                # a model that cannot be copied or cast: the error bars stay float32's own
                return self._no_reference(first_line(exc))
            problem = replace(self.problem, objective=objective,
                              theta0=self.problem.theta0.double(), dtype=torch.float64)
            strategy = FD if self.mode == FD else AUTO  # auto with no budget: streamed
            self._exact = HVPEngine(problem, strategy=strategy, memory_budget=0,
                                    passes=Passes(problem, cost=self.cost, warnings=self.warnings))
        return self._exact or None

    def _no_reference(self, why: str) -> None:
        """No float64 reference, from now on (``exact``): the error bars stay float32's own."""
        self.warnings.append(f"no float64 copy of the model for the error bars ({why}); float32 "
                             "residuals measure the products against themselves, not against "
                             "the exact Hessian (--dtype float64 is exact)")
        self._exact = False

    def _float64_bytes(self) -> int:
        """The least a float64 copy's products hold: θ and the model in float64, and twice the
        first-order graph this engine kept, or had saved when it outgrew the budget's share
        (0 where none was measured)."""
        graph = max(self.plan.cached_bytes, self._graph_at_least)
        return 2 * self.size * 8 + 2 * graph

    # ------------------------------------------------------------------ first order

    def _cache_or_stream(self) -> None:
        """``auto``: keep the graph where it fits ``CACHED_SHARE`` of the budget (the rest is the
        algorithms' vectors': a graph that filled the budget would leave a Krylov basis no
        room), and stream, with a warning, where the GPU runs out of memory first (the default
        budget is a share of the GPU's memory, not of what other processes left free)."""
        try:
            self._build_cache(int(self.memory_budget * CACHED_SHARE))
        except torch.OutOfMemoryError as exc:
            self._warn("the kept first-order graph ran out of GPU memory", exc,
                       "streamed instead (a set --memory-budget or --hvp-strategy keeps the "
                       "numbers from depending on the memory other processes hold)")
        if self.mode == STREAM and self.problem.device.type == "cuda":
            torch.cuda.empty_cache()  # a partial graph's blocks, for the streamed groups

    def _build_cache(self, budget: int | None) -> None:
        """Keep ∇L(θ₀) with its graph over all batches, joined into groups where they are small
        (``plan.join_batches``), unless it outgrows ``budget``. Under torchrun every rank keeps
        its own batches' graph, and only where every rank's fits (they agree, so that they all
        go through the same sums); a rank without batches keeps zeros."""
        failure = None
        try:
            graph = self._first_order_graph(self._batch_groups(), budget)
        except torch.OutOfMemoryError as exc:
            graph, failure = None, exc
        if not distributed.all_agree(graph is not None):
            if failure is not None:
                raise failure
            return
        loss, grad = reduce([graph.loss, graph.graph.detach()])
        self._theta, self._grad_graph = graph.theta, graph.graph
        self._grad = grad
        self.passes.keep_loss(float(loss))
        self.cost.grads += 1
        self.plan = self.plan.cached(graph.bytes, graph.largest_group)

    def _first_order_graph(self, groups: tuple[Group, ...],
                           budget: int | None) -> _FirstOrderGraph | None:
        """Σ_g w_g ∇L_g(θ₀) with its graph over this process's ``groups`` of (weight, batch
        indices) and Σ_g w_g L_g(θ₀), or None as soon as the tensors it saves outgrow
        ``budget``."""
        theta = self.problem.theta0.detach().clone().requires_grad_(True)
        saved = SavedBytes()
        largest_group = 0

        def term(weight: float, batch: object) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal largest_group
            before = saved.bytes
            loss, grad = weighted_terms(self.problem, theta, weight, batch, create_graph=True)
            largest_group = max(largest_group, saved.bytes - before)
            if budget is not None and saved.bytes > budget:
                raise _OverBudget
            return loss.detach(), grad

        try:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                # a process's own graph: its products are reduced (``_hvp_cached``), not it
                loss, grad_graph = self.passes.sum_over(term, groups, reduced=False)
        except _OverBudget:
            self._graph_at_least = saved.bytes
            return None
        return _FirstOrderGraph(theta, grad_graph, loss, saved.bytes, largest_group)

    def _batch_groups(self) -> tuple[Group, ...]:
        """(weight, batch indices) of the groups every pass over the data goes through
        (``plan.join_batches``), worked out once."""
        if self.plan.groups is None:
            groups, group_bytes = join_batches(self.problem, self.passes, self.memory_budget)
            self.plan = self.plan.with_groups(groups, group_bytes, len(self.problem.own))
        return self.plan.groups

    def memory_left(self) -> int:
        """Bytes of the memory budget left for the algorithms' vectors once the products' own
        are counted (the least over the ranks under torchrun: the algorithms' choices must be
        the same on all): the kept graph; a streamed product's group graph, where measured
        (``plan.group_bytes``, or, for one group, what the graph had saved when it outgrew
        its share of the budget: ``auto`` measured it); the fd products' own vectors
        (``FD_ROWS``, ``FD_POINT_VECTORS``)."""
        held = self.plan.cached_bytes
        if self.mode == STREAM:
            single = self.plan.groups is not None and len(self.plan.groups) == 1
            held += self.plan.group_bytes or (self._graph_at_least if single else 0)
        elif self.mode == FD:
            sums = 2 if len(self._batch_groups()) > 1 else 1
            held += (sums * FD_ROWS + FD_POINT_VECTORS) * self.size * self.dtype.itemsize
        if self.memory_budget <= 0:  # --memory-budget 0: the fewest vectors, never refused
            return 0
        # a positive budget the products already fill leaves 1 byte (refused), not 0
        return distributed.all_min(max(self.memory_budget - held, 1))

    def loss(self) -> float:
        """L(θ₀), the sample-weighted mean loss over the dataset (``Passes.at_theta0``)."""
        return self.evaluate()[0]

    def evaluate(self) -> tuple[float, float | None]:
        """(L(θ₀), accuracy at θ₀ or None when the task is not classification), from the passes'
        one home for them (``Passes.at_theta0``; ``evaluation``: the load's, if it ran one)."""
        found = self.passes.at_theta0(self.evaluation)
        return found.loss, found.accuracy

    def grad(self) -> torch.Tensor:
        """∇L(θ₀) as a flat vector."""
        if self._grad is None:
            _, self._grad = self.passes.value_and_grad()
        return self._grad

    # ------------------------------------------------------------------ second order

    def hvp(self, vectors: torch.Tensor, *, every_row_checked: bool = False) -> torch.Tensor:
        """H·vᵢ for each row of ``vectors`` (k×n, or a single vector of n); by ``fd``, with each
        row's error measured where asked (``checked``), else on the schedule of ``_hvp_fd``."""
        single = vectors.dim() == 1
        block = vectors.unsqueeze(0) if single else vectors
        block = block.to(device=self.problem.device, dtype=self.problem.dtype)
        fd = self.mode == FD
        out = self._hvp_fd(block, every_row_checked) if fd else self._exact_hvp(block)
        self.cost.hvps += block.shape[0]
        self.cost.hvp_blocks += 1
        return out[0] if single else out

    def checked(self, block: torch.Tensor) -> torch.Tensor:
        """H·vᵢ for each row with each row's error measured (``fd``; the vectors a result is
        reported at: ``linalg.operator.checked``); exact products otherwise."""
        return self.hvp(block, every_row_checked=True)

    @property
    def approximate(self) -> bool:
        """Whether the products are finite differences with a measured error (``fd``)."""
        return self.mode == FD

    def batch_curvatures(self) -> torch.Tensor:
        """g_bᵀH_b g_b/‖g_b‖² for each batch b in order (g_b = ∇L_b(θ₀), L_b its mean loss):
        the minibatch curvature SGD feels (Andreyev & Beneventano 2024). H_b g_b is exact
        (forward-over-reverse on the batch), or a central difference along g_b where products
        are finite differences. A batch whose gradient is 0 has no direction: NaN."""
        theta0, problem = self.problem.theta0, self.problem
        fd = self.mode == FD

        def quotient(batch: object) -> torch.Tensor:
            g = problem.weighted_gradient(theta0, 1.0, batch)[1]
            if fd:
                h = self._fd_length / float(norm(self, g, dtype=torch.float64))
                product = problem.weighted_gradient(theta0 + h * g, 1.0, batch)[1]
                product = product.sub_(problem.weighted_gradient(theta0 - h * g, 1.0, batch)[1]) / (2 * h)
            else:
                product = self._group_hvp(g.unsqueeze(0), batch)[0]
            g = g.double()
            return (g @ product.double() / (g @ g)).detach()

        out = self.passes.each_batch(quotient)
        self.cost.grads += 3 if fd else 1
        self.cost.hvps += 0 if fd else len(problem.batches)
        return out

    def _exact_hvp(self, block: torch.Tensor) -> torch.Tensor:
        """H·V through the kept graph or streamed; under ``auto``, by finite differences where
        the model's exact products fail (no double backward)."""
        try:
            if self.mode == CACHED:
                out, = reduce([self._hvp_cached(block)])  # the kept graph is this process's data
                return out
            return self._hvp_stream(block)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # NotImplementedError too: a derivative with none of its own
            if self.strategy != AUTO:
                raise
            self._warn("exact Hessian-vector products failed for this model", exc,
                       "products are finite differences of gradients (fd), their measured "
                       "error added to the residuals")
            self._finite_differences(f"auto: exact products failed ({first_line(exc)})")
            return self._hvp_fd(block)

    def _finite_differences(self, reason: str) -> None:
        """Products by finite differences from now on (``_hvp_fd``): the kept graph, if any, is
        dropped, and attention runs through SDPA's fused kernels in every later pass. The step
        follows the precision the passes compute in (the autocast dtype under a mixed one)."""
        self._grad_graph = self._theta = None
        self.plan = self.plan.finite_differences(reason)
        objective = self.problem.objective
        objective.fused_attention = True
        computed_in = objective.autocast[1] if objective.autocast else self.problem.dtype
        theta = self.problem.theta0
        rms = float(norm(self, theta, dtype=torch.float64)) / max(dimension(self), 1) ** 0.5
        self._fd_length = torch.finfo(computed_in).eps ** FD_STEP_POWER * max(1.0, rms)

    def _hvp_fd(self, block: torch.Tensor, every_row: bool = False) -> torch.Tensor:
        """H·vᵢ for each row by a central difference of gradients, D(h) = (∇L(θ+hv) − ∇L(θ−hv))/2h
        = Hv + c·h² + ρ/h (c: the third derivative's term along v, ρ: the gradients' rounding),
        with h·‖v‖ = ε^(1/3)·max(1, rms θ₀), where the two balance (Nocedal & Wright, *Numerical
        Optimization*, §8.1). Its error is measured from a second step on the first row of the
        first product and of one product in every ``FD_CHECK_EVERY``:
        D(h) − D(2h) = −3c·h² + ρ_h/h − ρ_2h/2h, three times D's truncation where that
        dominates and ~1.1ρ/h against D's ρ/h where rounding does; ``FD_MARGIN`` times it per
        unit vector is the error reported (the largest so far: ``product_error``). With
        ``every_row``, each row's product is extrapolated and measured (``_hvp_richardson``).
        Two gradients per row, two more per measured row, all in one pass over the groups
        (``Passes.gradient_combinations``), in the model's dtype."""
        if every_row:
            return self._hvp_richardson(block)
        rows = len(block)
        norms, steps = self._fd_steps(block)
        due = self._fd_unchecked is None or self._fd_unchecked + rows > FD_CHECK_EVERY
        outputs = [[(j, h, 1 / (2 * h))] for j, h in enumerate(steps)]
        if due:  # D(2h) of the first row
            outputs.append([(0, 2 * steps[0], 1 / (4 * steps[0]))])
        products = self.passes.gradient_combinations(block, outputs, self._batch_groups())
        if due:
            self._measured(block[:1], products[:1], products[rows:], norms[:1])
            self._fd_unchecked = 0
        self._fd_unchecked += rows - due
        return products[:rows]

    def _hvp_richardson(self, block: torch.Tensor) -> torch.Tensor:
        """H·vᵢ for each row with its own error measured, for the vectors a result is reported
        at, whose c can be far larger than a random vector's (a top eigenvector's). Richardson
        extrapolation cancels the h² term: R(h) = (4D(h) − D(2h))/3 = Hv + O(h⁴) + ~1.3ρ/h;
        R(h) is returned, and ``FD_MARGIN``·‖R(h) − R(2h)‖ per unit vector is its error (15×
        R(h)'s truncation where that dominates, ~1.5× its rounding where rounding does). Six
        gradients per row (D at h, 2h and 4h), in one pass. On the float32 MLP sample's top
        eigenvectors this is 4–25× closer to the exact product than D(h), and the error it
        reports is 2–3× the true one (``benchmarks/README.md``)."""
        rows = len(block)
        norms, steps = self._fd_steps(block)
        near = [[(j, h, 2 / (3 * h)), (j, 2 * h, -1 / (12 * h))] for j, h in enumerate(steps)]
        far = [[(j, 2 * h, 1 / (3 * h)), (j, 4 * h, -1 / (24 * h))] for j, h in enumerate(steps)]
        products = self.passes.gradient_combinations(block, near + far, self._batch_groups())
        self._measured(block, products[:rows], products[rows:], norms)
        return products[:rows]

    def _fd_steps(self, block: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """‖vᵢ‖ (1 for a zero row: H·0 = 0 at any step) and each row's step h = length/‖vᵢ‖."""
        norms = norm(self, block, dim=1, dtype=torch.float64)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        return norms, (self._fd_length / norms).tolist()

    def _measured(self, vectors: torch.Tensor, products: torch.Tensor, others: torch.Tensor,
                  norms: torch.Tensor) -> None:
        """Record the largest ``FD_MARGIN``·‖products − others‖ per unit vector so far, and of
        the Rayleigh quotients, ``FD_MARGIN``·|vᵀ(products − others)|/‖v‖² (what a trace
        sample's bias is made of: ``rayleigh_error``)."""
        gaps = (products - others).to(torch.float64)
        lengths = norm(self, gaps, dim=1)
        quotients = summed(self, (vectors.to(torch.float64) * gaps).sum(dim=1)).abs()
        self._fd_error = max(self._fd_error, float((FD_MARGIN * lengths / norms).max()))
        self._fd_rayleigh_error = max(self._fd_rayleigh_error,
                                      float((FD_MARGIN * quotients / norms**2).max()))

    def rayleigh_error(self) -> float:
        """The largest measured error of a Rayleigh quotient vᵀH̃v/vᵀv (``fd``; 0 for exact
        products): a central difference's rounding is noise that a quotient averages over the
        vector's n entries, so this is far below ``product_error`` where rounding dominates."""
        return self._fd_rayleigh_error

    def product_error(self) -> float:
        """The largest measured error ‖H̃v − Hv‖ per unit vector of the products so far (``fd``;
        0 for exact products, whose rounding the algorithms measure themselves)."""
        return self._fd_error

    def _cached_backward(self, vectors: torch.Tensor, batched: bool) -> torch.Tensor:
        """One backward pass through the kept graph: H·v, or H·vᵢ for each row when batched."""
        return torch.autograd.grad(self._grad_graph, self._theta, grad_outputs=vectors,
                                   retain_graph=True, is_grads_batched=batched)[0]

    def _batched_backward(self, block: torch.Tensor) -> torch.Tensor:
        """H·V by batched backward passes of at most ``plan.batched_rows`` rows each."""
        return torch.cat([self._cached_backward(part, True)
                          for part in block.split(self.plan.batched_rows)])

    def _hvp_cached(self, block: torch.Tensor) -> torch.Tensor:
        if not self._grad_graph.requires_grad:  # a rank without batches: its share is zero
            return torch.zeros_like(block)
        if block.shape[0] > 1 and self.plan.cached_blocks_batched():
            try:
                return self._batched_backward(block)
            except RuntimeError as exc:
                self._fall_back(exc)
        return torch.stack([self._cached_backward(v, False) for v in block])

    def _forward_over_reverse(self, theta: torch.Tensor, block: torch.Tensor,
                              batch: object) -> torch.Tensor:
        """∇²L_b(θ)·vᵢ for each row of ``block``: vmap over the rows of jvp(grad L_b)."""
        grad_fn = torch.func.grad(lambda t: self.problem.mean_batch_loss(t, batch))
        return torch.func.vmap(lambda v: torch.func.jvp(grad_fn, (theta,), (v,))[1])(block)

    def _in_chunks(self, theta: torch.Tensor, block: torch.Tensor, batch: object) -> torch.Tensor:
        """Forward-over-reverse over chunks of the block's rows; vmap holds one batch's
        activations per row, so a chunk that runs out of memory is halved (and stays so)."""
        while True:
            chunk = self.plan.chunk
            try:
                return torch.cat([self._forward_over_reverse(theta, part, batch)
                                  for part in block.split(chunk)])
            except torch.OutOfMemoryError:
                if min(chunk, len(block)) == 1:
                    raise
                self.plan = replace(self.plan, chunk=(min(chunk, len(block)) + 1) // 2)
                if self.problem.device.type == "cuda":
                    torch.cuda.empty_cache()
                if not any("out of memory" in w for w in self.warnings):
                    self.warnings.append("a block of HVPs ran out of memory; blocks are split "
                                         "into chunks of at most the size that fits (chunks "
                                         "round differently: the last digits now depend on "
                                         "the memory that was free)")

    def _hvp_stream(self, block: torch.Tensor) -> torch.Tensor:
        out, = self.passes.sum_over(lambda weight, batch: (self._group_hvp(block, batch).mul_(weight),),
                                    self._batch_groups())
        return out

    def _group_hvp(self, block: torch.Tensor, batch: object) -> torch.Tensor:
        """∇²L_g(θ₀)·vᵢ for each row of ``block`` on one group: compiled where the plan says,
        else the way ``plan.forward_over_reverse_for`` says, falling back to double backward."""
        theta0 = self.problem.theta0
        if self.plan.compiled:
            try:
                return self._compiled_rows(theta0, block, batch)
            except Exception as exc:  # torch.compile raises many kinds; eager is exact too
                self.plan = replace(self.plan, compiled=False)
                self._warn("torch.compile failed for this model", exc, "ran eagerly")
        if self.plan.forward_over_reverse_for(block.shape[0]):
            try:
                return self._in_chunks(theta0, block, batch)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                self._fall_back(exc)
        return self._double_backward(theta0, block, batch)

    def _compiled_rows(self, theta0: torch.Tensor, block: torch.Tensor, batch: object) -> torch.Tensor:
        """Compiled forward-over-reverse on chunks of ``COMPILED_ROWS`` rows, the last padded with
        zero rows (H·0 = 0, discarded). Compiling is static in shape; a Hutch++ trace alone asks
        for blocks of 24, 8 and fewer rows."""
        if len(block) == 1:
            return self._compiled(theta0, block, batch)
        padded = torch.cat([block, block.new_zeros(-len(block) % COMPILED_ROWS, block.shape[1])])
        return torch.cat([self._compiled(theta0, chunk, batch)
                          for chunk in padded.split(COMPILED_ROWS)])[:len(block)]

    def _double_backward(self, theta0: torch.Tensor, block: torch.Tensor, batch: object) -> torch.Tensor:
        """∇²L_b(θ)·vᵢ by differentiating the batch gradient once more, one row at a time."""
        theta = theta0.detach().requires_grad_(True)
        g = torch.autograd.grad(self.problem.mean_batch_loss(theta, batch), theta, create_graph=True)[0]
        out = torch.empty_like(block)  # filled row by row: no list of rows beside their stack
        for row, v in zip(out, block):
            row.copy_(torch.autograd.grad(g, theta, grad_outputs=v, retain_graph=True)[0])
        return out

    def _fall_back(self, exc: Exception) -> None:
        self.plan = replace(self.plan, vectorized=False)
        self._warn("vectorised HVPs failed for this model", exc,
                   "fell back to one vector at a time")

    def _warn(self, what: str, exc: Exception, action: str) -> None:
        self.warnings.append(f"{what} ({first_line(exc)}); {action}")

    def describe(self) -> dict[str, object]:
        """The plan, for the report's settings (``Plan.describe``), with the fd products'
        largest measured error."""
        fd = self.mode == FD
        return {**self.plan.describe(), **({"fd_product_error": self.product_error()} if fd else {})}
